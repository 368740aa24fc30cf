"""`vipaint convert-ldm`: CompVis LDM checkpoints → diffusers folders.

Synthetic checkpoints (random weights, original key layout, scaled-down widths) go through the CLI and
come back through the real `from_pretrained`. Checked: every source tensor lands in exactly one place
and inverts bit for bit, no diffusers tensor is left unset, shapes agree, and forward passes equal a
reference re-implementation of the CompVis modules. Full-size configs are checked on the meta device.
"""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch
import yaml

from vipaint.convert import CheckpointLoadError, ConversionError, convert_ldm, load_state_dict, make_synthetic_ckpt
from vipaint.convert.compvis import UNetModel
from vipaint.convert.configs import BUILTIN, model_params
from vipaint.convert.io import split_prefix
from vipaint.convert.keymaps import autoencoder_plan, invert_rules, unet_plan
from vipaint.convert.ldm import convert_scheduler, main
from vipaint.convert.synthetic import build_reference, compvis_schedule, first_stage_kind
from vipaint.convert.verify import compare, load_folder, load_reference
from vipaint.priors.loading import apply_attention_heads

NAMES = sorted(BUILTIN)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict, Path]]:
    """name → (checkpoint, scaled config, output folder), converted through the CLI with a YAML config."""
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        ckpt, cfg = make_synthetic_ckpt(name, 1 / 12, seed=1)
        torch.save(ckpt, root / "model.ckpt")
        (root / "config.yaml").write_text(yaml.safe_dump(cfg))
        assert main([str(root / "model.ckpt"), "--config", str(root / "config.yaml"), "--out", str(root / "out")]) == 0
        out[name] = (ckpt, cfg, root / "out")
    return out


def _check_exact(rules: list, src: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    dst = model.state_dict()
    targets = [d for r in rules for d in r.dst]
    assert len(targets) == len(set(targets)), "a diffusers tensor is written twice"
    assert set(targets) == set(dst), (f"unset: {sorted(set(dst) - set(targets))[:5]}, "
                                      f"unknown: {sorted(set(targets) - set(dst))[:5]}")
    sources = [r.src for r in rules]
    assert len(sources) == len(set(sources)) and set(sources) == set(src), "source tensors not used exactly once"
    back = invert_rules(rules, dst)
    for k, v in src.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(converted: dict, name: str) -> None:
    ckpt, cfg, out = converted[name]
    sd, p = ckpt["state_dict"], model_params(cfg)
    mods = load_folder(out)
    plan = unet_plan(p["unet_config"]["params"])
    assert type(mods["unet"]).__name__ == plan.class_name
    _check_exact(plan.rules, split_prefix(sd, "model.diffusion_model."), mods["unet"])
    kind = first_stage_kind(p)
    _, _, fs_rules = autoencoder_plan(p["first_stage_config"]["params"], kind, 1.0)
    _check_exact(fs_rules, split_prefix(sd, "first_stage_model."), mods["codec"])
    expect_scale = float(sd["scale_factor"]) if "scale_factor" in sd else 1.0
    assert mods["codec"].config.scaling_factor == pytest.approx(expect_scale)
    assert (out / ("vqvae" if kind == "vq" else "vae")).is_dir()
    ac = mods["scheduler"].alphas_cumprod.double()
    assert (ac - sd["alphas_cumprod"].double()).abs().max() < 1e-6
    assert mods["scheduler"].config.beta_schedule == "scaled_linear"
    if "cond_stage_model.embedding.weight" in sd:
        w = sd["cond_stage_model.embedding.weight"]
        assert torch.equal(mods["class_embedder"].weight, w)
        emb_cfg = json.loads((out / "class_embedder" / "config.json").read_text())
        assert emb_cfg["num_classes"] == w.shape[0] - 1  # the last row is the CFG null class
        assert emb_cfg["embed_dim"] == emb_cfg["embedding_dim"] == w.shape[1]
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", plan.class_name] and "scheduler" in index


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_compvis_reference(converted: dict, name: str) -> None:
    ckpt, cfg, out = converted[name]
    errs = compare(cfg, load_reference(cfg, ckpt["state_dict"]), load_folder(out), batch=1)
    assert max(errs.values()) < 1e-4, errs


def test_churches_heads_need_the_sidecar(converted: dict) -> None:
    """UNet2DModel has one head width; CompVis churches has 8 heads at every width."""
    ckpt, cfg, out = converted["lsun_churches256"]
    heads = json.loads((out / "unet" / "attention_heads.json").read_text())["heads"]
    assert heads and set(heads.values()) == {8}
    import diffusers

    bare = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    ref = load_reference(cfg, ckpt["state_dict"])
    x, t = torch.randn(1, 4, 32, 32), torch.tensor([500])
    with torch.no_grad():
        want = ref["unet"](x, t)
        wrong = bare(x, t).sample
        right = apply_attention_heads(bare, out / "unet")(x, t).sample
    assert (wrong - want).abs().max() > 1e-3
    assert torch.allclose(right, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_full_size_layouts_fit_diffusers(name: str) -> None:
    """Real widths (no memory: meta device): CompVis shapes → the diffusers model's own shapes."""
    import diffusers

    p = model_params(BUILTIN[name])
    plan = unet_plan(p["unet_config"]["params"])
    cls, fs_cfg, fs_rules = autoencoder_plan(p["first_stage_config"]["params"], first_stage_kind(p), 1.0)
    with torch.device("meta"):
        ref = build_reference(BUILTIN[name])
        pairs = [(ref["unet"], getattr(diffusers, plan.class_name).from_config(plan.config), plan.rules),
                 (ref["first_stage"], getattr(diffusers, cls).from_config(fs_cfg), fs_rules)]
    for module, model, rules in pairs:
        src, dst = module.state_dict(), model.state_dict()
        assert {r.src for r in rules} == set(src)
        assert {d for r in rules for d in r.dst} == set(dst)
        for r in rules:
            for d, t in zip(r.dst, r.forward(src[r.src]), strict=True):
                assert tuple(t.shape) == tuple(dst[d].shape), (r.src, d)
    assert plan.config["norm_eps"] == 1e-5 and plan.config["flip_sin_to_cos"] and plan.config["freq_shift"] == 0
    if name == "cin256-v2":
        assert plan.class_name == "UNet2DConditionModel" and plan.config["cross_attention_dim"] == 512
        assert fs_cfg["num_vq_embeddings"] == 8192 and fs_cfg["vq_embed_dim"] == 3
    if name == "lsun_churches256":
        assert plan.config["resnet_time_scale_shift"] == "scale_shift" and plan.config["downsample_type"] == "resnet"
        # attention_resolutions [1,2,4,8] over 5 levels: none at the 2x2 level (ds=16), mid block has it
        assert plan.config["down_block_types"] == ["AttnDownBlock2D"] * 4 + ["ResnetDownsampleBlock2D"]
        assert plan.config["up_block_types"] == ["ResnetUpsampleBlock2D"] + ["AttnUpBlock2D"] * 4
    if name == "celebahq":
        assert plan.config["attention_head_dim"] == 32 and not plan.heads_override
        assert plan.config["block_out_channels"] == [224, 448, 672, 896]


@pytest.mark.parametrize("name", NAMES)
def test_scheduler_is_compvis_linear(name: str) -> None:
    p = model_params(BUILTIN[name])
    sched, err = convert_scheduler(p, {})
    ref = torch.cumprod(1 - compvis_schedule(p["linear_start"], p["linear_end"], 1000)["betas"].double(), 0)
    assert err is not None and err < 1e-6
    assert (sched.alphas_cumprod.double() - ref).abs().max() < 1e-6
    assert sched.config.beta_start == p["linear_start"] and sched.config.beta_end == p["linear_end"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class _Callback:  # like the callback-class keys of old PyTorch-Lightning checkpoints
    pass


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "callbacks": {"cb": _Evil(marker)}}, path)
    with pytest.raises(CheckpointLoadError, match="weights_only=True"):
        load_state_dict(path)
    with pytest.raises(CheckpointLoadError):
        load_state_dict(path, stub_unknown_globals=True)  # a stub cannot be used to call anything
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--config", "celebahq", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "refusing to unpickle" in capsys.readouterr().err
    assert not marker.exists()


def test_lightning_style_objects_can_be_stubbed(tmp_path: Path) -> None:
    path = tmp_path / "pl.ckpt"
    torch.save({"state_dict": {"x": torch.arange(3.0)}, "callbacks": {_Callback: {"best": 1.0}},
                "obj": _Callback()}, path)
    with pytest.raises(CheckpointLoadError, match="_Callback"):
        load_state_dict(path)
    assert torch.equal(load_state_dict(path, stub_unknown_globals=True)["x"], torch.arange(3.0))


def test_safetensors_ema_and_separate_first_stage(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ckpt, cfg = make_synthetic_ckpt("celebahq", 1 / 12, seed=2, ema=True)
    sd = ckpt["state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    fs, _ = make_synthetic_ckpt("celebahq", 1 / 12, seed=3)  # other first-stage values, bare keys + loss junk
    fs_sd = split_prefix(fs["state_dict"], "first_stage_model.")
    torch.save({"state_dict": {**fs_sd, "loss.discriminator.w": torch.ones(2)}}, tmp_path / "vq.ckpt")
    convert_ldm(tmp_path / "m.safetensors", cfg, tmp_path / "out", ema=True, first_stage=tmp_path / "vq.ckpt")
    mods = load_folder(tmp_path / "out")
    p = model_params(cfg)
    plan = unet_plan(p["unet_config"]["params"])
    back = invert_rules(plan.rules, mods["unet"].state_dict())
    for r in plan.rules:
        assert torch.equal(back[r.src], sd["model_ema." + ("diffusion_model." + r.src).replace(".", "")])
    _, _, fs_rules = autoencoder_plan(p["first_stage_config"]["params"], "vq", 1.0)
    _check_exact(fs_rules, fs_sd, mods["codec"])


def test_mismatched_config_is_rejected(converted: dict, tmp_path: Path) -> None:
    ckpt, _, _ = converted["lsun_churches256"]
    _, other = make_synthetic_ckpt("celebahq", 1 / 12)
    torch.save(ckpt, tmp_path / "m.ckpt")
    with pytest.raises((ConversionError, KeyError)):
        convert_ldm(tmp_path / "m.ckpt", other, tmp_path / "out")
    with pytest.raises(ConversionError, match="not empty"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("")
        convert_ldm(tmp_path / "m.ckpt", other, tmp_path / "full")


def test_help_documents_configs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    for name in (*BUILTIN, "PATH.yaml", "--first-stage", "--out", "weights_only"):
        assert name in text


def test_reference_heads_follow_compvis_legacy_logic() -> None:
    """cin256-v2: num_heads 1 → one head of full width; celebahq: 32 channels per head."""
    cin = UNetModel(**{**model_params(BUILTIN["cin256-v2"])["unet_config"]["params"], "model_channels": 32,
                       "context_dim": 8})
    st = cin.input_blocks[4][1]
    assert st.transformer_blocks[0].attn1.heads == 1
    plan = unet_plan(model_params(BUILTIN["cin256-v2"])["unet_config"]["params"])
    assert plan.config["attention_head_dim"] == [1, 1, 1, 1]
