"""The codec of a latent diffusers prior (`AutoencoderKL` or `VQModel`) between pixel images in [−1, 1] and
scaled latents z = s·(E(x) − shift): the latent scale and shift, the decoded image shape, encoding and
differentiable decoding in chunks, and gradient checkpointing of the decoder (docs/algorithm.md §1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vipaint.priors.runtime import Runtime

__all__ = ["CODEC_CLASSES", "DIFFUSERS_VQ_DEFAULT_SCALE", "vq_scaling", "check_decode_chunk", "latent_scales",
           "codec_image_shape", "enable_decoder_checkpointing", "encode_latents", "decode_latents"]

#: diffusers codec class name → codec kind
CODEC_CLASSES = {"AutoencoderKL": "kl", "VQModel": "vq"}
DIFFUSERS_VQ_DEFAULT_SCALE = 0.18215


def vq_scaling(value: float | None) -> float:
    """A VQ codec's latent scale: the config's `scaling_factor` when it was set to something other than
    diffusers' VQModel default 0.18215 (the SD KL value, never right for CompVis VQ-LDMs, which are trained
    unscaled; `vipaint convert-ldm` writes the checkpoint's value), else 1.0."""
    if value is None or abs(float(value) - DIFFUSERS_VQ_DEFAULT_SCALE) < 1e-9:
        return 1.0
    return float(value)


def check_decode_chunk(decode_chunk: int | None) -> None:
    """Reject a chunk size below 1."""
    if decode_chunk is not None and decode_chunk < 1:
        raise ValueError(f"decode_chunk must be >= 1 or None, got {decode_chunk}")


def latent_scales(codec: nn.Module, kind: str, scaling_factor: float | None) -> tuple[float, float]:
    """(s, shift) of z = s·(E(x) − shift): `scaling_factor` when given, else the config's (VQ: `vq_scaling`)."""
    default = float(getattr(codec.config, "scaling_factor", None) or 1.0)
    default = default if kind == "kl" else vq_scaling(default)
    scale = float(scaling_factor) if scaling_factor is not None else default
    return scale, float(getattr(codec.config, "shift_factor", None) or 0.0)


def codec_image_shape(codec: nn.Module, latent_shape: tuple[int, int, int],
                      denoiser_class: str) -> tuple[int, int, int]:
    """(C, H, W) of decoded images for latents of `latent_shape`; the codec's latent channels must match."""
    c, h, w = latent_shape
    lat = int(getattr(codec.config, "vq_embed_dim", None) or codec.config.latent_channels)
    if lat != c:
        raise ValueError(f"the codec's latents have {lat} channels but the {denoiser_class} takes {c}")
    down = 2 ** (len(codec.config.block_out_channels) - 1)
    return (int(codec.config.in_channels), h * down, w * down)


def enable_decoder_checkpointing(codec: nn.Module) -> bool:
    """diffusers' `enable_gradient_checkpointing()` where the codec supports it (AutoencoderKL); returns
    True when it does not (VQModel), so that the caller wraps the whole decode in `torch.utils.checkpoint`."""
    if getattr(codec, "_supports_gradient_checkpointing", False):
        codec.enable_gradient_checkpointing()
        return False
    return True


def _chunks(x: Tensor, chunk: int | None) -> list[Tensor]:
    n = chunk or max(1, x.shape[0])
    return list(x.split(n)) if x.shape[0] > 0 else [x]


def encode_latents(codec: nn.Module, x: Tensor, *, kind: str, scaling_factor: float, shift_factor: float,
                   chunk: int | None, runtime: Runtime) -> Tensor:
    """Pixels [N, C, H, W] → scaled latents s·(E(x) − shift): the posterior mean for KL, the
    pre-quantisation latents for VQ; in chunks of `chunk` images."""
    dt = next(codec.parameters()).dtype
    outs = []
    for xc in _chunks(x, chunk):
        with runtime.amp(x.device):
            if kind == "kl":
                h = codec.encode(runtime.fmt(xc.to(dt))).latent_dist.mean
            else:
                h = codec.encode(runtime.fmt(xc.to(dt))).latents
        outs.append(((h.to(x.dtype) - shift_factor) * scaling_factor).contiguous())
    return torch.cat(outs)


def _decode_chunk(codec: nn.Module, h: Tensor, kind: str, force_not_quantize: bool, runtime: Runtime) -> Tensor:
    with runtime.amp(h.device):
        if kind == "vq":
            return codec.decode(runtime.fmt(h), force_not_quantize=force_not_quantize).sample
        return codec.decode(runtime.fmt(h)).sample


def decode_latents(codec: nn.Module, z: Tensor, *, kind: str, scaling_factor: float, shift_factor: float,
                   force_not_quantize: bool, chunk: int | None, checkpoint: bool, runtime: Runtime) -> Tensor:
    """Scaled latents [N, c, h, w] → pixels, differentiable (VQ: straight-through quantiser unless
    `force_not_quantize`), in chunks of `chunk`; `checkpoint`: recompute each chunk's decoder activations
    in the backward pass (`torch.utils.checkpoint`) when gradients are needed."""
    dt = next(codec.parameters()).dtype
    outs = []
    for zc in _chunks(z, chunk):
        h = (zc / scaling_factor + shift_factor).to(dt)
        if checkpoint and torch.is_grad_enabled() and h.requires_grad:
            from torch.utils.checkpoint import checkpoint as run_checkpointed

            out = run_checkpointed(_decode_chunk, codec, h, kind, force_not_quantize, runtime, use_reentrant=False)
        else:
            out = _decode_chunk(codec, h, kind, force_not_quantize, runtime)
        outs.append(out.to(z.dtype).contiguous())
    return torch.cat(outs) if len(outs) > 1 else outs[0]
