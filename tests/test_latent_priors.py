"""Latent diffusers priors (docs/latent_priors.md): tiny random AutoencoderKL / VQModel codecs with
UNet2DModel, UNet2DConditionModel (+ external class embedding) and DiTTransformer2DModel denoisers, saved with
`save_pretrained` in the real folder layouts and reloaded through `DiffusersPrior(path)`; VIPaint end to end,
gradients through the decoder, classifier-free guidance, VQ options, v-prediction, the CLI, and the
experiment configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import vipaint
from vipaint.elbo import negative_elbo
from vipaint.likelihood import Likelihood
from vipaint.operators import Inpainting
from vipaint.posterior import HierarchicalPosterior
from vipaint.priors import ClassEmbedder, DiffusersPrior, PriorNotFoundError
from vipaint.seeding import ImageRNG

diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
CODEC_BLOCKS = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
N_CLASSES = 5          # cin-like prior: classes 0..4, null 5
DIT_CLASSES = 10       # tiny DiT: classes 0..9, null 10


def _kl() -> "diffusers.AutoencoderKL":
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=16, **CODEC_BLOCKS)


def _save_kl_unet(root: Path, prediction_type: str = "epsilon") -> None:
    """unet/ + vae/ + scheduler/, no model_index.json: 4×8×8 latents, 3×16×16 images."""
    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                          norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    _kl().save_pretrained(root / "vae")
    diffusers.DDPMScheduler(prediction_type=prediction_type).save_pretrained(root / "scheduler")


def _save_vq_cin(root: Path) -> None:
    """A converted-cin256-v2-like LDMPipeline folder: UNet2DConditionModel + class_embedder/ + VQModel,
    3×16×16 latents, 3×32×32 images, CompVis "linear" (= scaled_linear) betas."""
    torch.manual_seed(1)
    diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    ClassEmbedder(N_CLASSES, 16).save_pretrained(root / "class_embedder")
    diffusers.VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=32, vq_embed_dim=3,
                      **CODEC_BLOCKS).save_pretrained(root / "vqvae")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                            clip_sample=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"]}))


def _save_dit(root: Path) -> None:
    """A DiTPipeline folder as on the Hub: model_index.json names `Transformer2DModel` (learned variance,
    out_channels = 2 × 4), vae/ AutoencoderKL, scheduler/; 4×8×8 latents, 3×16×16 images."""
    torch.manual_seed(2)
    diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=DIT_CLASSES,
                                    norm_num_groups=4).save_pretrained(root / "transformer")
    cfg = json.loads((root / "transformer" / "config.json").read_text())
    cfg["_class_name"] = "Transformer2DModel"               # the Hub's name for DiT checkpoints
    (root / "transformer" / "config.json").write_text(json.dumps(cfg))
    _kl().save_pretrained(root / "vae")
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "id2label": {"0": "a", "1": "b"}, "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    for name, fn in (("kl_unet", _save_kl_unet), ("vq_cin", _save_vq_cin), ("dit", _save_dit)):
        root = tmp_path_factory.mktemp(name)
        fn(root)
        out[name] = str(root)
    return out


@pytest.fixture(scope="module")
def priors(folders: dict[str, str]) -> dict[str, DiffusersPrior]:
    return {k: DiffusersPrior(v) for k, v in folders.items()}


SPEC = {  # name: (denoiser class, codec, latent shape, image shape, num_classes)
    "kl_unet": ("UNet2DModel", "kl", (4, 8, 8), (3, 16, 16), None),
    "vq_cin": ("UNet2DConditionModel", "vq", (3, 16, 16), (3, 32, 32), N_CLASSES),
    "dit": ("DiTTransformer2DModel", "kl", (4, 8, 8), (3, 16, 16), DIT_CLASSES),
}
NAMES = list(SPEC)


def _labels(name: str, b: int) -> torch.Tensor | None:
    return None if SPEC[name][4] is None else torch.arange(b) % 3


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
    e = prior.eps(z, torch.tensor([1, 500, 999]), _labels(name, 3))
    assert e.shape == z.shape and torch.isfinite(e).all()
    with torch.no_grad():
        x = prior.decode(z)
        assert x.shape == (3, *image) and torch.isfinite(x).all()
        assert prior.encode(x).shape == z.shape


def test_scheduler_beta_schedules_map_to_alphas(priors):
    """DiT/DDPM "linear" 1e-4 → 0.02; the tiny DiT folder uses diffusers' DDIM default (linear)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(priors["dit"].alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_lambda_through_decoder(priors, name):
    """Only the reconstruction term (β = 0): a non-zero ∂/∂μ must have passed through D(x̂0(z_{T_s}))."""
    prior = priors[name]
    b = 2
    y_img = torch.rand(b, *prior.image_shape) * 2 - 1
    mask = torch.ones(b, 1, *prior.image_shape[1:])
    mask[..., : prior.image_shape[1] // 2, :] = 0
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(y_img, ImageRNG(0, [0, 1], stream="obs"))
    rng = ImageRNG(0, [0, 1])
    with torch.no_grad():
        y_enc = prior.encode(op.pinv(y, prior.image_shape))
    post = HierarchicalPosterior.initialise(y_enc, prior, [550, 400], rng)
    grid = torch.tensor([550, 700, 850, 999])
    terms = negative_elbo(post, prior, op, y, Likelihood("laplace", 0.01), rng, n_mc=2, grid=grid, eta=0.2 ** 0.5,
                          beta_prior=0.0, beta_hier=0.0, cond=_labels(name, b))
    terms.objective.sum().backward()
    g = post.mu.grad
    assert g is not None and torch.isfinite(g).all()
    assert g[0].abs().sum() > 0 and g[-1].abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


@pytest.mark.parametrize("name", ["vq_cin", "dit"])
def test_classifier_free_guidance_one_batched_call(priors, name):
    prior = priors[name]
    net = prior.unet
    z = torch.randn(2, *prior.latent_shape)
    t = torch.tensor([100, 800])
    c = torch.tensor([0, 2])
    null = torch.full_like(c, prior.num_classes)
    with torch.no_grad():
        e_c, e_u = prior._net(z, t, c), prior._net(z, t, null)
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


def test_v_prediction_converted_to_eps(tmp_path):
    _save_kl_unet(tmp_path, prediction_type="v_prediction")
    prior = DiffusersPrior(str(tmp_path))
    assert prior.prediction_type == "v_prediction"
    unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path), subfolder="unet").eval()
    z = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    t = torch.tensor([5, 400, 990])
    with torch.no_grad():
        v = unet(z.float(), t).sample.double()
    ab = prior.alphas_cumprod[t][:, None, None, None]
    torch.testing.assert_close(prior.eps(z, t), (1 - ab).sqrt() * z + ab.sqrt() * v, rtol=1e-5, atol=1e-5)


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
            e = p.eps(zz, torch.full((5,), 300), _labels("vq_cin", 5) if p.num_classes else None)
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


def test_missing_class_embedder_is_explained(tmp_path):
    _save_vq_cin(tmp_path)
    for f in (tmp_path / "class_embedder").iterdir():
        f.unlink()
    (tmp_path / "class_embedder").rmdir()
    with pytest.raises(PriorNotFoundError, match="class_embedder"):
        DiffusersPrior(str(tmp_path))


@pytest.mark.parametrize("name", NAMES)
def test_vipaint_end_to_end(priors, name):
    prior = priors[name]
    b = 2
    x = torch.rand(b, *prior.image_shape) * 2 - 1
    mask = torch.ones(b, 1, *prior.image_shape[1:])
    mask[..., 4:-4, 4:-4] = 0
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, [0, 1], stream="obs"))
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=1, cond=_labels(name, b),
                             iterations=2, n_mc=2, refine_steps=3, prior_grid_points=20,
                             refine_guidance=3.0 if SPEC[name][4] else 1.0)
    assert res.samples.shape == (2, b, *prior.image_shape)
    assert torch.isfinite(res.samples).all() and not res.failed.any()
    assert res.traces["objective"].shape == (2, b)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_cli_predict_with_tiny_class_conditional_latent_prior(tmp_path, folders):
    """`vipaint predict` on the DiT (latent, class-conditional: labels from metadata.jsonl's class_id)."""
    from conftest import build_tiny_imagefolder

    from vipaint.cli import main

    images = build_tiny_imagefolder(tmp_path / "images", n=2, size=16, channels=3)
    out = tmp_path / "run"
    cfg = {
        "seed_everything": 0,
        "model": {"prior": {"class_path": "vipaint.priors.DiffusersPrior",
                            "init_args": {"path": folders["dit"], "decode_chunk": 2}},
                  "method": "vipaint",
                  "method_options": {"iterations": 2, "n_mc": 2, "refine_steps": 2, "prior_grid_points": 20,
                                     "refine_guidance": 3.0},
                  "n_samples": 2, "seed": 3, "operator": "inpainting", "sigma_y": 0.05},
        "data": {"source": images, "num_images": 2, "batch_size": 2, "seed": 3, "channels": 3,
                 "cache_dir": str(tmp_path / "hf-cache"),
                 "masks": [{"class_path": "vipaint.masks.BoxMask", "init_args": {"size": 0.5}}]},
        "trainer": {"accelerator": "cpu", "devices": 1, "inference_mode": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(out), "logger": False,
                    "callbacks": [{"class_path": "vipaint.writer.PredictionWriter",
                                   "init_args": {"output_dir": str(out)}}]},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["predict", "--config", str(path)])
    import numpy as np

    files = sorted((out / "samples").glob("*.npz"))
    assert [f.stem for f in files] == ["000000", "000001"]
    for f in files:
        s = np.load(f)["samples"]
        assert s.shape == (2, 3, 16, 16) and np.isfinite(s).all()


CONFIGS = ["imagenet", "imagenet_cin256", "celebahq_ldm", "church_ldm", "church_pixel", "celebahq_pixel"]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("name", CONFIGS)
def test_experiment_configs_parse(name, capsys):
    from vipaint.cli import main

    with pytest.raises(SystemExit) as info:
        main(["predict", "--config", str(ROOT / "experiments" / f"{name}.yaml"), "--print_config"])
    assert info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["prior"]["class_path"] == "vipaint.priors.DiffusersPrior"
    assert cfg["model"]["method"] == "vipaint" and cfg["model"]["n_samples"] == 10


def test_imagenet_without_weights_fails_fast_with_instructions(tmp_path):
    """`make eval DATASET=imagenet` on a machine without the weights: the prior is built before any data is
    touched and the error says what to download and where to put it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    # no wall-clock assertion (it failed on a loaded 2-core machine): "fast" means it stops at the prior,
    # before any dataset is opened; the timeout only guards against a hang
    proc = subprocess.run([sys.executable, "-m", "vipaint.cli", "predict", "--config",
                           str(ROOT / "experiments" / "imagenet.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "hf" / "datasets").exists(), "a dataset was opened before the prior check"
    err = proc.stderr
    assert "PriorNotFoundError" in err and "facebook/DiT-XL-2-256" in err
    assert "hf download facebook/DiT-XL-2-256" in err and "--local-dir" in err
    assert str(tmp_path / "hf" / "hub") in err                         # where the cache must be filled
    assert "model.prior.init_args.path" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.npz"))


@pytest.mark.slow
def test_gpu_paper_shapes_benchmark_tiny(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_paper_shapes
    finally:
        sys.path.pop(0)
    out = tmp_path / "bench.json"
    rows = gpu_paper_shapes.main(["--tiny", "--device", "cpu", "--output", str(out)])
    data = json.loads(out.read_text())
    assert {r["model"] for r in data["results"]} == {"lsun_church_ldm", "cin256_v2"}
    assert len(rows) == 2
    for r in data["results"]:
        assert r["fit_s"] > 0 and r["refine_s"] > 0 and r["samples_finite"]


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
