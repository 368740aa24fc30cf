"""Gradient-guided denoising from a time t_start to 0 (ALGORITHM.md §4), shared by VIPaint's stage 2
and DPS-style peers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vipaint.diffusion import bcast, ddim_mean, ddim_sigma, tweedie_x0
from vipaint.likelihood import Likelihood
from vipaint.operators import LinearOperator
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["time_grid", "guided_denoise"]


def time_grid(t_start: int, n_steps: int | None) -> list[int]:
    """Descending times t_start = t_0 > … > t_n = 0: every step when `n_steps` is None or ≥ t_start,
    else `n_steps` near-uniform steps."""
    if n_steps is None or n_steps >= t_start:
        return list(range(t_start, -1, -1))
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    ts = torch.linspace(t_start, 0, n_steps + 1).round().long().tolist()
    return sorted(set(ts), reverse=True)


def guided_denoise(prior: Prior, operator: LinearOperator, y: Tensor, z: Tensor, rng: ImageRNG, *,
                   likelihood: Likelihood, t_start: int, n_steps: int | None = None, zeta: float = 2.0,
                   eta: float = 0.2, stochastic: bool = False, normalize: bool = False,
                   cond: Tensor | None = None, guidance_scale: float = 1.0, clip_x0: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, int]:
    """Refine z_{t_start} [S, B, *latent] to an image [S, B, *image] (ALGORITHM.md §4):

        ε̂ = ε_θ(z_t, t); x̂0 = (z_t − σ_t ε̂)/α_t;
        z'_{t−1} = α_{t−1} x̂0 + √(1 − ᾱ_{t−1} − ŝ²) ε̂ [+ ŝ ξ if stochastic], ŝ = η·(DDPM posterior std);
        z_{t−1} = z'_{t−1} − ζ ∇_{z_t} ℓ(D(x̂0(z_t)); y)   (ζ/‖A(x̂) − y‖ per sample if `normalize`).

    The gradient of ℓ summed over samples and images is the per-sample gradient, since each term only
    depends on its own z. Returns D(x̂0) of the last step and the number of ε_θ passes (each with backprop).
    """
    s, b = z.shape[:2]
    latent = tuple(z.shape[2:])
    times = time_grid(t_start, n_steps)
    c = cond.repeat(s) if cond is not None else None
    x_img = None
    for i, (t, t_prev) in enumerate(zip(times[:-1], times[1:])):
        ab_t = prior.alpha_bar(t).to(z)
        ab_prev = prior.alpha_bar(t_prev).to(z) if t_prev > 0 else torch.ones((), device=z.device)
        z = z.detach().requires_grad_(zeta != 0)
        with torch.set_grad_enabled(zeta != 0):
            tt = torch.full((s * b,), t, device=z.device, dtype=torch.long)
            e = prior.eps(z.reshape((s * b,) + latent), tt, c, guidance_scale).reshape(z.shape)
            x0 = tweedie_x0(z, e, ab_t)
            if clip_x0:
                x0 = x0.clamp(-1, 1) if not prior.is_latent else x0
            x_img = prior.decode(x0.reshape((s * b,) + latent))
            x_img = x_img.reshape((s, b) + tuple(x_img.shape[1:]))
            grad = torch.zeros_like(z)
            if zeta != 0:
                energy = likelihood(x_img, y, operator)                               # [S, B]
                (grad,) = torch.autograd.grad(energy.sum(), z)
                if normalize:
                    r = (operator(x_img) - y).flatten(2).norm(dim=-1).clamp_min(1e-8)
                    grad = grad / bcast(r, grad)
        sig = ddim_sigma(ab_t, ab_prev, eta)
        z_prev = ddim_mean(x0.detach(), e.detach(), ab_prev, sig)
        if stochastic and t_prev > 0:
            z_prev = z_prev + sig * rng.randn(s, *latent, batch_dim=1).to(z)
        z = (z_prev - zeta * grad).detach()
        x_img = x_img.detach()
        if progress is not None:
            progress(i + 1, len(times) - 1)
    return x_img, len(times) - 1
