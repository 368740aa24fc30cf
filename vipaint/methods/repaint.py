"""RePaint — inpainting by resampled replacement (Lugmayr et al., "RePaint: Inpainting using Denoising
Diffusion Probabilistic Models", CVPR 2022; docs/algorithm.md §10.3).

On t_T respaced levels (level −1 = the clean image), each reverse step from level i to i−1 is

    x^known_{i−1}   = √ᾱ_{i−1} y + √(1−ᾱ_{i−1}) ε          (forward-noised observation)
    x^unknown_{i−1} = DDPM ancestral step from x_i
    x_{i−1}         = M ⊙ x^known + (1 − M) ⊙ x^unknown

and "time travel" re-noises with the one-level forward kernel
x_{i+1} = √(ᾱ_{i+1}/ᾱ_i) x_i + √(1 − ᾱ_{i+1}/ᾱ_i) ξ: after every `jump_length` levels the chain goes
back `jump_length` levels and redoes them, `jump_n_sample` times in all (official `get_schedule_jump`).
Schedules (`schedule=`, `REPAINT_SCHEDULES`): "official" [repo `confs/*.yml`, the default] t_T = 250,
jump_length = 10, jump_n_sample = 10 → 2,410 reverse steps = NFE; "cheap" t_T = 100, jump_length = 10,
jump_n_sample = 2 → 190 steps, the setting of the studies committed before the fix — a different, WEAKER
setting, to be labelled as such. Explicit `t_T` / `jump_length` / `jump_n_sample` override the preset.

Clamping (default on, as the official `clip_denoised: true`): x̂0 is clamped to [−1, 1] and the unknown
part's DDPM step is the posterior mean q(x_{i−1} | x_i, x̂0) of the clamped x̂0 (ε̂ re-derived from it).
`clip_x0=False` is the unclamped chain of the studies committed before the fix.

Latent priors (latent blending, docs/algorithm.md §10.3, eq. 10.3b): the replacement acts on latents. The
known latent z_known = E(fill(y)) (y's holes filled with the observed mean, `latent_fill`) is encoded once
and noised to each level like y; the mask is the pixel mask pooled onto the latent grid (`latent_mask`:
"all", a cell is known when all its pixels are observed, the default; "any"), `vipaint.methods.blend`. The
output is D(z) (one decoder call, not pasted). Exact only for a local codec. Latent x̂0 is never clamped.

Noise-free by design: σ_y is ignored (y is pasted as if exact). Inpainting operators only. No gradients,
so no backprop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import ddim_step, eps_from_x0, tweedie_x0
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.blend import fill_holes, latent_grid_mask
from vipaint.methods.steps import finish, forward_jump, jump_schedule, level_times, pixel_clip
from vipaint.operators import Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import CLEAN, abar
from vipaint.seeding import ImageRNG

__all__ = ["repaint", "REPAINT_SCHEDULES"]

REPAINT_SCHEDULES: dict[str, tuple[int, int, int]] = {
    "official": (250, 10, 10),   # t_T, jump_length, jump_n_sample of the paper and repo: 2,410 passes
    "cheap": (100, 10, 2),       # 190 passes; weaker, the setting of the studies committed before the fix
}


def repaint(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
            cond: Tensor | None = None, progress: bool = False, schedule: str = "official", t_T: int | None = None,
            jump_length: int | None = None, jump_n_sample: int | None = None, clip_x0: bool | None = None,
            guidance_scale: float = 1.0, latent_mask: str = "all", latent_fill: str = "observed_mean"
            ) -> MethodResult:
    """RePaint samples [S, B, C, H, W] for masked observations y [B, C, H, W].

    Args:
        schedule: "official" (250, 10, 10) or "cheap" (100, 10, 2; weaker), see `REPAINT_SCHEDULES`.
        t_T: number of respaced diffusion levels (None: the schedule's).
        jump_length: levels per time-travel jump (None: the schedule's).
        jump_n_sample: passes over each jump segment (None: the schedule's; 1 = no time travel).
        clip_x0: clamp x̂0 to [−1, 1] in the update (guided-diffusion's `clip_denoised`, official on); None:
            on for pixel priors, off for latent ones (True on a latent prior raises).
        guidance_scale: classifier-free guidance for class-conditional and text-conditioned priors.
        latent_mask: latent priors: a latent cell is known when "all" (default) or "any" of its pixels are
            observed (`vipaint.methods.blend.latent_grid_mask`).
        latent_fill: latent priors: what fills y's holes before encoding, "observed_mean" (default) or "zero"
            (`vipaint.methods.blend.fill_holes`).

    Raises:
        ValueError: for a non-inpainting operator, an unknown schedule, latent rule or fill, or clip_x0=True
            on a latent prior.
    """
    if schedule not in REPAINT_SCHEDULES:
        raise ValueError(f"unknown RePaint schedule {schedule!r}; use one of {sorted(REPAINT_SCHEDULES)}")
    preset = REPAINT_SCHEDULES[schedule]
    t_T = preset[0] if t_T is None else t_T
    jump_length = preset[1] if jump_length is None else jump_length
    jump_n_sample = preset[2] if jump_n_sample is None else jump_n_sample
    if not isinstance(operator, Inpainting):
        raise ValueError(f"repaint only solves inpainting (an Inpainting operator); got {type(operator).__name__}")
    clip_x0 = pixel_clip(clip_x0, prior.is_latent, "repaint")
    s, shape = n_samples, tuple(prior.latent_shape)
    m, known_z = operator.mask, y                                        # pixel prior: M and y themselves
    if prior.is_latent:                                                  # latent blending (eq. 10.3b)
        filled = fill_holes(m, y, latent_fill)
        m = latent_grid_mask(m, shape[-2:], latent_mask)
        with torch.no_grad():
            known_z = prior.encode(filled)
    times = level_times(prior, t_T)
    levels = jump_schedule(len(times), jump_length, jump_n_sample)
    n_rev = sum(1 for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a)
    bar = Progress("RePaint", progress)
    z = rng.randn(s, *shape, batch_dim=1).to(y)
    done = 0
    with torch.no_grad():
        for cur, nxt in zip(levels[:-1], levels[1:], strict=True):
            ab_cur = abar(prior, times[cur], z)
            ab_nxt = abar(prior, times[nxt] if nxt >= 0 else CLEAN, z)
            if nxt > cur:                                                  # time travel: re-noise
                z = forward_jump(z, ab_cur, ab_nxt, rng.randn(s, *shape, batch_dim=1).to(z))
                continue
            e = prior.eps(z, times[cur], cond, guidance_scale)
            x0 = tweedie_x0(z, e, ab_cur)
            if clip_x0:                                     # official: the DDPM step of the clamped x̂0
                x0 = x0.clamp(-1, 1)
                e = eps_from_x0(z, x0, ab_cur)
            if nxt >= 0:
                unknown = ddim_step(x0, e, ab_cur, ab_nxt, 1.0, rng.randn(s, *shape, batch_dim=1).to(z))
                known = ab_nxt.sqrt() * known_z + (1 - ab_nxt).sqrt() * rng.randn(s, *shape, batch_dim=1).to(z)
            else:
                unknown, known = x0, known_z.expand_as(x0)
            z = m * known + (1 - m) * unknown
            done += 1
            bar(done, n_rev)
        z = prior.decode(z) if prior.is_latent else z
    return finish(z, nfe=n_rev, n_backprop=0)

