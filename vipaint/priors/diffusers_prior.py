"""Diffusers priors: a denoiser (`UNet2DModel`, `UNet2DConditionModel` + class embedding, or
`DiTTransformer2DModel`) + its scheduler config, optionally behind a codec (`AutoencoderKL` or `VQModel`),
loaded through the real `from_pretrained` path from a local folder or a Hub id (cache included). The
network output is converted to ε whatever it predicts (ALGORITHM.md §1). See docs/latent_priors.md.

Folder layouts (diffusers `save_pretrained` of a pipeline; the first that matches wins):
1. `model_index.json` names the components (DDPMPipeline, LDMPipeline, DiTPipeline, ...): the denoiser is
   the entry whose class is one of `UNet2DModel`, `UNet2DConditionModel`, `DiTTransformer2DModel` /
   `Transformer2DModel`; the codec the entry of class `AutoencoderKL` or `VQModel`.
2. no index: `unet/` (class from its config's `_class_name`) or `transformer/` (DiT); codec `vae/`
   (class from its config, default AutoencoderKL) or `vqvae/` (VQModel).
3. a bare model: `config.json` (class from `_class_name`) + `scheduler_config.json` at the root.
Always `scheduler/` (any VP scheduler config: DDPM, DDIM, ...), and for `UNet2DConditionModel` a
`class_embedder/` folder (see `vipaint.priors.denoisers`). A UNet2DModel folder's `attention_heads.json`
(written by `vipaint convert-ldm` for lsun_churches256) is applied on load. CompVis checkpoints are converted
into these layouts by `vipaint convert-ldm` (docs/convert.md).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from vipaint.diffusion import bcast, eps_from_x0
from vipaint.priors.base import Prior
from vipaint.priors.denoisers import (CLASS_EMBEDDER_CONFIG, CLASS_EMBEDDER_WEIGHTS, DENOISER_CLASSES,
                                      ClassEmbedder, CrossAttnUNetDenoiser, Denoiser, DiTDenoiser,
                                      UNetDenoiser)
from vipaint.priors.loading import (_vq_scaling, PriorNotFoundError, _offline, _missing, _Source, _layout, _CODEC_CLASSES)

__all__ = ["DiffusersPrior", "PriorNotFoundError"]

_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class DiffusersPrior(Prior):
    """A pixel or latent diffusers prior.

    Args:
        path: local directory or Hub id (found in the HF cache when offline) in one of the layouts of the
            module docstring: `scheduler/` + `unet/` (UNet2DModel; UNet2DConditionModel with
            `class_embedder/`) or `transformer/` (DiTTransformer2DModel), optionally `vae/`
            (AutoencoderKL) or `vqvae/` (VQModel); or a bare UNet folder.
        num_classes: number of real classes of a class-conditional denoiser; label `num_classes` is the
            null class for classifier-free guidance. None: inferred where the model fixes it (DiT:
            `num_embeds_ada_norm`, 1000 for DiT-XL-2-256; `class_embedder/`: its `num_classes`);
            a class-conditional `UNet2DModel` needs it explicitly. Unconditional calls of a
            class-conditional model use the null class.
        vq_force_not_quantize: VQ decoding. False (diffusers' and CompVis' default): latents go through
            the codebook quantiser, whose straight-through estimator passes gradients unchanged; True:
            decode the continuous (pre-quantisation) latents directly. Both are differentiable.
        dtype: weight dtype after loading ("float32", or "bfloat16"/"float16" for GPU runs).
        local_files_only: never touch the network (default: follow HF_HUB_OFFLINE).
        scaling_factor: latent scale s (z = s·E(x)); None: the KL config's `scaling_factor`; for VQ codecs
            the config's value unless it is diffusers' VQModel default 0.18215, then 1.0 (CompVis VQ-LDMs are
            trained unscaled; CompVis/ldm-celebahq-256's config leaves the default, diffusers issue #6725).
        autocast: "bf16" (or "fp16"): run the denoiser and the decoder under `torch.autocast` on CUDA;
            ε and images come back in the input dtype. A no-op on CPU unless `force_autocast`.
        force_autocast: also autocast on CPU (tests; slow).
        gradient_checkpointing: checkpoint the decoder's activations (diffusers'
            `enable_gradient_checkpointing()` for AutoencoderKL; VQModel lacks it, so its whole decode is
            wrapped in `torch.utils.checkpoint`). Trades one extra decoder forward for memory.
        denoiser_checkpointing: the same for the denoiser (`enable_gradient_checkpointing()`).
        decode_chunk: decode (and encode) in chunks of this many latents to bound memory; differentiable.
        channels_last: keep weights and inputs in channels-last memory format (CUDA convolutions).
        compile: wrap the denoiser in `torch.compile` (called through the wrapper; weights shared).
        download_hint: extra text appended to the error raised when the weights are missing (e.g. how
            to convert a CompVis checkpoint).
    """

    def __init__(self, path: str, *, num_classes: int | None = None, vq_force_not_quantize: bool = False,
                 dtype: str = "float32", local_files_only: bool | None = None,
                 scaling_factor: float | None = None, autocast: str | None = None, force_autocast: bool = False,
                 gradient_checkpointing: bool = False, denoiser_checkpointing: bool = False,
                 decode_chunk: int | None = None, channels_last: bool = False, compile: bool = False,
                 download_hint: str | None = None) -> None:
        super().__init__()
        import diffusers  # deferred: a ~3 s import
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        if autocast is not None and str(autocast).lower() not in _AUTOCAST:
            raise ValueError(f"autocast must be None or one of {sorted(_AUTOCAST)}, got {autocast!r}")
        if decode_chunk is not None and decode_chunk < 1:
            raise ValueError(f"decode_chunk must be >= 1 or None, got {decode_chunk}")
        self.path = str(path)
        lfo = local_files_only if local_files_only is not None else _offline()
        src = _Source(self.path, lfo, download_hint)
        kw = dict(local_files_only=lfo)
        try:
            (den_sub, den_cls), codec_spec, sched_sub = _layout(src)
        except FileNotFoundError as err:
            raise _missing(self.path, str(err), download_hint) from err
        sub_kw = (lambda s: dict(subfolder=s, **kw) if s else dict(kw))  # noqa: E731
        try:
            kind = DENOISER_CLASSES[den_cls]
            if kind == "dit":
                cfg = src.json(f"{den_sub}/config.json" if den_sub else "config.json") or {}
                if cfg.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
                    raise ValueError(f"{den_cls} with norm_type {cfg.get('norm_type')!r} is not a DiT; only "
                                     f"DiT (ada_norm_zero) transformers are supported")
                model = diffusers.DiTTransformer2DModel.from_pretrained(src.target, **sub_kw(den_sub))
                denoiser: Denoiser = DiTDenoiser(model)
            elif kind == "unet_cond":
                model = diffusers.UNet2DConditionModel.from_pretrained(src.target, **sub_kw(den_sub))
                if not src.exists(f"class_embedder/{CLASS_EMBEDDER_CONFIG}"):
                    raise FileNotFoundError(
                        "a UNet2DConditionModel prior needs `class_embedder/` (config.json + "
                        "diffusion_pytorch_model.safetensors holding embedding.weight [num_classes+1, "
                        "cross_attention_dim]); see vipaint.priors.denoisers")
                emb = ClassEmbedder.from_files(src.file(f"class_embedder/{CLASS_EMBEDDER_CONFIG}"),
                                               src.file(f"class_embedder/{CLASS_EMBEDDER_WEIGHTS}"))
                denoiser = CrossAttnUNetDenoiser(model, emb)
            else:
                model = diffusers.UNet2DModel.from_pretrained(src.target, **sub_kw(den_sub))
                heads = f"{den_sub}/attention_heads.json" if den_sub else "attention_heads.json"
                if src.exists(heads):   # per-module head counts a UNet2DModel config cannot express
                    from vipaint.convert.ldm import apply_attention_heads   # (vipaint convert-ldm, lsun_churches256)

                    apply_attention_heads(model, src.root / heads)
                denoiser = UNetDenoiser(model)
            sched = diffusers.DDPMScheduler.from_pretrained(src.target, **sub_kw(sched_sub))
            codec: nn.Module | None = None
            self.codec_kind = "identity"
            if codec_spec is not None:
                csub, self.codec_kind = codec_spec
                cls = diffusers.AutoencoderKL if self.codec_kind == "kl" else diffusers.VQModel
                codec = cls.from_pretrained(src.target, subfolder=csub, **kw)
                if scaling_factor is None and self.codec_kind == "vq":
                    scaling_factor = _vq_scaling((src.json(f"{csub}/config.json") or {}).get("scaling_factor"))
        except (OSError, EnvironmentError) as err:
            raise _missing(self.path, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                           download_hint) from err
        self._build(denoiser, sched, codec, num_classes=num_classes, vq_force_not_quantize=vq_force_not_quantize,
                    dtype=dtype, scaling_factor=scaling_factor, autocast=autocast, force_autocast=force_autocast,
                    gradient_checkpointing=gradient_checkpointing, denoiser_checkpointing=denoiser_checkpointing,
                    decode_chunk=decode_chunk, channels_last=channels_last, compile=compile)

    @classmethod
    def from_models(cls, denoiser: nn.Module, scheduler, codec: nn.Module | None = None, *,  # noqa: ANN001
                    class_embedder: ClassEmbedder | None = None, **options: object) -> "DiffusersPrior":
        """A prior from in-memory diffusers models (no files): `denoiser` a UNet2DModel,
        UNet2DConditionModel (with `class_embedder`) or DiTTransformer2DModel, `scheduler` any diffusers VP
        scheduler (its `alphas_cumprod` and `prediction_type` are read), `codec` an AutoencoderKL or
        VQModel. `options` are the constructor's keyword options (num_classes, autocast, ...)."""
        name = type(denoiser).__name__
        kind = DENOISER_CLASSES.get(name)
        if kind is None:
            raise ValueError(f"unsupported denoiser class {name!r}; supported: {sorted(DENOISER_CLASSES)}")
        if kind == "unet_cond":
            if class_embedder is None:
                raise ValueError("a UNet2DConditionModel needs class_embedder=ClassEmbedder(num_classes, dim)")
            wrapped: Denoiser = CrossAttnUNetDenoiser(denoiser, class_embedder)
        else:
            wrapped = DiTDenoiser(denoiser) if kind == "dit" else UNetDenoiser(denoiser)
        if codec is not None and type(codec).__name__ not in _CODEC_CLASSES:
            raise ValueError(f"unsupported codec class {type(codec).__name__!r}; supported: {sorted(_CODEC_CLASSES)}")
        obj = cls.__new__(cls)
        Prior.__init__(obj)
        obj.path = f"<in-memory {name}>"
        obj.codec_kind = "identity" if codec is None else _CODEC_CLASSES[type(codec).__name__]
        obj._build(wrapped, scheduler, codec, **options)
        return obj

    def _build(self, denoiser: Denoiser, sched, codec: nn.Module | None, *,  # noqa: ANN001
               num_classes: int | None = None,
               vq_force_not_quantize: bool = False, dtype: str = "float32", scaling_factor: float | None = None,
               autocast: str | None = None, force_autocast: bool = False, gradient_checkpointing: bool = False,
               denoiser_checkpointing: bool = False, decode_chunk: int | None = None, channels_last: bool = False,
               compile: bool = False) -> None:
        if autocast is not None and str(autocast).lower() not in _AUTOCAST:
            raise ValueError(f"autocast must be None or one of {sorted(_AUTOCAST)}, got {autocast!r}")
        if decode_chunk is not None and decode_chunk < 1:
            raise ValueError(f"decode_chunk must be >= 1 or None, got {decode_chunk}")
        torch_dtype = getattr(torch, dtype)
        for m in (denoiser, codec):   # cast only when needed (diffusers warns about `.to(dtype)` on its models)
            if m is not None and any(p.dtype != torch_dtype for p in m.parameters()):
                m.to(torch_dtype)
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.codec = codec.eval().requires_grad_(False) if codec is not None else None
        self.denoiser_class = type(denoiser.model).__name__
        self.prediction_type = sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

        # classes: explicit, or the model's own convention; the null label is always num_classes
        inferred = denoiser.num_classes
        if num_classes is not None and inferred is not None and int(num_classes) != inferred:
            raise ValueError(f"num_classes={num_classes} but the {self.denoiser_class} has {inferred} classes "
                             f"(null class {inferred}); leave num_classes unset")
        self.num_classes = int(num_classes) if num_classes is not None else inferred
        if denoiser.needs_labels and self.num_classes is None:
            raise ValueError(f"{self.path}: the {self.denoiser_class} is class-conditional; set num_classes (the "
                             f"number of real classes; label num_classes is the null class)")
        if isinstance(denoiser, UNetDenoiser) and self.num_classes is not None:
            table = denoiser.config.num_class_embeds
            if not denoiser.needs_labels:
                raise ValueError(f"num_classes={self.num_classes} given, but the UNet2DModel at {self.path} has no "
                                 f"class embedding (num_class_embeds / class_embed_type unset)")
            if table is not None and self.num_classes >= int(table):
                raise ValueError(f"num_classes={self.num_classes} leaves no null class in the UNet's "
                                 f"{table}-entry class table (need num_classes <= {int(table) - 1})")

        self.vq_force_not_quantize = bool(vq_force_not_quantize)
        if codec is None:
            self.scaling_factor, self.shift_factor = 1.0, 0.0
        else:
            default = float(getattr(codec.config, "scaling_factor", None) or 1.0)
            default = default if self.codec_kind == "kl" else _vq_scaling(default)
            self.scaling_factor = float(scaling_factor) if scaling_factor is not None else default
            self.shift_factor = float(getattr(codec.config, "shift_factor", None) or 0.0)
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.double().clone())

        c = denoiser.in_channels
        s = denoiser.sample_size
        self._latent_shape = (int(c), int(s[0]), int(s[1]))
        if codec is not None:
            lat = int(getattr(codec.config, "vq_embed_dim", None) or codec.config.latent_channels)
            if lat != c:
                raise ValueError(f"the codec's latents have {lat} channels but the {self.denoiser_class} "
                                 f"takes {c}")
            down = 2 ** (len(codec.config.block_out_channels) - 1)
            self._image_shape = (int(codec.config.in_channels), s[0] * down, s[1] * down)
        else:
            self._image_shape = self._latent_shape

        # performance options
        self.autocast = None if autocast is None else str(autocast).lower()
        self.force_autocast = bool(force_autocast)
        self.decode_chunk = decode_chunk
        self.channels_last = bool(channels_last)
        self._checkpoint_decode = False
        if gradient_checkpointing and codec is not None:
            if getattr(codec, "_supports_gradient_checkpointing", False):
                codec.enable_gradient_checkpointing()
            else:
                self._checkpoint_decode = True
        if denoiser_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if self.channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
            if self.codec is not None:
                self.codec.to(memory_format=torch.channels_last)
        # the compiled wrapper is kept outside the module tree (state_dict and .to() see the plain model)
        self.__dict__["_compiled"] = torch.compile(self.denoiser) if compile else None

    # -- shapes ----------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._latent_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    @property
    def is_latent(self) -> bool:
        return self.codec is not None

    @property
    def unet(self) -> nn.Module:
        """The underlying diffusers denoiser (UNet or DiT), for backward compatibility."""
        return self.denoiser.model

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, denoiser={self.denoiser_class}, codec={self.codec_kind}, "
                f"prediction={self.prediction_type}, num_classes={self.num_classes}")

    # -- helpers ---------------------------------------------------------------------------------
    def _amp(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast is None or (device.type == "cpu" and not self.force_autocast):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST[self.autocast])

    def _fmt(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    # -- network ---------------------------------------------------------------------------------
    def _net(self, z: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """ε from one network call on z [N, *latent] (whatever the model predicts)."""
        dt = next(self.denoiser.parameters()).dtype
        net = self._compiled if self._compiled is not None else self.denoiser
        if labels is None and self.denoiser.needs_labels:
            labels = torch.full((z.shape[0],), int(self.num_classes), device=z.device, dtype=torch.long)
        with self._amp(z.device):
            out = net(self._fmt(z.to(dt)), t, labels)
        out = out.to(z.dtype)
        c = z.shape[1]
        if out.shape[1] == 2 * c:  # learned variance (DiT, improved DDPM): ε is the first half
            out = out[:, :c]
        if self.prediction_type == "epsilon":
            return out
        ab = bcast(self.alphas_cumprod[t].to(z.dtype), z)
        if self.prediction_type == "sample":
            return eps_from_x0(z, out, ab)
        return (1 - ab).sqrt() * z + ab.sqrt() * out   # v-prediction: ε = σ z + α v

    def eps_flat(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """ε_θ(z, t, c). Class-conditional priors: ε_c for g = 1; classifier-free guidance
        ε_u + g(ε_c − ε_u) otherwise, in one network call on a batch of 2N ([conditional; null class]);
        ε_u (null class) when `cond` is None. Unconditional priors ignore `cond` and `guidance_scale`."""
        t = t.to(z.device).long()
        if self.num_classes is None:
            return self._net(z, t, None)
        if cond is None:
            return self._net(z, t, torch.full((z.shape[0],), self.num_classes, device=z.device, dtype=torch.long))
        cond = cond.to(z.device).long()
        if guidance_scale == 1.0:
            return self._net(z, t, cond)
        null = torch.full_like(cond, self.num_classes)
        if guidance_scale == 0.0:
            return self._net(z, t, null)
        both = self._net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, null]))
        e_c, e_u = both.chunk(2)
        return e_u + guidance_scale * (e_c - e_u)

    # -- codec -----------------------------------------------------------------------------------
    def _chunks(self, x: Tensor) -> list[Tensor]:
        n = self.decode_chunk or max(1, x.shape[0])
        return list(x.split(n)) if x.shape[0] > 0 else [x]

    def encode_flat(self, x: Tensor) -> Tensor:
        """Pixels → scaled latents s·(E(x) − shift): the posterior mean for KL, the pre-quantisation
        latents for VQ."""
        if self.codec is None:
            return x
        dt = next(self.codec.parameters()).dtype
        outs = []
        for xc in self._chunks(x):
            with self._amp(x.device):
                if self.codec_kind == "kl":
                    h = self.codec.encode(self._fmt(xc.to(dt))).latent_dist.mean
                else:
                    h = self.codec.encode(self._fmt(xc.to(dt))).latents
            outs.append(((h.to(x.dtype) - self.shift_factor) * self.scaling_factor).contiguous())
        return torch.cat(outs)

    def _decode_chunk(self, h: Tensor) -> Tensor:
        with self._amp(h.device):
            if self.codec_kind == "vq":
                return self.codec.decode(self._fmt(h), force_not_quantize=self.vq_force_not_quantize).sample
            return self.codec.decode(self._fmt(h)).sample

    def decode_flat(self, z: Tensor) -> Tensor:
        """Scaled latents → pixels, differentiable (VQ: straight-through quantiser unless
        `vq_force_not_quantize`), in chunks of `decode_chunk`."""
        if self.codec is None:
            return z
        dt = next(self.codec.parameters()).dtype
        outs = []
        for zc in self._chunks(z):
            h = (zc / self.scaling_factor + self.shift_factor).to(dt)
            if self._checkpoint_decode and torch.is_grad_enabled() and h.requires_grad:
                from torch.utils.checkpoint import checkpoint

                out = checkpoint(self._decode_chunk, h, use_reentrant=False)
            else:
                out = self._decode_chunk(h)
            outs.append(out.to(z.dtype).contiguous())
        return torch.cat(outs) if len(outs) > 1 else outs[0]
