"""`vipaint convert-ldm`: CompVis latent-diffusion checkpoint → diffusers-style prior folder.

Output (read by `vipaint.priors.DiffusersPrior`, see `vipaint.priors.loading`):

    OUT/unet/            UNet2DModel, or UNet2DConditionModel for spatial-transformer UNets (cin256-v2)
    OUT/unet/attention_heads.json   only when UNet2DModel cannot express the CompVis head counts
                                    (lsun_churches256: 8 heads at every width); apply with
                                    `vipaint.convert.apply_attention_heads(unet, OUT/unet)`
    OUT/scheduler/       DDPMScheduler (CompVis "linear" = diffusers "scaled_linear")
    OUT/vae/ | OUT/vqvae/  AutoencoderKL (scaling_factor = the checkpoint's scale_factor) | VQModel
    OUT/class_embedder/  class-conditional models: {"embedding.weight"} safetensors + config.json
    OUT/model_index.json, OUT/conversion.json (provenance, key counts, checks)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vipaint.convert.configs import BUILTIN, SOURCES, load_config, model_params
from vipaint.convert.io import CheckpointLoadError, load_state_dict, split_prefix
from vipaint.convert.keymaps import Rule, apply_rules, autoencoder_plan, unet_plan
from vipaint.convert.synthetic import compvis_schedule, first_stage_kind
from vipaint.convert.verify import verify_folder
from vipaint.priors.denoisers import CLASS_EMBEDDER_CONFIG, CLASS_EMBEDDER_WEIGHTS
from vipaint.priors.loading import ATTENTION_HEADS_FILE

__all__ = ["main", "convert_ldm", "convert_scheduler", "ConversionError", "CheckpointLoadError"]
_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


class ConversionError(RuntimeError):
    """The checkpoint does not match the configuration, or cannot be represented."""


def _ema_key(k: str) -> str:
    return "model_ema." + ("diffusion_model." + k).replace(".", "")


def _unet_source(sd: dict[str, Tensor], rules: list[Rule], ema: bool) -> dict[str, Tensor]:
    src = split_prefix(sd, "model.diffusion_model.")
    if not src:
        raise ConversionError("no `model.diffusion_model.*` keys: not a CompVis LatentDiffusion checkpoint")
    if not ema:
        return src
    missing = [r.src for r in rules if _ema_key(r.src) not in sd]
    if missing:
        raise ConversionError(f"--ema: the checkpoint has no EMA copy of {len(missing)} UNet tensors "
                              f"(e.g. {_ema_key(missing[0])})")
    return {r.src: sd[_ema_key(r.src)] for r in rules}


def _check_consumed(src: dict[str, Tensor], rules: list[Rule], what: str) -> None:
    extra = sorted(set(src) - {r.src for r in rules})
    if extra:
        raise ConversionError(f"{what}: {len(extra)} checkpoint tensors have no place in the configured model, "
                              f"e.g. {extra[:5]} (wrong --config for this checkpoint?)")


def _build(class_name: str, config: dict[str, Any], weights: dict[str, Tensor]) -> nn.Module:
    """Instantiate a diffusers model without random init and load `weights` strictly."""
    import diffusers

    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        model = cls.from_config(config)
    expected = model.state_dict()
    bad = [k for k, v in weights.items() if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    if bad:
        raise ConversionError(f"{class_name}: shape mismatch for {bad[:5]}, e.g. {bad[0]}: checkpoint "
                              f"{tuple(weights[bad[0]].shape)} vs model {tuple(expected[bad[0]].shape)}")
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    if missing or unexpected:
        raise ConversionError(f"{class_name}: {len(missing)} model tensors unset (e.g. {sorted(missing)[:3]}), "
                              f"{len(unexpected)} converted tensors unused (e.g. {sorted(unexpected)[:3]})")
    # own storage per tensor: checkpoint tensors may share storage, which safetensors refuses to save
    model.load_state_dict({k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in weights.items()},
                          strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ConversionError(f"{class_name}: tensors left uninitialised: {leftover[:5]}")
    return model.eval()


def convert_scheduler(p: dict[str, Any], sd: dict[str, Tensor]) -> tuple[Any, float | None]:
    """The DDPMScheduler of CompVis model params `p`, and its max |ᾱ − ᾱ_CompVis| (None when unknown)."""
    import diffusers

    sched_name = p.get("beta_schedule", "linear")
    if sched_name not in _SCHEDULES or p.get("given_betas") is not None:
        raise ConversionError(f"beta_schedule {sched_name!r} has no diffusers equivalent here")
    param = p.get("parameterization", "eps")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=p.get("timesteps", 1000), beta_start=p.get("linear_start", 1e-4),
        beta_end=p.get("linear_end", 2e-2), beta_schedule=_SCHEDULES[sched_name],
        prediction_type=_PREDICTION[param], clip_sample=False)
    err = None
    if "alphas_cumprod" in sd:
        ref = sd["alphas_cumprod"].double()
        if ref.shape != sched.alphas_cumprod.shape:
            raise ConversionError(f"checkpoint has {ref.numel()} timesteps, config {sched.alphas_cumprod.numel()}")
        err = float((sched.alphas_cumprod.double() - ref).abs().max())
        if err > 1e-5:
            raise ConversionError(f"the checkpoint's alphas_cumprod differ from the config's schedule by {err:.2e} "
                                  f"(linear_start/linear_end/beta_schedule of --config do not match)")
    elif sched_name in ("linear", "sqrt_linear"):
        ref = torch.cumprod(1 - compvis_schedule(p.get("linear_start", 1e-4), p.get("linear_end", 2e-2),
                                                 p.get("timesteps", 1000), sched_name)["betas"].double(), 0)
        err = float((sched.alphas_cumprod.double() - ref).abs().max())
    return sched, err


def _scale_factor(p: dict[str, Any], sd: dict[str, Tensor]) -> float:
    if "scale_factor" in sd:
        return float(sd["scale_factor"])
    if p.get("scale_by_std", False):
        raise ConversionError("config has scale_by_std=True but the checkpoint holds no `scale_factor` buffer")
    return float(p.get("scale_factor", 1.0))


def _first_stage_source(sd: dict[str, Tensor], first_stage: str | Path | None, stub: bool) -> dict[str, Tensor]:
    src = split_prefix(sd, "first_stage_model.")
    if first_stage is not None:
        fs = load_state_dict(first_stage, stub_unknown_globals=stub)
        fs = split_prefix(fs, "first_stage_model.") or fs
        src = {k: v for k, v in fs.items() if not k.startswith("loss.")}
    if not src:
        raise ConversionError("the checkpoint has no `first_stage_model.*` keys; pass --first-stage CKPT")
    return src


def convert_ldm(ckpt: str | Path, config: str | dict[str, Any], out: str | Path, *,
                first_stage: str | Path | None = None, ema: bool = False, stub_unknown_globals: bool = False,
                verify: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Convert a CompVis LatentDiffusion checkpoint into a diffusers-style folder; returns the report."""
    import diffusers
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConversionError(f"{out} exists and is not empty (pass --overwrite)")
    cfg = load_config(config)
    p = model_params(cfg)
    sd = load_state_dict(ckpt, stub_unknown_globals=stub_unknown_globals)
    report: dict[str, Any] = {"source": str(ckpt), "config": config if isinstance(config, str) else "<dict>",
                              "first_stage_source": str(first_stage or ckpt), "ema": ema}

    plan = unet_plan(p["unet_config"]["params"])
    unet_src = _unet_source(sd, plan.rules, ema)
    _check_consumed(unet_src, plan.rules, "UNet")
    unet = _build(plan.class_name, plan.config, apply_rules(plan.rules, unet_src))

    kind = first_stage_kind(p)
    fs_src = _first_stage_source(sd, first_stage, stub_unknown_globals)
    scale = _scale_factor(p, sd)
    fs_cls, fs_cfg, fs_rules = autoencoder_plan(p["first_stage_config"]["params"], kind, scale)
    _check_consumed(fs_src, fs_rules, "first stage")
    codec = _build(fs_cls, fs_cfg, apply_rules(fs_rules, fs_src))
    sched, sched_err = convert_scheduler(p, sd)

    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    if plan.heads_override:
        (out / "unet" / ATTENTION_HEADS_FILE).write_text(json.dumps({
            "note": "CompVis head counts that the UNet2DModel config cannot express; apply with "
                    "vipaint.convert.apply_attention_heads(unet, <this folder>) after from_pretrained",
            "heads": plan.heads_override}, indent=2) + "\n")
    sub = "vqvae" if kind == "vq" else "vae"
    codec.save_pretrained(out / sub, safe_serialization=True)
    sched.save_pretrained(out / "scheduler")
    components = {"unet": plan.class_name, "scheduler": "DDPMScheduler", sub: fs_cls}

    cs = p.get("cond_stage_config")
    if isinstance(cs, dict) and cs.get("target", "").endswith("ClassEmbedder"):
        w = sd.get("cond_stage_model.embedding.weight")
        if w is None:
            raise ConversionError("ClassEmbedder config but no `cond_stage_model.embedding.weight` in the checkpoint")
        (out / "class_embedder").mkdir(exist_ok=True)
        save_file({"embedding.weight": w.contiguous()}, str(out / "class_embedder" / CLASS_EMBEDDER_WEIGHTS))
        (out / "class_embedder" / CLASS_EMBEDDER_CONFIG).write_text(
            json.dumps({"_class_name": "ClassEmbedder", "num_classes": int(w.shape[0]) - 1,
                        "embed_dim": int(w.shape[1]), "embedding_dim": int(w.shape[1])}, indent=2) + "\n")
        report["class_embedder"] = {"num_classes": int(w.shape[0]) - 1, "null_class": int(w.shape[0]) - 1,
                                    "conditioning_key": p.get("conditioning_key")}
    elif cs not in (None, "__is_unconditional__", "__is_first_stage__"):
        raise ConversionError(f"cond_stage {cs.get('target') if isinstance(cs, dict) else cs!r} is not supported")

    index = {"_class_name": "VIPaintPrior", "_diffusers_version": diffusers.__version__}
    index.update({k: ["diffusers", v] for k, v in components.items()})
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    report.update(unet_class=plan.class_name, unet_source_tensors=len(plan.rules), first_stage_class=fs_cls,
                  first_stage_source_tensors=len(fs_rules), scaling_factor=scale,
                  prediction_type=sched.config.prediction_type,
                  beta_schedule=sched.config.beta_schedule, alphas_cumprod_max_abs_diff=sched_err,
                  attention_heads_override=plan.heads_override,
                  ignored_keys=sorted(k for k in sd if not k.startswith(("model.diffusion_model.", "first_stage_model.",
                                                                         "cond_stage_model.", "model_ema.")))[:50])
    if verify:
        report["verify"] = verify_folder(cfg, sd if first_stage is None else
                                         {**sd, **{"first_stage_model." + k: v for k, v in fs_src.items()}},
                                         out, ema=ema)
    (out / "conversion.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


_EPILOG = "supported --config values:\n" + "\n".join(f"  {k:17s} {v}" for k, v in SOURCES.items()) + """
  PATH.yaml         any CompVis LatentDiffusion YAML (openaimodel.UNetModel + VQModel[Interface] or
                    AutoencoderKL first stage; ClassEmbedder or unconditional)

Checkpoints are read with torch.load(weights_only=True) (or safetensors): no pickled code runs.
Verified: key/shape round trips and forward passes against a reference re-implementation of the
CompVis modules, on scaled-down synthetic checkpoints. Not verified here: the real released
checkpoints (no network). See docs/convert.md."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vipaint convert-ldm", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Convert a CompVis latent-diffusion checkpoint into a diffusers-style prior folder "
                    "(unet/, scheduler/, vae/ or vqvae/, class_embedder/).")
    parser.add_argument("ckpt", help="CompVis checkpoint (.ckpt/.pt/.pth or .safetensors)")
    parser.add_argument("--config", required=True, metavar="{" + ",".join(BUILTIN) + ",PATH.yaml}",
                        help="built-in config name or a CompVis YAML file")
    parser.add_argument("--first-stage", default=None, metavar="CKPT2",
                        help="separate first-stage checkpoint (e.g. first_stage_models/vq-f4/model.ckpt); "
                             "replaces the LDM checkpoint's first_stage_model.* weights")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--ema", action="store_true", help="use the LitEma weights (model_ema.*) of the UNet")
    parser.add_argument("--stub-unknown-globals", action="store_true",
                        help="replace non-tensor objects the safe unpickler rejects by inert placeholders")
    parser.add_argument("--verify", action="store_true",
                        help="also run reference CompVis forwards vs the converted models on random inputs (slow)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    try:
        report = convert_ldm(args.ckpt, args.config, args.out, first_stage=args.first_stage, ema=args.ema,
                             stub_unknown_globals=args.stub_unknown_globals, verify=args.verify,
                             overwrite=args.overwrite)
    except (CheckpointLoadError, ConversionError, FileNotFoundError, NotImplementedError, KeyError) as err:
        print(f"vipaint convert-ldm: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {args.out}: {report['unet_class']} ({report['unet_source_tensors']} source tensors), "
          f"{report['first_stage_class']} (scaling_factor {report['scaling_factor']:g}), DDPMScheduler "
          f"({report['beta_schedule']}, {report['prediction_type']})")
    if report["attention_heads_override"]:
        print(f"note: {len(report['attention_heads_override'])} attention modules need "
              f"vipaint.convert.apply_attention_heads(unet, '{args.out}/unet') after loading")
    if "verify" in report:
        print("verify: " + ", ".join(f"{k} {v:.2e}" for k, v in report["verify"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
