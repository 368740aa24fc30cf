"""Samples quantised to uint8, small enough to commit: `samples_u8/<index>.npz` beside a run's float
`samples/<index>.npz` (`vipaint.writer.PredictionWriter(save_u8=True)`).

Each file holds the composites [S, C, H, W], the ground truth [C, H, W] and the mask [1, H, W] of one
observation, with the range [lo, hi] they are quantised over: [−1, 1] widened to the values present (an
analytic prior's images may leave [−1, 1]). Images in [−1, 1] are stored as round((x + 1) / 2 · 255), so a
rebuilt image is within 1/255 of the float one (half a quantisation step in [0, 1] units). 300
observations × 4 composites of 32² grey pixels are ≈ 1.2 MB before compression.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["U8_KEYS", "dequantise", "load_records", "load_u8", "quantise", "save_u8"]

U8_KEYS = ("composite", "image", "mask")


def quantise(x: Tensor, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Images in [lo, hi] (values outside are clipped) as uint8 0…255."""
    x = x.detach().float().cpu().clamp(lo, hi)
    return ((x - lo) * (255 / (hi - lo))).round().to(torch.uint8).numpy()


def dequantise(a: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> Tensor:
    """uint8 0…255 back to float32 images in [lo, hi]."""
    return torch.from_numpy(a.astype(np.float32) * np.float32((hi - lo) / 255) + np.float32(lo))


def save_u8(path: Path, composite: Tensor, image: Tensor, mask: Tensor) -> None:
    """Write one observation's composites, ground truth and {0, 1} mask to `path` (an open-able path)."""
    lo = min(-1.0, float(composite.min()), float(image.min()))
    hi = max(1.0, float(composite.max()), float(image.max()))
    with open(path, "wb") as f:
        np.savez_compressed(f, composite=quantise(composite, lo, hi), image=quantise(image, lo, hi),
                            mask=(mask.detach().cpu() > 0.5).to(torch.uint8).numpy(),
                            range=np.array([lo, hi], dtype=np.float64))


def load_u8(path: Path) -> dict[str, Tensor]:
    """{"composite", "samples" (the composites), "image", "mask"} of a `save_u8` file, as float tensors, and
    "u8_step", its quantisation step (the file's range covers its own composites)."""
    with np.load(path) as z:
        lo, hi = (float(v) for v in z["range"]) if "range" in z else (-1.0, 1.0)
        comp = dequantise(z["composite"], lo, hi)
        return {"composite": comp, "samples": comp, "image": dequantise(z["image"], lo, hi),
                "mask": torch.from_numpy(z["mask"].astype(np.float32)), "u8_step": (hi - lo) / 255}


def load_records(method_dir: Path, require_u8: bool = False) -> dict[int, dict]:
    """Per dataset index of a run folder: {"index", "mask_name", "meta" (its `metrics/<index>.json`)} and,
    when `samples_u8/<index>.npz` is committed, the entries of `load_u8`. With `require_u8`, indices without
    a uint8 file are left out (the FID bootstrap needs the images; the leaderboard reports them anyway)."""
    out = {}
    for f in sorted((Path(method_dir) / "metrics").glob("*.json")):
        u8 = Path(method_dir) / "samples_u8" / f"{f.stem}.npz"
        if require_u8 and not u8.is_file():
            continue
        meta = json.loads(f.read_text())
        out[int(f.stem)] = {"index": int(f.stem), "mask_name": meta["mask"], "meta": meta,
                            **(load_u8(u8) if u8.is_file() else {})}
    return out
