"""Noise schedules ᾱ_t for analytic priors (diffusers priors read theirs from the scheduler config)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["make_alphas_cumprod"]


def make_alphas_cumprod(num_timesteps: int = 1000, beta_schedule: str = "linear",
                        beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """ᾱ_t = ∏_{i≤t}(1−β_i) (docs/algorithm.md §1) for "linear" (DDPM) or "scaled_linear" (CompVis
    "linear": linear in √β) betas; float64."""
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use 'linear' or 'scaled_linear'")
    return torch.cumprod(1.0 - betas, dim=0)
