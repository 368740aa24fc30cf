"""VIPaint with latent diffusers priors (KL UNet, VQ cross-attention UNet, DiT): gradients reach the
posterior through the decoder, and the method runs end to end."""

import pytest
import torch
from latent_folders import NAMES, SPEC, labels_for

import vipaint
from vipaint.elbo import negative_elbo
from vipaint.likelihood import Likelihood
from vipaint.operators import Inpainting
from vipaint.posterior import HierarchicalPosterior
from vipaint.seeding import ImageRNG

pytest_plugins = ["latent_folders"]


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_lambda_through_decoder(priors, name):
    """Only the reconstruction term (β = 0): a non-zero ∂/∂μ must have passed through D(x̂0(z_{T_s}))."""
    prior = priors[name]
    b = 2
    y_img = torch.rand(b, *prior.image_shape) * 2 - 1
    mask = torch.ones(b, 1, *prior.image_shape[1:])
    mask[..., : prior.image_shape[1] // 2, :] = 0
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(y_img, ImageRNG(0, [0, 1], stream="obs"))
    rng = ImageRNG(0, [0, 1])
    with torch.no_grad():
        y_enc = prior.encode(op.pinv(y, prior.image_shape))
    post = HierarchicalPosterior.initialise(y_enc, prior, [550, 400], rng)
    grid = torch.tensor([550, 700, 850, 999])
    terms = negative_elbo(post, prior, op, y, Likelihood("laplace", 0.01), rng, n_mc=2, grid=grid, eta=0.2 ** 0.5,
                          beta_prior=0.0, beta_hier=0.0, cond=labels_for(name, b))
    terms.objective.sum().backward()
    g = post.mu.grad
    assert g is not None and torch.isfinite(g).all()
    assert g[0].abs().sum() > 0 and g[-1].abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_vipaint_end_to_end(priors, name):
    prior = priors[name]
    b = 2
    x = torch.rand(b, *prior.image_shape) * 2 - 1
    mask = torch.ones(b, 1, *prior.image_shape[1:])
    mask[..., 4:-4, 4:-4] = 0
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, [0, 1], stream="obs"))
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=1, cond=labels_for(name, b),
                             iterations=2, n_mc=2, refine_steps=3, prior_grid_points=20,
                             refine_guidance=3.0 if SPEC[name][4] else 1.0)
    assert res.samples.shape == (2, b, *prior.image_shape)
    assert torch.isfinite(res.samples).all() and not res.failed.any()
    assert res.traces["objective"].shape == (2, b)
