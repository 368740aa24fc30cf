"""Random mask generators of the paper's protocols (docs/algorithm.md §6): box, half-plane ("rotated window"),
free-form ("random"), lines and i.i.d. pixels, each drawn from its own stream `derive_seed(seed, index, "mask")`."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from vipaint.masks.base import MaskGenerator
from vipaint.seeding import derive_seed

__all__ = ["BoxMask", "HalfPlaneMask", "FreeFormMask", "LineMask", "RandomPixelMask"]


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, index, "mask"))


def _scaled_px(px: float, height: int) -> int:
    """A width given in pixels at 256² scaled to an image of height `height` (at least 1 px)."""
    return max(1, int(round(px * height / 256)))


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
