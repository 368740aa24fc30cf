"""PSLD — posterior sampling with latent diffusion (Rout et al., "Solving Linear Inverse Problems
Provably via Posterior Sampling with Latent Diffusion Models", NeurIPS 2023; PEERS.md §2 "PSLD").

    ẑ0 = ẑ0(z_t);  z'_{t−1} = DDIM(η) step from z_t
    z_{t−1} = z'_{t−1} − ∇_{z_t} [ ω ‖y − A D(ẑ0)‖₂ + γ ‖ẑ0 − E(Aᵀy + (I − AᵀA) D(ẑ0))‖₂ ]

The "gluing" term makes ẑ0 a fixed point of decode → replace the measured part → encode. Norms are
unsquared (the official `torch.linalg.norm`) and taken PER SAMPLE AND IMAGE (the official script runs
one image at a time, so its batch norm never mixes images; ours must not either). For inpainting
Aᵀ = A⁺ and Aᵀy + (I − AᵀA)x is the projection onto {Ax = y}; for SR and blur it is one Landweber step
x + Aᵀ(y − Ax), as in the official code (which calls `operator.transpose`). The adjoint is evaluated
with a differentiable vector-Jacobian product so the gradient flows through every term.

Latent priors only (pixel priors: use `dps`). Defaults [repo `scripts/inverse.py`]: 1000 DDIM steps,
η = 0, ω = 1, γ = 0.1. NFE = n_steps, each with one backward pass through UNet, decoder and encoder. Each step is
`vipaint.sampling.guided_step` with ζ = 1 (ω and γ weight the energy).
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

__all__ = ["psld", "adjoint_differentiable"]


def adjoint_differentiable(operator: LinearOperator, v: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
    """Aᵀv as the vector-Jacobian product ∇_x ⟨A x, v⟩ with `create_graph=True`, so that it is
    differentiable in v for every linear operator (`LinearOperator.adjoint`'s VJP is not)."""
    lead = v.shape[:-len(operator.output_shape(image_shape))]
    x0 = torch.zeros(lead + tuple(image_shape), device=v.device, dtype=v.dtype, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(operator(x0), x0, grad_outputs=v, create_graph=True)
    return g


def psld(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
         cond: Tensor | None = None, progress: bool = False, n_steps: int | None = 1000, omega: float = 1.0,
         gamma: float = 0.1, eta: float = 0.0, guidance_scale: float = 1.0) -> MethodResult:
    """PSLD samples [S, B, C, H, W] for observations y [B, ...] under a latent prior.

    Args:
        n_steps: DDIM steps on a sub-grid of the prior's T times (official: 1000).
        omega: weight ω of the measurement term ‖y − A D(ẑ0)‖₂ (authors advise 0.9 for LDM, ω > γ).
        gamma: weight γ of the gluing term ‖ẑ0 − E(Aᵀy + (I − AᵀA) D(ẑ0))‖₂.
        eta: DDIM η of the prior step.
        guidance_scale: classifier-free guidance for class-conditional priors.

    Raises:
        ValueError: for a pixel prior (no encoder/decoder to glue through).
    """
    if not prior.is_latent:
        raise ValueError(f"psld needs a latent prior (with an encoder/decoder); {type(prior).__name__} is a "
                         f"pixel prior — use method 'dps' instead")
    image = tuple(prior.image_shape)
    times = spaced_times(prior.num_timesteps, n_steps)
    aty = operator.adjoint(y, image)                                                   # Aᵀy [B, ...]

    def energy(x: Tensor, z0: Tensor) -> Tensor:                                      # x = D(ẑ0)
        ax = operator(x)
        meas = residual_norm(ax - y)                                                   # [S, B]
        glued = aty + x - adjoint_differentiable(operator, ax, image)                  # Aᵀy + (I − AᵀA)x
        glue = residual_norm(prior.encode(glued) - z0)                                 # [S, B]
        return omega * meas + gamma * glue

    # ζ = 1: ω and γ are the step sizes, inside the energy
    opts = GuidedStep(zeta=1.0, eta=eta, stochastic=eta > 0, guidance_scale=guidance_scale)
    z = rng.randn(n_samples, *prior.latent_shape, batch_dim=1).to(y)
    z = guided_denoise(prior, z, times, opts, energy=energy, cond=cond, rng=rng,
                       progress=Progress("PSLD", progress)).z
    with torch.no_grad():
        x = prior.decode(z)
    return finish(x, nfe=len(times), n_backprop=len(times))
