"""Denoiser adapters of diffusers priors (vipaint/priors/denoisers.py): classifier-free guidance in one
batched call, DiT's learned variance and null class, v-prediction converted to ε."""

import pytest
import torch
from latent_folders import DIT_CLASSES, diffusers, save_kl_unet

from vipaint.priors import DiffusersPrior

pytest_plugins = ["latent_folders"]


@pytest.mark.parametrize("name", ["vq_cin", "dit"])
def test_classifier_free_guidance_one_batched_call(priors, name):
    prior = priors[name]
    net = prior.unet
    z = torch.randn(2, *prior.latent_shape)
    t = torch.tensor([100, 800])
    c = torch.tensor([0, 2])
    null = torch.full_like(c, prior.num_classes)
    with torch.no_grad():
        e_c, e_u = prior.eps(z, t, c), prior.eps(z, t, null)      # g = 1: one plain call each
    assert not torch.allclose(e_c, e_u)
    calls: list[int] = []
    hook = net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            g1 = prior.eps(z, t, c, guidance_scale=1.0)
            calls_g1 = list(calls)
            g3 = prior.eps(z, t, c, guidance_scale=3.0)
            unc = prior.eps(z, t, None)
    finally:
        hook.remove()
    assert calls_g1 == [2] and calls == [2, 4, 2]          # g = 3: ONE call on [cond; null] (2N)
    torch.testing.assert_close(g1, e_c, rtol=1e-5, atol=1e-6)   # g = 1 is the conditional output
    assert not torch.allclose(g3, g1)
    torch.testing.assert_close(g3, e_u + 3.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unc, e_u, rtol=1e-5, atol=1e-6)  # no label: the null class


def test_dit_learned_variance_and_null_class(priors, folders):
    prior = priors["dit"]
    raw = diffusers.DiTTransformer2DModel.from_pretrained(folders["dit"], subfolder="transformer").eval()
    assert raw.config.out_channels == 8 and prior.num_classes == DIT_CLASSES == raw.config.num_embeds_ada_norm
    z, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([3, DIT_CLASSES])
    with torch.no_grad():
        out = raw(z, timestep=t, class_labels=c).sample
        torch.testing.assert_close(prior.eps(z, t, c), out[:, :4], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        DiffusersPrior(folders["dit"], num_classes=1000)


def test_v_prediction_converted_to_eps(tmp_path):
    save_kl_unet(tmp_path, prediction_type="v_prediction")
    prior = DiffusersPrior(str(tmp_path))
    assert prior.prediction_type == "v_prediction"
    unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path), subfolder="unet").eval()
    z = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    t = torch.tensor([5, 400, 990])
    with torch.no_grad():
        v = unet(z.float(), t).sample.double()
    ab = prior.alphas_cumprod[t][:, None, None, None]
    torch.testing.assert_close(prior.eps(z, t), (1 - ab).sqrt() * z + ab.sqrt() * v, rtol=1e-5, atol=1e-5)
