"""`exact`: draws from the exact posterior of an analytic Gaussian-mixture prior (docs/algorithm.md §8)."""

from __future__ import annotations

from torch import Tensor

from vipaint.methods.base import MethodResult
from vipaint.methods.steps import finish
from vipaint.operators import LinearOperator
from vipaint.priors.analytic import GaussianMixture, GaussianMixturePrior
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["exact"]


def exact(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
          cond: Tensor | None = None, progress: bool = False) -> MethodResult:
    """Exact posterior samples p(x | y) of an analytic Gaussian-mixture prior (docs/algorithm.md §8), image b
    drawn with its own generator `rng.generators[b]`. No network passes."""
    if not isinstance(prior, GaussianMixturePrior):
        raise TypeError(f"method 'exact' needs an analytic prior (GaussianMixturePrior, GaussianPrior, "
                        f"SyntheticMixturePrior); got {type(prior).__name__}, whose posterior is not "
                        f"available in closed form")
    post = prior.exact_posterior(operator, y)
    b = y.shape[0]
    if post.covs.shape[0] != b:        # a batch-free operator (SR, blur) gives one shared covariance
        post = GaussianMixture(post.weights.expand(b, -1), post.means.expand(b, -1, -1),
                               post.covs.expand(b, -1, -1, -1))
    x = post.sample(n_samples, rng.generators)                       # [S, B, D] float64
    x = x.to(device=y.device, dtype=y.dtype).reshape((n_samples, y.shape[0]) + tuple(prior.image_shape))
    return finish(x, nfe=0, n_backprop=0)
