"""DDNM — denoising diffusion null-space model (Wang et al., "Zero-Shot Image Restoration Using
Denoising Diffusion Null-Space Model", ICLR 2023; PEERS.md §2 "DDNM").

Each step replaces the range-space part of the Tweedie estimate by the observation and then takes a
stochastic DDIM-like step, as in the official `simplified_ddnm_plus` with σ_y = 0:

    x̂0|y = A⁺y + (I − A⁺A) x̂0(x_t)               (inpainting: M ⊙ y + (1 − M) ⊙ x̂0)
    x_s  = √ᾱ_s x̂0|y + η √(1−ᾱ_s) ξ + √(1−η²) √(1−ᾱ_s) ε̂

Note η is DDNM's (the share of fresh noise in the √(1−ᾱ_s) budget, official `--eta 0.85`), not DDIM's
η of `vipaint.diffusion.ddim_sigma`. Optional time travel (DDNM+'s `travel_length` /
`travel_repeat`, RePaint's schedule) re-noises from the latest x̂0|y: x_j = √ᾱ_j x̂0|y + √(1−ᾱ_j) ξ.

Noise-free: the projection treats y as exact, so σ_y is IGNORED (DDNM+'s noise-aware scaling is not
implemented; with σ_y > 0 the observation noise is copied into the range space). Defaults [repo]:
100 steps, η = 0.85, no travel → NFE 100, no backprop. A⁺ is the operator's `pinv` (closed form for
inpainting and area SR, conjugate gradients otherwise).

Latent priors (our extension, not in the paper): the projection is applied in pixel space and mapped
back, ẑ0|y = E(A⁺y + (I − A⁺A) D(ẑ0)), then the same step in latent space. The codec round trip makes
it approximate (E∘D ≠ I); one decoder and one encoder pass per step, no gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import tweedie_x0
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, jump_schedule, level_times
from vipaint.operators import LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import CLEAN, abar
from vipaint.seeding import ImageRNG

__all__ = ["ddnm", "null_space_projection"]


def null_space_projection(operator: LinearOperator, x0: Tensor, y: Tensor,
                          image_shape: tuple[int, int, int]) -> Tensor:
    """x̂0|y = x̂0 − A⁺(A x̂0 − y) = A⁺y + (I − A⁺A) x̂0 for x̂0 [S, B, *image] (DDNM eq. 13)."""
    return x0 - operator.pinv(operator(x0) - y, image_shape)


def ddnm(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
         cond: Tensor | None = None, progress: bool = False, n_steps: int = 100, eta: float = 0.85,
         travel_length: int = 1, travel_repeat: int = 1, clip_x0: bool = False,
         guidance_scale: float = 1.0) -> MethodResult:
    """DDNM samples [S, B, C, H, W] for observations y [B, ...] (noise-free model: σ_y ignored).

    Args:
        n_steps: respaced levels (official `T_sampling` 100).
        eta: DDNM's η ∈ [0, 1], the fresh-noise share of each step (official 0.85).
        travel_length, travel_repeat: DDNM+ time travel (1, 1 = none).
        clip_x0: clamp x̂0 to [−1, 1] before the projection (pixel priors only).
        guidance_scale: classifier-free guidance for class-conditional priors.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDNM's eta must lie in [0, 1], got {eta}")
    s, shape, image = n_samples, tuple(prior.latent_shape), tuple(prior.image_shape)
    times = level_times(prior, n_steps)
    levels = jump_schedule(len(times), travel_length, travel_repeat)
    n_rev = sum(1 for a, b in zip(levels[:-1], levels[1:]) if b < a)
    bar = Progress("DDNM", progress)
    z = rng.randn(s, *shape, batch_dim=1).to(y)
    x0y = None
    done = 0
    with torch.no_grad():
        for cur, nxt in zip(levels[:-1], levels[1:]):
            ab_nxt = abar(prior, times[nxt] if nxt >= 0 else CLEAN, z)
            if nxt > cur:                                            # time travel back from the last x̂0|y
                z = ab_nxt.sqrt() * x0y + (1 - ab_nxt).sqrt() * rng.randn(s, *shape, batch_dim=1).to(z)
                continue
            ab_cur = abar(prior, times[cur], z)
            e = prior.eps(z, times[cur], cond, guidance_scale)
            z0 = tweedie_x0(z, e, ab_cur)
            if prior.is_latent:
                x0y = prior.encode(null_space_projection(operator, prior.decode(z0), y, image))
            else:
                z0 = z0.clamp(-1, 1) if clip_x0 else z0
                x0y = null_space_projection(operator, z0, y, image)
            if nxt >= 0:
                c = (1 - ab_nxt).sqrt()
                xi = rng.randn(s, *shape, batch_dim=1).to(z)
                z = ab_nxt.sqrt() * x0y + c * eta * xi + c * (1 - eta ** 2) ** 0.5 * e
            else:
                z = x0y
            done += 1
            bar(done, n_rev)
        x = prior.decode(z)
    return finish(x, nfe=n_rev, n_backprop=0)
