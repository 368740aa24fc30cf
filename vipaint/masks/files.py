"""User mask files: PNG/JPG/BMP/TIFF/WEBP images or NumPy `.npy` / `.npz` arrays (`FileMask`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vipaint.imageio import ImageTooLargeError, check_pixels, max_pixels
from vipaint.masks.base import MaskGenerator

__all__ = ["FileMask"]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_ARRAY_EXTS = (".npy", ".npz")


def _check_array_size(shape: tuple[int, ...], file: str) -> None:
    """The size check of `check_pixels` for an array file, from its header (before reading the data)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(shape) == 3 and min(shape[0], shape[-1]) <= 4:   # [H, W, C] or [C, H, W]
        n //= max(1, min(shape[0], shape[-1]))
    if n > max_pixels():
        raise ImageTooLargeError(f"FileMask: mask file '{file}' holds an array of shape {tuple(shape)}, more than "
                                 f"the limit of {max_pixels()} pixels; shrink it, or raise the limit with "
                                 "VIPAINT_MAX_PIXELS")


class FileMask(MaskGenerator):
    """Masks read from files: PNG/JPG/BMP/TIFF/WEBP images or NumPy `.npy` / `.npz` arrays.

    **Convention: white / 1 = observed, black / 0 = hole** (as everywhere in the project). For files
    where white marks the hole (e.g. many free-form mask datasets), set `invert=True`.

    Item `index` uses file `index % n` (files of a folder sorted by name; a list in its own order).
    Values are mapped to [0, 1] (kept when the maximum is ≤ 1, else divided by 255, or by 65535 above
    255), checked to be binary, thresholded at 0.5 and resized to `size` with nearest-neighbour.
    Colour images are converted to grey; a `.npz` must hold a single array or one named "mask".

    Args:
        path: a folder (all mask files in it, sorted by name), one file, or a list of files.
        invert: set True when white / 1 marks the hole in the files.
        binarize: threshold non-binary files at 0.5 instead of raising an error.
        max_nonbinary: fraction of pixels allowed to be neither 0 nor 1 (e.g. anti-aliasing) before a
            file counts as non-binary.
    """

    name = "file"

    def __init__(self, *, path: str | list[str], invert: bool = False, binarize: bool = False,
                 max_nonbinary: float = 0.01) -> None:
        if isinstance(path, (str, Path)):
            root = Path(path).expanduser()
            if not root.exists():
                raise FileNotFoundError(f"FileMask: mask path '{root}' does not exist; pass an existing folder "
                                        "of mask images (.png/.npy/.npz) or a list of files")
            if root.is_dir():
                files = sorted(p for p in root.iterdir()
                               if p.is_file() and p.suffix.lower() in _IMAGE_EXTS + _ARRAY_EXTS)
                if not files:
                    raise FileNotFoundError(f"FileMask: folder '{root}' holds no mask files with extensions "
                                            f"{_IMAGE_EXTS + _ARRAY_EXTS}; put the masks there or pass a list")
            else:
                files = [root]
        else:
            files = [Path(p).expanduser() for p in path]
            if not files:
                raise ValueError("FileMask: the list of mask files is empty; pass a folder or at least one file")
            for p in files:
                if not p.is_file():
                    raise FileNotFoundError(f"FileMask: mask file '{p}' does not exist; fix the path in `path`")
        self.files = [str(p) for p in files]
        self.invert, self.binarize, self.max_nonbinary = bool(invert), bool(binarize), float(max_nonbinary)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, file: str) -> np.ndarray:
        """One file as a float64 [h, w] array mapped to [0, 1] (before the binary check)."""
        suffix = Path(file).suffix.lower()
        try:
            if suffix == ".npy":
                _check_array_size(np.load(file, mmap_mode="r", allow_pickle=False).shape, file)
                arr = np.load(file, allow_pickle=False)
            elif suffix == ".npz":
                with np.load(file, allow_pickle=False) as z:
                    for k in z.files:
                        with z.zip.open(k + ".npy") as member:
                            version = np.lib.format.read_magic(member)
                            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                      else np.lib.format.read_array_header_2_0)
                            shape = header(member)[0]
                        _check_array_size(shape, file)
                    arrays = {k: z[k] for k in z.files}
            else:
                with warnings.catch_warnings():   # PIL's bomb warning: `check_pixels` decides instead
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(file)
                with img:
                    check_pixels(*img.size, where=f"FileMask: mask file '{file}'")
                    if img.mode not in ("1", "L") and not img.mode.startswith(("I", "F")):
                        img = img.convert("L")
                    arr = np.asarray(img)
        except ImageTooLargeError:   # the size check: its message is complete
            raise
        except Exception as e:
            raise ValueError(f"FileMask: cannot read mask file '{file}' ({type(e).__name__}: {e}); replace it "
                             "with a valid PNG/JPG image or .npy/.npz array") from e
        if suffix == ".npz":
            if "mask" not in arrays and len(arrays) != 1:
                raise ValueError(f"FileMask: '{file}' holds arrays {sorted(arrays)}; store a single array or "
                                 "name it 'mask'")
            arr = arrays["mask"] if "mask" in arrays else next(iter(arrays.values()))
        arr = np.asarray(arr)
        if arr.ndim == 3 and min(arr.shape[0], arr.shape[-1]) <= 4:  # [H, W, C] or [C, H, W]: grey
            arr = np.moveaxis(arr, -1 if arr.shape[-1] <= 4 else 0, 0)[:3].astype(np.float64).mean(0)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"FileMask: mask file '{file}' has shape {arr.shape}; expected [H, W] (or one channel)")
        if arr.dtype == bool:
            return arr.astype(np.float64)
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"FileMask: mask file '{file}' has values outside [0, 65535] or NaN/inf; store 0/1 "
                             "or 0/255 values")
        peak = arr.max()  # 0/1 files as they are, else an 8-bit or a 16-bit range
        return arr / (1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0)

    def native(self, index: int) -> Tensor:
        """The boolean mask [h, w] of item `index` at the file's own size (True = observed, `invert`
        applied), checked to be binary (or thresholded with `binarize`)."""
        m = self._threshold(self.files[index % len(self.files)])
        return ~m if self.invert else m

    def _threshold(self, file: str) -> Tensor:
        arr = self.load(file)
        nonbinary = float(np.mean((np.abs(arr) > 1e-6) & (np.abs(arr - 1) > 1e-6)))
        if nonbinary > self.max_nonbinary and not self.binarize:
            raise ValueError(f"FileMask: mask file '{file}' is not binary ({nonbinary:.1%} of pixels are neither "
                             "black nor white); save it as a 0/255 (or 0/1) image, or threshold it at 0.5 with "
                             "FileMask(binarize=True) (`vipaint inpaint --binarize-mask`)")
        return torch.from_numpy(arr >= 0.5)

    def _generate(self, index: int, seed: int, height: int, width: int) -> Tensor:
        m = self._threshold(self.files[index % len(self.files)]).to(torch.float32)[None, None]
        if m.shape[-2:] != (height, width):
            m = F.interpolate(m, size=(height, width), mode="nearest-exact")
        m = m[0, 0] > 0.5
        return ~m if self.invert else m
