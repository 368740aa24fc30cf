"""Likelihood energies ℓ(x̂; y) = −log p(y | x̂) up to a constant (docs/algorithm.md §1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vipaint.operators import LinearOperator

__all__ = ["Likelihood"]


def _has(extra_var: float | Tensor) -> bool:
    """Whether an extra variance is given (a tensor always counts; a float when non-zero)."""
    return isinstance(extra_var, Tensor) or extra_var != 0


@dataclass
class Likelihood:
    """Per-image data energy on x̂ of shape (..., B, C, H, W), returned with shape (..., B).

    Args:
        kind: "gaussian" — ‖A(x̂) − y‖²/(2 scale²), scale defaulting to the operator's σ_y;
            "laplace" — ‖A(x̂) − y‖₁/scale (official VIPaint: scale b = 0.01, i.e. 100·L1);
            "l2norm" — the unsquared ‖A(x̂) − y‖₂ / scale (DPS's guidance energy).
        scale: σ for "gaussian", b for "laplace" (None: σ_y of the operator, or 1 for "l2norm").
        reduction: "mean" averages over the measurement's elements (the official code's
            normalisation), "sum" sums (nats, for exact-posterior checks).
    """

    kind: str = "laplace"
    scale: float | None = 0.01
    reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "laplace", "l2norm"):
            raise ValueError(f"likelihood kind must be gaussian, laplace or l2norm, got {self.kind!r}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"likelihood reduction must be 'mean' or 'sum', got {self.reduction!r}")

    def _scale(self, operator: LinearOperator, extra_var: float | Tensor = 0.0) -> float:
        if self.scale is not None:
            return float(self.scale)
        if self.kind == "l2norm":
            return 1.0
        if operator.sigma_y <= 0 and self.kind == "gaussian" and _has(extra_var):
            return 0.0                      # σ_y = 0: the variance is r_t² alone (docs/algorithm.md §3c)
        if operator.sigma_y <= 0:
            raise ValueError("a likelihood without an explicit scale needs an operator with sigma_y > 0")
        return operator.sigma_y

    def noise_variance(self, operator: LinearOperator) -> float:
        """s² of the likelihood's own noise (σ_y² by default; 0 allowed for a Gaussian with σ_y = 0, whose
        variance is then the prior's alone; docs/algorithm.md §4, eq. 4.3)."""
        return self._scale(operator, 1.0) ** 2

    def __call__(self, x_hat: Tensor, y: Tensor, operator: LinearOperator, extra_var: float | Tensor = 0.0
                 ) -> Tensor:
        """ℓ per image; `extra_var` (gaussian only; a float or a per-image tensor [B]) adds r_t² to the
        variance: N(y; A x̂, s² + r_t²) (the variance-aware likelihood, docs/algorithm.md §3c, eq. 3.8)."""
        r = operator(x_hat) - y
        dims = tuple(range(r.dim() - (y.dim() - 1), r.dim()))  # the measurement's own dims
        s = self._scale(operator, extra_var)
        if _has(extra_var) and self.kind != "gaussian":
            raise ValueError("a variance-aware likelihood (extra_var > 0) needs kind='gaussian'")
        if self.kind == "gaussian" and _has(extra_var):
            e = (r ** 2).sum(dims) / (2 * (s ** 2 + extra_var))
        elif self.kind == "gaussian":
            e = (r ** 2).sum(dims) / (2 * s ** 2)
        elif self.kind == "laplace":
            e = r.abs().sum(dims) / s
        else:
            e = (r ** 2).sum(dims).clamp_min(1e-20).sqrt() / s
        if self.reduction == "mean":
            e = e / math.prod(y.shape[1:])
        return e

    def constant(self, y: Tensor, operator: LinearOperator, extra_var: float | Tensor = 0.0) -> float | Tensor:
        """The normalising constant per image (nats) that `__call__` leaves out (reduction='sum'); a
        tensor [B] when `extra_var` is one."""
        p, s = math.prod(y.shape[1:]), self._scale(operator, extra_var)
        if self.kind == "gaussian" and isinstance(extra_var, Tensor):
            return 0.5 * p * torch.log(2 * math.pi * (s ** 2 + extra_var))
        if self.kind == "gaussian":
            return 0.5 * p * math.log(2 * math.pi * (s ** 2 + extra_var))
        if self.kind == "laplace":
            return p * math.log(2 * s)
        return float("nan")

