"""Analytic Gaussian (mixture) priors against brute force and textbook formulas (docs/algorithm.md §8)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vipaint.operators import Downsample, Inpainting
from vipaint.priors import GaussianMixture, GaussianMixturePrior, GaussianPrior, smooth_covariance
from vipaint.priors.schedules import make_alphas_cumprod

F64 = torch.float64
SHAPE = (1, 4, 4)


D = 16


def _spd(d: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return scale * (a @ a.T) / d + 0.05 * torch.eye(d, dtype=F64)


def _mixture(j: int = 2, d: int = D, shape=SHAPE) -> GaussianMixturePrior:
    g = torch.Generator().manual_seed(11)
    means = 0.8 * torch.randn(j, d, generator=g, dtype=F64)
    covs = torch.stack([_spd(d, 20 + k) for k in range(j)])
    weights = torch.linspace(1.0, 2.0, j, dtype=F64)
    return GaussianMixturePrior(weights, means, covs, image_shape=shape)


def _brute_log_prob(prior: GaussianMixturePrior, z: torch.Tensor, t: int) -> torch.Tensor:
    ab = make_alphas_cumprod(1000)[t]
    comps = []
    for w, m, c in zip(prior.weights, prior.means, prior.covs, strict=True):
        mvn = MultivariateNormal(ab.sqrt() * m, ab * c + (1 - ab) * torch.eye(c.shape[0], dtype=F64))
        comps.append(w.log() + mvn.log_prob(z.reshape(z.shape[0], -1)))
    return torch.logsumexp(torch.stack(comps, 1), 1)


# -- analytic priors --------------------------------------------------------------------------------

def test_alphas_cumprod_is_ddpm_linear():
    prior = _mixture()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    torch.testing.assert_close(prior.alphas_cumprod, torch.cumprod(1 - betas, 0))
    assert prior.num_timesteps == 1000 and prior.latent_shape == SHAPE == prior.image_shape


@pytest.mark.parametrize("t", [0, 1, 250, 600, 999])
def test_log_prob_matches_dense_mixture(t):
    prior = _mixture(3)
    z = torch.randn(5, *SHAPE, dtype=F64)
    tt = torch.full((5,), t)
    torch.testing.assert_close(prior.log_prob(z, tt), _brute_log_prob(prior, z, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", [0, 1, 100, 500, 999])
def test_eps_is_minus_sigma_times_score(t):
    prior = _mixture(3)
    z = (0.5 * torch.randn(4, *SHAPE, dtype=F64)).requires_grad_(True)
    tt = torch.full((4,), t)
    (grad,) = torch.autograd.grad(prior.log_prob(z, tt).sum(), z)
    sigma = (1 - make_alphas_cumprod(1000)[t]).sqrt()
    eps = prior.eps(z.detach(), tt)
    assert eps.dtype == F64 and eps.shape == z.shape
    torch.testing.assert_close(eps, -sigma * grad, rtol=1e-8, atol=1e-10)


def test_eps_mixed_times_in_one_batch():
    prior = _mixture(2)
    z = torch.randn(3, *SHAPE, dtype=F64)
    t = torch.tensor([0, 400, 999])
    batched = prior.eps(z, t)
    for i in range(3):
        torch.testing.assert_close(batched[i], prior.eps(z[i:i + 1], t[i:i + 1])[0])


def _dense_inpainting(mask: torch.Tensor) -> torch.Tensor:
    """[B, D, D] diagonal matrices (rows of holes are zero)."""
    return torch.diag_embed(mask.reshape(mask.shape[0], -1).double())


def _dense_area_down(h: int, w: int, f: int) -> torch.Tensor:
    A = torch.zeros((h // f) * (w // f), h * w, dtype=F64)
    for i in range(h):
        for j in range(w):
            A[(i // f) * (w // f) + j // f, i * w + j] = 1.0 / f ** 2
    return A


def _textbook_posterior(m, S, A, y, s2):
    """Information form: Σ_post = (Σ⁻¹ + AᵀA/σ²)⁻¹, μ_post = Σ_post(Σ⁻¹m + Aᵀy/σ²)."""
    Si = torch.linalg.inv(S)
    cov = torch.linalg.inv(Si + A.T @ A / s2)
    mean = cov @ (Si @ m + A.T @ y / s2)
    return mean, cov


@pytest.mark.parametrize("kind", ["inpainting", "sr-area"])
def test_gaussian_exact_posterior_textbook(kind):
    mean = 0.2 * torch.randn(D, dtype=F64)
    cov = smooth_covariance(SHAPE, length_scale=1.5, variance=0.3)
    prior = GaussianPrior(mean, cov, image_shape=SHAPE)
    sigma_y = 0.1
    if kind == "inpainting":
        mask = (torch.rand(2, 1, 4, 4) > 0.5).float()
        mask[:, :, 0, 0] = 1
        op = Inpainting(mask, sigma_y=sigma_y)
        dense = _dense_inpainting(mask)
    else:
        op = Downsample(factor=2, mode="area", sigma_y=sigma_y)
        dense = _dense_area_down(4, 4, 2)[None].expand(2, -1, -1)
    x = torch.randn(2, *SHAPE)
    y = op(x) + (sigma_y * torch.randn_like(op(x)) if kind != "inpainting" else sigma_y * op(torch.randn_like(x)))
    post = prior.exact_posterior(op, y)
    assert post.weights.shape == (2, 1) and torch.allclose(post.weights, torch.ones(2, 1, dtype=F64))
    assert post.means.shape == (2, 1, D)
    covs = torch.broadcast_to(post.covs, (2, 1, D, D))   # batch shape checked in test_exact_posterior_batch_shape
    for b in range(2):
        m_ref, c_ref = _textbook_posterior(mean, cov, dense[b], y[b].reshape(-1).double(), sigma_y ** 2)
        torch.testing.assert_close(post.means[b, 0], m_ref, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(covs[b, 0], c_ref, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(post.mean()[b], m_ref, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(post.covariance()[b], c_ref, rtol=1e-7, atol=1e-8)
    # the observation actually moved the posterior away from the prior
    assert (post.mean() - mean).abs().max() > 0.05


@pytest.mark.parametrize("kind", [
    "inpainting",
    "sr-area",
])
def test_exact_posterior_batch_shape(kind):
    """The posterior of a batch of B observations is a batch of B mixtures that can be sampled."""
    prior = GaussianPrior(torch.zeros(D, dtype=F64), smooth_covariance(SHAPE), image_shape=SHAPE)
    op = Inpainting((torch.rand(2, 1, 4, 4) > 0.5).float(), sigma_y=0.1) if kind == "inpainting" \
        else Downsample(factor=2, mode="area", sigma_y=0.1)
    y = op(torch.randn(2, *SHAPE))
    post = prior.exact_posterior(op, y)
    assert post.weights.shape == (2, 1)
    assert post.means.shape == (2, 1, D)
    assert post.covs.shape == (2, 1, D, D)
    x = post.sample(5, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert x.shape == (5, 2, D) and torch.isfinite(x).all()


def test_mixture_exact_posterior_weights_brute_force():
    prior = _mixture(2)
    sigma_y = 0.2
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 2:, :] = 0
    op = Inpainting(mask, sigma_y=sigma_y)
    A = _dense_inpainting(mask)[0]
    # y near component 1 so that the weights are far from the prior weights, but not degenerate
    x = (0.5 * prior.means[0] + 0.5 * prior.means[1]).float().reshape(1, *SHAPE) + 0.1 * torch.randn(1, *SHAPE)
    y = op(x)
    post = prior.exact_posterior(op, y)
    yf = y.reshape(-1).double()
    logw = []
    for w, m, c in zip(prior.weights, prior.means, prior.covs, strict=True):
        pred = MultivariateNormal(A @ m, A @ c @ A.T + sigma_y ** 2 * torch.eye(D, dtype=F64))
        logw.append(w.log() + pred.log_prob(yf))
        m_ref, c_ref = _textbook_posterior(m, c, A, yf, sigma_y ** 2)
        k = len(logw) - 1
        torch.testing.assert_close(post.means[0, k], m_ref, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(post.covs[0, k], c_ref, rtol=1e-7, atol=1e-8)
    w_ref = torch.softmax(torch.stack(logw), 0)
    torch.testing.assert_close(post.weights[0], w_ref, rtol=1e-7, atol=1e-10)
    assert (post.weights[0] - prior.weights).abs().max() > 1e-3   # the data informed the weights


def test_gaussian_mixture_sample_moments():
    g = torch.Generator().manual_seed(0)
    d = 3
    weights = torch.tensor([[0.3, 0.7], [0.5, 0.5]], dtype=F64)
    means = torch.randn(2, 2, d, generator=g, dtype=F64)
    covs = torch.stack([torch.stack([_spd(d, 1), _spd(d, 2)]), torch.stack([_spd(d, 3), _spd(d, 4)])])
    gm = GaussianMixture(weights, means, covs)
    # mean / covariance by the law of total expectation / covariance, written out by hand
    for b in range(2):
        mb = weights[b, 0] * means[b, 0] + weights[b, 1] * means[b, 1]
        torch.testing.assert_close(gm.mean()[b], mb)
        cb = sum(weights[b, j] * (covs[b, j] + torch.outer(means[b, j] - mb, means[b, j] - mb)) for j in range(2))
        torch.testing.assert_close(gm.covariance()[b], cb)
        torch.testing.assert_close(gm.std()[b], cb.diagonal().sqrt())
    n = 20000
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    s = gm.sample(n, gens)
    assert s.shape == (n, 2, d) and s.dtype == F64
    for b in range(2):
        emp_mean = s[:, b].mean(0)
        emp_cov = torch.cov(s[:, b].T)
        assert (emp_mean - gm.mean()[b]).abs().max() < 0.03
        assert (emp_cov - gm.covariance()[b]).abs().max() < 0.05
    # per-image generators: the same seeds give the same samples
    s2 = gm.sample(n, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert torch.equal(s, s2)


def test_prior_sample_moments():
    prior = _mixture(2, d=4, shape=(1, 2, 2))
    x = prior.sample(20000, torch.Generator().manual_seed(3)).reshape(20000, -1).double()
    assert x.shape == (20000, 4)
    gm = GaussianMixture(prior.weights[None], prior.means[None], prior.covs[None])
    assert (x.mean(0) - gm.mean()[0]).abs().max() < 0.03
    assert (torch.cov(x.T) - gm.covariance()[0]).abs().max() < 0.05
    torch.testing.assert_close(prior.mean_image().double().reshape(-1), gm.mean()[0], rtol=1e-6, atol=1e-6)


def test_mixture_prior_errors():
    covs = torch.eye(4, dtype=F64)[None].repeat(2, 1, 1)
    means = torch.zeros(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixturePrior(torch.ones(3), means, covs, image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixturePrior(torch.tensor([1.0, -0.5]), means, covs, image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixturePrior(torch.zeros(2), means, covs, image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixturePrior(torch.ones(2), means, covs[:, :3, :3], image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixturePrior(torch.ones(2), means, covs[:1], image_shape=(1, 2, 2))
    bad = covs.clone()
    bad[1, 0, 0] = -1.0
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePrior(torch.ones(2), means, bad, image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="image_shape"):
        GaussianMixturePrior(torch.ones(2), means, covs)
    with pytest.raises(ValueError, match="beta_schedule"):
        GaussianMixturePrior(torch.ones(2), means, covs, image_shape=(1, 2, 2), beta_schedule="cosine")
    ok = GaussianMixturePrior(torch.tensor([1.0, 3.0]), means.reshape(2, 1, 2, 2), covs)
    torch.testing.assert_close(ok.weights, torch.tensor([0.25, 0.75], dtype=F64))
    assert ok.latent_shape == (1, 2, 2)
