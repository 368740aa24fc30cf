"""DPS — diffusion posterior sampling (Chung et al., "Diffusion Posterior Sampling for General Noisy
Inverse Problems", ICLR 2023; PEERS.md §2 "DPS").

    x'_{t−1} = DDPM ancestral step from x_t                 (DDIM(η) on a sub-grid; η = 1: DDPM)
    x_{t−1}  = x'_{t−1} − ζ ∇_{x_t} ‖y − A(D(x̂0(x_t)))‖₂

The norm is unsquared, as in the official code, and taken PER SAMPLE AND IMAGE: the official code
takes one norm over the whole batch tensor (issue #12), which couples the step of an image to the
rest of its batch. Summing the per-sample norms gives each sample its own gradient.

With a latent prior D is the decoder and the gradient flows through it ("latent DPS"). Defaults:
1000 steps, ζ = 0.5 (inpainting; the official configs use 0.3 for SR ×4 and Gaussian deblur).
NFE = n_steps, each with one backward pass through the network (and decoder).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import tweedie_x0
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.reference import (abar, ddim_step, decode_sb, eps_sb, finish, residual_norm,
                                       spaced_times)
from vipaint.operators import LinearOperator
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["dps"]


def dps(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
        cond: Tensor | None = None, progress: bool = False, n_steps: int | None = 1000, zeta: float = 0.5,
        eta: float = 1.0, clip_x0: bool = False, guidance_scale: float = 1.0) -> MethodResult:
    """DPS samples [S, B, C, H, W] for observations y [B, ...].

    Args:
        n_steps: reverse steps on a near-uniform sub-grid of the prior's T times (None / ≥ T: all).
        zeta: step size ζ on ∇‖y − A D(x̂0)‖₂ (0.5 inpainting, 0.3 SR / deblur in the official code;
            re-tune when n_steps ≠ 1000, PEERS.md §2).
        eta: DDIM η of the prior step (1 = DDPM ancestral, as in DPS).
        clip_x0: clamp x̂0 to [−1, 1] before the data term (the official code does; pixel priors only).
        guidance_scale: classifier-free guidance for class-conditional priors.
    """
    s = n_samples
    latent = tuple(prior.latent_shape)
    times = spaced_times(prior.num_timesteps, n_steps)
    bar = Progress("DPS", progress)
    z = rng.randn(s, *latent, batch_dim=1).to(y)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        ab_t, ab_prev = abar(prior, t, z), abar(prior, t_prev, z)
        z = z.detach().requires_grad_(zeta != 0)
        with torch.set_grad_enabled(zeta != 0):
            e = eps_sb(prior, z, t, cond, guidance_scale)
            x0 = tweedie_x0(z, e, ab_t)
            x0_data = x0.clamp(-1, 1) if clip_x0 and not prior.is_latent else x0
            grad = torch.zeros_like(z)
            if zeta != 0:
                r = residual_norm(operator(decode_sb(prior, x0_data)) - y)          # [S, B]
                (grad,) = torch.autograd.grad(r.sum(), z)
        noise = rng.randn(s, *latent, batch_dim=1).to(z) if t_prev >= 0 and eta > 0 else None
        z = (ddim_step(x0.detach(), e.detach(), ab_t, ab_prev, eta, noise) - zeta * grad).detach()
        bar(i + 1, len(times))
    with torch.no_grad():
        x = decode_sb(prior, z)
    return finish(x, nfe=len(times), n_backprop=len(times) if zeta != 0 else 0)
