"""The mask contract and its checks: `MaskGenerator` (float32 [1, H, W], 1 = observed, 0 = hole), `check_mask`
for user-supplied masks, `hole_ratio`."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

__all__ = ["MaskGenerator", "hole_ratio", "check_mask"]


class MaskGenerator(ABC):
    """Base class: `gen(index=i, seed=s, size=(H, W))` → float32 [1, H, W] in {0, 1}, 1 = observed.

    Subclasses implement `_generate(index, seed, height, width)` returning a boolean or {0, 1} array
    or tensor of shape [H, W] with True/1 = observed; `__call__` validates and converts it.
    """

    name: str = "mask"

    def __call__(self, *, index: int, seed: int, size: tuple[int, int]) -> Tensor:
        """The mask of dataset item `index` under global seed `seed`.

        Args:
            index: dataset index (selects the random stream, or the file for `FileMask`).
            seed: global experiment seed.
            size: (H, W) of the image.

        Returns:
            float32 tensor [1, H, W] with values in {0., 1.}; 1 = observed pixel, 0 = hole.
        """
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"{type(self).__name__}: size must be (H, W) with positive ints, got {size!r}")
        h, w = int(size[0]), int(size[1])
        out = self._generate(int(index), int(seed), h, w)
        out = out if isinstance(out, Tensor) else torch.from_numpy(np.ascontiguousarray(out))
        return (out != 0).to(torch.float32).reshape(1, h, w)

    @abstractmethod
    def _generate(self, index: int, seed: int, height: int, width: int) -> np.ndarray | Tensor:
        """[H, W] array, True/1 = observed."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def hole_ratio(mask: Tensor) -> float:
    """Fraction of hole (0) pixels of a {0, 1} mask of any shape (1 = observed)."""
    return 1.0 - float(mask.to(torch.float64).mean())


def check_mask(mask: Tensor, *, where: str) -> Tensor:
    """Validate a user-supplied mask and return it as float32 {0, 1} of shape [1, H, W].

    Args:
        mask: [1, H, W] or [H, W] tensor (bool or numeric) with 1 = observed, 0 = hole.
        where: where the mask came from, used in error messages (e.g. "dataset index 7 (file
            masks/007.png)").

    Raises:
        ValueError: wrong shape, values other than 0/1, nothing observed, or no hole.
    """
    if not isinstance(mask, Tensor):
        raise ValueError(f"{where}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2 or mask.numel() == 0:
        raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}; expected [1, H, W] or [H, W] "
                         "(one channel shared by all image channels)")
    m = mask.detach().to(torch.float32)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{where}: mask is not binary (values other than 0 and 1, e.g. "
                         f"{m[(m != 0) & (m != 1)][:3].tolist()}); threshold it (mask > 0.5) or map 0/255 to 0/1")
    if not bool(m.any()):
        raise ValueError(f"{where}: mask has no observed pixel (all 0 = hole); 1 marks observed pixels — "
                         "if your file uses white = hole, invert it (FileMask(invert=True))")
    if bool(m.all()):
        raise ValueError(f"{where}: mask has no hole (all 1 = observed), so there is nothing to inpaint; "
                         "0 marks holes — if your file uses white = hole, invert it (FileMask(invert=True))")
    return m.unsqueeze(0).contiguous()
