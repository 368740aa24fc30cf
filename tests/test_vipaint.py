"""VIPaint against ground truth (analytic priors), seeding and per-image independence."""

import pytest
import torch

import vipaint
from vipaint.methods.vipaint import VIPaintConfig
from vipaint.operators import Downsample, Inpainting
from vipaint.priors import GaussianPrior, SyntheticMixturePrior, smooth_covariance
from vipaint.seeding import ImageRNG

EXACT = dict(preset="official", zeta_over_samples=False,     # the nats settings these tests were written for
             likelihood="gaussian", likelihood_scale=None, reduction="sum", beta_prior=1.0, beta_hier=1.0,
             zeta=0.002, refine_steps=50)


def _gaussian_problem(b: int = 4):
    shape = (1, 8, 8)
    prior = GaussianPrior(torch.zeros(64), smooth_covariance(shape, length_scale=2.0, variance=0.25),
                          image_shape=shape)
    x = prior.sample(b, torch.Generator().manual_seed(1))
    mask = (torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, range(b), "observation"))
    return prior, op, y, mask


def test_exact_posterior_gaussian_acceptance():
    """Issue acceptance: sample-mean RMS error ≤ 1/3 of the prior mean's; std within [0.5, 2]× exact."""
    prior, op, y, mask = _gaussian_problem()
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=64, seed=0, **EXACT)
    assert not res.failed.any()
    post = prior.exact_posterior(op, y)
    s = res.samples.reshape(64, 4, -1).double()
    hole = (1 - mask).reshape(4, -1).bool()
    err = lambda m: torch.sqrt(((m - post.mean()) ** 2)[hole].mean()).item()  # noqa: E731
    vip_err, prior_err = err(s.mean(0)), err(torch.zeros_like(post.mean()))
    std_ratio = (s.std(0) / post.std())[hole].mean().item()
    print(f"VIPaint mean RMSE {vip_err:.4f} vs prior mean {prior_err:.4f}; hole std ratio {std_ratio:.3f}")
    assert vip_err <= prior_err / 3
    assert 0.5 <= std_ratio <= 2.0


def test_objective_decreases_and_counts_passes():
    prior, op, y, _ = _gaussian_problem(2)
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=0, iterations=60, refine_steps=5,
                             **{k: v for k, v in EXACT.items() if k != "refine_steps"})
    trace = res.traces["objective"]
    assert trace.shape == (60, 2)
    assert (trace[-10:].mean(0) < trace[:10].mean(0)).all()
    assert res.nfe == 60 * 3 + 1 + 5 and res.n_backprop == 60 * 3 + 5


def test_same_seed_identical_and_index_changes_noise():
    prior, op, y, _ = _gaussian_problem(2)
    kw = dict(n_samples=3, iterations=3, refine_steps=3)
    a = vipaint.solve("vipaint", prior, op, y, seed=5, **kw)
    b = vipaint.solve("vipaint", prior, op, y, seed=5, **kw)
    c = vipaint.solve("vipaint", prior, op, y, seed=5, indices=[10, 11], **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_refine_likelihood_changes_only_stage_two():
    cfg = VIPaintConfig()
    assert cfg.make_refine_likelihood() == cfg.make_likelihood()
    lik = VIPaintConfig(refine_likelihood="l2norm", refine_reduction="sum").make_refine_likelihood()
    assert (lik.kind, lik.scale, lik.reduction) == ("l2norm", None, "sum")
    prior, op, y, _ = _gaussian_problem(2)
    kw = dict(n_samples=2, seed=0, iterations=3, refine_steps=3)
    a = vipaint.solve_full("vipaint", prior, op, y, **kw)
    b = vipaint.solve_full("vipaint", prior, op, y, refine_likelihood="l2norm", refine_reduction="sum", **kw)
    assert torch.equal(a.traces["objective"], b.traces["objective"])      # same fit
    assert not torch.allclose(a.samples, b.samples)                       # different guidance


def test_image_result_independent_of_batch():
    """An image's samples are the same alone and inside a batch (per-image λ, seeds and losses)."""
    prior = SyntheticMixturePrior(image_shape=(1, 8, 8), n_components=2)
    x = prior.sample(3, torch.Generator().manual_seed(3))
    mask = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, [7, 8, 9], "observation"))
    kw = dict(n_samples=2, seed=1, iterations=5, refine_steps=4)
    batch = vipaint.solve("vipaint", prior, op, y, indices=[7, 8, 9], **kw)
    alone = vipaint.solve("vipaint", prior, Inpainting(mask[1:2], sigma_y=0.05), y[1:2], indices=[8], **kw)
    torch.testing.assert_close(batch[:, 1:2], alone, atol=1e-4, rtol=1e-4)


def test_super_resolution_runs_and_beats_prior_mean():
    prior = SyntheticMixturePrior(image_shape=(1, 8, 8), n_components=1)
    x = prior.sample(2, torch.Generator().manual_seed(0))
    op = Downsample(factor=2, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, range(2), "observation"))
    s = vipaint.solve("vipaint", prior, op, y, n_samples=16, seed=0, **EXACT)
    assert s.shape == (16, 2, 1, 8, 8)
    em = prior.exact_posterior(op, y).mean().float()
    err = (s.reshape(16, 2, -1).mean(0) - em).pow(2).mean().sqrt()
    prior_err = (prior.mean_image().reshape(1, -1) - em).pow(2).mean().sqrt()
    assert err < prior_err / 2


def test_non_finite_elbo_flags_only_that_image():
    prior, op, y, _ = _gaussian_problem(2)
    y = y.clone()
    y[1] = y[1] * 1e30          # finite input, but its energy overflows to inf
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=0, iterations=3, refine_steps=3)
    assert res.failed.tolist() == [False, True]
    assert "non-finite" in res.reasons[1]
    assert torch.isfinite(res.samples[:, 0]).all()


def test_bad_inputs_to_solve():
    prior, op, y, _ = _gaussian_problem(2)
    import pytest

    with pytest.raises(ValueError, match="unknown method"):
        vipaint.solve("nope", prior, op, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        vipaint.solve("vipaint", prior, op, torch.full_like(y, float("nan")))
    with pytest.raises(ValueError, match="operator describes 2 images"):
        vipaint.solve("vipaint", prior, op, y[:1])
    with pytest.raises(TypeError, match="unknown VIPaint option"):
        vipaint.solve("vipaint", prior, op, y, iterationz=3)


def test_initial_image_fills():
    """init_fill: "zero" is A⁺y; "observed_mean" puts each image's observed mean (per channel) into the
    holes, keeps the observed pixels, and gives 0 for an image with nothing observed."""
    from vipaint.methods.base import initial_image

    mask = torch.zeros(3, 1, 4, 4)
    mask[0, :, :2] = 1                          # top half observed
    mask[1] = 1                                 # everything observed
    y = torch.arange(3 * 2 * 16, dtype=torch.float32).reshape(3, 2, 4, 4) / 100 * mask
    op = Inpainting(mask, sigma_y=0.0)
    assert torch.equal(initial_image(op, y, (2, 4, 4)), y)
    x = initial_image(op, y, (2, 4, 4), fill="observed_mean")
    torch.testing.assert_close(x * mask, y)
    for c in range(2):                          # hand-computed mean of the top half of image 0
        torch.testing.assert_close(x[0, c, 2:], torch.full((2, 4), y[0, c, :2].mean().item()))
    torch.testing.assert_close(x[1], y[1])
    assert torch.equal(x[2], torch.zeros(2, 4, 4))
    sr = Downsample(factor=2, sigma_y=0.0)      # no null space to speak of: both fills agree
    ys = sr(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(initial_image(sr, ys, (1, 8, 8), fill="observed_mean"),
                               initial_image(sr, ys, (1, 8, 8)), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="init_fill"):
        initial_image(op, y, (2, 4, 4), fill="mean")


def test_init_fill_changes_the_fit():
    prior, op, y, _ = _gaussian_problem(2)
    kw = dict(n_samples=2, seed=0, iterations=3, refine_steps=3)
    a = vipaint.solve_full("vipaint", prior, op, y, init_fill="zero", **kw)
    b = vipaint.solve_full("vipaint", prior, op, y, init_fill="observed_mean", **kw)
    assert not torch.equal(a.traces["objective"], b.traces["objective"])
