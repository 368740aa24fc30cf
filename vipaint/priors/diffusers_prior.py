"""Diffusers priors: a denoiser (`UNet2DModel`, `UNet2DConditionModel` + class embedding or text encoder,
`DiTTransformer2DModel`, `SD3Transformer2DModel`) + its scheduler config, optionally behind a codec
(`AutoencoderKL` or `VQModel`),
loaded through the real `from_pretrained` path from a local folder or a Hub id (cache included). The
network output is converted to ε whatever it predicts (docs/algorithm.md §1). See docs/latent_priors.md.

`DiffusersPrior` composes three parts: `vipaint.priors.loading` (folder layouts, file discovery, the
errors that say what to download), `vipaint.priors.denoisers` (one call signature for every denoiser,
output → ε, classifier-free guidance) and `vipaint.priors.codec` (latent scale, chunked encode/decode,
decoder checkpointing); `vipaint.priors.runtime` holds the autocast / channels-last options. Stable Diffusion
pipelines add `vipaint.priors.text` (prompt → context) and `vipaint.priors.prompts` (prompt ids as `cond`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vipaint.priors.base import Prior
from vipaint.priors.codec import (
    CODEC_CLASSES,
    check_decode_chunk,
    codec_image_shape,
    decode_latents,
    enable_decoder_checkpointing,
    encode_latents,
    latent_scales,
    vq_scaling,
)
from vipaint.priors.denoisers import (
    PREDICTION_TYPES,
    ClassEmbedder,
    Denoiser,
    eps_from_output,
    guided_eps,
    resolve_num_classes,
    wrap_denoiser,
)
from vipaint.priors.loading import PriorNotFoundError, import_diffusers, load_components
from vipaint.priors.paths import flow_schedule
from vipaint.priors.prompts import PromptTable, text_guided_eps
from vipaint.priors.runtime import Runtime, check_autocast

__all__ = ["DiffusersPrior", "PriorNotFoundError"]


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
        flow_shift: for a `FlowMatchEulerDiscreteScheduler` (rectified flow, docs/algorithm.md §11.2): the fixed
            shift of the noise grid, overriding the config's `shift`; required when the config uses dynamic
            shifting. An error with a VP scheduler.
        text_device: Stable Diffusion pipelines: where the text encoders run ("cpu", or None: the prior's
            device at the first prompt). Each distinct prompt is encoded once (`prompt_ids`).
        text_dtype: the text encoders' weight dtype (None: as stored; "bfloat16"/"float16" on GPU).
        drop_t5: SD3/3.5: do not load T5-XXL; its part of the context is zeros (as diffusers with
            `text_encoder_3=None`).
        max_sequence_length: SD3/3.5: T5 tokens (diffusers' default 256).

    Text-conditioned priors (`is_text_conditioned`) take prompt ids as `cond`: `prompt_ids(prompts, negative)`
    registers the strings and returns one id per (prompt, negative prompt) pair; guidance scale g gives
    ε_neg + g(ε_prompt − ε_neg), and a call without `cond` uses the empty prompt.
    """

    def __init__(self, path: str, *, num_classes: int | None = None, vq_force_not_quantize: bool = False,
                 dtype: str = "float32", local_files_only: bool | None = None,
                 scaling_factor: float | None = None, autocast: str | None = None, force_autocast: bool = False,
                 gradient_checkpointing: bool = False, denoiser_checkpointing: bool = False,
                 decode_chunk: int | None = None, channels_last: bool = False, compile: bool = False,
                 download_hint: str | None = None, flow_shift: float | None = None, text_device: str | None = None,
                 text_dtype: str | None = None, drop_t5: bool = False, max_sequence_length: int = 256) -> None:
        super().__init__()
        import_diffusers()  # deferred: a ~3 s import
        check_autocast(autocast)
        check_decode_chunk(decode_chunk)
        self.path = str(path)
        text_options = dict(device=text_device, dtype=text_dtype, drop_t5=drop_t5,
                            max_sequence_length=max_sequence_length)
        parts = load_components(self.path, local_files_only=local_files_only, download_hint=download_hint,
                                text_options=text_options)
        self.codec_kind = parts.codec_kind
        if scaling_factor is None and parts.codec_kind == "vq":
            scaling_factor = vq_scaling(parts.vq_config_scaling)
        self._build(parts.denoiser, parts.scheduler, parts.codec, num_classes=num_classes,
                    vq_force_not_quantize=vq_force_not_quantize, dtype=dtype, scaling_factor=scaling_factor,
                    autocast=autocast, force_autocast=force_autocast, gradient_checkpointing=gradient_checkpointing,
                    denoiser_checkpointing=denoiser_checkpointing, decode_chunk=decode_chunk,
                    channels_last=channels_last, compile=compile, flow_shift=flow_shift, text_encoder=parts.text)

    @classmethod
    def from_models(cls, denoiser: nn.Module, scheduler, codec: nn.Module | None = None, *,
                    class_embedder: ClassEmbedder | None = None, **options: object) -> DiffusersPrior:
        """A prior from in-memory diffusers models (no files): `denoiser` a UNet2DModel,
        UNet2DConditionModel (with `class_embedder`, or with `text_encoder=` a `vipaint.priors.text.TextEncoder`
        in `options`), DiTTransformer2DModel or SD3Transformer2DModel, `scheduler` any diffusers VP scheduler
        (its `alphas_cumprod` and `prediction_type` are read) or a `FlowMatchEulerDiscreteScheduler`, `codec` an
        AutoencoderKL or VQModel. `options` are the constructor's keyword options (num_classes, autocast, ...)."""
        wrapped = wrap_denoiser(denoiser, class_embedder, text=options.get("text_encoder") is not None)
        if codec is not None and type(codec).__name__ not in CODEC_CLASSES:
            raise ValueError(f"unsupported codec class {type(codec).__name__!r}; supported: {sorted(CODEC_CLASSES)}")
        obj = cls.__new__(cls)
        Prior.__init__(obj)
        obj.path = f"<in-memory {type(denoiser).__name__}>"
        obj.codec_kind = "identity" if codec is None else CODEC_CLASSES[type(codec).__name__]
        obj._build(wrapped, scheduler, codec, **options)
        return obj

    def _build(self, denoiser: Denoiser, sched, codec: nn.Module | None, *,
               num_classes: int | None = None,
               vq_force_not_quantize: bool = False, dtype: str = "float32", scaling_factor: float | None = None,
               autocast: str | None = None, force_autocast: bool = False, gradient_checkpointing: bool = False,
               denoiser_checkpointing: bool = False, decode_chunk: int | None = None, channels_last: bool = False,
               compile: bool = False, flow_shift: float | None = None, text_encoder=None) -> None:
        check_autocast(autocast)
        check_decode_chunk(decode_chunk)
        torch_dtype = getattr(torch, dtype)
        for m in (denoiser, codec):   # cast only when needed (diffusers warns about `.to(dtype)` on its models)
            if m is not None and any(p.dtype != torch_dtype for p in m.parameters()):
                m.to(torch_dtype)
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.codec = codec.eval().requires_grad_(False) if codec is not None else None
        self.denoiser_class = type(denoiser.model).__name__
        flow = type(sched).__name__ == "FlowMatchEulerDiscreteScheduler"
        if flow_shift is not None and not flow:
            raise ValueError(f"flow_shift={flow_shift} given, but the scheduler is a VP {type(sched).__name__}")
        self.prediction_type = "flow_prediction" if flow else sched.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.num_classes = resolve_num_classes(denoiser, num_classes, self.path)
        # kept outside the module tree: `.to(device)` does not move the text encoders (see `text_device`)
        self.__dict__["text_encoder"] = text_encoder
        self.__dict__["prompts"] = None if text_encoder is None else PromptTable(self._encode_prompts)

        self.vq_force_not_quantize = bool(vq_force_not_quantize)
        if codec is None:
            self.scaling_factor, self.shift_factor = 1.0, 0.0
        else:
            self.scaling_factor, self.shift_factor = latent_scales(codec, self.codec_kind, scaling_factor)
        if flow:   # rectified flow: VP-equivalent ᾱ' in `alphas_cumprod` (docs/algorithm.md §11.1)
            self.set_path("flow", *flow_schedule(dict(sched.config), flow_shift))
        else:
            self.register_buffer("alphas_cumprod", sched.alphas_cumprod.double().clone())

        s = denoiser.sample_size
        self._latent_shape = (int(denoiser.in_channels), int(s[0]), int(s[1]))
        self._image_shape = (self._latent_shape if codec is None else
                             codec_image_shape(codec, self._latent_shape, self.denoiser_class))

        # performance options
        self.runtime = Runtime(None if autocast is None else str(autocast).lower(), bool(force_autocast),
                               bool(channels_last))
        self.decode_chunk = decode_chunk
        self._checkpoint_decode = False
        if gradient_checkpointing and codec is not None:
            self._checkpoint_decode = enable_decoder_checkpointing(codec)
        if denoiser_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if self.channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
            if self.codec is not None:
                self.codec.to(memory_format=torch.channels_last)
        # the compiled wrapper is kept outside the module tree (state_dict and .to() see the plain model)
        self.__dict__["_compiled"] = torch.compile(self.denoiser) if compile else None

    # -- shapes and options ----------------------------------------------------------------------
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
    def autocast(self) -> str | None:
        return self.runtime.autocast

    @property
    def force_autocast(self) -> bool:
        return self.runtime.force_autocast

    @property
    def channels_last(self) -> bool:
        return self.runtime.channels_last

    @property
    def unet(self) -> nn.Module:
        """The underlying diffusers denoiser (UNet or DiT), for backward compatibility."""
        return self.denoiser.model

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, denoiser={self.denoiser_class}, codec={self.codec_kind}, "
                f"prediction={self.prediction_type}, num_classes={self.num_classes}, "
                f"text={self.text_encoder!r}")

    # -- prompts ---------------------------------------------------------------------------------
    @property
    def is_text_conditioned(self) -> bool:
        """Whether `cond` holds prompt ids (Stable Diffusion pipelines) rather than class labels."""
        return self.text_encoder is not None

    def _encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        return self.text_encoder.encode(prompts, device=self.alphas_cumprod.device)

    def prompt_ids(self, prompts: list[str] | str, negative: list[str] | str = "") -> Tensor:
        """Long ids [B] (on the prior's device) of (prompt, negative prompt) pairs, to pass as `cond`; each new
        string is encoded once (one batched text-encoder call) and cached."""
        if self.prompts is None:
            raise ValueError(f"the prior at {self.path} ({self.denoiser_class}) is not text-conditioned; "
                             "it takes no prompt")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.prompts.ids(prompts, negative).to(self.alphas_cumprod.device)

    # -- network ---------------------------------------------------------------------------------
    def _net(self, z: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """ε from one network call on z [N, *latent] (whatever the model predicts)."""
        dt = next(self.denoiser.parameters()).dtype
        net = self._compiled if self._compiled is not None else self.denoiser
        if labels is None and self.denoiser.needs_labels:
            labels = torch.full((z.shape[0],), int(self.num_classes), device=z.device, dtype=torch.long)
        x, tm = self.network_input(z, t)    # (z, t) on VP; the path state and σ·N on flow (§11.1)
        with self.runtime.amp(z.device):
            out = net(self.runtime.fmt(x.to(dt)), tm, labels).to(z.dtype)
        if self.noise_path == "vp":
            return eps_from_output(out, z, t, self.alphas_cumprod, self.prediction_type)
        return self.eps_from_network(out[:, :z.shape[1]], x, t, self.prediction_type)

    def eps_flat(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """ε_θ(z, t, c). Class-conditional priors: ε_c for g = 1; classifier-free guidance
        ε_u + g(ε_c − ε_u) otherwise, in one network call on a batch of 2N ([conditional; null class]);
        ε_u (null class) when `cond` is None. Unconditional priors ignore `cond` and `guidance_scale`.
        Text-conditioned priors: `cond` holds prompt ids (`prompt_ids`), the negative prompt is the
        unconditional branch (`vipaint.priors.prompts.text_guided_eps`)."""
        if self.prompts is not None:
            return text_guided_eps(self._net, z, t, cond, guidance_scale, self.prompts)
        return guided_eps(self._net, z, t, cond, guidance_scale, self.num_classes)

    # -- codec -----------------------------------------------------------------------------------
    def encode_flat(self, x: Tensor) -> Tensor:
        """Pixels → scaled latents s·(E(x) − shift): the posterior mean for KL, the pre-quantisation
        latents for VQ."""
        if self.codec is None:
            return x
        return encode_latents(self.codec, x, kind=self.codec_kind, scaling_factor=self.scaling_factor,
                              shift_factor=self.shift_factor, chunk=self.decode_chunk, runtime=self.runtime)

    def decode_flat(self, z: Tensor) -> Tensor:
        """Scaled latents → pixels, differentiable (VQ: straight-through quantiser unless
        `vq_force_not_quantize`), in chunks of `decode_chunk`."""
        if self.codec is None:
            return z
        return decode_latents(self.codec, z, kind=self.codec_kind, scaling_factor=self.scaling_factor,
                              shift_factor=self.shift_factor, force_not_quantize=self.vq_force_not_quantize,
                              chunk=self.decode_chunk, checkpoint=self._checkpoint_decode, runtime=self.runtime)
