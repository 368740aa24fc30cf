"""RePaint — inpainting by resampled replacement (Lugmayr et al., "RePaint: Inpainting using Denoising
Diffusion Probabilistic Models", CVPR 2022; PEERS.md §2 "RePaint").

On t_T respaced levels (level −1 = the clean image), each reverse step from level i to i−1 is

    x^known_{i−1}   = √ᾱ_{i−1} y + √(1−ᾱ_{i−1}) ε          (forward-noised observation)
    x^unknown_{i−1} = DDPM ancestral step from x_i
    x_{i−1}         = M ⊙ x^known + (1 − M) ⊙ x^unknown

and "time travel" re-noises with the one-level forward kernel
x_{i+1} = √(ᾱ_{i+1}/ᾱ_i) x_i + √(1 − ᾱ_{i+1}/ᾱ_i) ξ: after every `jump_length` levels the chain goes
back `jump_length` levels and redoes them, `jump_n_sample` times in all (official `get_schedule_jump`).
Defaults [repo]: t_T = 250, jump_length = 10, jump_n_sample = 10 → 2,410 reverse steps = NFE.

Noise-free by design: σ_y is ignored (y is pasted as if exact). Inpainting operators and pixel
priors only. No gradients, so no backprop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import ddim_step, tweedie_x0
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, forward_jump, jump_schedule, level_times
from vipaint.operators import Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import CLEAN, abar
from vipaint.seeding import ImageRNG

__all__ = ["repaint"]


def repaint(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
            cond: Tensor | None = None, progress: bool = False, t_T: int = 250, jump_length: int = 10,
            jump_n_sample: int = 10, clip_x0: bool = False, guidance_scale: float = 1.0) -> MethodResult:
    """RePaint samples [S, B, C, H, W] for masked observations y [B, C, H, W].

    Args:
        t_T: number of respaced diffusion levels (official 250).
        jump_length: levels per time-travel jump (official 10).
        jump_n_sample: passes over each jump segment (official 10; 1 = no time travel).
        clip_x0: clamp x̂0 to [−1, 1] (guided-diffusion's default `clip_denoised`).
        guidance_scale: classifier-free guidance for class-conditional priors.

    Raises:
        ValueError: for a non-inpainting operator or a latent prior.
    """
    if not isinstance(operator, Inpainting):
        raise ValueError(f"repaint only solves inpainting (an Inpainting operator); got {type(operator).__name__}")
    if prior.is_latent:
        raise ValueError("repaint needs a pixel prior: the mask replacement acts on pixels")
    s, shape = n_samples, tuple(prior.latent_shape)
    times = level_times(prior, t_T)
    levels = jump_schedule(len(times), jump_length, jump_n_sample)
    n_rev = sum(1 for a, b in zip(levels[:-1], levels[1:]) if b < a)
    bar = Progress("RePaint", progress)
    m = operator.mask
    z = rng.randn(s, *shape, batch_dim=1).to(y)
    done = 0
    with torch.no_grad():
        for cur, nxt in zip(levels[:-1], levels[1:]):
            ab_cur = abar(prior, times[cur], z)
            ab_nxt = abar(prior, times[nxt] if nxt >= 0 else CLEAN, z)
            if nxt > cur:                                                  # time travel: re-noise
                z = forward_jump(z, ab_cur, ab_nxt, rng.randn(s, *shape, batch_dim=1).to(z))
                continue
            e = prior.eps(z, times[cur], cond, guidance_scale)
            x0 = tweedie_x0(z, e, ab_cur)
            x0 = x0.clamp(-1, 1) if clip_x0 else x0
            if nxt >= 0:
                unknown = ddim_step(x0, e, ab_cur, ab_nxt, 1.0, rng.randn(s, *shape, batch_dim=1).to(z))
                known = ab_nxt.sqrt() * y + (1 - ab_nxt).sqrt() * rng.randn(s, *shape, batch_dim=1).to(z)
            else:
                unknown, known = x0, y.expand_as(x0)
            z = m * known + (1 - m) * unknown
            done += 1
            bar(done, n_rev)
    return finish(z, nfe=n_rev, n_backprop=0)
