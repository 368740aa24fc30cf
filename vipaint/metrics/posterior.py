"""Sample quality against an exact posterior (analytic Gaussian / Gaussian-mixture priors, docs/algorithm.md §8).

Method samples are [S, B, D] (S samples for each of B observations, D flattened coordinates); image-shaped
[S, B, C, H, W] inputs are flattened. Exact references are either exact posterior samples [S', B, D] or
the posterior mixture itself: weights [B, J], means [B, J, D], covariances [B, J, D, D]. Every function
returns one value per observation, [B].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

if TYPE_CHECKING:
    from vipaint.priors.analytic import GaussianMixture

__all__ = [
    "credible_coverage",
    "exact_posterior_metrics",
    "mean_error",
    "mixture_moments",
    "mixture_weight_error",
    "sliced_wasserstein",
    "std_ratio",
]


def _flat_samples(samples: Tensor) -> Tensor:
    """[S, B, ...] → [S, B, D] float."""
    if samples.dim() < 3:
        raise ValueError(f"expected samples [S, B, D, ...], got shape {tuple(samples.shape)}")
    return samples.flatten(2).float()


def _flat_per_image(x: Tensor, batch: int) -> Tensor:
    """[B, ...] per image, [1, ...] or 1-D [D] shared by all images → [B, D] float."""
    x = x.float()
    x = x.reshape(1, -1) if x.dim() == 1 else x.flatten(1)
    if x.shape[0] not in (1, batch):
        raise ValueError(f"expected a leading dimension of {batch} or 1, got shape {tuple(x.shape)}")
    return x.expand(batch, -1)


def _region_mean(values: Tensor, region: Tensor | None) -> Tensor:
    """Mean over D of [B, D] values, weighted by a region [B, D] / [D] (or image-shaped), None = all."""
    if region is None:
        return values.mean(1)
    weight = _flat_per_image(region, values.shape[0]).expand_as(values)
    return (values * weight).sum(1) / weight.sum(1)


def _quantiles(sorted_x: Tensor, levels: Tensor) -> Tensor:
    """Linear interpolation of the empirical quantile function at ``levels`` in (0, 1).

    The k-th sorted sample (0-based) sits at level (k + 0.5) / S, so with S levels (k + 0.5) / S the
    sorted samples are returned unchanged.

    Args:
        sorted_x: [S, ...] samples sorted along dim 0.
        levels: [L] quantile levels.

    Returns:
        [L, ...] quantiles.
    """
    n = sorted_x.shape[0]
    pos = (levels * n - 0.5).clamp(0.0, n - 1.0)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.to(pos.dtype)).reshape(-1, *([1] * (sorted_x.dim() - 1)))
    return sorted_x[lo] * (1.0 - frac) + sorted_x[hi] * frac


def sliced_wasserstein(
    a: Tensor, b: Tensor, n_proj: int = 256, generator: torch.Generator | None = None
) -> Tensor:
    """Sliced 2-Wasserstein distance per observation, SW₂ = (mean over directions θ of W₂²(θᵀa, θᵀb))^½.

    Directions are uniform on the unit sphere (shared by all observations); each 1-D W₂ compares sorted
    projections, with quantile interpolation when S ≠ S' (both quantile functions evaluated at
    max(S, S') common levels). For a pure shift δ, SW₂ = |δ|/√D in expectation, i.e. exactly the
    per-coordinate shift c when δ = c·(1, …, 1).

    Args:
        a: [S, B, D] method samples.
        b: [S', B, D] reference (e.g. exact posterior) samples.
        n_proj: number of random directions.
        generator: CPU generator for the directions (None: global RNG).

    Returns:
        [B] SW₂ in data units.
    """
    a, b = _flat_samples(a), _flat_samples(b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"batch/dimension mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    dirs = torch.randn(a.shape[-1], n_proj, generator=generator, dtype=torch.float64)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(device=a.device, dtype=a.dtype)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values  # [S, B, P]
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        levels = (torch.arange(n, device=a.device, dtype=a.dtype) + 0.5) / n
        pa, pb = _quantiles(pa, levels), _quantiles(pb, levels)
    w2_sq = (pa - pb).square().mean(0)  # [B, P]
    return w2_sq.mean(1).sqrt()


def mean_error(samples: Tensor, exact_mean: Tensor, region: Tensor | None = None) -> Tensor:
    """RMS error of the sample mean against the exact posterior mean.

    Args:
        samples: [S, B, D] method samples.
        exact_mean: [B, D] exact posterior mean (e.g. from `mixture_moments`).
        region: optional [B, D] / [D] weights of the coordinates counted (e.g. the hole); None = all.

    Returns:
        [B] sqrt(mean over the region of (mean_s x_s − m)²).
    """
    x = _flat_samples(samples)
    err = (x.mean(0) - _flat_per_image(exact_mean, x.shape[1])).square()
    return _region_mean(err, region).sqrt()


def std_ratio(samples: Tensor, exact_std: Tensor, region: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """Mean over coordinates of (sample std / exact std): 1 = calibrated spread, < 1 = over-confident.

    Coordinates whose exact std is ≤ eps (e.g. observed pixels without noise) are left out, since their
    ratio is undefined; restrict further with ``region`` (e.g. the hole).

    Args:
        samples: [S, B, D] method samples, S ≥ 2 (unbiased std).
        exact_std: [B, D] exact posterior standard deviations.
        region: optional [B, D] / [D] weights of the coordinates counted; None = all.
        eps: smallest exact std counted.

    Returns:
        [B] mean per-coordinate std ratio.
    """
    x = _flat_samples(samples)
    if x.shape[0] < 2:
        raise ValueError("std_ratio needs at least 2 samples per observation")
    ref = _flat_per_image(exact_std, x.shape[1])
    valid = (ref > eps).float()
    weight = valid if region is None else valid * _flat_per_image(region, x.shape[1])
    return _region_mean(x.std(0) / ref.clamp_min(eps), weight)


def mixture_moments(weights: Tensor, means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and per-coordinate std of a Gaussian mixture Σ_j w_j N(m_j, C_j).

    Args:
        weights: [B, J] component weights (rows sum to 1).
        means: [B, J, D].
        covs: [B, J, D, D].

    Returns:
        (mean [B, D], std [B, D]); var = Σ_j w_j (diag C_j + m_j²) − mean².
    """
    w = weights.float().unsqueeze(-1)
    mean = (w * means.float()).sum(1)
    second = (w * (covs.float().diagonal(dim1=-2, dim2=-1) + means.float().square())).sum(1)
    return mean, (second - mean.square()).clamp_min(0.0).sqrt()


def mixture_weight_error(samples: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> Tensor:
    """L1 distance between the empirical and the exact mixture-component weights.

    Each sample is assigned to the component of highest responsibility w_j N(x; m_j, C_j); the
    empirical weights are the assignment frequencies. Ranges over [0, 2].

    Args:
        samples: [S, B, D] method samples.
        weights: [B, J] exact posterior component weights.
        means: [B, J, D] component means.
        covs: [B, J, D, D] component covariances (positive definite).

    Returns:
        [B] Σ_j |ŵ_j − w_j|.
    """
    x = _flat_samples(samples).double()
    comp = MultivariateNormal(means.double(), covariance_matrix=covs.double())  # batch [B, J]
    log_resp = comp.log_prob(x.unsqueeze(2)) + weights.double().clamp_min(1e-300).log()  # [S, B, J]
    assign = log_resp.argmax(-1)  # [S, B]
    counts = torch.nn.functional.one_hot(assign, weights.shape[-1]).double().mean(0)  # [B, J]
    return (counts - weights.double()).abs().sum(-1).float()


def credible_coverage(
    samples_or_exact: Tensor, x_true: Tensor, level: float = 0.9, region: Tensor | None = None
) -> Tensor:
    """Fraction of true coordinates inside the per-coordinate central credible interval of the samples.

    A calibrated posterior covers about ``level`` of the coordinates of a ground truth drawn from it;
    applied to exact posterior samples this gives the reference value.

    Args:
        samples_or_exact: [S, B, D] samples (of a method, or of the exact posterior).
        x_true: [B, D] ground truth.
        level: central interval mass, e.g. 0.9 → [q_0.05, q_0.95] (linear interpolation).
        region: optional [B, D] / [D] weights of the coordinates counted; None = all.

    Returns:
        [B] coverage in [0, 1].
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = _flat_samples(samples_or_exact)
    probs = torch.tensor([(1.0 - level) / 2.0, (1.0 + level) / 2.0], dtype=x.dtype, device=x.device)
    lo, hi = torch.quantile(x, probs, dim=0)  # [B, D] each
    truth = _flat_per_image(x_true, x.shape[1])
    inside = ((truth >= lo) & (truth <= hi)).float()
    return _region_mean(inside, region)


def exact_posterior_metrics(samples: Tensor, x_true: Tensor, posterior: GaussianMixture, reference: Tensor, *,
                            region: Tensor | None = None, prior_mean: Tensor | None = None,
                            generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A method's samples against the exact posterior of an analytic prior (docs/algorithm.md §8), per image.

    Args:
        samples: [S, B, D] method samples (S ≥ 2).
        x_true: [B, D] ground truths.
        posterior: the exact posterior mixtures (weights [B, J], means [B, J, D], covs [B, J, D, D], float64).
        reference: [S', B, D] exact posterior samples.
        region: [B, D] coordinates counted by the std ratio and the coverages (the hole); None = all.
        prior_mean: [D] prior mean, or None (then prior_mean_rmse is NaN).
        generator: CPU generator of the sliced-Wasserstein directions.

    Returns:
        name → [B]: exact_mean_rmse (RMS error of the sample mean to the exact mean), prior_mean_rmse (the
        same for the prior mean, a baseline), exact_std_ratio (sample std / exact std, mean over the region;
        exact stds ≤ 1e-8 are left out; NaN for a single sample), sliced_w2 (to the reference samples),
        mode_weight_error (L1 between sample and exact component weights), coverage90 and coverage90_exact
        (90 % credible-interval coverage of the truth by the samples and by the reference).
    """
    em, es = posterior.mean().float(), posterior.std().float()
    if prior_mean is None:
        prior_rmse = torch.full_like(em[:, 0], float("nan"))
    else:   # the prior mean as the single "sample" of each image
        prior_rmse = mean_error(prior_mean.reshape(1, 1, -1).to(em).expand(1, em.shape[0], -1), em)
    weight = region.float() if region is not None else None
    ratio = std_ratio(samples, es, weight, eps=1e-8) if samples.shape[0] > 1 else torch.full_like(prior_rmse,
                                                                                                 float("nan"))
    return {
        "exact_mean_rmse": mean_error(samples, em),
        "prior_mean_rmse": prior_rmse,
        "exact_std_ratio": ratio,
        "sliced_w2": sliced_wasserstein(samples, reference, generator=generator),
        "mode_weight_error": mixture_weight_error(samples.double(), posterior.weights, posterior.means,
                                                  posterior.covs),
        "coverage90": credible_coverage(samples, x_true, 0.9, region=weight),
        "coverage90_exact": credible_coverage(reference, x_true, 0.9, region=weight),
    }
