"""The fit's start and objective as separate pieces (`vipaint.methods.vipaint_objective`, docs/algorithm.md
2.3 and §3): they must be exactly what `fit_posterior` runs."""

import torch

from vipaint.methods.vipaint import VIPaintConfig, fit_posterior, initialise_fit
from vipaint.operators import Inpainting
from vipaint.priors import SyntheticMixturePrior
from vipaint.seeding import ImageRNG


def _problem(h: int = 8, b: int = 2):
    prior = SyntheticMixturePrior(image_shape=(1, h, h), n_components=1)
    x = prior.sample(b, torch.Generator().manual_seed(1))
    mask = (torch.rand(b, 1, h, h, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    return prior, op, op.observe(x, ImageRNG(0, range(b), "observation")), mask


def test_initialise_fit_is_the_fits_start():
    """`initialise_fit` draws what `fit_posterior` draws first: with the same stream, its objective gives the
    fit's first trace value exactly, its q_λ equals a zero-iteration fit, and the same evaluation stream
    gives the same estimate twice (the common random numbers of benchmarks/fit_descent.py)."""
    prior, op, y, _ = _problem(h=8, b=2)
    cfg = VIPaintConfig(iterations=1)
    _, trace, _, _ = fit_posterior(prior, op, y, ImageRNG(0, range(2)), cfg)
    rng = ImageRNG(0, range(2))
    post, objective = initialise_fit(prior, op, y, rng, cfg)
    torch.testing.assert_close(objective(post, prior, op, y, rng).detach(), trace[0])
    zero, _, _, _ = fit_posterior(prior, op, y, ImageRNG(0, range(2)), cfg.overridden(iterations=0))
    torch.testing.assert_close(post.mu, zero.mu)
    with torch.no_grad():
        a = objective(post, prior, op, y, ImageRNG(5, range(2), "evaluate"))
        b = objective(post, prior, op, y, ImageRNG(5, range(2), "evaluate"))
        c = objective(post, prior, op, y, ImageRNG(6, range(2), "evaluate"))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
