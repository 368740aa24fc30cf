"""VIPaint's fit objective (docs/algorithm.md §3) and the start of the fit (2.3): the pieces of
`vipaint.methods.vipaint.fit_posterior` that a benchmark also needs on their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vipaint.diffusion import edm_time_grid, tweedie_x0, x0_variance
from vipaint.elbo import interval_weights, negative_elbo
from vipaint.likelihood import Likelihood
from vipaint.methods.base import initial_image
from vipaint.operators import LinearOperator
from vipaint.posterior import HierarchicalPosterior, sample_chain
from vipaint.priors.analytic import GaussianMixturePrior
from vipaint.priors.base import Prior
from vipaint.sampling import abar, x0_variance_estimate
from vipaint.seeding import ImageRNG

# `cfg` is a `vipaint.methods.vipaint.VIPaintConfig`, typed `Any` here: importing it would make an import cycle.
VIPaintConfig = Any

__all__ = ["FitObjective", "initialise_fit", "prior_data_variance"]


def prior_data_variance(prior: Prior, cfg: VIPaintConfig) -> float:
    """v, the per-element variance of the prior's data (of its latents for latent priors), for r_t²
    (docs/algorithm.md §3c): `cfg.data_variance`, else the prior's own `data_variance`, else the exact
    mean per-pixel variance of an analytic mixture, else 1 (the bound for data in [−1, 1])."""
    if cfg.data_variance is not None:
        return float(cfg.data_variance)
    v = getattr(prior, "data_variance", None)
    if v is not None:
        return float(v)
    if isinstance(prior, GaussianMixturePrior):
        w, m, c = prior.weights, prior.means, prior.covs
        mean = (w[:, None] * m).sum(0)
        var = (w[:, None] * (c.diagonal(dim1=-2, dim2=-1) + (m - mean) ** 2)).sum(0)
        return float(var.mean())
    return 1.0


@dataclass
class FitObjective:
    """The negative ELBO the fit descends (docs/algorithm.md 3.1) with its per-fit constants: the prior-loss
    time grid and interval probabilities (§3a), the likelihood and its extra variance r² fixed at the initial
    q_λ (§3c). Calling it draws one Monte Carlo estimate per image [B] from `rng`."""

    cfg: VIPaintConfig
    grid: Tensor
    probs: Tensor | None
    likelihood: Likelihood
    r2: float | Tensor
    data_variance: float                # v of (3.8), which also scales the fit's learning rate of μ

    def __call__(self, post: HierarchicalPosterior, prior: Prior, operator: LinearOperator, y: Tensor,
                 rng: ImageRNG, cond: Tensor | None = None) -> Tensor:
        c = self.cfg
        return negative_elbo(post, prior, operator, y, self.likelihood, rng, n_mc=c.n_mc, grid=self.grid,
                             eta=c.eta_fit, beta_prior=c.beta_prior, beta_hier=c.beta_hier, reduction=c.reduction,
                             cond=cond, n_exact=c.prior_exact_intervals, interval_probs=self.probs,
                             rec_extra_var=self.r2, guidance_scale=c.fit_guidance).objective


def initialise_fit(prior: Prior, operator: LinearOperator, y: Tensor, rng: ImageRNG, cfg: VIPaintConfig,
                   *, cond: Tensor | None = None) -> tuple[HierarchicalPosterior, FitObjective]:
    """The initial q_λ (docs/algorithm.md 2.3) and the objective of its fit: the first, deterministic part of
    `fit_posterior` (it draws the same numbers from `rng`), exposed so that a benchmark can evaluate the
    objective at the initial and at the fitted q_λ with common random numbers."""
    cfg = cfg.for_prior(prior)
    if max(cfg.keypoints) >= prior.num_timesteps - 1 or min(cfg.keypoints) < 1:
        raise ValueError(f"keypoints {cfg.keypoints} must lie in [1, T-1) with T = {prior.num_timesteps}")
    y_enc = prior.encode(initial_image(operator, y, prior.image_shape, cfg.init_fill))
    std_scale = cfg.eta_fit if cfg.std_scale is None else cfg.std_scale
    post = HierarchicalPosterior.initialise(y_enc.detach(), prior, cfg.keypoints, rng, s_top=cfg.s_top,
                                            gamma_init=cfg.gamma_init, std_scale=std_scale)
    v = prior_data_variance(prior, cfg)
    grid = edm_time_grid(prior.alphas_cumprod, cfg.keypoints[0], n=cfg.prior_grid_points)
    probs = None
    if cfg.prior_interval_sampling == "importance":
        probs = interval_weights(grid, prior.alphas_cumprod, v)[cfg.prior_exact_intervals:]
    lik = cfg.make_likelihood()
    r2: float | Tensor = 0.0
    if cfg.variance_mode(lik) == "tweedie":
        r2 = float(x0_variance(prior.alpha_bar(cfg.keypoints[-1]).double().item(), v))
    elif cfg.variance_mode(lik) in ("jacobian", "covariance"):
        r2 = _initial_x0_variance(post, prior, rng, cfg, cond)
    return post, FitObjective(cfg, grid, probs, lik, r2, v)


def _initial_x0_variance(post: HierarchicalPosterior, prior: Prior, rng: ImageRNG, cfg: VIPaintConfig,
                         cond: Tensor | None) -> Tensor:
    """r_{T_s}² per image [B] for the fit's likelihood under "jacobian" (eq. 3.9), estimated once at the
    initial q_λ from `n_mc` chains (K − 1 + 1 network passes, one backward)."""
    with torch.no_grad():
        z = sample_chain(post, prior, cfg.n_mc, rng, eta=cfg.eta_fit, cond=cond, guidance_scale=cfg.fit_guidance).z[-1]
    z = z.detach().requires_grad_(True)
    ab = abar(prior, cfg.keypoints[-1], z)
    with torch.enable_grad():
        x0 = tweedie_x0(z, prior.eps(z, cfg.keypoints[-1], cond, cfg.fit_guidance), ab)
        probe = (rng.rand(z.shape[0], *z.shape[2:], batch_dim=1).to(z) < 0.5).to(z) * 2 - 1
        return x0_variance_estimate(z, x0, ab, probe)
