"""DDNM / DDNM+ — denoising diffusion null-space model (Wang et al., "Zero-Shot Image Restoration Using
Denoising Diffusion Null-Space Model", ICLR 2023; docs/algorithm.md §10.5).

Each step corrects the range-space part of the Tweedie estimate towards the observation and then takes
a stochastic DDIM-like step. Noise-free DDNM (`mode="ddnm"`, the official `simplified_ddnm_plus` with
σ_y = 0):

    x̂0|y = A⁺y + (I − A⁺A) x̂0(x_t)               (inpainting: M ⊙ y + (1 − M) ⊙ x̂0)
    x_s  = √ᾱ_s x̂0|y + η √(1−ᾱ_s) ξ + √(1−η²) √(1−ᾱ_s) ε̂

DDNM+ (`mode="ddnm+"`, the official `ddnm_plus_diffusion`, paper eq. 17 and appendix eq. 51), for
σ_y > 0: with a = √ᾱ_s and σ_s = √(1−ᾱ_s) (`ddnm_plus_scales`),

    x̂0|y = x̂0 − λ_s A⁺(A x̂0 − y),   λ_s = 1 if σ_s ≥ a σ_y, else σ_s √(1−η²)/(a σ_y)
    x_s  = a x̂0|y + (I − A⁺A)[η σ_s ξ + √(1−η²) σ_s ε̂] + A⁺A [d_s ξ],
           d_s = √(σ_s² − a² σ_y²) if σ_s ≥ a σ_y, else η σ_s

so the correction shrinks once the diffusion noise falls below the observation noise, and the last step
(σ_s = 0) returns x̂0 itself: the noisy y is no longer copied into the samples. The official code applies
this per singular value s of A (threshold a σ_y / s); here every singular value is taken as 1 — exact for
inpainting and denoising, one scalar λ_s for SR and blur (as InverseBench's `algo/ddnm.py` does).
`mode="auto"` (default) is DDNM+ when the operator's σ_y > 0 and DDNM otherwise.

Note η is DDNM's (the share of fresh noise in the √(1−ᾱ_s) budget, official `--eta 0.85`), not DDIM's
η of `vipaint.diffusion.ddim_sigma`. Optional time travel (`travel_length` / `travel_repeat`, RePaint's
schedule) re-noises from the latest Tweedie estimate, x_j = √ᾱ_j x̂0 + √(1−ᾱ_j) ξ — the uncorrected x̂0, as
both official samplers do (`x0_preds`). Defaults [repo]: 100 steps, η = 0.85, no travel → NFE 100, no
backprop. A⁺ is the operator's `pinv` (closed form for inpainting and SR, Tikhonov-regularised with a
relative δ from the separable SVD for blur); DDNM+ calls it twice per step (the correction and the range
part of the noise).

Latent priors (our extension, not in the paper): the correction is applied in pixel space and mapped
back, ẑ0|y = E(x̂ − λ_s A⁺(A x̂ − y)) with x̂ = D(ẑ0), then the DDNM noise in latent space (the range /
null split of DDNM+'s noise has no latent counterpart). The codec round trip makes it approximate
(E∘D ≠ I); one decoder and one encoder pass per step, no gradients.
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

__all__ = ["ddnm", "null_space_projection", "ddnm_plus_scales", "DDNM_MODES"]

DDNM_MODES = ("auto", "ddnm", "ddnm+")


def null_space_projection(operator: LinearOperator, x0: Tensor, y: Tensor,
                          image_shape: tuple[int, int, int]) -> Tensor:
    """x̂0|y = x̂0 − A⁺(A x̂0 − y) = A⁺y + (I − A⁺A) x̂0 for x̂0 [S, B, *image] (DDNM eq. 13)."""
    return x0 - operator.pinv(operator(x0) - y, image_shape)


def ddnm_plus_scales(abar_s: Tensor, eta: float, sigma_y: float) -> tuple[Tensor, Tensor]:
    """DDNM+'s (λ_s, d_s) for a step into ᾱ_s (docs/algorithm.md §10.5, eq. 10.5b; official `Lambda` and
    `Lambda_noise` with singular value 1): with a = √ᾱ_s, σ_s = √(1 − ᾱ_s),
    σ_s ≥ a σ_y: λ_s = 1, d_s = √(σ_s² − a² σ_y²);  else λ_s = σ_s √(1 − η²)/(a σ_y), d_s = η σ_s."""
    a, sig = abar_s.sqrt(), (1 - abar_s).sqrt()
    big = sig >= a * sigma_y
    lam = torch.where(big, torch.ones_like(sig), sig * (1 - eta ** 2) ** 0.5 / (a * sigma_y))
    d = torch.where(big, (sig ** 2 - (a * sigma_y) ** 2).clamp_min(0).sqrt(), eta * sig)
    return lam, d


def ddnm(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
         cond: Tensor | None = None, progress: bool = False, n_steps: int = 100, eta: float = 0.85,
         travel_length: int = 1, travel_repeat: int = 1, mode: str = "auto", clip_x0: bool = False,
         guidance_scale: float = 1.0) -> MethodResult:
    """DDNM (σ_y = 0) or DDNM+ (σ_y > 0) samples [S, B, C, H, W] for observations y [B, ...].

    Args:
        n_steps: respaced levels (official `T_sampling` 100).
        eta: DDNM's η ∈ [0, 1], the fresh-noise share of each step (official 0.85).
        travel_length, travel_repeat: DDNM+ time travel (1, 1 = none), re-noising the last x̂0 (official).
        mode: "auto" (DDNM+ if operator.sigma_y > 0, else DDNM), "ddnm+" (the same) or "ddnm" (noise-free
            projection whatever σ_y: the noisy y is copied into the range space — the setting of the
            studies committed before the fix).
        clip_x0: clamp x̂0 to [−1, 1] before the projection (pixel priors only; the official code does not).
        guidance_scale: classifier-free guidance for class-conditional priors.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDNM's eta must lie in [0, 1], got {eta}")
    if mode not in DDNM_MODES:
        raise ValueError(f"unknown DDNM mode {mode!r}; use one of {DDNM_MODES}")
    sigma_y = float(operator.sigma_y)
    plus = mode != "ddnm" and sigma_y > 0                # official: σ_y = 0 is plain DDNM in either mode
    s, shape, image = n_samples, tuple(prior.latent_shape), tuple(prior.image_shape)
    times = level_times(prior, n_steps)
    levels = jump_schedule(len(times), travel_length, travel_repeat)
    n_rev = sum(1 for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a)
    bar = Progress("DDNM+" if plus else "DDNM", progress)
    z = rng.randn(s, *shape, batch_dim=1).to(y)
    x0_last = None
    done = 0
    with torch.no_grad():
        for cur, nxt in zip(levels[:-1], levels[1:], strict=True):
            ab_nxt = abar(prior, times[nxt] if nxt >= 0 else CLEAN, z)
            if nxt > cur:                                            # time travel back from the last x̂0
                z = ab_nxt.sqrt() * x0_last + (1 - ab_nxt).sqrt() * rng.randn(s, *shape, batch_dim=1).to(z)
                continue
            ab_cur = abar(prior, times[cur], z)
            e = prior.eps(z, times[cur], cond, guidance_scale)
            z0 = tweedie_x0(z, e, ab_cur)
            z0 = z0.clamp(-1, 1) if clip_x0 and not prior.is_latent else z0
            x0_last = z0
            if plus:
                xi = rng.randn(s, *shape, batch_dim=1).to(z) if nxt >= 0 else None
                z = _plus_step(prior, operator, y, z0, e, ab_nxt, eta, sigma_y, xi)
                done += 1
                bar(done, n_rev)
                continue
            if prior.is_latent:
                x0y = prior.encode(null_space_projection(operator, prior.decode(z0), y, image))
            else:
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


def _plus_step(prior: Prior, operator: LinearOperator, y: Tensor, z0: Tensor, e: Tensor, ab_nxt: Tensor,
               eta: float, sigma_y: float, xi: Tensor | None) -> Tensor:
    """One DDNM+ step from the Tweedie estimate z0 (docs/algorithm.md §10.5, eq. 10.5b) to z_s; `xi` None for
    the step into `CLEAN` (z_s = x̂0|y)."""
    image = tuple(prior.image_shape)
    lam, d = ddnm_plus_scales(ab_nxt, eta, sigma_y)
    if prior.is_latent:
        x = prior.decode(z0)
        x0y = prior.encode(x - lam * operator.pinv(operator(x) - y, image))
    else:
        x0y = z0 - lam * operator.pinv(operator(z0) - y, image)
    if xi is None:
        return x0y
    c = (1 - ab_nxt).sqrt()
    null_noise = c * eta * xi + c * (1 - eta ** 2) ** 0.5 * e
    if prior.is_latent:
        return ab_nxt.sqrt() * x0y + null_noise
    noise = null_noise + operator.pinv(operator(d * xi - null_noise), image)    # A⁺A on the range part
    return ab_nxt.sqrt() * x0y + noise
