"""Built-in CompVis latent-diffusion configurations, as Python dicts mirroring the original YAML files.

Each dict has the shape of a CompVis config (`{"model": {"target": ..., "params": {...}}}`), so a YAML
file passed with `--config path.yaml` is read into exactly the same structure. Sources:

* ``cin256-v2``: CompVis `configs/latent-diffusion/cin256-v2.yaml` (checkpoint
  `models/ldm/cin256-v2/model.ckpt`). Note: the YAML sets ``num_heads: 1`` (no ``num_head_channels``),
  so with ``legacy=True`` every spatial transformer has one head of width ``ch``.
* ``lsun_churches256``: CompVis `models/ldm/lsun_churches256/config.yaml`: ``num_heads: 8`` at every
  level (the head *width* changes with the channel count; see `keymaps.attention_heads`).
* ``celebahq``: CompVis `models/ldm/celeba256/config.yaml` (the UNet behind the Hub repo
  `CompVis/ldm-celebahq-256`: ``model_channels 224``, ``num_head_channels 32``, VQ-f4).

The one key that is not CompVis is ``_norm_groups`` (GroupNorm groups, hard-coded to 32 in CompVis);
it defaults to 32 and exists so that scaled-down test configs can use narrower layers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN", "SOURCES", "load_config", "scale_config", "model_params"]

_UNET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
_LDM = "ldm.models.diffusion.ddpm.LatentDiffusion"


def _vq_f4() -> dict[str, Any]:
    return {"target": "ldm.models.autoencoder.VQModelInterface",
            "params": {"embed_dim": 3, "n_embed": 8192,
                       "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3,
                                    "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2,
                                    "attn_resolutions": [], "dropout": 0.0}}}


def _kl_f8() -> dict[str, Any]:
    return {"target": "ldm.models.autoencoder.AutoencoderKL",
            "params": {"embed_dim": 4,
                       "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                    "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                    "attn_resolutions": [], "dropout": 0.0}}}


BUILTIN: dict[str, dict[str, Any]] = {
    "cin256-v2": {"model": {"target": _LDM, "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "first_stage_key": "image",
        "cond_stage_key": "class_label", "image_size": 64, "channels": 3, "cond_stage_trainable": True,
        "conditioning_key": "crossattn", "use_ema": False,
        "unet_config": {"target": _UNET, "params": {
            "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 192,
            "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 5],
            "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 512}},
        "first_stage_config": _vq_f4(),
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                              "params": {"n_classes": 1001, "embed_dim": 512, "key": "class_label"}}}}},
    "lsun_churches256": {"model": {"target": _LDM, "params": {
        "linear_start": 0.0015, "linear_end": 0.0155, "timesteps": 1000, "loss_type": "l1",
        "first_stage_key": "image", "cond_stage_key": "image", "image_size": 32, "channels": 4,
        "cond_stage_trainable": False, "concat_mode": False, "scale_by_std": True,
        "unet_config": {"target": _UNET, "params": {
            "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 192,
            "attention_resolutions": [1, 2, 4, 8], "num_res_blocks": 2, "channel_mult": [1, 2, 2, 4, 4],
            "num_heads": 8, "use_scale_shift_norm": True, "resblock_updown": True}},
        "first_stage_config": _kl_f8(),
        "cond_stage_config": "__is_unconditional__"}}},
    "celebahq": {"model": {"target": _LDM, "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "first_stage_key": "image",
        "cond_stage_key": "class_label", "image_size": 64, "channels": 3, "cond_stage_trainable": False,
        "concat_mode": False,
        "unet_config": {"target": _UNET, "params": {
            "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 224,
            "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 4],
            "num_head_channels": 32}},
        "first_stage_config": _vq_f4(),
        "cond_stage_config": "__is_unconditional__"}}},
}

SOURCES: dict[str, str] = {
    "cin256-v2": "CompVis configs/latent-diffusion/cin256-v2.yaml; ckpt models/ldm/cin256-v2/model.ckpt "
                 "(ImageNet class-conditional, VQ-f4, 3x64x64 latents)",
    "lsun_churches256": "CompVis models/ldm/lsun_churches256/config.yaml (unconditional, KL-f8, 4x32x32 "
                        "latents, scale_by_std)",
    "celebahq": "CompVis models/ldm/celeba256/config.yaml (unconditional, VQ-f4, 3x64x64 latents; "
                "= Hub CompVis/ldm-celebahq-256)",
}


def load_config(spec: str | dict[str, Any]) -> dict[str, Any]:
    """A built-in name, a path to a CompVis YAML file, or an already-parsed dict → a config dict."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    if spec in BUILTIN:
        return copy.deepcopy(BUILTIN[spec])
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--config {spec!r} is neither a built-in config ({', '.join(BUILTIN)}) "
                                f"nor an existing YAML file")
    import yaml

    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict) or "model" not in cfg or "params" not in cfg["model"]:
        raise ValueError(f"{spec}: not a CompVis config (expected model.params.unet_config ...)")
    return cfg


def model_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """`model.params` of a CompVis config."""
    return cfg["model"]["params"]


def _mult(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def scale_config(cfg: str | dict[str, Any], scale: float = 1 / 12, *, groups: int = 4,
                 max_classes: int = 11, max_codes: int = 64) -> dict[str, Any]:
    """A structurally identical, narrower copy of a config for fast synthetic tests.

    Same levels, blocks, attention placement, heads logic, resblock_updown, scale-shift norm, transformer
    depth and first-stage layout; channel widths multiplied by `scale` (rounded to multiples of 8),
    GroupNorm groups set to `groups`, the class count and codebook size capped, latents 2**levels wide.
    """
    cfg = load_config(cfg)
    p = model_params(cfg)
    u = p["unet_config"]["params"]
    u["model_channels"] = _mult(u["model_channels"] * scale, 8)
    u["_norm_groups"] = groups
    if u.get("num_head_channels", -1) != -1:
        u["num_head_channels"] = _mult(u["num_head_channels"] * scale, 4)
    if u.get("context_dim") is not None:
        u["context_dim"] = _mult(u["context_dim"] * scale, 8)
    if u.get("num_classes") is not None:
        u["num_classes"] = min(u["num_classes"], max_classes)
    u["image_size"] = p["image_size"] = 2 ** len(u["channel_mult"])
    fs = p["first_stage_config"]["params"]
    dd = fs["ddconfig"]
    dd["ch"] = _mult(dd["ch"] * scale, 8)
    dd["_norm_groups"] = groups
    dd["resolution"] = u["image_size"] * 2 ** (len(dd["ch_mult"]) - 1)
    if "n_embed" in fs:
        fs["n_embed"] = min(fs["n_embed"], max_codes)
    cs = p.get("cond_stage_config")
    if isinstance(cs, dict) and cs.get("target", "").endswith("ClassEmbedder"):
        cs["params"]["n_classes"] = min(cs["params"].get("n_classes", 1000), max_classes)
        cs["params"]["embed_dim"] = u.get("context_dim") or cs["params"]["embed_dim"]
    return cfg
