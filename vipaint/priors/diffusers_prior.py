"""Diffusers priors: a denoiser (`UNet2DModel`) + scheduler config, optionally behind a codec
(`AutoencoderKL` or `VQModel`), loaded through the real `from_pretrained` path from a local folder or
a Hub id. The network output is converted to ε whatever it predicts (ALGORITHM.md §1)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from vipaint.diffusion import bcast, eps_from_x0
from vipaint.priors.base import Prior

__all__ = ["DiffusersPrior", "PriorNotFoundError"]


class PriorNotFoundError(FileNotFoundError):
    """The prior's weights are not where the configuration points."""


def _missing(path: str, detail: str) -> PriorNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = (f"Weights for prior '{path}' could not be loaded ({detail}).\n"
            f"  * a local folder must hold `unet/` (or the UNet's config.json) and `scheduler/`;\n"
            f"  * for a Hub id, download it where a network exists: `hf download {path} --local-dir "
            f"<dir>` and point the config's `prior.init_args.path` at <dir>, or pre-fill $HF_HOME.")
    if offline:
        hint += "\n  * HF_HUB_OFFLINE=1 is set, so nothing is downloaded."
    return PriorNotFoundError(hint)


class DiffusersPrior(Prior):
    """A pixel or latent diffusers prior.

    Args:
        path: local directory or Hub id with subfolders `unet/`, `scheduler/` and optionally `vae/`
            (AutoencoderKL) or `vqvae/` (VQModel). A directory holding a bare UNet (config.json at its
            root) plus `scheduler_config.json` also works.
        num_classes: number of real classes of a class-conditional UNet; label `num_classes` is the
            null class for classifier-free guidance (None: unconditional).
        vq_force_not_quantize: decode VQ latents without quantising (True) or through the
            straight-through quantiser (False, diffusers' default).
        dtype: weight dtype after loading ("float32" or "bfloat16"/"float16" for GPU runs).
        local_files_only: never touch the network (default: follow HF_HUB_OFFLINE).
    """

    def __init__(self, path: str, *, num_classes: int | None = None, vq_force_not_quantize: bool = False,
                 dtype: str = "float32", local_files_only: bool | None = None) -> None:
        super().__init__()
        import diffusers  # deferred: a ~3 s import
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        self.path = str(path)
        local = Path(path).expanduser()
        is_local = local.exists()
        if not is_local and (Path(path).is_absolute() or str(path).startswith((".", "data/", "~"))):
            raise _missing(self.path, "no such directory")
        lfo = local_files_only if local_files_only is not None else \
            os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        root = str(local) if is_local else self.path
        kw = dict(local_files_only=lfo)
        sub = (lambda name: (local / name).exists()) if is_local else (lambda name: True)
        try:
            if is_local and (local / "config.json").exists() and not (local / "unet").exists():
                unet = diffusers.UNet2DModel.from_pretrained(root, **kw)
                sched = diffusers.DDPMScheduler.from_pretrained(root, **kw)
            else:
                unet = diffusers.UNet2DModel.from_pretrained(root, subfolder="unet", **kw)
                sched = diffusers.DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw)
            codec: nn.Module | None = None
            self.codec_kind = "identity"
            if is_local and sub("vae"):
                codec, self.codec_kind = diffusers.AutoencoderKL.from_pretrained(root, subfolder="vae", **kw), "kl"
            elif is_local and sub("vqvae"):
                codec, self.codec_kind = diffusers.VQModel.from_pretrained(root, subfolder="vqvae", **kw), "vq"
        except (OSError, EnvironmentError, ValueError) as err:
            raise _missing(self.path, f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        torch_dtype = getattr(torch, dtype)
        self.unet = unet.to(torch_dtype).eval().requires_grad_(False)
        self.codec = codec.to(torch_dtype).eval().requires_grad_(False) if codec is not None else None
        self.prediction_type = sched.config.prediction_type
        self.num_classes = num_classes
        self.vq_force_not_quantize = vq_force_not_quantize
        self.scaling_factor = float(getattr(codec.config, "scaling_factor", 1.0)) if codec is not None else 1.0
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.double().clone())
        c = unet.config.in_channels
        s = unet.config.sample_size
        s = (s, s) if isinstance(s, int) else tuple(s)
        self._latent_shape = (int(c), int(s[0]), int(s[1]))
        if codec is not None:
            down = 2 ** (len(codec.config.block_out_channels) - 1)
            self._image_shape = (int(codec.config.in_channels), s[0] * down, s[1] * down)
        else:
            self._image_shape = self._latent_shape

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._latent_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    @property
    def is_latent(self) -> bool:
        return self.codec is not None

    def _net(self, z: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        dt = next(self.unet.parameters()).dtype
        out = self.unet(z.to(dt), t, class_labels=labels).sample.to(z.dtype)
        c = z.shape[1]
        if out.shape[1] == 2 * c:  # learned variance: ε is the first half of the channels
            out = out[:, :c]
        if self.prediction_type == "epsilon":
            return out
        ab = bcast(self.alphas_cumprod[t].to(z.dtype), z)
        if self.prediction_type == "sample":
            return eps_from_x0(z, out, ab)
        if self.prediction_type == "v_prediction":   # ε = σ z + α v
            return (1 - ab).sqrt() * z + ab.sqrt() * out
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def eps(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """ε_θ(z, t, c) with classifier-free guidance ε_u + g(ε_c − ε_u) for class-conditional UNets."""
        t = t.to(z.device).long()
        if self.num_classes is None or cond is None:
            return self._net(z, t, None)
        cond = cond.to(z.device).long()
        if guidance_scale == 1.0:
            return self._net(z, t, cond)
        null = torch.full_like(cond, self.num_classes)
        both = self._net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, null]))
        e_c, e_u = both.chunk(2)
        return e_u + guidance_scale * (e_c - e_u)

    def encode(self, x: Tensor) -> Tensor:
        """Pixels → scaled latents (posterior mean for KL, pre-quantisation latents for VQ)."""
        if self.codec is None:
            return x
        dt = next(self.codec.parameters()).dtype
        if self.codec_kind == "kl":
            z = self.codec.encode(x.to(dt)).latent_dist.mean
        else:
            z = self.codec.encode(x.to(dt)).latents
        return (z * self.scaling_factor).to(x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents → pixels, differentiable (VQ: straight-through unless force_not_quantize)."""
        if self.codec is None:
            return z
        dt = next(self.codec.parameters()).dtype
        h = (z / self.scaling_factor).to(dt)
        if self.codec_kind == "vq":
            out = self.codec.decode(h, force_not_quantize=self.vq_force_not_quantize).sample
        else:
            out = self.codec.decode(h).sample
        return out.to(z.dtype)
