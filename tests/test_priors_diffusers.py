"""Diffusers priors loaded through the real `save_pretrained` / `from_pretrained` path (docs/algorithm.md §1):
shapes, schedules, prediction-type conversion, guidance, latent codecs, offline Hub behaviour."""

from __future__ import annotations

import math
import time

import pytest
import torch

from vipaint.priors import DiffusersPrior, PriorNotFoundError

F64 = torch.float64
diffusers = pytest.importorskip("diffusers")

UNET_KW = dict(layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def _save(root, *, in_ch=1, out_ch=1, prediction_type="epsilon", vae=False, **unet_extra):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=in_ch, out_channels=out_ch, **UNET_KW, **unet_extra)
    unet.save_pretrained(root / "unet")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    sched.save_pretrained(root / "scheduler")
    ae = None
    if vae:
        ae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16),
                                     layers_per_block=1, norm_num_groups=4,
                                     down_block_types=("DownEncoderBlock2D",) * 2,
                                     up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
        ae.save_pretrained(root / "vae")
    return unet.eval(), sched, ae


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel_prior")
    unet, sched, _ = _save(root)
    return DiffusersPrior(str(root)), unet, sched


def _raw(unet, z, t):
    with torch.no_grad():
        return unet(z, t).sample


def test_pixel_prior_shapes_and_schedule(pixel):
    prior, unet, sched = pixel
    assert prior.latent_shape == (1, 8, 8) == prior.image_shape
    assert not prior.is_latent and prior.codec is None and prior.prediction_type == "epsilon"
    torch.testing.assert_close(prior.alphas_cumprod, sched.alphas_cumprod.double(), rtol=0, atol=0)
    assert prior.alphas_cumprod.dtype == F64 and prior.num_timesteps == 1000
    torch.testing.assert_close(prior.alpha_bar(torch.tensor([0, 999])), sched.alphas_cumprod[[0, 999]].float())
    z = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999])
    e = prior.eps(z, t)
    assert e.shape == z.shape and torch.isfinite(e).all()
    ref = _raw(unet, z, t)
    assert ref.abs().mean() > 1e-3                       # the tiny net's output is not trivially zero
    torch.testing.assert_close(e, ref, rtol=1e-5, atol=1e-6)   # the saved weights were loaded
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(prior.encode(x), x) and torch.equal(prior.decode(x), x)


def test_pixel_prior_gradients_reach_z_not_weights(pixel):
    prior, _, _ = pixel
    assert all(not p.requires_grad for p in prior.parameters())
    z = torch.randn(2, 1, 8, 8, requires_grad=True)
    prior.eps(z, torch.tensor([10, 700])).square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_type_conversion(tmp_path, prediction_type):
    unet, sched, _ = _save(tmp_path, prediction_type=prediction_type)
    prior = DiffusersPrior(str(tmp_path))
    assert prior.prediction_type == prediction_type
    z = torch.randn(3, 1, 8, 8, dtype=F64)
    t = torch.tensor([5, 400, 990])
    out = _raw(unet, z.float(), t).double()
    ab = sched.alphas_cumprod.double()[t][:, None, None, None]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    if prediction_type == "v_prediction":     # v = α ε − σ x0, z = α x0 + σ ε  ⇒  ε = σ z + α v
        want = s * z + a * out
    else:                                     # x0-prediction: ε = (z − α x0)/σ
        want = (z - a * out) / s
    got = prior.eps(z, t)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and the conversion is consistent with the forward process: z = α x0 + σ ε
    if prediction_type == "sample":
        torch.testing.assert_close(a * out + s * got, z, rtol=1e-6, atol=1e-6)
    else:
        x0 = a * z - s * out
        torch.testing.assert_close(a * x0 + s * got, z, rtol=1e-6, atol=1e-6)


def test_learned_variance_returns_first_half(tmp_path):
    unet, _, _ = _save(tmp_path, out_ch=2)
    prior = DiffusersPrior(str(tmp_path))
    z = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 600])
    out = _raw(unet, z, t)
    assert out.shape == (2, 2, 8, 8)
    e = prior.eps(z, t)
    assert e.shape == (2, 1, 8, 8)
    torch.testing.assert_close(e, out[:, :1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(e, out[:, 1:])


def test_class_conditional_guidance(tmp_path):
    unet, _, _ = _save(tmp_path, num_class_embeds=4)     # 3 real classes + the null label 3
    prior = DiffusersPrior(str(tmp_path), num_classes=3)
    z = torch.randn(2, 1, 8, 8)
    t = torch.tensor([100, 800])
    c = torch.tensor([0, 2])
    with torch.no_grad():
        e_c = unet(z, t, class_labels=c).sample
        e_u = unet(z, t, class_labels=torch.full_like(c, 3)).sample
    assert not torch.allclose(e_c, e_u)
    torch.testing.assert_close(prior.eps(z, t, c), e_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prior.eps(z, t, c, guidance_scale=3.0), e_u + 3.0 * (e_c - e_u),
                               rtol=1e-4, atol=1e-5)


def test_latent_prior(tmp_path):
    _, _, vae = _save(tmp_path, in_ch=2, out_ch=2, vae=True)
    prior = DiffusersPrior(str(tmp_path))
    assert prior.is_latent and prior.codec_kind == "kl"
    assert prior.latent_shape == (2, 8, 8)
    assert prior.image_shape == (1, 16, 16)
    assert prior.scaling_factor == pytest.approx(vae.config.scaling_factor)
    z = torch.randn(2, 2, 8, 8, requires_grad=True)
    x = prior.decode(z)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    x.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())
    with torch.no_grad():
        ref = vae.eval().decode(z.detach() / vae.config.scaling_factor).sample
        torch.testing.assert_close(prior.decode(z.detach()), ref, rtol=1e-5, atol=1e-5)
        img = torch.rand(2, 1, 16, 16) * 2 - 1
        enc = prior.encode(img)
        assert enc.shape == (2, 2, 8, 8)
        torch.testing.assert_close(enc, vae.encode(img).latent_dist.mean * vae.config.scaling_factor,
                                   rtol=1e-5, atol=1e-5)
        e = prior.eps(enc, torch.tensor([1, 999]))
        assert e.shape == (2, 2, 8, 8) and torch.isfinite(e).all()


def test_missing_folder(tmp_path):
    path = tmp_path / "no_such_prior"
    with pytest.raises(PriorNotFoundError) as info:
        DiffusersPrior(str(path))
    msg = str(info.value)
    assert str(path) in msg and "hf download" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorNotFoundError) as info:
        DiffusersPrior(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(info.value) and "hf download" in str(info.value)


def test_hub_id_offline_fails_fast():
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.perf_counter()
    with pytest.raises(PriorNotFoundError) as info:
        DiffusersPrior("vipaint-tests/definitely-not-cached-ddpm")
    elapsed = time.perf_counter() - start
    # a hang guard, not a speed test (an online lookup retries for minutes); loose for loaded machines
    assert elapsed < 60.0, f"offline Hub lookup took {elapsed:.1f} s"
    msg = str(info.value)
    assert "vipaint-tests/definitely-not-cached-ddpm" in msg and "hf download" in msg
    assert "HF_HUB_OFFLINE" in msg
    assert math.isfinite(elapsed)


def _fill_hub_cache(cache, repo_id: str, **save_kw):
    """A pre-filled Hub cache entry (refs/main + snapshots/<commit>/...), as `hf download` leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / ("models--" + repo_id.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snap = entry / "snapshots" / commit
    snap.mkdir(parents=True)
    return _save(snap, **save_kw)


def test_hub_id_from_filled_cache_pixel(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    unet, _, _ = _fill_hub_cache(tmp_path, "vipaint-tests/tiny-ddpm")
    prior = DiffusersPrior("vipaint-tests/tiny-ddpm")
    assert prior.latent_shape == (1, 8, 8) and not prior.is_latent
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 900])
    torch.testing.assert_close(prior.eps(z, t), _raw(unet, z, t), rtol=1e-5, atol=1e-6)


def test_hub_id_from_filled_cache_latent(tmp_path, monkeypatch):
    """A latent prior given as a Hub id (filled cache) loads its VAE too (the first version loaded codecs
    only for local folders, silently returning a pixel prior on latents)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    _fill_hub_cache(tmp_path, "vipaint-tests/tiny-ldm", in_ch=2, out_ch=2, vae=True)
    prior = DiffusersPrior("vipaint-tests/tiny-ldm")
    assert prior.latent_shape == (2, 8, 8)
    assert prior.is_latent
    assert prior.image_shape == (1, 16, 16)
