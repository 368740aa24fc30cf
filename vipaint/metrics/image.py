"""Per-image reconstruction and sample-diversity metrics.

Conventions: images are float tensors in [−1, 1] of shape [B, C, H, W]; the samples of a method are
[S, B, C, H, W]; an observation mask is [B, 1, H, W] with 1 = observed and 0 = hole. Every function
returns one value per image ([B], or [S, B] for `per_sample`) so results can be stored per dataset index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

__all__ = [
    "Distance",
    "best_and_mean",
    "hole_std",
    "pairwise_diversity",
    "per_sample",
    "psnr",
    "psnr_hole",
    "rms_distance",
    "ssim",
    "ssim_hole",
]

Distance = Callable[[Tensor, Tensor], Tensor]
"""A distance between two image batches [N, C, H, W] → [N] (e.g. the callable of `perceptual_metric`)."""


def _region_mean(values: Tensor, region: Tensor | None) -> Tensor:
    """Mean of [B, C, H, W] values per image, weighted by a [B, 1|C, H, W] region (None: all pixels).

    An empty region gives NaN (the metric is undefined there).
    """
    if region is None:
        return values.flatten(1).mean(1)
    weight = region.to(values.dtype).expand_as(values)
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


def _hole(mask: Tensor) -> Tensor:
    """Hole indicator 1 − mask of an observation mask (1 = observed)."""
    return 1.0 - mask.float()


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image, 10·log10(data_range² / MSE), in dB.

    Args:
        x: [B, C, H, W] reconstruction.
        ref: [B, C, H, W] reference.
        data_range: peak-to-peak range of the data; 2.0 for [−1, 1] images (a peak of 1 on [−1, 1]
            data reads 6.02 dB low, ECOSYSTEM.md §3.4).
        mask: optional [B, 1|C, H, W] *region* (1 = pixel counted) over which the MSE is taken; None =
            whole image. For the hole of an observation mask pass ``1 - mask`` (or use `psnr_hole`).

    Returns:
        [B] PSNR in dB (+inf where the images agree exactly on the region, NaN on an empty region).
    """
    mse = _region_mean((x.float() - ref.float()).square(), mask)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr_hole(x: Tensor, ref: Tensor, mask: Tensor, data_range: float = 2.0) -> Tensor:
    """PSNR over the hole only.

    Args:
        x: [B, C, H, W] reconstruction.
        ref: [B, C, H, W] reference.
        mask: [B, 1, H, W] observation mask (1 = observed, 0 = hole).
        data_range: peak-to-peak range of the data.

    Returns:
        [B] PSNR in dB over the hole pixels.
    """
    return psnr(x, ref, data_range=data_range, mask=_hole(mask))


def ssim(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Structural similarity per image (torchmetrics, 11×11 Gaussian window σ = 1.5, reflect padding).

    Args:
        x: [B, C, H, W] reconstruction (H, W ≥ 6 for the default window).
        ref: [B, C, H, W] reference.
        data_range: peak-to-peak range of the data (always pass it; 2.0 for [−1, 1]).

    Returns:
        [B] SSIM (1 for identical images).
    """
    return structural_similarity_index_measure(
        x.float(), ref.float(), data_range=data_range, reduction="none"
    )


def ssim_hole(x: Tensor, ref: Tensor, mask: Tensor, data_range: float = 2.0) -> Tensor:
    """SSIM map averaged over the hole pixels (windows near the hole border also see observed pixels).

    Args:
        x: [B, C, H, W] reconstruction.
        ref: [B, C, H, W] reference.
        mask: [B, 1, H, W] observation mask (1 = observed, 0 = hole).
        data_range: peak-to-peak range of the data.

    Returns:
        [B] mean SSIM over the hole (NaN where an image has no hole).
    """
    _, full = structural_similarity_index_measure(
        x.float(), ref.float(), data_range=data_range, reduction="none", return_full_image=True
    )
    return _region_mean(full, _hole(mask))


def hole_std(samples: Tensor, mask: Tensor) -> Tensor:
    """Per-pixel standard deviation across the S samples (unbiased), averaged over the hole.

    Args:
        samples: [S, B, C, H, W] samples for each observation, S ≥ 2.
        mask: [B, 1, H, W] observation mask (1 = observed, 0 = hole).

    Returns:
        [B] mean per-pixel std in the hole (data units; NaN where an image has no hole).
    """
    if samples.dim() != 5 or samples.shape[0] < 2:
        raise ValueError(f"expected samples [S>=2, B, C, H, W], got shape {tuple(samples.shape)}")
    return _region_mean(samples.float().std(dim=0), _hole(mask))


def rms_distance(a: Tensor, b: Tensor) -> Tensor:
    """Root-mean-square difference per image: sqrt(mean((a − b)²)) over all but the batch dimension."""
    return (a.float() - b.float()).square().flatten(1).mean(1).sqrt()


def pairwise_diversity(samples: Tensor, distance: Distance | None = None) -> Tensor:
    """Mean distance over the S(S−1)/2 unordered pairs of samples of each observation.

    Args:
        samples: [S, B, C, H, W] samples, S ≥ 2.
        distance: callable ([B, C, H, W], [B, C, H, W]) → [B]; default `rms_distance` (L2 / RMS).
            Pass the callable from `perceptual_metric` for a perceptual diversity.

    Returns:
        [B] mean pairwise distance (0 when all samples are identical).
    """
    if samples.dim() != 5 or samples.shape[0] < 2:
        raise ValueError(f"expected samples [S>=2, B, C, H, W], got shape {tuple(samples.shape)}")
    dist = rms_distance if distance is None else distance
    n = samples.shape[0]
    pairs = [dist(samples[i], samples[j]).reshape(-1).float() for i in range(n) for j in range(i + 1, n)]
    return torch.stack(pairs).mean(0)


def per_sample(metric: Callable[..., Tensor], samples: Tensor, ref: Tensor, **kwargs: object) -> Tensor:
    """Apply a per-image metric to each of the S samples against the same reference.

    Args:
        metric: callable (x [B, ...], ref [B, ...], **kwargs) → [B], e.g. `psnr`, `ssim`, a perceptual distance.
        samples: [S, B, C, H, W] samples.
        ref: [B, C, H, W] reference.
        **kwargs: forwarded to `metric` (e.g. ``data_range``, ``mask``).

    Returns:
        [S, B] metric values.
    """
    return torch.stack([metric(s, ref, **kwargs).reshape(-1) for s in samples])


def best_and_mean(values: Tensor, higher_is_better: bool) -> tuple[Tensor, Tensor]:
    """Best-of-n and mean-of-n of a per-sample metric.

    Args:
        values: [S, B] metric of each sample (e.g. from `per_sample`).
        higher_is_better: True for PSNR / SSIM, False for distances such as LPIPS.

    Returns:
        (best [B], mean [B]).
    """
    if values.dim() != 2:
        raise ValueError(f"expected values [S, B], got shape {tuple(values.shape)}")
    best = values.max(0).values if higher_is_better else values.min(0).values
    return best, values.mean(0)
