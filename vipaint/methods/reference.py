"""Reference samplers (`prior`, `exact`) and the small helpers every peer method shares.

- `prior`: unconditional prior samples by DDPM ancestral / DDIM(η) steps; for inpainting the observed
  pixels are pasted from y (M ⊙ y + (1 − M) ⊙ x). A floor that every solver should beat.
- `exact`: draws from the exact posterior of an analytic Gaussian-mixture prior (ALGORITHM.md §8).

Time convention of the peers (guided-diffusion's respacing): `spaced_times(T, n)` gives n network
times T−1 = τ_{n−1} > … > τ_0 = 0 and the step out of τ_0 lands on the clean image (ᾱ = 1, written
t = −1), so n steps cost exactly n network passes (n = T: the full DDPM chain).

Batching: z is [S, B, *latent]; every network call flattens it to [S·B, *latent] (one pass per step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import ddim_mean, ddim_sigma
from vipaint.methods.base import MethodResult, Progress
from vipaint.operators import Inpainting, LinearOperator
from vipaint.priors.analytic import GaussianMixture, GaussianMixturePrior
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["prior_samples", "exact", "spaced_times", "abar", "eps_sb", "decode_sb", "encode_sb",
           "ddim_step", "residual_norm", "finish"]


# -- shared helpers ----------------------------------------------------------------------------------
def spaced_times(num_timesteps: int, n_steps: int | None) -> list[int]:
    """n distinct network times from T−1 down to 0, near-uniform (guided-diffusion `space_timesteps`);
    every time when `n_steps` is None or ≥ T."""
    if n_steps is None or n_steps >= num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    ts = torch.linspace(0, num_timesteps - 1, int(n_steps), dtype=torch.float64).round().long()
    return sorted(set(ts.tolist()), reverse=True)


def abar(prior: Prior, t: int, like: Tensor) -> Tensor:
    """ᾱ_t as a 0-d tensor like `like`; t < 0 is the clean image (ᾱ = 1)."""
    if t < 0:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return prior.alpha_bar(t).to(device=like.device, dtype=like.dtype)


def eps_sb(prior: Prior, z: Tensor, t: int, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
    """ε_θ(z_t, t, c) for z [S, B, *latent] in ONE network call on [S·B, *latent] (cond [B] tiled S×)."""
    s, b = z.shape[:2]
    flat = z.reshape((s * b,) + tuple(z.shape[2:]))
    tt = torch.full((s * b,), int(t), device=z.device, dtype=torch.long)
    c = cond.repeat(s, *([1] * (cond.dim() - 1))) if cond is not None else None
    return prior.eps(flat, tt, c, guidance_scale).reshape(z.shape)


def decode_sb(prior: Prior, z: Tensor) -> Tensor:
    """D(z) for z [S, B, *latent] → [S, B, *image] (identity for pixel priors)."""
    if not prior.is_latent:
        return z
    s, b = z.shape[:2]
    x = prior.decode(z.reshape((s * b,) + tuple(z.shape[2:])))
    return x.reshape((s, b) + tuple(x.shape[1:]))


def encode_sb(prior: Prior, x: Tensor) -> Tensor:
    """E(x) for x [S, B, *image] → [S, B, *latent] (identity for pixel priors)."""
    if not prior.is_latent:
        return x
    s, b = x.shape[:2]
    z = prior.encode(x.reshape((s * b,) + tuple(x.shape[2:])))
    return z.reshape((s, b) + tuple(z.shape[1:]))


def ddim_step(x0: Tensor, eps: Tensor, ab_t: Tensor, ab_prev: Tensor, eta: float,
              noise: Tensor | None) -> Tensor:
    """DDIM(η) step α_s x̂0 + √(1−ᾱ_s−σ²) ε̂ + σ ξ (ALGORITHM.md §2/§4); η = 1 is the DDPM ancestral
    step (same mean and variance as q(z_s | z_t, x̂0)); into ᾱ_s = 1 it returns x̂0."""
    sig = ddim_sigma(ab_t, ab_prev, eta)
    z = ddim_mean(x0, eps, ab_prev, sig)
    return z + sig * noise if noise is not None else z


def residual_norm(r: Tensor) -> Tensor:
    """Unsquared ℓ2 norm per sample and image of a residual [S, B, ...] → [S, B] (never over the batch:
    PEERS.md §2 DPS pitfall), with a safe gradient at 0."""
    return r.flatten(2).square().sum(-1).clamp_min(1e-20).sqrt()


def finish(samples: Tensor, nfe: int, n_backprop: int, traces: dict[str, Tensor] | None = None) -> MethodResult:
    """Wrap samples [S, B, C, H, W] in a `MethodResult`, flagging images with non-finite samples."""
    samples = samples.detach()
    bad = ~torch.isfinite(samples).flatten(2).all(-1).all(0).cpu()
    reasons = ["non-finite samples" if f else "" for f in bad.tolist()]
    return MethodResult(samples=samples, nfe=nfe, n_backprop=n_backprop, failed=bad, reasons=reasons,
                        traces=traces or {})


# -- methods -----------------------------------------------------------------------------------------
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
        for i, t in enumerate(times):
            t_prev = times[i + 1] if i + 1 < len(times) else -1
            ab_t, ab_prev = abar(prior, t, z), abar(prior, t_prev, z)
            e = eps_sb(prior, z, t, cond, guidance_scale)
            x0 = (z - (1 - ab_t).sqrt() * e) / ab_t.sqrt()
            noise = rng.randn(s, *prior.latent_shape, batch_dim=1).to(z) if t_prev >= 0 and eta > 0 else None
            z = ddim_step(x0, e, ab_t, ab_prev, eta, noise)
            bar(i + 1, len(times))
        x = decode_sb(prior, z)
    if paste and isinstance(operator, Inpainting):
        x = operator.paste(x, y)
    assert x.shape[:2] == (s, b)
    return finish(x, nfe=len(times), n_backprop=0)


def exact(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
          cond: Tensor | None = None, progress: bool = False) -> MethodResult:
    """Exact posterior samples p(x | y) of an analytic Gaussian-mixture prior (ALGORITHM.md §8), image b
    drawn with its own generator `rng.generators[b]`. No network passes."""
    if not isinstance(prior, GaussianMixturePrior):
        raise TypeError(f"method 'exact' needs an analytic prior (GaussianMixturePrior, GaussianPrior, "
                        f"SyntheticMixturePrior); got {type(prior).__name__}, whose posterior is not "
                        f"available in closed form")
    post = prior.exact_posterior(operator, y)
    b = y.shape[0]
    if post.covs.shape[0] != b:        # a batch-free operator (SR, blur) gives one shared covariance
        post = GaussianMixture(post.weights.expand(b, -1), post.means.expand(b, -1, -1),
                               post.covs.expand(b, -1, -1, -1))
    x = post.sample(n_samples, rng.generators)                       # [S, B, D] float64
    x = x.to(device=y.device, dtype=y.dtype).reshape((n_samples, y.shape[0]) + tuple(prior.image_shape))
    return finish(x, nfe=0, n_backprop=0)
