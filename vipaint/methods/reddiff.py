"""RED-diff — variational regularisation by denoising (Mardani et al., "A Variational Perspective on
Solving Inverse Problems with Diffusion Models", ICLR 2024; docs/algorithm.md §10.4).

A point estimate μ (an image; a latent for latent priors) is optimised by Adam, initialised at A⁺y
(E(A⁺y) for latent priors). For t running down the schedule, with fresh ε ~ N(0, I):

    x_t  = α_t μ + σ_t ε
    loss = obs_weight · ½ mean((y − A D(μ))²) + λ_t · mean(sg(ε_θ(x_t, t) − ε) ⊙ μ),   λ_t = w σ_t/α_t

one Adam step per t (lr 0.1, betas (0.9, 0.99), w = `grad_term_weight` = 0.25, "linear" weighting,
`sigma_x0` = 0, as in `_configs/algo/reddiff.yaml`). ε_θ is detached: NO backprop through the network
(for latent priors the data term backpropagates through the decoder only).

Per-image independence: the official code averages over the whole batch tensor; here the means are
per sample and image and the loss is their SUM, and Adam's state is element-wise, so each of the S
samples of each image is an independent run (its own ε draws). Diversity comes only from those
draws: RED-diff's posterior is a Dirac. NFE = n_steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, spaced_times
from vipaint.operators import LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import abar
from vipaint.seeding import ImageRNG

__all__ = ["reddiff"]


def reddiff(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
            cond: Tensor | None = None, progress: bool = False, n_steps: int | None = 1000, lr: float = 0.1,
            betas: tuple[float, float] = (0.9, 0.99), grad_term_weight: float = 0.25, obs_weight: float = 1.0,
            sigma_x0: float = 0.0, guidance_scale: float = 1.0) -> MethodResult:
    """RED-diff estimates [S, B, C, H, W] for observations y [B, ...] (S independent runs per image).

    Args:
        n_steps: Adam steps, one per time on a sub-grid of the prior's T times, descending.
        lr, betas: Adam settings (official 0.1, (0.9, 0.99)).
        grad_term_weight: w in λ_t = w·σ_t/α_t (official 0.25).
        obs_weight: weight of the data term (official 1).
        sigma_x0: std of a jitter added to μ before noising (official 0).
        guidance_scale: classifier-free guidance for class-conditional priors.
    """
    s, b = n_samples, y.shape[0]
    latent = tuple(prior.latent_shape)
    times = spaced_times(prior.num_timesteps, n_steps)
    bar = Progress("RED-diff", progress)
    with torch.no_grad():
        mu0 = operator.pinv(y, tuple(prior.image_shape))
        mu0 = prior.encode(mu0) if prior.is_latent else mu0
    mu = mu0.unsqueeze(0).expand((s,) + tuple(mu0.shape)).clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=betas)
    loss_trace = torch.zeros(len(times), b)
    for i, t in enumerate(times):
        ab = abar(prior, t, mu)
        noise = rng.randn(s, *latent, batch_dim=1).to(mu)
        x0 = mu + sigma_x0 * rng.randn(s, *latent, batch_dim=1).to(mu) if sigma_x0 > 0 else mu
        with torch.no_grad():
            e = prior.eps(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, cond, guidance_scale)
        lam = grad_term_weight * ((1 - ab) / ab).sqrt()
        obs = 0.5 * (y - operator(prior.decode(x0))).flatten(2).square().mean(-1)      # [S, B]
        reg = ((e - noise).detach() * x0).flatten(2).mean(-1)                           # [S, B]
        loss = obs_weight * obs + lam * reg
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()                                     # sum over samples and images, never mean
        opt.step()
        loss_trace[i] = loss.detach().mean(0).cpu()
        bar(i + 1, len(times))
    with torch.no_grad():
        x = prior.decode(mu.detach())
    return finish(x, nfe=len(times), n_backprop=0, traces={"loss": loss_trace})
