"""Samples quantised to uint8, small enough to commit: `samples_u8/<index>.npz` beside a run's float
`samples/<index>.npz` (`vipaint.writer.PredictionWriter(save_u8=True)`).

Each file holds the composites [S, C, H, W], the ground truth [C, H, W] and the mask [1, H, W] of one
observation; images in [−1, 1] are stored as round((x + 1) / 2 · 255), so a rebuilt image is within 1/255
of the float one (half a quantisation step in [0, 1] units). 300 observations × 4 composites of 32² grey
pixels are ≈ 1.2 MB before compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["U8_KEYS", "dequantise", "load_u8", "quantise", "save_u8"]

U8_KEYS = ("composite", "image", "mask")


def quantise(x: Tensor) -> np.ndarray:
    """Images in [−1, 1] (values outside are clipped) as uint8 0…255."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def dequantise(a: np.ndarray) -> Tensor:
    """uint8 0…255 back to float32 images in [−1, 1]."""
    return torch.from_numpy(a.astype(np.float32) / 127.5 - 1)


def save_u8(path: Path, composite: Tensor, image: Tensor, mask: Tensor) -> None:
    """Write one observation's composites, ground truth and {0, 1} mask to `path` (an open-able path)."""
    with open(path, "wb") as f:
        np.savez_compressed(f, composite=quantise(composite), image=quantise(image),
                            mask=(mask.detach().cpu() > 0.5).to(torch.uint8).numpy())


def load_u8(path: Path) -> dict[str, Tensor]:
    """{"composite", "samples" (the composites), "image", "mask"} of a `save_u8` file, as float tensors."""
    with np.load(path) as z:
        comp = dequantise(z["composite"])
        return {"composite": comp, "samples": comp, "image": dequantise(z["image"]),
                "mask": torch.from_numpy(z["mask"].astype(np.float32))}
