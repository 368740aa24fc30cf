"""Inpainting masks (docs/algorithm.md §6): generators for the paper's protocols plus user mask files.

Convention everywhere in the project: a mask is a float32 tensor [1, H, W] with values in {0., 1.};
**1 = observed pixel, 0 = hole** (the region to inpaint). Generators are plain picklable classes with
simple typed keyword-only arguments, so they can be built from LightningCLI YAML
(`class_path: vipaint.masks.BoxMask`, `init_args: {size: 0.5}`) or by name with `mask_from_name`.

Every random mask is drawn from its own stream `derive_seed(seed, index, "mask")`, so it depends only
on (global seed, dataset index, size), never on batch composition, rank or global RNG state. Sizes
are fractions of the image side and pixel widths are given at 256² and scaled by H/256 (minimum 1 px),
so every generator works at any resolution.
"""

from __future__ import annotations

from vipaint.masks.base import MaskGenerator, check_mask, hole_ratio
from vipaint.masks.files import FileMask
from vipaint.masks.generators import BoxMask, FreeFormMask, HalfPlaneMask, LineMask, RandomPixelMask

__all__ = ["MaskGenerator", "BoxMask", "HalfPlaneMask", "FreeFormMask", "LineMask", "RandomPixelMask",
           "FileMask", "MASKS", "mask_from_name", "hole_ratio", "check_mask"]

MASKS: dict[str, type[MaskGenerator]] = {
    "box": BoxMask, "half": HalfPlaneMask, "freeform": FreeFormMask,
    "line": LineMask, "random": RandomPixelMask, "file": FileMask,
}


def mask_from_name(name: str, **kwargs: object) -> MaskGenerator:
    """Build a mask generator by short name: one of `MASKS` ("box", "half", "freeform", "line",
    "random" = i.i.d. pixels, "file"); `kwargs` are the class's constructor arguments."""
    try:
        cls = MASKS[name]
    except KeyError:
        raise ValueError(f"unknown mask type {name!r}; choose one of {sorted(MASKS)} "
                         "(the paper's 'Random' masks are 'freeform')") from None
    return cls(**kwargs)
