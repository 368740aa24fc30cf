"""One gradient-guided DDIM step (docs/algorithm.md §4), shared by VIPaint's stage 2 and the guided peers
(DPS, PSLD; docs/algorithm.md §10.1–§10.2), and the package's time convention.

Time convention (every module): a time t ≥ 0 indexes the prior's schedule ᾱ_t (`Prior.alpha_bar`) and is
a network time; `CLEAN` = −1 is the clean image (ᾱ = 1), never passed to the network. A time grid lists
network times in descending order; the step out of its last time lands on `CLEAN` (`descend`). So n
grid times cost exactly n network passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from vipaint.diffusion import bcast, ddim_step, eps_from_x0, tweedie_x0
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["CLEAN", "abar", "descend", "time_grid", "Energy", "EnergyGrad", "GuidedStep", "GuidedStepOut",
           "guided_step", "guided_denoise", "x0_variance_estimate"]

CLEAN = -1
"""The clean time: ᾱ = 1, no network call."""

Energy = Callable[[Tensor, Tensor], Tensor]
"""Guidance energy: (decoded x̂ [S, B, *image], latent x̂0 [S, B, *latent]) → per-sample energies [S, B]."""

EnergyGrad = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""A guidance gradient computed directly: (z_t with its graph, x̂0(z_t), D(x̂0), ᾱ_t) → ∇_{z_t} E [S, B, *latent]
(e.g. the full-covariance likelihood, `vipaint.conditional_score.conditional_score_cg`)."""


def abar(prior: Prior, t: int, like: Tensor) -> Tensor:
    """ᾱ_t as a 0-d tensor with `like`'s dtype and device; ᾱ = 1 at t = `CLEAN`."""
    if t == CLEAN:
        return torch.ones((), dtype=like.dtype, device=like.device)
    if t < 0:
        raise ValueError(f"times are >= 0 or CLEAN = {CLEAN}, got {t}")
    return prior.alpha_bar(t).to(device=like.device, dtype=like.dtype)


def descend(times: list[int]) -> list[tuple[int, int]]:
    """The steps (t, t_prev) of a descending grid of network times, the last one into `CLEAN`."""
    return list(zip(times, times[1:] + [CLEAN], strict=True))


def time_grid(t_start: int, n_steps: int | None, power: float = 1.0) -> list[int]:
    """VIPaint's refinement grid (docs/algorithm.md §4, "for t = T_s, …, 1", eq. 4.4): network times
    t_start > … ≥ 1, every time when `n_steps` is None or ≥ t_start, else round(t_start·(1 − i/n)^power)
    for i = 0 … n, deduplicated, without 0 (power 1: near-uniform; power > 1 packs the steps toward t = 0,
    so fewer distinct times remain); then `CLEAN`."""
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 1):
        raise ValueError(f"the refinement grid's power must be a finite number >= 1, got {power!r}")
    if n_steps is None or n_steps >= t_start:
        return list(range(t_start, 0, -1))
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if power == 1:                      # the former float32 grid, kept bit for bit
        ts = torch.linspace(t_start, 0, n_steps + 1).round().long().tolist()
    else:
        ramp = torch.linspace(1, 0, n_steps + 1, dtype=torch.float64)
        ts = (t_start * ramp ** power).round().long().tolist()
    return sorted(set(ts) - {0}, reverse=True)


def x0_variance_estimate(z: Tensor, x0: Tensor, abar_t: Tensor, probe: Tensor) -> Tensor:
    """Per-image mean of the diagonal of Cov[x0 | z_t] = (σ_t²/α_t) ∂x̂0/∂z_t (Tweedie's second-order
    identity, exact for an exact ε; docs/algorithm.md §9, eq. 3.9), by Hutchinson with one Rademacher
    `probe` per sample: (σ_t²/α_t) mean_elements(ξ ⊙ Jᵀξ), averaged over the S samples of each image.
    z [S, B, *latent] must require grad and x0 be a function of it; returns [B] (detached, ≥ 10⁻⁶)."""
    (jt,) = torch.autograd.grad(x0, z, probe, retain_graph=True)
    quad = (probe * jt).flatten(2).mean(-1).mean(0)                                   # [B]
    return ((1.0 - abar_t) / abar_t.sqrt() * quad).detach().clamp_min(1e-6)


@dataclass(frozen=True)
class GuidedStep:
    """Settings of one guided DDIM step.

    zeta: step size ζ on ∇_{z_t} energy (0: the plain DDIM(η) step, no backprop).
    eta: DDIM η (1 = DDPM ancestral variance).
    stochastic: add ŝ ξ with ξ from the per-image rng (never into `CLEAN`).
    clip: clamp x̂0 to [−1, 1] (pixel priors only): "off"; "energy" — only for the energy;
        "both" — also in the DDIM update (VIPaint's `clip_x0`); "full" — as guided-diffusion's
        `clip_denoised` (official DPS): the clamped x̂0 in the energy and the update, with ε̂ of the update
        re-derived from it, ε̂ = (z_t − α_t x̂0)/σ_t, so that η = 1 is the DDPM posterior mean
        q(z_s | z_t, x̂0) of the clamped x̂0 (docs/algorithm.md §10.1).
    guidance_scale: classifier-free guidance g of ε_θ.
    x0_variance: estimate r_t² = Var[x0 | z_t] per image (`x0_variance_estimate`, one more backward pass
        and one Rademacher probe per sample from the rng) and call the energy as E(D(x̂0), x̂0, r_t² [B]).
    form: how the gradient enters the step. "subtract" — z_s = z' − ζ ∇_{z_t} E (DPS, official VIPaint);
        "score" — ε̂ is replaced by ε̂ + ζ σ_t ∇_{z_t} E before x̂0 and the DDIM update (ζ = 1 with
        E = −log p(y | z_t): ε of the conditional score; docs/algorithm.md §4, eq. 4.2), linear in the
        residual and free of any constant tied to the pixel count.
    """

    zeta: float = 0.0
    eta: float = 1.0
    stochastic: bool = False
    clip: Literal["off", "energy", "both", "full"] = "off"
    guidance_scale: float = 1.0
    form: Literal["subtract", "score"] = "subtract"
    x0_variance: bool = False

    def __post_init__(self) -> None:
        if self.clip not in ("off", "energy", "both", "full"):
            raise ValueError(f"clip must be 'off', 'energy', 'both' or 'full', got {self.clip!r}")
        if self.form not in ("subtract", "score"):
            raise ValueError(f"form must be 'subtract' or 'score', got {self.form!r}")


class GuidedStepOut(NamedTuple):
    """z_{t_prev} [S, B, *latent]; ε̂ and x̂0 of the update (detached); D(x̂0) as seen by the energy
    (detached; None when neither the energy nor the caller needed it)."""

    z: Tensor
    eps: Tensor
    x0: Tensor
    image: Tensor | None


def guided_step(prior: Prior, z: Tensor, t: int, t_prev: int, opts: GuidedStep, *, energy: Energy | None = None,
                grad_norm: Callable[[Tensor], Tensor] | None = None, cond: Tensor | None = None,
                rng: ImageRNG | None = None, need_image: bool = False,
                energy_grad: EnergyGrad | None = None) -> GuidedStepOut:
    """One guided DDIM(η) step from network time t to t_prev (< t, or `CLEAN`) for z [S, B, *latent]
    (docs/algorithm.md §4; DPS, docs/algorithm.md §10.1):

        ε̂ = ε_θ(z_t, t, c); x̂0 = (z_t − σ_t ε̂)/α_t  (clamped per `opts.clip`);
        z' = α_s x̂0 + √(1 − ᾱ_s − ŝ²) ε̂ [+ ŝ ξ if stochastic], ŝ = η·(DDPM posterior std);
        z_s = z' − ζ ∇_{z_t} E(D(x̂0(z_t)), x̂0(z_t))   (∇ / grad_norm(D(x̂0)) per sample if given);
    or, with `opts.form` "score", ε̂ ← ε̂ + ζ σ_t ∇_{z_t} E and x̂0, z' recomputed from it (no subtraction).

    The gradient of the energies summed over [S, B] is each sample's own gradient, since each term only
    depends on its own z. One network pass (with backprop when ζ ≠ 0); ξ is drawn from `rng` after it.
    `energy_grad`, if given, replaces ∇_{z_t} E (and `energy`) by its own computation (eq. 4.3).
    """
    guided = opts.zeta != 0
    if guided and energy is None and energy_grad is None:
        raise ValueError("a guided step (zeta != 0) needs an energy")
    ab_t, ab_prev = abar(prior, t, z), abar(prior, t_prev, z)
    z = z.detach().requires_grad_(guided)
    image = None
    with torch.set_grad_enabled(guided):
        e = prior.eps(z, t, cond, opts.guidance_scale)
        x0 = tweedie_x0(z, e, ab_t)
        x0_data = x0.clamp(-1, 1) if opts.clip != "off" and not prior.is_latent else x0
        x0 = x0_data if opts.clip == "both" else x0
        if opts.clip == "full" and not prior.is_latent:
            x0 = x0_data
            e = eps_from_x0(z, x0_data, ab_t)
        grad = torch.zeros_like(z)
        if guided or need_image:
            image = prior.decode(x0_data)
        if guided and energy_grad is not None:
            grad = energy_grad(z, x0_data, image, ab_t)
        elif guided and opts.x0_variance:
            if rng is None:
                raise ValueError("x0_variance needs an rng for its probe")
            probe = (rng.rand(z.shape[0], *z.shape[2:], batch_dim=1).to(z) < 0.5).to(z) * 2 - 1
            r2 = x0_variance_estimate(z, x0, ab_t, probe)
            (grad,) = torch.autograd.grad(energy(image, x0_data, r2).sum(), z)  # type: ignore[call-arg]
        elif guided:
            (grad,) = torch.autograd.grad(energy(image, x0_data).sum(), z)
        if guided and grad_norm is not None:
            grad = grad / bcast(grad_norm(image), grad)
    noise = None
    if opts.stochastic and t_prev != CLEAN:
        if rng is None:
            raise ValueError("a stochastic step needs an rng")
        noise = rng.randn(z.shape[0], *z.shape[2:], batch_dim=1).to(z)
    if opts.form == "score":
        e = e.detach() + opts.zeta * (1.0 - ab_t).sqrt() * grad      # ε̂ of the conditional score (eq. 4.2)
        x0 = tweedie_x0(z.detach(), e, ab_t)
        if opts.clip == "both" and not prior.is_latent:
            x0 = x0.clamp(-1, 1)
        return GuidedStepOut(z=ddim_step(x0, e, ab_t, ab_prev, opts.eta, noise).detach(), eps=e, x0=x0.detach(),
                             image=image.detach() if image is not None else None)
    z_prev = ddim_step(x0.detach(), e.detach(), ab_t, ab_prev, opts.eta, noise)
    return GuidedStepOut(z=(z_prev - opts.zeta * grad).detach(), eps=e.detach(), x0=x0.detach(),
                         image=image.detach() if image is not None else None)


def guided_denoise(prior: Prior, z: Tensor, times: list[int], opts: GuidedStep, *, energy: Energy | None = None,
                   grad_norm: Callable[[Tensor], Tensor] | None = None, cond: Tensor | None = None,
                   rng: ImageRNG | None = None, final_image: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> GuidedStepOut:
    """`guided_step` down the descending network times `times` and into `CLEAN`, from z [S, B, *latent].
    Returns the last step's output: `z` is the clean sample; `image` is D(x̂0) of the last network time
    (computed for the last step when `final_image`). len(times) network passes."""
    if not times:
        raise ValueError("guided_denoise needs at least one network time")
    out = None
    steps = descend(times)
    for i, (t, t_prev) in enumerate(steps):
        out = guided_step(prior, z, t, t_prev, opts, energy=energy, grad_norm=grad_norm, cond=cond, rng=rng,
                          need_image=final_image and i == len(steps) - 1)
        z = out.z
        if progress is not None:
            progress(i + 1, len(steps))
    return out
