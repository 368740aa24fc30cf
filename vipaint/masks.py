"""Inpainting masks (ALGORITHM.md §6): generators for the paper's protocols plus user mask files.

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

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from vipaint.seeding import derive_seed

__all__ = ["MaskGenerator", "BoxMask", "HalfPlaneMask", "FreeFormMask", "LineMask", "RandomPixelMask",
           "FileMask", "MASKS", "mask_from_name", "hole_ratio", "check_mask"]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_ARRAY_EXTS = (".npy", ".npz")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, index, "mask"))


def _scaled_px(px: float, height: int) -> int:
    """A width given in pixels at 256² scaled to an image of height `height` (at least 1 px)."""
    return max(1, int(round(px * height / 256)))


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


class BoxMask(MaskGenerator):
    """A rectangular hole (square for square images), DPS "box" protocol (128² hole at 256²).

    The hole is round(size·H) × round(size·W), so its hole ratio is size² up to rounding at any shape.

    Args:
        size: hole side as a fraction of the image side, in (0, 1). Default 0.5.
        random_position: False (default): centred; True: top-left corner drawn uniformly per index.
        margin: for random positions, minimum distance from the border as a fraction of the side.
    """

    name = "box"

    def __init__(self, *, size: float = 0.5, random_position: bool = False, margin: float = 0.0) -> None:
        if not 0.0 < size < 1.0:
            raise ValueError(f"BoxMask: size must be a fraction in (0, 1), got {size}")
        if margin < 0.0 or size + 2 * margin > 1.0:
            raise ValueError(f"BoxMask: need margin >= 0 and size + 2*margin <= 1, got size={size}, margin={margin}")
        self.size, self.random_position, self.margin = float(size), bool(random_position), float(margin)

    def _draw_start(self, rng: np.random.Generator, n: int, b: int) -> int:
        """Start of a box of length b on a side of length n, at least margin·n from both ends."""
        m = int(round(self.margin * n))
        lo = min(m, n - b)
        return int(rng.integers(lo, max(lo, n - b - m) + 1))

    def _generate(self, index: int, seed: int, height: int, width: int) -> np.ndarray:
        bh, bw = (min(max(1, int(round(self.size * n))), max(1, n - 1)) for n in (height, width))
        if self.random_position:
            rng = _rng(seed, index)
            top, left = (self._draw_start(rng, n, b) for n, b in ((height, bh), (width, bw)))
        else:
            top, left = (height - bh) // 2, (width - bw) // 2
        mask = np.ones((height, width), dtype=bool)
        mask[top:top + bh, left:left + bw] = False
        return mask


class HalfPlaneMask(MaskGenerator):
    """VIPaint's "rotated window" (`half`): a half-plane through the image centre at a random angle.

    The paper builds a (1.39·s)² array, zeroes its lower half, rotates it by an integer angle
    θ ∈ [0, 360) counter-clockwise and centre-crops s×s. Here the same half-plane is computed
    analytically: pixel p is a hole iff (p − c)·n(θ) > 0 with n(θ) = (sin θ, cos θ) in (x, y-down)
    coordinates and c the image centre (θ = 0: lower half missing; 90: right half). It matches the
    rotate-and-crop construction up to boundary pixels (and avoids its blank corners near 45°, where
    1.39 < √2). About 50 % of the pixels are missing at every angle and shape.

    Args:
        angle: a fixed angle in degrees for every index; None (default) draws one per index.
    """

    name = "half"

    def __init__(self, *, angle: int | None = None) -> None:
        self.angle = None if angle is None else int(angle) % 360

    def _generate(self, index: int, seed: int, height: int, width: int) -> Tensor:
        theta = self.angle if self.angle is not None else int(_rng(seed, index).integers(0, 360))
        rad = math.radians(theta)
        ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
        xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
        proj = xs[None, :] * math.sin(rad) + ys[:, None] * math.cos(rad)
        return proj <= 1e-9  # observed side (ties on the line count as observed)


class FreeFormMask(MaskGenerator):
    """The paper's "random" free-form masks (MAT/LaMa style): rectangles at two scales + brush strokes.

    Per try: up to 9 rectangles of side < half the image, up to 4 of side < the image, up to 19 brush
    strokes (polylines of `vertices` vertices with widths in `stroke_width` px at 256², scaled by
    H/256, round joints), random flips; a try is kept when its hole ratio lies in `hole_range`
    (inclusive). After `max_tries` rejected tries the try closest to the range is repaired
    deterministically (small rectangles added/removed, then single pixels), so every call terminates
    with a ratio inside the range.

    Args:
        hole_range: (low, high) admissible fraction of hole pixels. Default (0.3, 0.7).
        vertices: (min, max) number of vertices per stroke, inclusive. Default (4, 18).
        stroke_width: (min, max) stroke width in pixels at 256². Default (12, 48).
        max_tries: rejection-sampling tries before the repair fallback.
    """

    name = "freeform"

    def __init__(self, *, hole_range: tuple[float, float] = (0.3, 0.7), vertices: tuple[int, int] = (4, 18),
                 stroke_width: tuple[float, float] = (12.0, 48.0), max_tries: int = 50) -> None:
        lo, hi = float(hole_range[0]), float(hole_range[1])
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"FreeFormMask: hole_range must satisfy 0 <= low < high <= 1, got {hole_range}")
        if not 1 <= vertices[0] <= vertices[1] or not 0 < stroke_width[0] <= stroke_width[1] or max_tries < 1:
            raise ValueError("FreeFormMask: need 1 <= vertices[0] <= vertices[1], "
                             "0 < stroke_width[0] <= stroke_width[1] and max_tries >= 1")
        self.hole_range = (lo, hi)
        self.vertices = (int(vertices[0]), int(vertices[1]))
        self.stroke_width = (float(stroke_width[0]), float(stroke_width[1]))
        self.max_tries = int(max_tries)

    def _strokes(self, rng: np.random.Generator, max_strokes: int, height: int, width: int) -> np.ndarray:
        img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(img)
        radius = math.sqrt(height ** 2 + width ** 2) / 8
        mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
        for _ in range(int(rng.integers(max_strokes))):
            n = int(rng.integers(self.vertices[0], self.vertices[1] + 1))
            a_min = mean_angle - rng.uniform(0, angle_range)
            a_max = mean_angle + rng.uniform(0, angle_range)
            pts = [(int(rng.integers(0, width)), int(rng.integers(0, height)))]
            for i in range(n - 1):
                a = rng.uniform(a_min, a_max)
                a = 2 * math.pi - a if i % 2 == 0 else a
                r = float(np.clip(rng.normal(radius, radius / 2), 0, 2 * radius))
                pts.append((int(np.clip(pts[-1][0] + r * math.cos(a), 0, width - 1)),
                            int(np.clip(pts[-1][1] + r * math.sin(a), 0, height - 1))))
            wpx = _scaled_px(rng.uniform(*self.stroke_width), height)
            draw.line(pts, fill=255, width=wpx)
            half = wpx / 2
            for x, y in pts:
                draw.ellipse((x - half, y - half, x + half, y + half), fill=255)
        return np.asarray(img) > 0

    def _candidate(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        hole = np.zeros((height, width), dtype=bool)
        for max_count, frac in ((10, 2), (5, 1)):  # small rectangles (< side/2), then large (< side)
            mh, mw = max(1, height // frac), max(1, width // frac)
            for _ in range(int(rng.integers(max_count))):
                h, w = int(rng.integers(mh)), int(rng.integers(mw))
                y = int(rng.integers(-(h // 2), height - h + h // 2 + 1))
                x = int(rng.integers(-(w // 2), width - w + w // 2 + 1))
                hole[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
        hole |= self._strokes(rng, 20, height, width)
        if rng.random() > 0.5:
            hole = hole[::-1]
        if rng.random() > 0.5:
            hole = hole[:, ::-1]
        return np.ascontiguousarray(hole)

    def _repair(self, hole: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        (lo, hi), (height, width), n = self.hole_range, hole.shape, hole.size
        k_lo, k_hi = math.ceil(lo * n - 1e-9), math.floor(hi * n + 1e-9)
        if k_lo > k_hi:
            raise ValueError(f"FreeFormMask: no hole ratio in {self.hole_range} is possible at {height}x{width}")
        # Each rectangle changes at most half the range's width, so it never jumps across the range.
        budget = max(1, (k_hi - k_lo) // 2)
        bh = max(1, min(height, math.isqrt(budget)))
        bw = max(1, min(width, budget // bh))
        for _ in range(500):
            k = int(hole.sum())
            if k_lo <= k <= k_hi:
                return hole
            y, x = int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1))
            hole[y:y + bh, x:x + bw] = k < k_lo
        k, flat = int(hole.sum()), hole.reshape(-1)  # last resort: flip exactly enough single pixels
        if not k_lo <= k <= k_hi:
            add = k < k_lo
            flat[rng.permutation(np.flatnonzero(flat != add))[:(k_lo - k) if add else (k - k_hi)]] = add
        return flat.reshape(height, width)

    def _generate(self, index: int, seed: int, height: int, width: int) -> np.ndarray:
        lo, hi = self.hole_range
        rng = _rng(seed, index)
        best, best_dist = None, math.inf
        for _ in range(self.max_tries):
            hole = self._candidate(rng, height, width)
            ratio = float(hole.mean())
            dist = max(lo - ratio, ratio - hi, 0.0)
            if dist == 0.0:
                return ~hole
            if dist < best_dist:
                best, best_dist = hole, dist
        return ~self._repair(best, rng)


class LineMask(MaskGenerator):
    """Every-other-line mask (RePaint/CoPaint "line"): alternating bands of observed/missing lines.

    Deterministic (independent of index and seed). Rows/columns [0, w) are observed, [w, 2w) missing,
    and so on, with w = `width` px at 256² scaled by H/256 (minimum 1 px). Hole ratio ≈ 0.5.

    Args:
        width: band width in pixels at 256². Default 1.
        axis: "rows" (horizontal bands, default) or "cols" (vertical bands).
    """

    name = "line"

    def __init__(self, *, width: float = 1.0, axis: Literal["rows", "cols"] = "rows") -> None:
        if width <= 0 or axis not in ("rows", "cols"):
            raise ValueError(f"LineMask: need width > 0 and axis in ('rows', 'cols'), got {width}, {axis!r}")
        self.width, self.axis = float(width), axis

    def _generate(self, index: int, seed: int, height: int, width: int) -> np.ndarray:
        w = _scaled_px(self.width, height)
        n = height if self.axis == "rows" else width
        band = (np.arange(n) // w) % 2 == 0
        return np.broadcast_to(band[:, None] if self.axis == "rows" else band[None, :], (height, width))


class RandomPixelMask(MaskGenerator):
    """I.i.d. Bernoulli holes per pixel with probability `p` (for exact-posterior tests).

    Note: this is *not* the paper's "Random" protocol, which is `FreeFormMask`.

    Args:
        p: probability that a pixel is a hole, in [0, 1]. Default 0.5.
    """

    name = "random"

    def __init__(self, *, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomPixelMask: p must lie in [0, 1], got {p}")
        self.p = float(p)

    def _generate(self, index: int, seed: int, height: int, width: int) -> np.ndarray:
        return _rng(seed, index).random((height, width)) >= self.p


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
                arr = np.load(file, allow_pickle=False)
            elif suffix == ".npz":
                with np.load(file, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            else:
                with Image.open(file) as img:
                    if img.mode not in ("1", "L") and not img.mode.startswith(("I", "F")):
                        img = img.convert("L")
                    arr = np.asarray(img)
        except Exception as e:  # noqa: BLE001 - any decoder error means the file is unusable
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

    def _generate(self, index: int, seed: int, height: int, width: int) -> Tensor:
        file = self.files[index % len(self.files)]
        arr = self.load(file)
        nonbinary = float(np.mean((np.abs(arr) > 1e-6) & (np.abs(arr - 1) > 1e-6)))
        if nonbinary > self.max_nonbinary and not self.binarize:
            raise ValueError(f"FileMask: mask file '{file}' is not binary ({nonbinary:.1%} of pixels are neither "
                             "black nor white); save it as a 0/255 (or 0/1) image, or pass binarize=True to threshold "
                             "it at 0.5")
        m = torch.from_numpy(arr >= 0.5).to(torch.float32)[None, None]
        if m.shape[-2:] != (height, width):
            m = F.interpolate(m, size=(height, width), mode="nearest-exact")
        m = m[0, 0] > 0.5
        return ~m if self.invert else m


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
