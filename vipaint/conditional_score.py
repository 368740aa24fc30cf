"""The full-covariance Gaussian likelihood of z_t (docs/algorithm.md §4, eq. 4.3): ∇_{z_t} log p(y | z_t) with
p(y | z_t) ≈ N(y; h(x̂0(z_t)), σ_y² I + H Cov[x0 | z_t] Hᵀ), the covariance from Tweedie's second-order
identity Cov[x0 | z_t] = (σ_t²/α_t) ∂x̂0/∂z_t and the linear system solved by a few conjugate-gradient
iterations, each one vector–Jacobian product through the network (ΠGDM's likelihood without its scalar
r_t² (Song et al. 2023, eq. 7); exact for a Gaussian prior and a linear operator)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["conditional_score_cg", "linearised_forward"]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all but the two leading (sample, image) dims: [S, B]."""
    return (a * b).flatten(2).sum(-1)


def _per_sample(c: Tensor, like: Tensor) -> Tensor:
    return c.reshape(c.shape + (1,) * (like.dim() - c.dim()))


def linearised_forward(h: Callable[[Tensor], Tensor], x0: Tensor, rel_step: float = 1e-3
                       ) -> Callable[[Tensor], Tensor]:
    """s ↦ H s with H = ∂h/∂x0 at `x0` [S, B, *latent], for a nonlinear h = A∘D (latent priors), by a central
    difference along s per sample: (h(x0 + δ ŝ) − h(x0 − δ ŝ))/(2δ)·‖s‖, ŝ = s/‖s‖, δ = `rel_step`·max(‖x0‖, 1)
    (error O(δ²); two decoder passes in one call, no network pass; double backward through a decoder is not
    available for every attention kernel). docs/algorithm.md §4, eq. 4.3."""
    x0 = x0.detach()
    delta = rel_step * x0.flatten(2).norm(dim=-1).clamp_min(1.0)                     # [S, B]

    def forward(s: Tensor) -> Tensor:
        n = s.flatten(2).norm(dim=-1).clamp_min(1e-30)
        step = _per_sample(delta / n, s) * s
        with torch.no_grad():
            both = h(torch.cat([x0 + step, x0 - step]))
        plus, minus = both[: x0.shape[0]], both[x0.shape[0]:]
        return (plus - minus) * _per_sample(n / (2 * delta), plus)

    return forward


def conditional_score_cg(z: Tensor, measurement: Tensor, residual: Tensor, abar_t: Tensor, sigma_y2: float,
                         forward: Callable[[Tensor], Tensor], n_iter: int) -> Tensor:
    """∇_{z_t} log N(y; h(z_t), C_t) with C_t = σ_y² I + H Σ_t Hᵀ held fixed, Σ_t = (σ_t²/α_t) J,
    J = ∂x̂0/∂z_t (docs/algorithm.md §4, eq. 4.3):

        C_t v = y − h(z_t)   by `n_iter` conjugate-gradient iterations from v = 0, per sample;
        ∇_{z_t} log p(y | z_t) = Jᵀ Hᵀ v  (= Σ_k a_k Jᵀ Hᵀ p_k, reusing each iteration's product).

    Each iteration makes one VJP s = Jᵀ Hᵀ p through `measurement` (= h(x̂0(z_t)), a function of `z` [S, B,
    *latent] with its graph) and applies H Σ_t Hᵀ p ≈ (σ_t²/α_t) H s, which uses J = Jᵀ (exact for an
    exact score, a symmetric Jacobian). `forward` is s ↦ H s (the operator itself for pixel priors,
    `linearised_forward` of A∘D for latent ones). One iteration is the exact minimiser along the residual: the
    scalar variance σ_y² + r̃² with r̃² = rᵀ H Σ_t Hᵀ r / ‖r‖², the posterior variance along r. An iteration
    whose curvature pᵀ C_t p falls below σ_y² pᵀp (impossible for a covariance; a learned Jacobian that is
    not positive semi-definite along p) stops that sample, so every step length is ≤ 1/σ_y².
    `residual` = y − h(z_t) [S, B, *measurement], detached. Returns [S, B, *latent], detached."""
    if n_iter < 1:
        raise ValueError(f"conditional_score_cg needs n_iter >= 1, got {n_iter}")
    c_t = (1.0 - abar_t) / abar_t.sqrt()
    grad = torch.zeros_like(z)
    r = residual.detach()
    p = r.clone()
    rr = _dot(r, r)
    live = torch.ones_like(rr, dtype=torch.bool)
    for _ in range(n_iter):
        (s,) = torch.autograd.grad(measurement, z, p, retain_graph=True)            # Jᵀ Hᵀ p
        kp = sigma_y2 * p + c_t * forward(s)                                       # C_t p
        pkp = _dot(p, kp)
        # a covariance gives pᵀ C_t p ≥ σ_y² pᵀp; a learned Jacobian can break it and make a = rr/pkp explode
        live = live & (pkp > 1e-30) & (pkp >= (1.0 - 1e-6) * sigma_y2 * _dot(p, p)) & (rr > 1e-30)
        a = torch.where(live, rr / pkp.clamp_min(1e-30), torch.zeros_like(rr))
        grad = grad + _per_sample(a, s) * s
        r = r - _per_sample(a, kp) * kp
        rr_new = _dot(r, r)
        p = r + _per_sample(rr_new / rr.clamp_min(1e-30), p) * p
        rr = rr_new
    return grad.detach()
