"""FID from features with per-row weights, and a paired bootstrap over observations.

FID (Heusel et al. 2017) between Gaussians fitted to two feature sets is
``|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}``. With ``Σ₁ = A₁ᵀA₁`` and ``Σ₂ = A₂ᵀA₂`` (A = centred
rows scaled by ``sqrt(w / (Σw − 1))``), the non-zero eigenvalues of ``Σ₁Σ₂`` are the squared singular
values of ``A₁A₂ᵀ``, so ``tr (Σ₁Σ₂)^{1/2} = ‖A₁A₂ᵀ‖_*`` (nuclear norm): an [n₁, n₂] SVD instead of a
[d, d] non-symmetric eigendecomposition. That makes a thousand bootstrap replicates of a 2048-d FID
cheap on a CPU. Integer weights are bootstrap counts: weight k is the row repeated k times.

The bootstrap resamples *observations* (one ground truth and all its samples together), with the
same draws for every method, so differences between methods are paired.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["frechet_distance", "gaussian_factor", "paired_fid_bootstrap"]


def gaussian_factor(features: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and covariance factor of weighted feature rows.

    Args:
        features: [n, d] features.
        weights: [n] non-negative row weights (bootstrap counts); None = all ones. The covariance is the
            unbiased one of the set in which row i appears ``weights[i]`` times.

    Returns:
        (mean [d], A [m, d]) with ``cov = AᵀA``, float64; rows of weight 0 are dropped (m ≤ n).
    """
    f = features.to(torch.float64)
    w = torch.ones(f.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
    if w.shape != (f.shape[0],) or bool((w < 0).any()):
        raise ValueError(f"weights must be [n] and non-negative, got shape {tuple(w.shape)}")
    total = float(w.sum())
    if total < 2:
        raise ValueError(f"a covariance needs a total weight of at least 2, got {total}")
    keep = w > 0
    f, w = f[keep], w[keep]
    mean = (w[:, None] * f).sum(0) / total
    return mean, (f - mean) * (w / (total - 1.0)).sqrt()[:, None]


def frechet_distance(
    real: Tensor, fake: Tensor, real_weights: Tensor | None = None, fake_weights: Tensor | None = None
) -> Tensor:
    """FID between the Gaussians of two (weighted) feature sets (module docstring; Heusel et al. 2017).

    Args:
        real: [n₁, d] reference features.
        fake: [n₂, d] generated features.
        real_weights, fake_weights: optional [n₁] / [n₂] row weights (see `gaussian_factor`).

    Returns:
        Scalar float64 FID.
    """
    return _frechet(*gaussian_factor(real, real_weights), *gaussian_factor(fake, fake_weights))


def _frechet(mu1: Tensor, a1: Tensor, mu2: Tensor, a2: Tensor) -> Tensor:
    cross = torch.linalg.svdvals(a1 @ a2.T).sum()
    return (mu1 - mu2).square().sum() + a1.square().sum() + a2.square().sum() - 2.0 * cross


def paired_fid_bootstrap(
    real: Tensor, fakes: dict[str, Tensor], replicates: int, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """FID of every method on the full set and on bootstrap resamples of the observations.

    Args:
        real: [N, d] features of the N observations' ground truths.
        fakes: {method: [N, S, d]} features of S samples per observation (same observation order).
        replicates: number of bootstrap resamples (N observations drawn with replacement, shared by
            every method).
        seed: seed of the resampling generator.

    Returns:
        ({method: scalar full-set FID}, {method: [replicates] FIDs}).
    """
    n = real.shape[0]
    for name, f in fakes.items():
        if f.dim() != 3 or f.shape[0] != n:
            raise ValueError(f"{name}: expected [{n}, S, d] sample features, got {tuple(f.shape)}")
    full = {k: frechet_distance(real, f.flatten(0, 1)) for k, f in fakes.items()}
    gen = torch.Generator().manual_seed(seed)
    boot: dict[str, list[Tensor]] = {k: [] for k in fakes}
    for _ in range(replicates):
        counts = torch.bincount(torch.randint(n, (n,), generator=gen), minlength=n).to(torch.float64)
        real_stats = gaussian_factor(real, counts)
        for k, f in fakes.items():
            fake_stats = gaussian_factor(f.flatten(0, 1), counts.repeat_interleave(f.shape[1]))
            boot[k].append(_frechet(*real_stats, *fake_stats))
    return full, {k: torch.stack(v) if v else torch.empty(0, dtype=torch.float64) for k, v in boot.items()}
