"""Per-image random streams derived from (global seed, dataset index, purpose).

Every random draw of a method is taken from a generator owned by one image, so an image's result does
not depend on which other images share its batch, on the batch size, or on the number of GPUs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["derive_seed", "ImageRNG"]


def derive_seed(seed: int, index: int, stream: str = "") -> int:
    """A 63-bit seed from (global seed, dataset index, stream name), hashed so that nearby seeds and
    indices give unrelated streams (seed 0 / index 1 never equals seed 1 / index 0)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class ImageRNG:
    """One `torch.Generator` per image of a batch; draws are stacked along the batch dimension.

    Args:
        seed: global seed.
        indices: dataset index of each image in the batch (length B).
        stream: a name separating independent purposes (mask, observation noise, method noise).
        device: where the drawn tensors are placed (generators live on the CPU, so draws are identical
            on every device).
    """

    def __init__(self, seed: int, indices: Sequence[int] | Tensor, stream: str = "method",
                 device: torch.device | str = "cpu") -> None:
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        self.seed, self.indices, self.stream, self.device = int(seed), idx, stream, torch.device(device)
        self.generators = [torch.Generator().manual_seed(derive_seed(seed, i, stream)) for i in idx]

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, keep: Sequence[int]) -> ImageRNG:
        """The streams of the images at batch positions `keep` (their state is shared, not copied)."""
        out = object.__new__(ImageRNG)
        out.seed, out.stream, out.device = self.seed, self.stream, self.device
        out.indices = [self.indices[k] for k in keep]
        out.generators = [self.generators[k] for k in keep]
        return out

    def randn(self, *shape: int, batch_dim: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal draws of `shape` per image, stacked at `batch_dim` (B inserted there)."""
        draws = [torch.randn(*shape, generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(draws, dim=batch_dim).to(self.device)

    def rand(self, *shape: int, batch_dim: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform [0, 1) draws of `shape` per image, stacked at `batch_dim`."""
        draws = [torch.rand(*shape, generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(draws, dim=batch_dim).to(self.device)

    def randint(self, high: int, *shape: int, batch_dim: int = 0) -> Tensor:
        """Integers in [0, high) of `shape` per image, stacked at `batch_dim`."""
        draws = [torch.randint(high, shape, generator=g) for g in self.generators]
        return torch.stack(draws, dim=batch_dim).to(self.device)
