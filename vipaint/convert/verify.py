"""Functional check of a conversion: the reference CompVis modules (`compvis.py`) loaded with the
checkpoint's own tensors vs the diffusers models loaded from the output folder with `from_pretrained`,
on the same random inputs. Errors are max |a − b| / max |reference|."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vipaint.convert.configs import model_params
from vipaint.convert.io import split_prefix
from vipaint.convert.synthetic import build_reference, first_stage_kind
from vipaint.priors.denoisers import CLASS_EMBEDDER_CONFIG, CLASS_EMBEDDER_WEIGHTS
from vipaint.priors.loading import apply_attention_heads

__all__ = ["load_folder", "load_reference", "compare", "verify_folder"]


def load_folder(out: str | Path) -> dict[str, Any]:
    """The converted components through the real `from_pretrained` (+ attention heads, class embedder)."""
    import diffusers
    from safetensors.torch import load_file

    out = Path(out)
    unet_cls = json.loads((out / "unet" / "config.json").read_text())["_class_name"]
    unet = getattr(diffusers, unet_cls).from_pretrained(out, subfolder="unet", local_files_only=True)
    mods: dict[str, Any] = {"unet": apply_attention_heads(unet, out / "unet").eval()}
    if (out / "vqvae").exists():
        mods["codec"] = diffusers.VQModel.from_pretrained(out, subfolder="vqvae", local_files_only=True).eval()
    else:
        mods["codec"] = diffusers.AutoencoderKL.from_pretrained(out, subfolder="vae", local_files_only=True).eval()
    mods["scheduler"] = diffusers.DDPMScheduler.from_pretrained(out, subfolder="scheduler", local_files_only=True)
    if (out / "class_embedder").exists():
        cfg = json.loads((out / "class_embedder" / CLASS_EMBEDDER_CONFIG).read_text())
        emb = nn.Embedding(cfg["num_classes"] + 1, cfg["embed_dim"])
        weights = load_file(str(out / "class_embedder" / CLASS_EMBEDDER_WEIGHTS))
        emb.load_state_dict({"weight": weights["embedding.weight"]})
        mods["class_embedder"] = emb.eval()
    return mods


def load_reference(cfg: dict[str, Any], sd: dict[str, Tensor], *, ema: bool = False) -> dict[str, nn.Module]:
    """Reference CompVis modules holding the checkpoint's tensors (strict: the config must fit exactly)."""
    ref = build_reference(cfg)
    unet_sd = split_prefix(sd, "model.diffusion_model.")
    if ema:
        unet_sd = {k: sd["model_ema." + ("diffusion_model." + k).replace(".", "")] for k in unet_sd}
    ref["unet"].load_state_dict(unet_sd, strict=True)
    fs = {k: v for k, v in split_prefix(sd, "first_stage_model.").items() if not k.startswith("loss.")}
    ref["first_stage"].load_state_dict(fs, strict=True)
    if "cond_stage" in ref:
        ref["cond_stage"].load_state_dict(split_prefix(sd, "cond_stage_model."), strict=True)
    return {k: m.eval() for k, m in ref.items()}


def _rel(a: Tensor, ref: Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@torch.no_grad()
def compare(cfg: dict[str, Any], ref: dict[str, nn.Module], conv: dict[str, Any], *, batch: int = 1,
            seed: int = 0) -> dict[str, float]:
    """Relative max errors of UNet ε, first-stage encode and decode (VQ: with and without quantising)."""
    p = model_params(cfg)
    u = p["unet_config"]["params"]
    g = torch.Generator().manual_seed(seed)
    s = u["image_size"]
    x = torch.randn(batch, u["in_channels"], s, s, generator=g)
    t = torch.linspace(10, p.get("timesteps", 1000) - 10, batch).long()
    ctx = labels = None
    if "cond_stage" in ref:
        labels = torch.randint(0, ref["cond_stage"].embedding.num_embeddings, (batch,), generator=g)
        ctx = ref["cond_stage"](labels)
        errs = {"class_embedder": _rel(conv["class_embedder"](labels)[:, None], ctx)}
    else:
        errs = {}
    y = torch.randint(0, u["num_classes"], (batch,), generator=g) if u.get("num_classes") is not None else None
    want = ref["unet"](x, t, context=ctx, y=y)
    if ctx is not None:
        got = conv["unet"](x, t, encoder_hidden_states=ctx, class_labels=y).sample
    else:
        got = conv["unet"](x, t, class_labels=y).sample
    errs["unet"] = _rel(got, want)
    fs, codec = ref["first_stage"], conv["codec"]
    dd = p["first_stage_config"]["params"]["ddconfig"]
    r = s * 2 ** (len(dd["ch_mult"]) - 1)
    img = torch.randn(batch, dd["in_channels"], r, r, generator=g)
    z = torch.randn(batch, p["first_stage_config"]["params"]["embed_dim"], s, s, generator=g)
    if first_stage_kind(p) == "vq":
        errs["encode"] = _rel(codec.encode(img).latents, fs.encode(img))
        errs["decode"] = _rel(codec.decode(z, force_not_quantize=True).sample, fs.decode(z, force_not_quantize=True))
        errs["decode_quantized"] = _rel(codec.decode(z).sample, fs.decode(z))
    else:
        errs["encode"] = _rel(codec.encode(img).latent_dist.mean, fs.encode(img))
        errs["decode"] = _rel(codec.decode(z).sample, fs.decode(z))
    return errs


def verify_folder(cfg: dict[str, Any], sd: dict[str, Tensor], out: str | Path, *, ema: bool = False,
                  batch: int = 1) -> dict[str, float]:
    """`compare` for a converted folder against the checkpoint it came from."""
    return compare(cfg, load_reference(cfg, sd, ema=ema), load_folder(out), batch=batch)
