"""Pure diffusion maths (docs/algorithm.md §1–§4). Each function cites the equation it implements.

Conventions: ᾱ values are tensors broadcastable against the latent tensors; α = √ᾱ, σ = √(1−ᾱ).
No function here decides about gradients or draws random numbers: noise is passed in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "tweedie_x0", "eps_from_x0", "ddim_sigma", "ddim_mean", "ddim_step", "ddpm_posterior", "bridge_posterior",
    "gaussian_kl", "gaussian_nll", "edm_time_grid", "bcast", "x0_variance",
]


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """Append singleton dims to a per-sample vector `v` so it broadcasts against `like`."""
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


def tweedie_x0(z_t: Tensor, eps: Tensor, abar_t: Tensor) -> Tensor:
    """One-step (Tweedie) estimate x̂0 = (z_t − σ_t ε̂)/α_t (docs/algorithm.md §1)."""
    return (z_t - (1.0 - abar_t).sqrt() * eps) / abar_t.sqrt()


def x0_variance(abar_t: Tensor | float, data_variance: Tensor | float) -> Tensor | float:
    """r_t² = v σ_t² / (ᾱ_t v + σ_t²), the variance of x0 given z_t under a Gaussian prior N(m, v I)
    (docs/algorithm.md §3c, eq. 3.8; ΠGDM's r_t²). It tends to v as t → T and to σ_t²/ᾱ_t → 0 as t → 0."""
    return data_variance * (1.0 - abar_t) / (abar_t * data_variance + (1.0 - abar_t))


def eps_from_x0(z_t: Tensor, x0: Tensor, abar_t: Tensor) -> Tensor:
    """Inverse of `tweedie_x0`: ε = (z_t − α_t x0)/σ_t (docs/algorithm.md §1, model-output conversion)."""
    return (z_t - abar_t.sqrt() * x0) / (1.0 - abar_t).sqrt()


def ddim_sigma(abar_t: Tensor, abar_prev: Tensor, eta: float | Tensor) -> Tensor:
    """DDIM(η) std between t and an earlier time s (docs/algorithm.md §2, s_{k+1}):
    η·√((1−ᾱ_s)/(1−ᾱ_t) · (1−ᾱ_t/ᾱ_s)). η = 1 gives the DDPM posterior std."""
    return eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).clamp_min(0.0).sqrt()


def ddim_mean(x0: Tensor, eps: Tensor, abar_prev: Tensor, sigma: Tensor) -> Tensor:
    """DDIM mean m_θ = α_s x̂0 + √(1−ᾱ_s−s²) ε̂ (docs/algorithm.md §2 transitions, §4 refinement)."""
    return abar_prev.sqrt() * x0 + (1.0 - abar_prev - sigma ** 2).clamp_min(0.0).sqrt() * eps


def ddim_step(x0: Tensor, eps: Tensor, abar_t: Tensor, abar_prev: Tensor, eta: float | Tensor,
              noise: Tensor | None) -> Tensor:
    """DDIM(η) step z_s = α_s x̂0 + √(1−ᾱ_s−s²) ε̂ + s ξ, s = `ddim_sigma` (docs/algorithm.md §2 transitions,
    §4 refinement); η = 1 is the DDPM ancestral step (same mean and variance as q(z_s | z_t, x̂0)); into
    ᾱ_s = 1 it returns x̂0. Without `noise` (ξ) it returns the mean."""
    sig = ddim_sigma(abar_t, abar_prev, eta)
    z = ddim_mean(x0, eps, abar_prev, sig)
    return z + sig * noise if noise is not None else z


def ddpm_posterior(x0: Tensor, z_t: Tensor, abar_t: Tensor, abar_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(z_s | z_t, x0) for s < t (docs/algorithm.md §3a, the p-side kernel
    p_θ(z_s|z_t) = q(z_s | z_t, x̂0(z_t)))."""
    a_ts = abar_t / abar_s                                   # ᾱ_{t|s}
    var = (1.0 - abar_s) * (1.0 - a_ts) / (1.0 - abar_t)
    mean = (abar_s.sqrt() * (1.0 - a_ts) * x0 + a_ts.sqrt() * (1.0 - abar_s) * z_t) / (1.0 - abar_t)
    return mean, var


def bridge_posterior(z_e: Tensor, z_t: Tensor, abar_e: Tensor, abar_s: Tensor, abar_t: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """q-bridge q(z_s | z_t, z_e) for e ≤ s < t, with z_e playing the data (docs/algorithm.md §3a).

    The forward process started at z_e has cumulative coefficients ᾱ_{·|e} = ᾱ_·/ᾱ_e, so this is
    `ddpm_posterior` on the relative schedule."""
    return ddpm_posterior(z_e, z_t, abar_t / abar_e, abar_s / abar_e)


def gaussian_kl(m_q: Tensor, v_q: Tensor, m_p: Tensor, v_p: Tensor) -> Tensor:
    """Element-wise KL(N(m_q, v_q) ‖ N(m_p, v_p)) = ½[(v_q + (m_q−m_p)²)/v_p − 1 − log(v_q/v_p)]
    (docs/algorithm.md §3b, the true diagonal Gaussian KL)."""
    return 0.5 * ((v_q + (m_q - m_p) ** 2) / v_p - 1.0 - torch.log(v_q / v_p))


def gaussian_nll(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Element-wise −log N(x; mean, var) (docs/algorithm.md §3a, the reconstruction step of the bound)."""
    return 0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


def edm_time_grid(alphas_cumprod: Tensor, start: int, n: int = 1000, rho: float = 7.0,
                  sigma_min: float = 0.002, sigma_max: float = 80.0) -> Tensor:
    """Coarse grid G of discrete times for the prior loss (docs/algorithm.md §3a): an EDM ρ-schedule of n
    noise levels mapped to the nearest discrete VP time, deduplicated, restricted to times above
    `start`, with `start` prepended and the last time T−1 appended. Returns ascending long times."""
    if not 0 <= start < len(alphas_cumprod) - 1:
        raise ValueError(f"the prior-loss grid needs 0 <= T_e < T-1 = {len(alphas_cumprod) - 1}, got T_e = {start}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    abar = alphas_cumprod.double().cpu()
    vp_sigma = ((1 - abar) / abar).sqrt()
    t = (vp_sigma[None, :] - sig[:, None]).abs().argmin(dim=1)
    t = torch.unique(t)
    last = len(abar) - 1
    t = t[(t > start) & (t < last)]
    return torch.cat([torch.tensor([start]), t, torch.tensor([last])]).long()
