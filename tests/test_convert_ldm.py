"""`vipaint convert-ldm` output loaded as a prior: converted (scaled-down synthetic) CompVis checkpoints
through `DiffusersPrior` equal the CompVis reference modules."""

import pytest
import torch

from vipaint.priors import DiffusersPrior


@pytest.mark.parametrize("config", ["cin256-v2", "lsun_churches256"])
def test_converted_compvis_checkpoint_loads_and_matches_reference(tmp_path, config):
    """`vipaint convert-ldm` output (scaled-down synthetic CompVis checkpoints) through `DiffusersPrior`: the
    class embedder, the VQ/KL scale and lsun_churches256's attention_heads.json are picked up, and the
    network and codec equal the CompVis reference modules."""
    from vipaint.convert import convert_ldm, make_synthetic_ckpt
    from vipaint.convert.verify import compare, load_reference

    ckpt, cfg = make_synthetic_ckpt(config, 1 / 12, seed=4)
    torch.save(ckpt, tmp_path / "model.ckpt")
    convert_ldm(tmp_path / "model.ckpt", cfg, tmp_path / "out")
    prior = DiffusersPrior(str(tmp_path / "out"))
    sd = ckpt["state_dict"]
    if config == "cin256-v2":
        assert prior.denoiser_class == "UNet2DConditionModel" and prior.codec_kind == "vq"
        assert prior.num_classes == sd["cond_stage_model.embedding.weight"].shape[0] - 1
        assert prior.scaling_factor == 1.0
    else:
        assert prior.denoiser_class == "UNet2DModel" and prior.codec_kind == "kl" and prior.num_classes is None
        assert (tmp_path / "out" / "unet" / "attention_heads.json").exists()
        assert prior.scaling_factor == pytest.approx(float(sd["scale_factor"]))
    conv = {"unet": prior.unet, "codec": prior.codec}
    if prior.num_classes is not None:
        conv["class_embedder"] = prior.denoiser.embedder.embedding
    errs = compare(cfg, load_reference(cfg, sd), conv, batch=2)
    assert max(errs.values()) < 1e-4, errs
    z = torch.randn(2, *prior.latent_shape)
    c = torch.tensor([0, 1]) if prior.num_classes is not None else None
    e = prior.eps(z, torch.tensor([10, 500]), c, guidance_scale=3.0 if c is not None else 1.0)
    assert e.shape == z.shape and torch.isfinite(e).all()
