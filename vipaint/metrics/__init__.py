"""Evaluation metrics: per-image reconstruction and diversity, perceptual distance, FID/KID, and
sample quality against an exact posterior.

Every per-image function returns a [B] tensor (one value per dataset index); `summarize` reduces a
dict of them to means for logging.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.metrics.distribution import FID, KID, default_inception, make_fid, make_kid, to_unit_rgb
from vipaint.metrics.features import (
    TF_INCEPTION_LABEL,
    TORCHMETRICS_INCEPTION_LABEL,
    TFInceptionFeatures,
    hub_checkpoint,
    package_dir,
    tf_inception_path,
)
from vipaint.metrics.image import (
    Distance,
    best_and_mean,
    hole_std,
    pairwise_diversity,
    per_sample,
    psnr,
    psnr_hole,
    rms_distance,
    ssim,
    ssim_hole,
)
from vipaint.metrics.perceptual import LPIPS_BACKBONE_FILES, PerceptualDistance, perceptual_metric
from vipaint.metrics.posterior import (
    credible_coverage,
    exact_posterior_metrics,
    mean_error,
    mixture_moments,
    mixture_weight_error,
    sliced_wasserstein,
    std_ratio,
)

__all__ = [
    "FID",
    "KID",
    "LPIPS_BACKBONE_FILES",
    "TF_INCEPTION_LABEL",
    "TORCHMETRICS_INCEPTION_LABEL",
    "Distance",
    "PerceptualDistance",
    "TFInceptionFeatures",
    "best_and_mean",
    "credible_coverage",
    "default_inception",
    "exact_posterior_metrics",
    "hole_std",
    "hub_checkpoint",
    "make_fid",
    "make_kid",
    "mean_error",
    "mixture_moments",
    "mixture_weight_error",
    "package_dir",
    "pairwise_diversity",
    "per_sample",
    "perceptual_metric",
    "psnr",
    "psnr_hole",
    "rms_distance",
    "sample_metrics",
    "sliced_wasserstein",
    "ssim",
    "ssim_hole",
    "std_ratio",
    "summarize",
    "tf_inception_path",
    "to_unit_rgb",
]


def summarize(per_image: dict[str, Tensor | float]) -> dict[str, float]:
    """Mean of each per-image metric, for logging.

    NaN entries (metric undefined for that image, e.g. hole metrics on an image without a hole) are
    skipped; +inf (e.g. PSNR of an exact match) is kept, so the mean is then +inf.

    Args:
        per_image: name → [B] tensor (any shape is flattened) or a Python number.

    Returns:
        name → mean as a float (NaN if every entry is NaN).
    """
    out: dict[str, float] = {}
    for name, value in per_image.items():
        values = torch.as_tensor(value).detach().float().reshape(-1).cpu()
        out[name] = float(values.nanmean()) if values.numel() else float("nan")
    return out


def sample_metrics(samples: Tensor, x_true: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Reconstruction metrics of S samples per image against the ground truth, one value per image.

    Args:
        samples: [S, B, C, H, W] samples on [−1, 1].
        x_true: [B, C, H, W] ground truths.
        mask: [B, 1, H, W] observation mask (1 = observed) for the hole PSNR; None: no hole metric.

    Returns:
        name → [B]: psnr and ssim (means over the S samples; SSIM of samples clipped to [−1, 1]),
        psnr_mean_sample (PSNR of the sample mean), and with a mask psnr_hole (mean over the samples).
    """
    s = samples.shape[0]
    flat = samples.reshape((-1,) + tuple(samples.shape[2:]))                                   # [S·B, C, H, W]

    def rep(v: Tensor) -> Tensor:   # [B, ...] → [S·B, ...], sample-major like `flat`
        return v[None].expand(s, *v.shape).reshape((-1,) + tuple(v.shape[1:]))

    out = {
        "psnr": psnr(flat, rep(x_true)).reshape(s, -1).mean(0),
        "ssim": ssim(flat.clamp(-1, 1), rep(x_true)).reshape(s, -1).mean(0),
        "psnr_mean_sample": psnr(samples.mean(0), x_true),
    }
    if mask is not None:
        out["psnr_hole"] = psnr_hole(flat, rep(x_true), rep(mask)).reshape(s, -1).mean(0)
    return out
