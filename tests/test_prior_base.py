"""`Prior.eps` / `encode` / `decode` with leading dimensions: one flat call on [prod(lead), ...], results
bit-identical to calling the flat method on the flattened batch (what the old `eps_sb`/`decode_sb`/
`encode_sb` helpers did), labels tiled over the sample dimension like `cond.repeat(S)`."""

from __future__ import annotations

import pytest
import torch

from vipaint.priors import DiffusersPrior, SyntheticMixturePrior

S, B = 3, 2


def _count_calls(prior, name: str) -> list[int]:
    """Wrap `prior.<name>` so every call records its batch size."""
    calls: list[int] = []
    inner = getattr(prior, name)

    def wrapped(x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        return inner(x, *args, **kwargs)

    setattr(prior, name, wrapped)
    return calls


def _eps_sb_reference(prior, z, t: int, cond=None, guidance_scale: float = 1.0):
    """The old `eps_sb` formula: one call on [S·B] with t filled and cond repeated S times."""
    s, b = z.shape[:2]
    flat = z.reshape((s * b,) + tuple(z.shape[2:]))
    tt = torch.full((s * b,), int(t), device=z.device, dtype=torch.long)
    c = cond.repeat(s) if cond is not None else None
    return prior.eps_flat(flat, tt, c, guidance_scale).reshape(z.shape)


def test_analytic_eps_leading_dims_equals_flat_call():
    prior = SyntheticMixturePrior(image_shape=(1, 4, 4), n_components=2)
    z = torch.randn(S, B, 1, 4, 4)
    calls = _count_calls(prior, "eps_flat")
    got = prior.eps(z, 400)
    assert calls == [S * B] and got.shape == z.shape
    assert torch.equal(got, _eps_sb_reference(prior, z, 400))
    # t as a tensor: a 0-d tensor, per-image times [B] (tiled over S), and full [S, B]
    assert torch.equal(prior.eps(z, torch.tensor(400)), got)
    tb = torch.tensor([10, 900])
    flat_tb = prior.eps_flat(z.reshape(S * B, 1, 4, 4), tb.repeat(S)).reshape(z.shape)
    assert torch.equal(prior.eps(z, tb), flat_tb) and not torch.equal(flat_tb, got)
    assert torch.equal(prior.eps(z, tb.expand(S, B)), flat_tb)
    # the plain batch [N, ...] and a single unbatched latent
    flat = z.reshape(S * B, 1, 4, 4)
    assert torch.equal(prior.eps(flat, torch.full((S * B,), 400)), got.reshape(flat.shape))
    single = prior.eps(z[1, 0], 400)                     # no leading dims: one latent [C, H, W]
    assert single.shape == (1, 4, 4)
    torch.testing.assert_close(single, got[1, 0], rtol=1e-6, atol=1e-7)


def test_analytic_codec_is_identity_with_leading_dims():
    prior = SyntheticMixturePrior(image_shape=(1, 4, 4), n_components=2)
    x = torch.randn(S, B, 1, 4, 4)
    assert prior.decode(x) is x and prior.encode(x) is x      # no view: the old helpers' autograd graph


def test_leading_dims_errors():
    prior = SyntheticMixturePrior(image_shape=(1, 4, 4), n_components=2)
    z = torch.randn(S, B, 1, 4, 4)
    with pytest.raises(ValueError, match="cond of shape"):
        prior.eps(z, 10, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="does not broadcast"):
        prior.eps(z, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="at least 3 dims"):
        prior.eps(torch.randn(4, 4), 10)


def test_diffusers_latent_prior_leading_dims_equal_flat_calls(tiny_latent_prior):
    prior = DiffusersPrior(tiny_latent_prior)
    z = torch.randn(S, B, *prior.latent_shape)
    flat = z.reshape((S * B,) + prior.latent_shape)
    calls = {name: _count_calls(prior, name) for name in ("eps_flat", "decode_flat", "encode_flat")}
    with torch.no_grad():
        e = prior.eps(z, 500)
        x = prior.decode(z)
        back = prior.encode(x)
    assert calls == {"eps_flat": [S * B], "decode_flat": [S * B], "encode_flat": [S * B]}
    assert e.shape == z.shape and x.shape == (S, B) + prior.image_shape and back.shape == z.shape
    with torch.no_grad():
        assert torch.equal(e, _eps_sb_reference(prior, z, 500))
        assert torch.equal(x, prior.decode_flat(flat).reshape(x.shape))
        assert torch.equal(back, prior.encode_flat(x.reshape((S * B,) + prior.image_shape)).reshape(z.shape))
    # gradients through ε and the decoder equal those of the old reshape → flat call → reshape helpers
    grads = []
    for new_api in (True, False):
        zz = z.clone().requires_grad_(True)
        if new_api:
            loss = prior.eps(zz, 500).square().sum() + prior.decode(zz).square().sum()
        else:
            zf = zz.reshape((S * B,) + prior.latent_shape)
            loss = (_eps_sb_reference(prior, zz, 500).square().sum()
                    + prior.decode_flat(zf).reshape(x.shape).square().sum())
        loss.backward()
        grads.append(zz.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_diffusers_class_labels_tiled_over_samples(tmp_path):
    import diffusers

    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                          block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=4,
                          down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    prior = DiffusersPrior(str(tmp_path), num_classes=3)
    z = torch.randn(S, B, 1, 8, 8)
    c = torch.tensor([0, 2])
    with torch.no_grad():
        for g in (1.0, 3.0):
            got = prior.eps(z, 300, c, guidance_scale=g)
            assert torch.equal(got, _eps_sb_reference(prior, z, 300, c, g))
            flat = z.reshape(S * B, 1, 8, 8)
            interleaved = prior.eps_flat(flat, torch.full((S * B,), 300), c.repeat_interleave(S), g)
            assert not torch.equal(got, interleaved.reshape(z.shape))   # the tiling order is checked
