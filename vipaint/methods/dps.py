"""DPS — diffusion posterior sampling (Chung et al., "Diffusion Posterior Sampling for General Noisy
Inverse Problems", ICLR 2023; docs/algorithm.md §10.1).

    x'_{t−1} = DDPM ancestral step from x_t                 (DDIM(η) on a sub-grid; η = 1: DDPM)
    x_{t−1}  = x'_{t−1} − ζ ∇_{x_t} ‖y − A(D(x̂0(x_t)))‖₂

The norm is unsquared, as in the official code, and taken PER SAMPLE AND IMAGE: the official code
takes one norm over the whole batch tensor (issue #12), which couples the step of an image to the
rest of its batch. Summing the per-sample norms gives each sample its own gradient.

Clamping (pixel priors, default on): as the official `clip_denoised: True`, x̂0 is clamped to [−1, 1] in
the data term AND in the update, whose mean is the DDPM posterior mean of the clamped x̂0 (guided step
`clip="full"`). `clip_x0=False` turns it off (the setting of the studies committed before the fix).

With a latent prior D is the decoder and the gradient flows through it ("latent DPS"; never clamped).
Defaults: 1000 steps, ζ = 0.5 (inpainting; the official configs use 0.3 for SR ×4 and Gaussian deblur).
NFE = n_steps, each with one backward pass through the network (and decoder). Each step is
`vipaint.sampling.guided_step` (the one VIPaint's refinement takes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, residual_norm, spaced_times
from vipaint.operators import LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import GuidedStep, guided_denoise
from vipaint.seeding import ImageRNG

__all__ = ["dps"]


def dps(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
        cond: Tensor | None = None, progress: bool = False, n_steps: int | None = 1000, zeta: float = 0.5,
        eta: float = 1.0, clip_x0: bool | None = None, guidance_scale: float = 1.0) -> MethodResult:
    """DPS samples [S, B, C, H, W] for observations y [B, ...].

    Args:
        n_steps: reverse steps on a near-uniform sub-grid of the prior's T times (None / ≥ T: all).
        zeta: step size ζ on ∇‖y − A D(x̂0)‖₂ (0.5 inpainting, 0.3 SR / deblur in the official code;
            re-tune when n_steps ≠ 1000, docs/algorithm.md §10.0).
        eta: DDIM η of the prior step (1 = DDPM ancestral, as in DPS).
        clip_x0: clamp x̂0 to [−1, 1] in the data term and the update, as the official code (pixel priors
            only; None: on for pixel priors, off for latent ones; False: off).
        guidance_scale: classifier-free guidance for class-conditional priors.
    """
    times = spaced_times(prior.num_timesteps, n_steps)
    clip = (not prior.is_latent) if clip_x0 is None else bool(clip_x0)
    opts = GuidedStep(zeta=zeta, eta=eta, stochastic=eta > 0, clip="full" if clip else "off",
                      guidance_scale=guidance_scale)

    def energy(x: Tensor, _: Tensor) -> Tensor:
        return residual_norm(operator(x) - y)                                          # [S, B]

    z = rng.randn(n_samples, *prior.latent_shape, batch_dim=1).to(y)
    z = guided_denoise(prior, z, times, opts, energy=energy, cond=cond, rng=rng,
                       progress=Progress("DPS", progress)).z
    with torch.no_grad():
        x = prior.decode(z)
    return finish(x, nfe=len(times), n_backprop=len(times) if zeta != 0 else 0)
