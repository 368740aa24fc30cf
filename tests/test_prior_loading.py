"""Latent diffusers priors through `DiffusersPrior(path)` (vipaint/priors/loading.py): the folder layouts
(unet/ + vae/, model_index.json with UNet2DConditionModel + class_embedder/ + VQModel, a Hub-style DiT
pipeline), the codec kind and latent scale they imply, the scheduler's ᾱ, and the error for a missing
class embedding."""

import pytest
import torch
from latent_folders import NAMES, SPEC, labels_for, save_vq_cin

from vipaint.priors import DiffusersPrior, PriorNotFoundError

pytest_plugins = ["latent_folders"]


@pytest.mark.parametrize("name", NAMES)
def test_layout_shapes_and_codec(priors, name):
    prior = priors[name]
    den, codec, latent, image, n_cls = SPEC[name]
    assert prior.denoiser_class == den and prior.codec_kind == codec and prior.is_latent
    assert prior.latent_shape == latent and prior.image_shape == image and prior.num_classes == n_cls
    assert all(not p.requires_grad for p in prior.parameters())
    if codec == "vq":      # CompVis VQ-LDMs are unscaled, whatever VQModel's 0.18215 default says
        assert prior.scaling_factor == 1.0
        betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
        torch.testing.assert_close(prior.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-6)
    else:
        assert prior.scaling_factor == pytest.approx(0.18215)
    z = torch.randn(3, *latent)
    e = prior.eps(z, torch.tensor([1, 500, 999]), labels_for(name, 3))
    assert e.shape == z.shape and torch.isfinite(e).all()
    with torch.no_grad():
        x = prior.decode(z)
        assert x.shape == (3, *image) and torch.isfinite(x).all()
        assert prior.encode(x).shape == z.shape


def test_scheduler_beta_schedules_map_to_alphas(priors):
    """DiT/DDPM "linear" 1e-4 → 0.02; the tiny DiT folder uses diffusers' DDIM default (linear)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(priors["dit"].alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-6)


def test_missing_class_embedder_is_explained(tmp_path):
    save_vq_cin(tmp_path)
    for f in (tmp_path / "class_embedder").iterdir():
        f.unlink()
    (tmp_path / "class_embedder").rmdir()
    with pytest.raises(PriorNotFoundError, match="class_embedder"):
        DiffusersPrior(str(tmp_path))
