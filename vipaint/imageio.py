"""Reading image files without silent changes of geometry or range.

* `open_image`: the pixel count is checked from the file's header before decoding (`max_pixels`, env
  `VIPAINT_MAX_PIXELS`), so a small file of huge dimensions is refused with a clear message instead of
  filling the memory.
* `high_depth_as_float`: 16-bit and 32-bit grey images (I;16, I) as floats in [0, 1], divided by 65535
  (PIL's conversion to "L" would clip them at 255).
* `read_image` / `load_image`: an image file as a tensor [C, H, W] in [−1, 1], fitted to a square size.
* `crop_box` / `fit_mask`: one resize policy ("none", "crop", "stretch") applied identically to an image
  and to its mask.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["DEFAULT_MAX_PIXELS", "RESIZE_POLICIES", "ImageTooLargeError", "max_pixels", "open_image",
           "crop_box", "fit_mask", "fit_mask_to_image", "is_high_depth", "high_depth_as_float", "check_pixels",
           "read_image", "load_image"]

DEFAULT_MAX_PIXELS = 8192 * 8192
RESIZE_POLICIES = ("none", "crop", "stretch")
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageTooLargeError(ValueError):
    """An image or array file has more pixels than `max_pixels()` (checked before decoding)."""


def max_pixels() -> int:
    """The largest width × height accepted (env VIPAINT_MAX_PIXELS, default 8192²)."""
    raw = os.environ.get("VIPAINT_MAX_PIXELS")
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"VIPAINT_MAX_PIXELS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"VIPAINT_MAX_PIXELS must be a positive integer, got {raw!r}")
    return value


def check_pixels(width: int, height: int, *, where: str) -> None:
    """Raise if width × height exceeds `max_pixels()`."""
    limit = max_pixels()
    if width * height > limit:
        raise ImageTooLargeError(f"{where}: the image is {width}×{height} = {width * height} pixels, more than the "
                                 f"limit of {limit} pixels; shrink the file, or raise the limit with "
                                 "VIPAINT_MAX_PIXELS")


def open_image(source: str | os.PathLike | bytes | BinaryIO | Image.Image, *, where: str) -> Image.Image:
    """Open and decode an image after checking its size from the header; errors name `where`."""
    if isinstance(source, Image.Image):
        check_pixels(*source.size, where=where)
        return source
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():   # PIL's DecompressionBombWarning: `check_pixels` decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError as err:
        raise ValueError(f"{where}: the image is too large to decode safely ({err}); shrink the file") from err
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{where}: cannot read the image ({err}); replace or remove the file") from err
    check_pixels(*img.size, where=where)
    try:
        img.load()
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{where}: cannot read the image ({err}); replace or remove the file") from err
    return img


def is_high_depth(img: Image.Image) -> bool:
    """16-bit or 32-bit single-channel modes, which PIL's conversions to "L"/"RGB" would clip."""
    return img.mode in _HIGH_DEPTH


def high_depth_as_float(img: Image.Image, *, where: str) -> Image.Image:
    """A 16-/32-bit grey image as mode "F" holding values in [0, 1] (16-bit: divided by 65535; "F": kept)."""
    arr = np.asarray(img.convert("F") if img.mode != "F" else img, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: the image contains NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode == "F":
        if lo < 0 or hi > 1:
            raise ValueError(f"{where}: a floating-point image must hold values in [0, 1], got [{lo:g}, {hi:g}]")
        return Image.fromarray(arr, mode="F")
    if lo < 0 or hi > 65535:
        raise ValueError(f"{where}: a {img.mode} image must hold values in [0, 65535], got [{lo:g}, {hi:g}]")
    return Image.fromarray(arr / np.float32(65535.0), mode="F")


def crop_box(width: int, height: int, target: tuple[int, int], policy: str, *, where: str
             ) -> tuple[int, int, int, int]:
    """The region (left, top, right, bottom) of a width × height image that is resized to `target`
    (height, width): the whole image for "stretch" and "none" ("none" requires the same aspect ratio),
    the centred region of the target's aspect ratio for "crop"."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    th, tw = target
    if policy == "stretch" or width * th == height * tw:
        return 0, 0, width, height
    if policy == "none":
        raise ValueError(f"{where}: the image is {width}×{height} (W×H) but {tw}×{th} is needed, another aspect "
                         f"ratio; choose a resize policy: 'crop' (centre crop, then resize) or 'stretch' (resize "
                         f"each axis), or crop the file yourself")
    if width * th > height * tw:          # wider than the target: crop the width
        cw, ch = round(height * tw / th), height
    else:
        cw, ch = width, round(width * th / tw)
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def fit_mask(mask: Tensor, box: tuple[int, int, int, int], target: tuple[int, int]) -> Tensor:
    """A boolean mask [h, w] cut to `box` and resized to `target` (height, width) by nearest neighbour, the
    geometry `crop_box` gave the image."""
    left, top, right, bottom = box
    m = mask[top:bottom, left:right]
    if tuple(m.shape) == tuple(target):
        return m
    m = F.interpolate(m.to(torch.float32)[None, None], size=tuple(target), mode="nearest-exact")
    return m[0, 0] > 0.5


def fit_mask_to_image(mask: Tensor, image_hw: tuple[int, int], target: tuple[int, int], policy: str, *,
                      where: str) -> Tensor:
    """A mask file's mask [h, w] (bool) given its image's geometry: a mask already of the `target` size
    (height, width) is kept; one with the image's aspect ratio is cut and resized by the image's policy
    (`crop_box`, `fit_mask`); any other size is an error naming the mask and the image sizes."""
    mh, mw = mask.shape
    if (mh, mw) == tuple(target):
        return mask
    ih, iw = image_hw
    if mw * ih != mh * iw:
        raise ValueError(f"{where}: the mask is {mw}×{mh} (W×H) but the image is {iw}×{ih}; save the mask at the "
                         f"image's size (or at the target {target[1]}×{target[0]})")
    return fit_mask(mask, crop_box(mw, mh, target, policy, where=where), target)


def read_image(source: str | bytes | Image.Image, *, where: str, size: int | None = None,
               channels: int | None = None, resize: str = "crop"
               ) -> tuple[Tensor, tuple[int, int], tuple[int, int, int, int] | None]:
    """Decode an image into a float tensor [C, H, W] in [−1, 1], with the file's size (H, W) and the region
    (left, top, right, bottom) of the file that was resized to `size` (None: kept as is); errors name
    `where`.

    8-bit images map 0..255 to [−1, 1], 16-bit ones 0..65535 (never clipped at 255); palette images go
    through their palette. `resize` ("crop", "stretch" or "none", `vipaint.imageio.crop_box`) says how an
    image of another aspect ratio than `size` × `size` is fitted; the same region must be used for its mask.
    """
    img = open_image(source, where=where)
    width, height = img.size
    high = is_high_depth(img)
    if high:
        img = high_depth_as_float(img, where=where)
    elif channels == 1:
        img = img.convert("L")
    elif channels == 3 or img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    box = None
    if size is not None and img.size != (size, size):
        box = crop_box(width, height, (size, size), resize, where=where)
        img = img.crop(box)
        img = img.resize((size, size), Image.BICUBIC)
    if high:
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[None]
        if channels == 3:
            arr = np.repeat(arr, 3, axis=0)
        x = torch.from_numpy(arr.copy()) * 2.0 - 1.0
    else:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        x = torch.from_numpy(arr.copy()) / 127.5 - 1.0
    if not torch.isfinite(x).all():
        raise ValueError(f"{where}: the image contains NaN or inf values")
    return x, (height, width), box


def load_image(source: str | bytes | Image.Image, *, where: str, size: int | None = None,
               channels: int | None = None, resize: str = "crop") -> Tensor:
    """Decode an image into a float tensor [C, H, W] in [−1, 1] (`read_image` without the region)."""
    return read_image(source, where=where, size=size, channels=channels, resize=resize)[0]
