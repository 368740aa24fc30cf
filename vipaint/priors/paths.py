"""Gaussian paths x_t = α_t x0 + σ_t ε beyond VP (docs/algorithm.md §11): the rectified-flow grid of diffusers'
`FlowMatchEulerDiscreteScheduler`, the VP-equivalent schedule every method runs on, and the conversion of a
network output (ε, x0, v or a flow velocity) into ε and x̂0.

Every Gaussian path is a VP path after rescaling: with s_t = √(α_t² + σ_t²), z = x_t / s_t has
z = √ᾱ'_t x0 + √(1−ᾱ'_t) ε with ᾱ'_t = α_t²/s_t² and the SAME ε (docs/algorithm.md §11.1). A prior on any path
therefore stores ᾱ' as its `alphas_cumprod`, receives VP coordinates z, and feeds x = s_t z to its network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PATHS", "OUTPUT_TYPES", "FLOW_ABAR_FLOOR", "flow_sigmas", "cap_flow_sigmas", "vp_equivalent_abar",
           "path_scale", "eps_x0_from_output", "rf_noise_level", "shift_from_mu", "flow_schedule"]

#: the supported paths: "vp" (discrete ᾱ, α = √ᾱ, σ = √(1−ᾱ)) and "flow" (rectified flow, α = 1 − σ)
PATHS = ("vp", "flow")
#: network output types `eps_x0_from_output` converts (diffusers' `prediction_type` names + the flow velocity)
OUTPUT_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
#: the smallest VP-equivalent ᾱ' a flow grid keeps at its noisy end (docs/algorithm.md §11.2): σ = 1 has ᾱ' = 0,
#: and the methods divide by √ᾱ'. 1e-4 caps σ at 1/(1 + √(1e-4/(1−1e-4))) ≈ 0.9901.
FLOW_ABAR_FLOOR = 1e-4


def flow_sigmas(num_train_timesteps: int = 1000, shift: float = 1.0) -> Tensor:
    """The training sigmas of diffusers' `FlowMatchEulerDiscreteScheduler` in ascending time order
    (docs/algorithm.md §11.2): σ_t = s u/(1 + (s−1) u) with u = (t+1)/N, t = 0..N−1 (the scheduler stores the same
    values in descending order, computed in float32); σ_{N−1} = 1. float64 [N]."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return shift * u / (1.0 + (shift - 1.0) * u)


def cap_flow_sigmas(sigmas: Tensor, abar_floor: float = FLOW_ABAR_FLOOR) -> Tensor:
    """σ clamped to σ_cap = 1/(1 + √(f/(1−f))), the rectified-flow σ whose VP-equivalent ᾱ' is the floor f
    (docs/algorithm.md §11.2), so that no time has ᾱ' = 0. Times above the cap share its noise level."""
    if not 0 < abar_floor < 1:
        raise ValueError(f"abar_floor must lie in (0, 1), got {abar_floor}")
    cap = 1.0 / (1.0 + math.sqrt(abar_floor / (1.0 - abar_floor)))
    return sigmas.clamp(max=cap)


def shift_from_mu(mu: float, time_shift_type: str = "exponential") -> float:
    """The fixed shift s equivalent to diffusers' dynamic shifting at a given μ (docs/algorithm.md §11.2):
    exponential: e^μ/(e^μ + 1/u − 1) = s u/(1 + (s−1)u) with s = e^μ; linear: s = μ."""
    if time_shift_type == "exponential":
        return math.exp(mu)
    if time_shift_type == "linear":
        return float(mu)
    raise ValueError(f"unknown time_shift_type {time_shift_type!r}; use 'exponential' or 'linear'")


def vp_equivalent_abar(alpha: Tensor, sigma: Tensor) -> Tensor:
    """ᾱ' = α²/(α² + σ²), the VP schedule of the rescaled path x/√(α²+σ²) (docs/algorithm.md §11.1)."""
    return alpha ** 2 / (alpha ** 2 + sigma ** 2)


def path_scale(alpha: Tensor, sigma: Tensor) -> Tensor:
    """s = √(α² + σ²): a path state is x_t = s z_t with z_t the VP-equivalent state (docs/algorithm.md §11.1);
    s = 1 on a VP path."""
    return (alpha ** 2 + sigma ** 2).sqrt()


def rf_noise_level(alpha: Tensor, sigma: Tensor) -> Tensor:
    """The path-invariant noise level σ/(α + σ) ∈ [0, 1]: the rectified-flow σ with the same signal-to-noise
    ratio α/σ (docs/algorithm.md §11.4). It equals σ on a rectified-flow path."""
    return sigma / (alpha + sigma)


def eps_x0_from_output(out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str
                       ) -> tuple[Tensor, Tensor]:
    """(ε, x̂0) from a network output at the path state x = α x0 + σ ε (docs/algorithm.md §11.3); `alpha`, `sigma`
    broadcast against `x`.

    - "epsilon": ε = out, x̂0 = (x − σ ε)/α.
    - "sample": x̂0 = out, ε = (x − α x̂0)/σ.
    - "v_prediction": v = α ε − σ x0 (Salimans & Ho 2022, eq. 20 for α² + σ² = 1), so
      x̂0 = (α x − σ v)/(α² + σ²), ε = (σ x + α v)/(α² + σ²).
    - "flow_prediction": the velocity u = dx/dσ = α' x0 + σ' ε of a path with α' = −1, σ' = 1, i.e. u = ε − x0 for
      rectified flow (Liu et al. 2023; Esser et al. 2024, eq. 2), so x̂0 = (x − σ u)/(α + σ), ε = (x + α u)/(α + σ)
      (x̂0 = x − σ u and ε = x + (1−σ) u when α = 1 − σ).
    """
    if prediction_type == "epsilon":
        return out, (x - sigma * out) / alpha
    if prediction_type == "sample":
        return (x - alpha * out) / sigma, out
    if prediction_type == "v_prediction":
        n2 = alpha ** 2 + sigma ** 2
        return (sigma * x + alpha * out) / n2, (alpha * x - sigma * out) / n2
    if prediction_type == "flow_prediction":
        n1 = alpha + sigma
        return (x + alpha * out) / n1, (x - sigma * out) / n1
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use one of {OUTPUT_TYPES}")


def flow_schedule(config: dict, shift: float | None = None, abar_floor: float = FLOW_ABAR_FLOOR
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(α, σ, model times) of a `FlowMatchEulerDiscreteScheduler` config (docs/algorithm.md §11.2): σ = the capped
    training sigmas with the config's `shift` (or `shift` given here, which overrides it), α = 1 − σ, and the
    network's timestep value σ·N. A config with `use_dynamic_shifting` fixes no grid: it needs `shift`."""
    n = int(config.get("num_train_timesteps", 1000))
    if shift is None:
        if config.get("use_dynamic_shifting", False):
            raise ValueError(
                "this FlowMatchEulerDiscreteScheduler uses dynamic (resolution-dependent) shifting, so its noise grid "
                "is not fixed by the config; pass a fixed flow_shift (for diffusers' mu: flow_shift = "
                "vipaint.priors.paths.shift_from_mu(mu, time_shift_type))")
        shift = float(config.get("shift", 1.0))
    sigmas = cap_flow_sigmas(flow_sigmas(n, shift), abar_floor)
    return 1.0 - sigmas, sigmas, sigmas * n
