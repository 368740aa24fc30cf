"""Helpers the peer methods share: their time grids, RePaint-style time travel, the per-sample residual
norm, wrapping samples into a `MethodResult`, the `clip_x0` default, and counting a prior's decoder /
encoder calls.

Times follow `vipaint.sampling`'s convention: network times t ≥ 0 index ᾱ_t, `CLEAN` = −1 is the clean
image (ᾱ = 1). `spaced_times(T, n)` gives n network times T−1 = τ_{n−1} > … > τ_0 = 0 (guided-diffusion's
respacing) and the step out of τ_0 lands on `CLEAN`, so n steps cost exactly n network passes (n = T: the
full DDPM chain).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from vipaint.methods.base import MethodResult
from vipaint.priors.base import Prior

__all__ = ["spaced_times", "level_times", "jump_schedule", "forward_jump", "residual_norm", "finish",
           "pixel_clip", "CodecCounts", "count_codec"]


def spaced_times(num_timesteps: int, n_steps: int | None) -> list[int]:
    """n distinct network times from T−1 down to 0, near-uniform (guided-diffusion `space_timesteps`);
    every time when `n_steps` is None or ≥ T."""
    if n_steps is None or n_steps >= num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    ts = torch.linspace(0, num_timesteps - 1, int(n_steps), dtype=torch.float64).round().long()
    return sorted(set(ts.tolist()), reverse=True)


def level_times(prior: Prior, n_levels: int) -> list[int]:
    """Network time of each level, ascending (level 0 ↔ t = 0, level n−1 ↔ t = T−1; level −1 is `CLEAN`)."""
    return sorted(spaced_times(prior.num_timesteps, n_levels))


def jump_schedule(n_levels: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """Level sequence n−1, …, −1 with time travel (RePaint's `get_schedule_jump` with n_sample = 1):
    a step to a lower level is a reverse step, to a higher one a forward re-noising. jump_n_sample = 1
    gives the plain chain n−1, n−2, …, 0, −1."""
    if n_levels < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"need n_levels, jump_length, jump_n_sample >= 1; got {n_levels}, {jump_length}, "
                         f"{jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, n_levels - jump_length, jump_length)}
    t, levels = n_levels, []
    while t >= 1:
        t -= 1
        levels.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                levels.append(t)
    levels.append(-1)
    return levels


def forward_jump(z: Tensor, ab_from: Tensor, ab_to: Tensor, noise: Tensor) -> Tensor:
    """One forward (re-noising) move q(z_to | z_from) = N(√(ᾱ_to/ᾱ_from) z, (1 − ᾱ_to/ᾱ_from) I)."""
    a = ab_to / ab_from
    return a.sqrt() * z + (1 - a).sqrt() * noise


def residual_norm(r: Tensor) -> Tensor:
    """Unsquared ℓ2 norm per sample and image of a residual [S, B, ...] → [S, B] (never over the batch:
    docs/algorithm.md §10.0, the DPS pitfall), with a safe gradient at 0."""
    return r.flatten(2).square().sum(-1).clamp_min(1e-20).sqrt()


def finish(samples: Tensor, nfe: int, n_backprop: int, traces: dict[str, Tensor] | None = None) -> MethodResult:
    """Wrap samples [S, B, C, H, W] in a `MethodResult`, flagging images with non-finite samples."""
    samples = samples.detach()
    bad = ~torch.isfinite(samples).flatten(2).all(-1).all(0).cpu()
    reasons = ["non-finite samples" if f else "" for f in bad.tolist()]
    return MethodResult(samples=samples, nfe=nfe, n_backprop=n_backprop, failed=bad, reasons=reasons,
                        traces=traces or {})


def pixel_clip(clip_x0: bool | None, latent: bool, method: str) -> bool:
    """Resolve a `clip_x0` option (docs/algorithm.md §10.0): None → on for pixel priors, off for latent ones;
    True on a latent prior is refused, since [−1, 1] is a pixel range and latents are never clamped."""
    if clip_x0 is None:
        return not latent
    if clip_x0 and latent:
        raise ValueError(f"{method}: clip_x0 clamps x̂0 to the pixel range [−1, 1] and is not defined for a latent "
                         f"prior; leave it None (off) or pass False")
    return bool(clip_x0)


@dataclass
class CodecCounts:
    """Calls of a prior's `decode` and `encode` (each on one batch of any size)."""

    decode: int = 0
    encode: int = 0


@contextmanager
def count_codec(prior: Prior) -> Iterator[CodecCounts]:
    """Count the calls of `prior.decode` / `prior.encode` inside the block (latent priors; a pixel prior's
    identity codec is not a network pass and counts 0). The prior's methods are shadowed by counting
    wrappers on the instance for the block only, and restored after it, also on error."""
    counts = CodecCounts()
    if not prior.is_latent:
        yield counts
        return
    saved = {k: prior.__dict__[k] for k in ("decode", "encode") if k in prior.__dict__}
    decode, encode = prior.decode, prior.encode

    def counted_decode(z: Tensor) -> Tensor:
        counts.decode += 1
        return decode(z)

    def counted_encode(x: Tensor) -> Tensor:
        counts.encode += 1
        return encode(x)

    object.__setattr__(prior, "decode", counted_decode)
    object.__setattr__(prior, "encode", counted_encode)
    try:
        yield counts
    finally:
        for k in ("decode", "encode"):
            if k in saved:
                object.__setattr__(prior, k, saved[k])
            else:
                object.__delattr__(prior, k)
