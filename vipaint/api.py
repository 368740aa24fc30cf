"""The one-call public API: `vipaint.solve(method, prior, operator, y, ...)`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vipaint.methods import METHODS, MethodResult
from vipaint.methods.steps import count_codec
from vipaint.operators import LinearOperator
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["solve", "solve_full"]


def solve_full(method: str, prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int = 4,
               seed: int = 0, indices: Sequence[int] | Tensor | None = None, cond: Tensor | None = None,
               progress: bool = False, **options: object) -> MethodResult:
    """Like `solve`, returning the full `MethodResult` (samples, network passes, decoder / encoder calls,
    failures, traces)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    if y.dim() < 2:
        raise ValueError(f"y must have a batch dimension, got shape {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("the observation y contains NaN or inf values")
    b = y.shape[0]
    if indices is None:
        indices = list(range(b))
    if len(indices) != b:
        raise ValueError(f"got {len(indices)} indices for a batch of {b} observations")
    if operator.batch_size not in (None, b):
        raise ValueError(f"operator describes {operator.batch_size} images but y holds {b}")
    rng = ImageRNG(seed, indices, stream=f"method:{method}", device=y.device)
    with count_codec(prior) as codec:                                   # decoder / encoder calls, all methods
        res = METHODS[method](prior, operator, y, n_samples=n_samples, rng=rng, cond=cond, progress=progress,
                              **options)
    res.n_decode, res.n_encode = codec.decode, codec.encode
    return res


def solve(method: str, prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int = 4,
          seed: int = 0, indices: Sequence[int] | Tensor | None = None, cond: Tensor | None = None,
          progress: bool = False, **options: object) -> Tensor:
    """Posterior samples [n_samples, B, C, H, W] for the B observations y = A(x) + n.

    Args:
        method: "vipaint" or a peer method's name (see `vipaint.methods.METHODS`).
        prior: a `vipaint.priors.Prior` (diffusers or analytic).
        operator: a `vipaint.operators.LinearOperator` whose per-image parameters match y's batch.
        y: observations [B, ...].
        n_samples: samples per observation.
        seed: global seed; image b draws from a stream derived from (seed, indices[b]).
        indices: dataset index of each observation (default 0..B−1).
        cond: class labels [B] for class-conditional priors.
        progress: show progress bars.
        **options: method options (for VIPaint, fields of `vipaint.methods.VIPaintConfig`).
    """
    return solve_full(method, prior, operator, y, n_samples=n_samples, seed=seed, indices=indices,
                      cond=cond, progress=progress, **options).samples
