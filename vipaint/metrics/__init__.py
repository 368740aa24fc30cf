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
