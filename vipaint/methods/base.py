"""What every method returns, and the shared calling convention.

Every method is a function
    method(prior, operator, y, *, n_samples, rng, cond=None, progress=None, **options) -> MethodResult
with y of shape [B, ...] (B observations), samples of shape [n_samples, B, C, H, W] in pixel space, and
all randomness drawn from `rng` (one stream per image), so an image's samples do not depend on the
rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from vipaint.progress import Progress

__all__ = ["MethodResult", "Progress", "initial_image"]


@dataclass
class MethodResult:
    """Samples [S, B, C, H, W]; network passes (forward) and backpropagations through the network,
    both counted per batch of S·B (one pass = one ε_θ evaluation per sample); per-image `failed` flags
    with a reason; method-specific traces (e.g. the ELBO curve, [iterations, B]); and the calls of the
    prior's decoder and encoder (`n_decode`, `n_encode`; each call on one batch, of S·B or B images, and
    0 for pixel priors), counted by `vipaint.solve_full` (None when a method is called directly)."""

    samples: Tensor
    nfe: int
    n_backprop: int
    failed: Tensor | None = None
    reasons: list[str] = field(default_factory=list)
    traces: dict[str, Tensor] = field(default_factory=dict)
    n_decode: int | None = None
    n_encode: int | None = None

    def __post_init__(self) -> None:
        if self.failed is None:
            self.failed = torch.zeros(self.samples.shape[1], dtype=torch.bool)
        if not self.reasons:
            self.reasons = [""] * self.samples.shape[1]


def initial_image(operator, y: Tensor, image_shape: tuple[int, int, int], fill: str = "zero"
                  ) -> Tensor:
    """The image q_λ's means start from (docs/algorithm.md §2, y_filled).

    fill "zero": A⁺y, the official choice (inpainting: holes at 0, mid-grey on [−1, 1]).
    fill "observed_mean": A⁺y + (I − A⁺A) c, with c the mean of A⁺y over the observed pixels (weights
    A⁺A 1), per image and channel (inpainting: holes at the mean of the observed pixels; an image with no
    observed pixel gets c = 0). For operators with a trivial null space (blur, SR) both agree up to A⁺'s
    regularisation.
    """
    x = operator.pinv(y, image_shape)
    if fill == "zero":
        return x
    if fill != "observed_mean":
        raise ValueError(f"unknown init_fill {fill!r}; use 'zero' or 'observed_mean'")
    w = operator.pinv(operator(torch.ones_like(x)), image_shape)
    c = (w * x).sum((-2, -1), keepdim=True) / w.sum((-2, -1), keepdim=True).clamp_min(1e-8)
    c = c.expand_as(x)
    return x + c - operator.pinv(operator(c), image_shape)
