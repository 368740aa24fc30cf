"""The codec of latent diffusers priors (vipaint/priors/codec.py): VQ decoding with and without the
quantiser, both differentiable; chunked decoding, gradient checkpointing and autocast keep values and
gradients."""

import pytest
import torch
from latent_folders import labels_for

from vipaint.priors import DiffusersPrior

pytest_plugins = ["latent_folders"]


def test_vq_force_not_quantize_both_differentiable(folders):
    z = torch.randn(2, 3, 16, 16)
    out = {}
    for flag in (False, True):
        prior = DiffusersPrior(folders["vq_cin"], vq_force_not_quantize=flag)
        zz = z.clone().requires_grad_(True)
        x = prior.decode(zz)
        x.square().sum().backward()
        assert zz.grad is not None and torch.isfinite(zz.grad).all() and zz.grad.abs().sum() > 0
        out[flag] = x.detach()
    assert not torch.allclose(out[False], out[True])      # quantised vs continuous latents
    q = DiffusersPrior(folders["vq_cin"]).codec
    with torch.no_grad():                                  # False = diffusers' default decode (quantises)
        torch.testing.assert_close(out[False], q.decode(z).sample, rtol=1e-5, atol=1e-5)


def test_performance_options_preserve_values_and_gradients(folders):
    base = DiffusersPrior(folders["kl_unet"])
    fast = DiffusersPrior(folders["kl_unet"], decode_chunk=2, gradient_checkpointing=True,
                          denoiser_checkpointing=True)
    vq = DiffusersPrior(folders["vq_cin"], decode_chunk=1, gradient_checkpointing=True)   # checkpoint() fallback
    vq0 = DiffusersPrior(folders["vq_cin"])
    for a, b in ((base, fast), (vq0, vq)):
        z = torch.randn(5, *a.latent_shape)
        grads, outs = [], []
        for p in (a, b):
            zz = z.clone().requires_grad_(True)
            x = p.decode(zz)
            e = p.eps(zz, torch.full((5,), 300), labels_for("vq_cin", 5) if p.num_classes else None)
            (x.square().sum() + e.square().sum()).backward()
            grads.append(zz.grad)
            outs.append(x.detach())
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5 * float(grads[0].abs().max()))
    # autocast is a no-op on CPU unless forced; forced bf16 stays close and returns float32
    off = DiffusersPrior(folders["dit"], autocast="bf16")
    on = DiffusersPrior(folders["dit"], autocast="bf16", force_autocast=True)
    z, t, c = torch.randn(2, 4, 8, 8), torch.tensor([50, 600]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = DiffusersPrior(folders["dit"]).eps(z, t, c, 3.0)
        torch.testing.assert_close(off.eps(z, t, c, 3.0), ref)
        e = on.eps(z, t, c, 3.0)
        x = on.decode(z)
    assert e.dtype == torch.float32 and x.dtype == torch.float32
    assert (e - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    with pytest.raises(ValueError, match="autocast"):
        DiffusersPrior(folders["dit"], autocast="int8")
