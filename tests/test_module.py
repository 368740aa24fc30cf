"""VIPaintModule: the batch checks, `predict_step`'s typed result and its metrics on an analytic prior, the
prior handed to the datamodule, and `exact_posterior_metrics` against the formulas `predict_step` computed
inline before they moved into vipaint/metrics/posterior.py."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import vipaint.module
from vipaint.data import InverseProblemDataModule, InverseProblemDataset, collate
from vipaint.masks import BoxMask, HalfPlaneMask
from vipaint.methods import MethodResult
from vipaint.metrics import (
    credible_coverage,
    exact_posterior_metrics,
    mixture_weight_error,
    sliced_wasserstein,
)
from vipaint.module import Prediction, VIPaintModule
from vipaint.priors import GaussianMixture, GaussianPrior, SyntheticMixturePrior
from vipaint.seeding import ImageRNG

S = 16
EXACT_KEYS = ["exact_mean_rmse", "prior_mean_rmse", "exact_std_ratio", "sliced_w2", "mode_weight_error",
              "coverage90", "coverage90_exact"]


# -- exact_posterior_metrics == the old inline formulas -------------------------------------------------

def old_inline_metrics(post: GaussianMixture, samples: torch.Tensor, x: torch.Tensor, region: torch.Tensor | None,
                       prior_mean: torch.Tensor, ref: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The code of `VIPaintModule.predict_step` / `_posterior_metrics` before the move, verbatim up to names."""
    s = samples.shape[0]
    em, es = post.mean().float(), post.std().float()
    sf = samples.reshape(s, samples.shape[1], -1)
    m = {"exact_mean_rmse": (sf.mean(0) - em).pow(2).mean(-1).sqrt(),
         "prior_mean_rmse": (prior_mean.reshape(1, -1).to(em) - em).pow(2).mean(-1).sqrt()}
    ratio = sf.std(0) / es.clamp_min(1e-8)
    m["exact_std_ratio"] = ratio.mean(-1) if region is None else \
        (ratio * region).sum(-1) / region.sum(-1).clamp_min(1)
    g = torch.Generator().manual_seed(int(seed))
    reg = region.float() if region is not None else None
    m.update({"sliced_w2": sliced_wasserstein(sf, ref, generator=g),
              "mode_weight_error": mixture_weight_error(sf.double(), post.weights, post.means, post.covs),
              "coverage90": credible_coverage(sf, x, 0.9, region=reg),
              "coverage90_exact": credible_coverage(ref, x, 0.9, region=reg)})
    return m


def hand_mixture(b: int = 2, j: int = 2, d: int = 6) -> GaussianMixture:
    g = torch.Generator().manual_seed(11)
    a = torch.randn(b, j, d, d, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(-1, -2) / d + 0.05 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.softmax(torch.randn(b, j, generator=g, dtype=torch.float64), -1),
                           torch.randn(b, j, d, generator=g, dtype=torch.float64), covs)


@pytest.mark.parametrize("with_region", [False, True])
def test_exact_posterior_metrics_equal_the_old_inline_formulas(with_region):
    post = hand_mixture()                                  # D = 6: not a power of 2, so a mean's 1/D rounds
    g = torch.Generator().manual_seed(5)
    samples = torch.randn(5, 2, 6, generator=g) * 0.7 + 0.1
    x = torch.randn(2, 6, generator=g)
    region = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool) if with_region else None
    prior_mean = torch.linspace(-0.5, 0.5, 6)
    ref = post.sample(64, ImageRNG(3, [4, 9], stream="exact-reference").generators).float()
    want = old_inline_metrics(post, samples, x, region, prior_mean, ref, seed=3)
    got = exact_posterior_metrics(samples, x, post, ref, region=region, prior_mean=prior_mean,
                                  generator=torch.Generator().manual_seed(3))
    assert list(got) == list(want) == EXACT_KEYS           # same order: the per-image JSON keeps its layout
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (k, got[k], want[k])


def test_exact_posterior_metrics_edge_cases():
    post = hand_mixture()
    samples = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(0))
    ref = post.sample(8, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]).float()
    out = exact_posterior_metrics(samples, torch.zeros(2, 6), post, ref)
    assert out["prior_mean_rmse"].isnan().all()            # no prior mean given
    assert out["exact_std_ratio"].isnan().all()            # one sample has no spread (the old code: NaN too)
    assert torch.isfinite(out["exact_mean_rmse"]).all()


# -- predict_step on an analytic prior -------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixture() -> SyntheticMixturePrior:
    return SyntheticMixturePrior(image_shape=(1, 8, 8), n_components=3, seed=0)


def prior_batch(prior, n: int = 2, masks=None) -> dict:
    truths = prior.sample(n, torch.Generator().manual_seed(0))
    ds = InverseProblemDataset(source="prior", prior_samples=truths, masks=masks or [BoxMask(size=0.5)])
    return collate([ds[k] for k in range(len(ds))])


def test_predict_step_returns_a_prediction(mixture):
    module = VIPaintModule(mixture, method="ddnm", method_options={"n_steps": 3}, n_samples=3, seed=1)
    batch = prior_batch(mixture)
    out = module.predict_step(batch, 0)
    assert isinstance(out, Prediction) and isinstance(out.result, MethodResult)
    assert out.index.tolist() == [0, 1] and out.path == ["prior sample 0", "prior sample 1"]
    assert out.mask_name == ["box", "box"] and out.operator == "inpainting"
    assert out.result.samples.shape == (3, 2, 1, 8, 8) and out.composite.shape == (3, 2, 1, 8, 8)
    assert out.result.nfe > 0 and not out.result.failed.any()
    assert list(out.metrics) == ["psnr", "ssim", "psnr_mean_sample", "psnr_hole"] + EXACT_KEYS
    assert all(v.shape == (2,) and v.device.type == "cpu" for v in out.metrics.values())
    # the composite keeps the observation on the observed pixels and the samples in the hole
    obs = out.mask.bool().expand_as(out.image)
    assert torch.equal(out.composite[:, obs], out.y[obs].expand(3, -1))
    assert torch.equal(out.composite[:, ~obs], out.result.samples[:, ~obs])
    # a rerun of the same batch gives the same numbers (all randomness from (seed, index))
    again = module.predict_step(batch, 0)
    assert all(torch.equal(again.metrics[k], v) for k, v in out.metrics.items())


def test_metrics_rank_exact_samples_above_prior_samples(mixture, monkeypatch):
    """The exact-posterior metrics through `predict_step`: a 'method' returning exact posterior samples
    scores near the ideal values, one returning prior samples (ignoring y) does not."""
    batch = prior_batch(mixture, n=4, masks=[HalfPlaneMask(angle=90)])

    def fake(kind):
        def solve(method, prior, op, y, *, n_samples, seed, indices, **_):
            gens = ImageRNG(seed + 1, indices, stream="fake").generators
            if kind == "exact":
                x = prior.exact_posterior(op, y).sample(n_samples, gens).float()
            else:
                x = torch.stack([prior.sample(n_samples, g).reshape(n_samples, -1) for g in gens], 1)
            return MethodResult(samples=x.reshape(n_samples, y.shape[0], *prior.image_shape), nfe=0, n_backprop=0)
        return solve

    module = VIPaintModule(mixture, method="ddnm", n_samples=64, seed=0)
    scores = {}
    for kind in ("exact", "prior"):
        monkeypatch.setattr(vipaint.module, "solve_full", fake(kind))
        scores[kind] = {k: float(v.mean()) for k, v in module.predict_step(batch, 0).metrics.items()}
    ex, pr = scores["exact"], scores["prior"]
    assert abs(ex["exact_std_ratio"] - 1) < 0.15 < abs(pr["exact_std_ratio"] - 1)
    assert ex["exact_mean_rmse"] < 0.5 * pr["exact_mean_rmse"]
    assert ex["sliced_w2"] < 0.5 * pr["sliced_w2"]
    assert ex["mode_weight_error"] < pr["mode_weight_error"]
    assert abs(ex["coverage90"] - ex["coverage90_exact"]) < 0.1


def test_setup_gives_the_datamodule_its_prior(mixture):
    """Source "prior": the module's setup hands its prior to the datamodule (no reaching through the trainer);
    the ground truths are the prior samples drawn with (data seed + 7919), as before."""
    dm = InverseProblemDataModule("prior", num_images=3, batch_size=2, seed=4, masks=[BoxMask(size=0.5)])
    with pytest.raises(ValueError, match="needs an analytic prior"):
        dm.predict_dataloader()
    module = VIPaintModule(mixture, method="ddnm", method_options={"n_steps": 2}, n_samples=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False)
    preds = trainer.predict(module, datamodule=dm)     # no writer: the predictions come back
    assert dm.prior is mixture and all(isinstance(p, Prediction) for p in preds)
    assert torch.cat([p.index for p in preds]).tolist() == [0, 1, 2]
    truths = mixture.sample(3, torch.Generator().manual_seed(4 + 7919))
    assert torch.equal(torch.cat([p.image for p in preds]), truths)


# -- VIPaintModule._check ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def module():
    prior = GaussianPrior(torch.zeros(S * S), torch.eye(S * S), image_shape=(1, S, S))
    return VIPaintModule(prior)


def test_check_accepts_good_batch(module):
    batch = {"image": torch.zeros(2, 1, S, S), "mask": torch.ones(2, 1, S, S), "index": torch.tensor([0, 1]),
             "path": ["a.png", "b.png"]}
    module._check(batch)   # no error


def test_check_wrong_channels(module):
    batch = {"image": torch.zeros(2, 3, S, S), "mask": torch.ones(2, 1, S, S), "index": torch.tensor([0, 1]),
             "path": ["data/000.png", "data/001.png"]}
    with pytest.raises(ValueError) as info:
        module._check(batch)
    msg = str(info.value)
    assert "dataset index 0" in msg and "000.png" in msg and "channels" in msg
    assert "(3, 16, 16)" in msg and "(1, 16, 16)" in msg


def test_check_wrong_size(module):
    batch = {"image": torch.zeros(1, 1, 8, 8), "mask": torch.ones(1, 1, 8, 8), "index": torch.tensor([5]),
             "path": ["e.png"]}
    with pytest.raises(ValueError, match=r"dataset index 5 \(file e\.png\).*image_size"):
        module._check(batch)


def test_check_nan_pixels(module):
    img = torch.zeros(2, 1, S, S)
    img[1, 0, 3, 4] = float("nan")
    mask = torch.ones(2, 1, S, S)
    batch = {"image": img, "mask": mask, "index": torch.tensor([7, 42]), "path": ["a.png", "b.png"]}
    with pytest.raises(ValueError, match="NaN") as info:
        module._check(batch)
    assert "dataset index 42" in str(info.value) and "b.png" in str(info.value)
    img[1, 0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="dataset index 42"):
        module._check(batch)


def test_check_mask_size(module):
    batch = {"image": torch.zeros(1, 1, S, S), "mask": torch.ones(1, 1, 8, 8), "index": torch.tensor([3]),
             "path": ["c.png"]}
    with pytest.raises(ValueError, match=r"dataset index 3 \(file c\.png\): mask shape"):
        module._check(batch)
