"""The negative ELBO of VIPaint, per observation, by Monte Carlo (docs/algorithm.md §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vipaint.diffusion import bcast, bridge_posterior, ddpm_posterior, gaussian_kl, tweedie_x0
from vipaint.likelihood import Likelihood
from vipaint.operators import LinearOperator
from vipaint.posterior import HierarchicalPosterior, chain_from
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["ElboTerms", "negative_elbo", "interval_constants", "interval_weights"]


@dataclass
class ElboTerms:
    """Per-image terms, averaged over the MC samples, each [B].

    `objective` is what is minimised (β-weighted, with the chosen reduction); `nelbo` is the negative
    ELBO in nats (sums over elements, β = 1, the likelihood's normalising constant included where
    defined)."""

    objective: Tensor
    prior: Tensor
    hier: Tensor
    rec: Tensor
    nelbo: Tensor


def interval_constants(grid: Tensor, abar: Tensor) -> Tensor:
    """The z-independent part of each grid interval's term in the prior bound, per element [N_int]
    (docs/algorithm.md §3a): ½[v_q/v_p − 1 − log(v_q/v_p)] of KL(q-bridge ‖ p-kernel) for intervals j ≥ 1,
    and ½ log(2π v_p) of the reconstruction NLL −log p_θ(z_{T_e} | z_{G[1]}) for j = 0. Summing these
    exactly (instead of sampling them with the interval) removes most of the estimator's variance in
    value; gradients are unchanged since the constants do not depend on λ."""
    ab_e = abar[grid[0]]
    ab_lo, ab_hi = abar[grid[:-1]].double(), abar[grid[1:]].double()
    a_ts = ab_hi / ab_lo
    v_p = (1 - ab_lo) * (1 - a_ts) / (1 - ab_hi)
    v_q = (1 - ab_lo / ab_e) * (1 - a_ts) / (1 - ab_hi / ab_e)
    r = (v_q / v_p).clamp_min(1e-300)
    const = 0.5 * (r - 1 - torch.log(r))
    const[0] = 0.5 * torch.log(2 * math.pi * v_p[0])
    return const.float()


def interval_weights(grid: Tensor, abar: Tensor, data_variance: float = 1.0) -> Tensor:
    """Expected z-dependent part of each grid interval's term per element, [N_int] float64
    (docs/algorithm.md §3a, eq. 3.7), for the surrogate prior N(0, v I) (v = `data_variance`), whose ε is
    exact and linear: with z_{T_e} ~ N(0, V_e), V_e = ᾱ_e v + 1 − ᾱ_e, and z_t = √ā z_{T_e} + √(1−ā) ξ
    (ā = ᾱ_t/ᾱ_e), m_q − m_p = a z_{T_e} + c ξ, so the expectation is ½(a² V_e + c²)/v_p. Used as the
    importance weights of the interval draws (the intervals next to T_e weigh most)."""
    ab_e = abar[grid[0]].double()
    ab_lo, ab_hi = abar[grid[:-1]].double(), abar[grid[1:]].double()
    a_ts = ab_hi / ab_lo
    v_p = (1 - ab_lo) * (1 - a_ts) / (1 - ab_hi)
    k = ab_hi.sqrt() * data_variance / (ab_hi * data_variance + 1 - ab_hi)          # x̂0 = k z_t
    p_t = (ab_lo.sqrt() * (1 - a_ts) * k + a_ts.sqrt() * (1 - ab_lo)) / (1 - ab_hi)   # m_p = p_t z_t
    r_hi, r_lo = ab_hi / ab_e, ab_lo / ab_e                                          # relative to T_e
    q_e = r_lo.sqrt() * (1 - a_ts) / (1 - r_hi)                                      # m_q = q_e z_e + q_t z_t
    q_t = a_ts.sqrt() * (1 - r_lo) / (1 - r_hi)
    v_e = ab_e * data_variance + 1 - ab_e
    a = q_e + (q_t - p_t) * r_hi.sqrt()
    c = (q_t - p_t) * (1 - r_hi).sqrt()
    return 0.5 * (a ** 2 * v_e + c ** 2) / v_p


def _interval_stoch(z_e: Tensor, z_t: Tensor, eps_t: Tensor, j: Tensor, grid: Tensor, abar: Tensor) -> Tensor:
    """The z-dependent part of grid interval j's term (t' = G[j] < t = G[j+1]), summed over elements, [S, B]
    (docs/algorithm.md §3a, eq. 3.2): ½‖m_q − m_p‖²/v_p, with m_q = z_{T_e} itself for j = 0 (the NLL of
    the reconstruction step)."""
    t_lo, t_hi = grid[j], grid[j + 1]                                    # [S, B]
    ab_e = abar[grid[0]]
    ab_lo, ab_hi = bcast(abar[t_lo], z_e), bcast(abar[t_hi], z_e)
    x0 = tweedie_x0(z_t, eps_t, ab_hi)
    m_p, v_p = ddpm_posterior(x0, z_t, ab_hi, ab_lo)                     # p_θ(z_{t'} | z_t)
    m_q, _ = bridge_posterior(z_e, z_t, ab_e, ab_lo, ab_hi)              # q(z_{t'} | z_t, z_{T_e})
    m_q = torch.where(bcast(j == 0, z_e), z_e, m_q)                      # j = 0: NLL of z_{T_e} itself
    return (0.5 * (m_q - m_p) ** 2 / v_p).flatten(2).sum(-1)


def _prior_terms(z_e: Tensor, z_t: Tensor, eps_t: Tensor, j: Tensor, grid: Tensor, abar: Tensor,
                 weight: int | Tensor | None = None, exact: Tensor | None = None) -> Tensor:
    """Diffusion bound on −log p_θ(z_{T_e}) from the segment [T_e, T] (docs/algorithm.md §3a), without the
    entropy term: `weight` (default N_int) × (the z-dependent part of one stratified grid interval's term,
    `_interval_stoch`) [+ `exact`, the z-dependent parts of the intervals summed exactly, eq. 3.6] + the
    exact sum of the z-independent parts (`interval_constants`) + KL(q(z_T|z_{T_e}) ‖ N(0, I)); returns
    [S, B]. Interval j = 0 is the reconstruction term −log p_θ(z_{T_e} | z_{G[1]})."""
    n_int = grid.numel() - 1
    d = z_e[0, 0].numel()
    stoch = _interval_stoch(z_e, z_t, eps_t, j, grid, abar)
    ab_e = abar[grid[0]]
    ab_T = abar[grid[-1]] / ab_e                                         # q(z_T | z_{T_e}) vs N(0, I)
    top = gaussian_kl(ab_T.sqrt() * z_e, (1 - ab_T).expand_as(z_e), torch.zeros_like(z_e),
                      torch.ones_like(z_e))
    sampled = (n_int if weight is None else weight) * stoch
    if exact is not None:
        sampled = sampled + exact
    return sampled + d * interval_constants(grid, abar).sum() + top.flatten(2).sum(-1)


def negative_elbo(post: HierarchicalPosterior, prior: Prior, operator: LinearOperator, y: Tensor,
                  likelihood: Likelihood, rng: ImageRNG, *, n_mc: int, grid: Tensor, eta: float,
                  beta_prior: float = 100.0, beta_hier: float = 100.0, reduction: str = "mean",
                  cond: Tensor | None = None, n_exact: int = 0, interval_probs: Tensor | None = None,
                  rec_extra_var: float | Tensor = 0.0, guidance_scale: float = 1.0) -> ElboTerms:
    """L(λ) = β_1 L_prior + β_2 L_hier + L_rec (docs/algorithm.md §3) for B observations, S = n_mc samples.

    One network call evaluates ε_θ at the top keypoint and at the prior-loss times together; each further
    keypoint and the reconstruction take one call each, all on batches of S·B.

    `n_exact` > 0: the first `n_exact` grid intervals (next to T_e, where the terms are largest) enter
    every sample with weight 1, each at its own z_t (n_exact·S more network evaluations in the same
    call), and the S stratified draws cover only the remaining N_int − n_exact intervals, with weight
    N_int − n_exact (docs/algorithm.md §3a, eq. 3.6). `interval_probs` [N_int − n_exact] (summing to 1):
    the S draws over the remaining intervals are stratified in the inverse CDF of these probabilities
    and weighted 1/p_j (importance sampling, eq. 3.6; e.g. ∝ `interval_weights`). `rec_extra_var` is
    r_{T_s}² of the variance-aware likelihood (eq. 3.8–3.9), a float or a per-image tensor [B].
    """
    s, b = n_mc, post.mu.shape[1]
    latent = tuple(post.mu.shape[2:])
    d = math.prod(latent)
    abar = prior.alphas_cumprod.float()
    grid = grid.to(abar.device)
    z_e = post.sample_top(rng.randn(s, *latent, batch_dim=1).to(post.mu))           # [S, B, *L]
    n_int = grid.numel() - 1                                                        # stratified: sample i
    if not 0 <= n_exact < n_int:
        raise ValueError(f"n_exact must lie in [0, {n_int}) for a grid of {n_int} intervals, got {n_exact}")
    n_rest = n_int - n_exact
    u = rng.rand(s, batch_dim=1).to(abar.device)                                     # draws from stratum i
    weight: int | Tensor = n_rest
    if interval_probs is None:
        j = ((torch.arange(s, device=abar.device)[:, None] + u) * n_rest / s).long().clamp(max=n_rest - 1)
    else:
        probs = interval_probs.to(device=abar.device, dtype=torch.float64)
        if probs.shape != (n_rest,):
            raise ValueError(f"interval_probs must have shape [{n_rest}], got {tuple(probs.shape)}")
        cdf = probs.cumsum(0) / probs.sum()
        j = torch.searchsorted(cdf, ((torch.arange(s, device=abar.device)[:, None] + u) / s).double(),
                               right=True).clamp(max=n_rest - 1)
        weight = (probs.sum() / probs[j]).float()                                    # 1/p_j, [S, B]
    if n_exact:
        j = j + n_exact
    ab_rel = bcast(abar[grid[j + 1]] / abar[grid[0]], z_e)
    z_t = ab_rel.sqrt() * z_e + (1 - ab_rel).sqrt() * rng.randn(s, *latent, batch_dim=1).to(z_e)
    t_cat = torch.cat([torch.full((s, b), post.keypoints[0], device=abar.device), grid[j + 1]])      # [2S, B]
    z_cat = [z_e, z_t]
    if n_exact:                                                      # interval i < n_exact: one z_t each
        j_x = torch.arange(n_exact, device=abar.device).repeat_interleave(s)[:, None].expand(-1, b)
        z_ex = z_e.repeat(n_exact, *([1] * (z_e.dim() - 1)))                             # [n_exact·S, B, *L]
        ab_x = bcast(abar[grid[j_x + 1]] / abar[grid[0]], z_ex)
        z_x = ab_x.sqrt() * z_ex + (1 - ab_x).sqrt() * rng.randn(n_exact * s, *latent, batch_dim=1).to(z_e)
        t_cat = torch.cat([t_cat, grid[j_x + 1]])
        z_cat.append(z_x)
    e = prior.eps(torch.cat(z_cat), t_cat, cond, guidance_scale)                                   # one call
    eps_top, eps_t = e[:s], e[s:2 * s]
    exact = None
    if n_exact:
        exact = _interval_stoch(z_ex, z_x, e[2 * s:], j_x, grid, abar).reshape(n_exact, s, b).sum(0)

    entropy = 0.5 * (post.top_logvar() + math.log(2 * math.pi * math.e)).flatten(1).sum(-1)   # [B]
    l_prior = _prior_terms(z_e, z_t, eps_t, j, grid, abar, weight, exact) - entropy                          # [S, B]
    chain = chain_from(post, prior, z_e, rng, eta=eta, cond=cond, guidance_scale=guidance_scale, eps_top=eps_top)
    z_s = chain.z[-1]
    e_s = prior.eps(z_s, post.keypoints[-1], cond, guidance_scale)
    x_hat = prior.decode(tweedie_x0(z_s, e_s, abar[post.keypoints[-1]]))                            # [S, B, *image]
    l_rec = likelihood(x_hat, y, operator, rec_extra_var)                                                      # [S, B]

    scale = 1.0 / d if reduction == "mean" else 1.0
    objective = beta_prior * scale * l_prior + beta_hier * scale * chain.kl + l_rec
    p = math.prod(y.shape[1:])
    rec_nats = l_rec * (p if likelihood.reduction == "mean" else 1.0) + likelihood.constant(y, operator, rec_extra_var)
    nelbo = l_prior + chain.kl + rec_nats
    return ElboTerms(objective=objective.mean(0), prior=l_prior.mean(0), hier=chain.kl.mean(0),
                     rec=l_rec.mean(0), nelbo=nelbo.mean(0))
