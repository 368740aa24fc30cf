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

__all__ = ["MethodResult", "Progress", "initial_image"]


@dataclass
class MethodResult:
    """Samples [S, B, C, H, W]; network passes (forward) and backpropagations through the network,
    both counted per batch of S·B (one pass = one ε_θ evaluation per sample); per-image `failed` flags
    with a reason; and method-specific traces (e.g. the ELBO curve, [iterations, B])."""

    samples: Tensor
    nfe: int
    n_backprop: int
    failed: Tensor | None = None
    reasons: list[str] = field(default_factory=list)
    traces: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.failed is None:
            self.failed = torch.zeros(self.samples.shape[1], dtype=torch.bool)
        if not self.reasons:
            self.reasons = [""] * self.samples.shape[1]


class Progress:
    """A callback `progress(done, total)` for a stage; wraps tqdm when enabled."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        import sys

        self.desc, self.bar = desc, None
        self.enabled = enabled and sys.stderr.isatty()   # no bar spam in logs and CI

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None


def initial_image(operator, y: Tensor, image_shape: tuple[int, int, int]) -> Tensor:  # noqa: ANN001
    """A⁺y: the observation mapped back to image space (inpainting: holes at 0)."""
    return operator.pinv(y, image_shape)
