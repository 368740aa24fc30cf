"""Synthetic CompVis checkpoints: random weights in the original key layout, for tests and dry runs.

`make_synthetic_ckpt(config, scale)` instantiates the reference CompVis modules (`compvis.py`) for a
scaled-down copy of `config` (`configs.scale_config`), fills every parameter with distinct random
values, and returns a Lightning-style `{"state_dict": ...}` with the LatentDiffusion prefixes
(`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.`), the schedule buffers
(`betas`, `alphas_cumprod`, ...) and `scale_factor` when the config uses `scale_by_std`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vipaint.convert import compvis, compvis_ae
from vipaint.convert.configs import load_config, model_params, scale_config

__all__ = ["make_synthetic_ckpt", "build_reference", "compvis_schedule", "first_stage_kind"]


def compvis_schedule(linear_start: float, linear_end: float, timesteps: int,
                     beta_schedule: str = "linear") -> dict[str, Tensor]:
    """`ldm.modules.diffusionmodules.util.make_beta_schedule` + the buffers LatentDiffusion registers."""
    if beta_schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    else:
        raise NotImplementedError(f"beta_schedule {beta_schedule!r}")
    ac = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    f = lambda x: x.to(torch.float32)  # noqa: E731  (CompVis stores float32 buffers)
    return {"betas": f(betas), "alphas_cumprod": f(ac), "alphas_cumprod_prev": f(prev),
            "sqrt_alphas_cumprod": f(ac.sqrt()), "sqrt_one_minus_alphas_cumprod": f((1 - ac).sqrt()),
            "log_one_minus_alphas_cumprod": f((1 - ac).log()), "sqrt_recip_alphas_cumprod": f((1 / ac).sqrt()),
            "sqrt_recipm1_alphas_cumprod": f((1 / ac - 1).sqrt()),
            "posterior_variance": f(betas * (1 - prev) / (1 - ac))}


def first_stage_kind(p: dict[str, Any]) -> str:
    target = p["first_stage_config"]["target"]
    if target.endswith(("VQModelInterface", "VQModel")):
        return "vq"
    if target.endswith("AutoencoderKL"):
        return "kl"
    raise NotImplementedError(f"first stage {target!r} (supported: VQModel[Interface], AutoencoderKL)")


def build_reference(cfg: dict[str, Any]) -> dict[str, nn.Module]:
    """The reference CompVis modules of a config: {"unet", "first_stage", "cond_stage"?}."""
    p = model_params(cfg)
    fs = p["first_stage_config"]["params"]
    mods: dict[str, nn.Module] = {"unet": compvis.UNetModel(**p["unet_config"]["params"])}
    mods["first_stage"] = compvis_ae.VQModel(**fs) if first_stage_kind(p) == "vq" else compvis_ae.AutoencoderKL(**fs)
    cs = p.get("cond_stage_config")
    if isinstance(cs, dict) and cs.get("target", "").endswith("ClassEmbedder"):
        mods["cond_stage"] = compvis_ae.ClassEmbedder(**cs["params"])
    return mods


@torch.no_grad()
def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    for name, prm in module.named_parameters():
        r = torch.randn(prm.shape, generator=gen)
        if prm.dim() > 1:
            prm.copy_(r / max(1.0, prm[0].numel()) ** 0.5)
        elif name.endswith("weight"):  # norm scales
            prm.copy_(1 + 0.1 * r)
        else:
            prm.copy_(0.1 * r)


def make_synthetic_ckpt(config: str | dict[str, Any], scale: float | None = 1 / 12, *, seed: int = 0,
                        ema: bool = False, scale_factor: float = 0.5) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`{"state_dict": ...}`, the config it follows) for `config` scaled by `scale` (None: full size).

    `ema=True` also writes LitEma copies (`model_ema.<name without dots>`) holding different values.
    """
    cfg = scale_config(config, scale) if scale is not None else load_config(config)
    p = model_params(cfg)
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Any] = {}
    prefixes = {"unet": "model.diffusion_model.", "first_stage": "first_stage_model.",
                "cond_stage": "cond_stage_model."}
    for role, mod in build_reference(cfg).items():
        _randomize(mod, gen)
        sd.update({prefixes[role] + k: v.clone() for k, v in mod.state_dict().items()})
        if ema and role == "unet":
            for k, v in mod.state_dict().items():
                ema_key = "model_ema." + ("diffusion_model." + k).replace(".", "")
                sd[ema_key] = v + 0.01 * torch.randn(v.shape, generator=gen)
    if ema:
        sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(1000)
    for k, v in compvis_schedule(p.get("linear_start", 1e-4), p.get("linear_end", 2e-2), p.get("timesteps", 1000),
                                 p.get("beta_schedule", "linear")).items():
        sd[k] = v
    if p.get("scale_by_std", False):
        sd["scale_factor"] = torch.tensor(scale_factor)
    return {"state_dict": sd, "global_step": 0}, cfg
