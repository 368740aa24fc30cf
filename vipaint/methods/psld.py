"""PSLD — posterior sampling with latent diffusion (Rout et al., "Solving Linear Inverse Problems
Provably via Posterior Sampling with Latent Diffusion Models", NeurIPS 2023; docs/algorithm.md §10.2).

    ẑ0 = ẑ0(z_t);  z'_{t−1} = DDIM(η) step from z_t
    z_{t−1} = z'_{t−1} − ∇_{z_t} [ ω ‖y − A D(ẑ0)‖₂ + γ ‖ẑ0 − E(Tᵀy + (I − TᵀA) D(ẑ0))‖₂ ]

The "gluing" term pulls ẑ0 towards decode → replace the measured part → encode. Norms are unsquared
(the official `torch.linalg.norm`) and taken PER SAMPLE AND IMAGE (the official script runs one image at a
time, so its batch norm never mixes images; ours must not either).

Tᵀ (`transpose=`): "official" (default) is the operator's `transpose` of DPS's `measurements.py`, which the
official PSLD code calls (`official_transpose`): M ⊙ v for inpainting, nearest upsampling WITHOUT the 1/f²
for SR (so A Tᵀ = I for area SR and the glued image meets A x = y exactly), the identity for blur and
denoising. "adjoint" is the true adjoint Aᵀ (a differentiable vector-Jacobian product), the setting of the
studies committed before the fix: for area SR Aᵀ = Tᵀ/f², so its Landweber step x + Aᵀ(y − Ax) removes only
1/f² of the residual (1/16 at ×4). For inpainting both are the projection onto {Ax = y}. The gradient
flows through every term.

Latent priors only (pixel priors: use `dps`). Defaults [repo `scripts/inverse.py`]: 1000 DDIM steps,
η = 0, ω = 1, γ = 0.1. NFE = n_steps, each with one backward pass through UNet, decoder and encoder. Each step is
`vipaint.sampling.guided_step` with ζ = 1 (ω and γ weight the energy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, residual_norm, spaced_times
from vipaint.operators import Downsample, GaussianBlur, Identity, Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import GuidedStep, guided_denoise
from vipaint.seeding import ImageRNG

__all__ = ["psld", "adjoint_differentiable", "official_transpose", "glue_target"]


def adjoint_differentiable(operator: LinearOperator, v: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
    """Aᵀv as the vector-Jacobian product ∇_x ⟨A x, v⟩ with `create_graph=True`, so that it is
    differentiable in v for every linear operator (`LinearOperator.adjoint`'s VJP is not)."""
    lead = v.shape[:-len(operator.output_shape(image_shape))]
    x0 = torch.zeros(lead + tuple(image_shape), device=v.device, dtype=v.dtype, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(operator(x0), x0, grad_outputs=v, create_graph=True)
    return g


def official_transpose(operator: LinearOperator, v: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
    """Tᵀv [..., *image] for v [..., *A's output] as DPS's `measurements.py` `transpose` (docs/algorithm.md
    §10.2): M ⊙ v for inpainting, nearest upsampling ×f without 1/f² for SR (any `Downsample` mode), v for
    blur and the identity. Differentiable in v.

    Raises:
        ValueError: for an operator the official code has no transpose for.
    """
    if isinstance(operator, Inpainting):
        return operator.mask * v
    if isinstance(operator, Downsample):
        flat = v.reshape((-1,) + tuple(v.shape[-3:]))
        up = F.interpolate(flat, scale_factor=operator.factor, mode="nearest")
        return up.reshape(tuple(v.shape[:-3]) + tuple(up.shape[1:]))
    if isinstance(operator, (GaussianBlur, Identity)):
        return v
    raise ValueError(f"no official PSLD transpose for {type(operator).__name__}; use transpose='adjoint'")


def glue_target(operator: LinearOperator, x: Tensor, y: Tensor, image_shape: tuple[int, int, int],
                transpose: str = "official", ax: Tensor | None = None) -> Tensor:
    """PSLD's gluing target Tᵀy + x − Tᵀ(A x) for x [S, B, *image] (docs/algorithm.md §10.2, eq. 10.2)
    with Tᵀ the official transpose ("official") or the true adjoint ("adjoint"); `ax` = A x if known."""
    ax = operator(x) if ax is None else ax
    if transpose == "official":
        return official_transpose(operator, y, image_shape) + x - official_transpose(operator, ax, image_shape)
    if transpose == "adjoint":
        return operator.adjoint(y, image_shape) + x - adjoint_differentiable(operator, ax, image_shape)
    raise ValueError(f"unknown PSLD transpose {transpose!r}; use 'official' or 'adjoint'")


def psld(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
         cond: Tensor | None = None, progress: bool = False, n_steps: int | None = 1000, omega: float = 1.0,
         gamma: float = 0.1, eta: float = 0.0, transpose: str = "official",
         guidance_scale: float = 1.0) -> MethodResult:
    """PSLD samples [S, B, C, H, W] for observations y [B, ...] under a latent prior.

    Args:
        n_steps: DDIM steps on a sub-grid of the prior's T times (official: 1000).
        omega: weight ω of the measurement term ‖y − A D(ẑ0)‖₂ (authors advise 0.9 for LDM, ω > γ).
        gamma: weight γ of the gluing term ‖ẑ0 − E(Tᵀy + (I − TᵀA) D(ẑ0))‖₂.
        transpose: Tᵀ of the gluing term, "official" (DPS's `transpose`) or "adjoint" (true adjoint).
        eta: DDIM η of the prior step.
        guidance_scale: classifier-free guidance for class-conditional priors.

    Raises:
        ValueError: for a pixel prior (no encoder/decoder to glue through), an unknown `transpose`, or
            `transpose="official"` with an operator the official code has no transpose for.
    """
    if not prior.is_latent:
        raise ValueError(f"psld needs a latent prior (with an encoder/decoder); {type(prior).__name__} is a "
                         f"pixel prior — use method 'dps' instead")
    if transpose not in ("official", "adjoint"):
        raise ValueError(f"unknown PSLD transpose {transpose!r}; use 'official' or 'adjoint'")
    image = tuple(prior.image_shape)
    times = spaced_times(prior.num_timesteps, n_steps)
    if transpose == "official":
        official_transpose(operator, y, image)                                         # fail early

    def energy(x: Tensor, z0: Tensor) -> Tensor:                                      # x = D(ẑ0)
        ax = operator(x)
        meas = residual_norm(ax - y)                                                   # [S, B]
        glued = glue_target(operator, x, y, image, transpose, ax=ax)                   # Tᵀy + (I − TᵀA)x
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
