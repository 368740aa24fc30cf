"""Per-image reconstruction and sample-diversity metrics.

Conventions: images are float tensors in [−1, 1] of shape [B, C, H, W]; the samples of a method are
[S, B, C, H, W]; an observation mask is [B, 1, H, W] with 1 = observed and 0 = hole. Every function
returns one value per image ([B], or [S, B] for `per_sample`) so results can be stored per dataset index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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
    "ssim_map",
    "ssim_window",
]

Distance = Callable[[Tensor, Tensor], Tensor]
"""A distance between two image batches [N, C, H, W] → [N] (e.g. the callable of `perceptual_metric`)."""

SSIM_WINDOW = 11
"""Side of SSIM's Gaussian window (Wang et al. 2004; skimage's `gaussian_weights=True`, truncate 3.5)."""
SSIM_SIGMA = 1.5
"""Standard deviation of SSIM's Gaussian window, in pixels."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
"""SSIM's stabilising constants: C1 = (K1 L)², C2 = (K2 L)² with data range L = 1."""


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


def ssim_window(size: int, sigma: float = SSIM_SIGMA) -> Tensor:
    """Normalised 1-D Gaussian window [size] in float64 (the 2-D window is its outer product)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma**2))
    return g / g.sum()


def _window_size(h: int, w: int) -> int:
    """SSIM_WINDOW, or the largest odd side that fits an image smaller than it."""
    side = min(SSIM_WINDOW, h, w)
    return side if side % 2 else side - 1


def _valid_filter(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter of [N, H, W] over the windows that fit ('valid'): [N, H − k + 1, W − k + 1]."""
    k = window.shape[0]
    x = F.conv2d(x[:, None], window.reshape(1, 1, k, 1))
    return F.conv2d(x, window.reshape(1, 1, 1, k))[:, 0]


def ssim_map(u: Tensor, v: Tensor) -> Tensor:
    """Local SSIM of [B, C, H, W] images in [0, 1] (data range L = 1), one value per valid window.

    SSIM = (2 μ_u μ_v + C1)(2 σ_uv + C2) / ((μ_u² + μ_v² + C1)(σ_u² + σ_v² + C2)) (Wang et al. 2004,
    eq. 13), with Gaussian-weighted local means, variances and covariance (population form, no n/(n−1)),
    C1 = (K1 L)², C2 = (K2 L)², per channel, over the windows that fit: [B, C, H − k + 1, W − k + 1] with
    k = SSIM_WINDOW (images smaller than the window use the largest odd window that fits, a
    non-standard fallback for tiny test images). Computed in float64.
    """
    b, c, h, w = u.shape
    window = ssim_window(_window_size(h, w)).to(u.device)
    u, v = u.double().reshape(b * c, h, w), v.double().reshape(b * c, h, w)
    stats = _valid_filter(torch.cat([u, v, u * u, v * v, u * v]), window).chunk(5)
    mu_u, mu_v, uu, vv, uv = stats
    var_u, var_v, cov = uu - mu_u.square(), vv - mu_v.square(), uv - mu_u * mu_v
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2 * mu_u * mu_v + c1) * (2 * cov + c2)
    den = (mu_u.square() + mu_v.square() + c1) * (var_u + var_v + c2)
    return (num / den).reshape(b, c, *num.shape[-2:])


def _to_unit(x: Tensor, data_range: float) -> Tensor:
    """Map images of range [−data_range/2, data_range/2] (i.e. [−1, 1] for 2.0) to [0, 1]."""
    return (x.double() + data_range / 2) / data_range


def ssim(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Standard SSIM per image, the convention of skimage, piq, DeepInverse and published tables.

    The [−1, 1] inputs are mapped to [0, 1] (u = (x + 1) / 2) and compared with data range 1, an 11×11
    Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03, averaging `ssim_map` over the windows that fit
    (no padding), per channel, then over channels. SSIM's luminance term is not shift-invariant, so this
    differs from SSIM computed on [−1, 1] with data range 2.

    Args:
        x: [B, C, H, W] reconstruction in [−1, 1].
        ref: [B, C, H, W] reference in [−1, 1].
        data_range: peak-to-peak range of the inputs, taken as centred at 0 (2.0: [−1, 1]).

    Returns:
        [B] SSIM (float32; 1 for identical images).
    """
    return ssim_map(_to_unit(x, data_range), _to_unit(ref, data_range)).flatten(1).mean(1).float()


def ssim_hole(x: Tensor, ref: Tensor, mask: Tensor, data_range: float = 2.0) -> Tensor:
    """`ssim_map` averaged over the windows centred in the hole (windows near its border also see
    observed pixels; holes within SSIM_WINDOW // 2 pixels of the image border are not counted).

    Args:
        x: [B, C, H, W] reconstruction in [−1, 1].
        ref: [B, C, H, W] reference in [−1, 1].
        mask: [B, 1, H, W] observation mask (1 = observed, 0 = hole).
        data_range: peak-to-peak range of the inputs, taken as centred at 0 (2.0: [−1, 1]).

    Returns:
        [B] mean SSIM over the hole (float32; NaN where no window is centred in the hole).
    """
    full = ssim_map(_to_unit(x, data_range), _to_unit(ref, data_range))
    r = (mask.shape[-1] - full.shape[-1]) // 2  # window radius: map pixel (i, j) is image pixel (i + r, j + r)
    hole = _hole(mask)[..., r:r + full.shape[-2], r:r + full.shape[-1]]
    return _region_mean(full, hole).float()


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
