"""`prior`: unconditional prior samples by DDPM ancestral / DDIM(η) steps; for inpainting the observed
pixels are pasted from y (M ⊙ y + (1 − M) ⊙ x). A floor that every solver should beat."""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import ddim_step
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, spaced_times
from vipaint.operators import Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import CLEAN, abar, descend
from vipaint.seeding import ImageRNG

__all__ = ["prior_samples"]


def prior_samples(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
                  cond: Tensor | None = None, progress: bool = False, n_steps: int | None = 1000,
                  eta: float = 1.0, guidance_scale: float = 1.0, paste: bool = True) -> MethodResult:
    """Unconditional samples (DDPM ancestral for η = 1, DDIM(η) otherwise) on `n_steps` spaced steps;
    for inpainting (and `paste`) the observed pixels are replaced by y. NFE = n_steps."""
    s, b = n_samples, y.shape[0]
    times = spaced_times(prior.num_timesteps, n_steps)
    bar = Progress("prior", progress)
    z = rng.randn(s, *prior.latent_shape, batch_dim=1).to(y)
    with torch.no_grad():
        for i, (t, t_prev) in enumerate(descend(times)):
            ab_t, ab_prev = abar(prior, t, z), abar(prior, t_prev, z)
            e = prior.eps(z, t, cond, guidance_scale)
            x0 = (z - (1 - ab_t).sqrt() * e) / ab_t.sqrt()
            noise = rng.randn(s, *prior.latent_shape, batch_dim=1).to(z) if t_prev != CLEAN and eta > 0 else None
            z = ddim_step(x0, e, ab_t, ab_prev, eta, noise)
            bar(i + 1, len(times))
        x = prior.decode(z)
    if paste and isinstance(operator, Inpainting):
        x = operator.paste(x, y)
    assert x.shape[:2] == (s, b)
    return finish(x, nfe=len(times), n_backprop=0)
