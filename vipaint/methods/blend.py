"""Latent blending: what RePaint's known-region replacement means on a latent prior (docs/algorithm.md §10.3).

A latent prior's diffusion variable is z = E(x), on a grid f times coarser than the image. RePaint's
replacement M ⊙ x^known + (1 − M) ⊙ x^unknown then needs (a) a mask on the latent grid and (b) a clean latent
of the known region. Both are defined here:

- `latent_grid_mask`: the pixel mask M [B, 1, H, W] pooled over each f × f block of pixels that one latent cell
  covers. Rule "all" (default, conservative): a cell is known when ALL its pixels are observed (min-pooling);
  rule "any": when ANY is (max-pooling).
- `fill_holes`: the observed image with its holes filled, M ⊙ y + (1 − M) ⊙ c, c the mean of the observed
  pixels per image and channel ("observed_mean", default) or 0 ("zero"), before it is encoded,
  z_known = E(fill(y)).

This is the "latent blending" of Blended Latent Diffusion (Avrahami et al., 2023) and of the usual SD
inpainting samplers. It is exact only when the codec is local: a known latent cell decodes to its own pixels
only, and its encoding does not depend on the hole. Real VAEs are only approximately local (their receptive
fields span several cells), so the cells next to the hole's border mix observed and filled pixels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LATENT_MASK_RULES", "LATENT_FILLS", "latent_grid_mask", "fill_holes"]

#: how a latent cell's f × f pixels decide whether it is known
LATENT_MASK_RULES = ("all", "any")
#: what fills the holes of y before it is encoded
LATENT_FILLS = ("observed_mean", "zero")


def latent_grid_mask(mask: Tensor, latent_hw: tuple[int, int], rule: str = "all") -> Tensor:
    """The pixel mask M [B, 1, H, W] (1 = observed) on a latent grid (h, w) [B, 1, h, w] (docs/algorithm.md
    §10.3, eq. 10.3b): over each block of f_h × f_w = (H/h) × (W/w) pixels, its minimum for rule "all" (a cell
    is known when all its pixels are) or its maximum for rule "any" (when any is). A binary mask stays binary;
    f = 1 returns M itself.

    Raises:
        ValueError: for an unknown rule, or an image size that is not a multiple of the latent size.
    """
    if rule not in LATENT_MASK_RULES:
        raise ValueError(f"unknown latent_mask rule {rule!r}; use one of {LATENT_MASK_RULES}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    big_h, big_w = int(mask.shape[-2]), int(mask.shape[-1])
    if h < 1 or w < 1 or big_h % h or big_w % w:
        raise ValueError(f"the mask's {big_h}×{big_w} pixels do not split into {h}×{w} latent cells")
    f = (big_h // h, big_w // w)
    if f == (1, 1):
        return mask
    if rule == "any":
        return F.max_pool2d(mask, kernel_size=f, stride=f)
    return -F.max_pool2d(-mask, kernel_size=f, stride=f)


def fill_holes(mask: Tensor, y: Tensor, fill: str = "observed_mean") -> Tensor:
    """M ⊙ y + (1 − M) ⊙ c for a mask M [B, 1, H, W] and observations y [B, C, H, W] (docs/algorithm.md §10.3):
    c = the mean of y over the observed pixels of each image and channel ("observed_mean"; 0 for an image with
    no observed pixel) or c = 0 ("zero", i.e. y itself, whose holes are 0). The observed pixels are y's own,
    bit for bit.

    Raises:
        ValueError: for an unknown fill.
    """
    if fill not in LATENT_FILLS:
        raise ValueError(f"unknown latent_fill {fill!r}; use one of {LATENT_FILLS}")
    if fill == "zero":
        return mask * y
    m = mask.expand_as(y)
    c = (m * y).sum((-2, -1), keepdim=True) / m.sum((-2, -1), keepdim=True).clamp_min(1.0)
    return mask * y + (1 - mask) * c

