"""Loading a diffusers prior's components: local folders, Hub ids and the Hub cache, the folder layouts,
the errors that say what to download and where to put it, and `load_components`, which builds the
denoiser adapter, the scheduler and the codec through the real `from_pretrained` path (used by
`vipaint.priors.DiffusersPrior`). See docs/latent_priors.md.

Folder layouts (diffusers `save_pretrained` of a pipeline; the first that matches wins):
1. `model_index.json` names the components (DDPMPipeline, LDMPipeline, DiTPipeline, ...): the denoiser is
   the entry whose class is one of `UNet2DModel`, `UNet2DConditionModel`, `DiTTransformer2DModel` /
   `Transformer2DModel`; the codec the entry of class `AutoencoderKL` or `VQModel`.
2. no index: `unet/` (class from its config's `_class_name`) or `transformer/` (DiT); codec `vae/`
   (class from its config, default AutoencoderKL) or `vqvae/` (VQModel).
3. a bare model: `config.json` (class from `_class_name`) + `scheduler_config.json` at the root.
Always `scheduler/` (any VP scheduler config: DDPM, DDIM, PNDM, ...; or `FlowMatchEulerDiscreteScheduler`), and
for `UNet2DConditionModel` either a `class_embedder/` folder (see `vipaint.priors.denoisers`) or, for Stable
Diffusion 1.x/2.x pipelines, `text_encoder/` + `tokenizer/`; SD3/3.5 pipelines (`SD3Transformer2DModel`) bring
two or three text encoders (`vipaint.priors.text`) and a flow-matching scheduler. A UNet2DModel folder's
`attention_heads.json` (written by `vipaint convert-ldm` for lsun_churches256) is applied on load
(`apply_attention_heads`). CompVis checkpoints are converted into these layouts by `vipaint convert-ldm`
(docs/convert.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vipaint.priors.codec import CODEC_CLASSES
from vipaint.priors.denoisers import (
    CLASS_EMBEDDER_CONFIG,
    CLASS_EMBEDDER_WEIGHTS,
    DENOISER_CLASSES,
    ClassEmbedder,
    CrossAttnUNetDenoiser,
    Denoiser,
    DiTDenoiser,
    SD3Denoiser,
    TextUNetDenoiser,
    UNetDenoiser,
)

__all__ = ["PriorNotFoundError", "PriorDamagedError", "LoadedComponents", "load_components", "apply_attention_heads",
           "import_diffusers", "ATTENTION_HEADS_FILE"]

#: per-module attention head counts a UNet2DModel config cannot express (`vipaint convert-ldm`)
ATTENTION_HEADS_FILE = "attention_heads.json"


def import_diffusers() -> Any:
    """`import diffusers` (deferred by callers: a ~3 s import) with its logging set to errors only."""
    import diffusers
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    return diffusers


class PriorNotFoundError(FileNotFoundError):
    """The prior's weights are not where the configuration points."""


class PriorDamagedError(ValueError):
    """A file of the prior exists but cannot be read (truncated or corrupt): not a download problem."""


def _damaged(path: str, err: BaseException) -> PriorDamagedError | None:
    """The error to raise when `err` names an existing file that failed to load (None: a missing file)."""
    existing = [f for f in re.findall(r"'([^']+)'", str(err)) if os.path.isfile(f)]
    if not existing:
        return None
    cause = err.__cause__ or err.__context__
    why = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" + (
        f"; caused by {type(cause).__name__}: {str(cause)[:200]}" if cause is not None else "")
    return PriorDamagedError(f"Weights for prior '{path}': the file {existing[0]} exists but cannot be read ({why}). "
                             "It is damaged or truncated; download or convert it again.")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a diffusers dependency
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def _looks_local(path: str) -> bool:
    p = str(path)
    return Path(p).is_absolute() or p.startswith((".", "data/", "~")) or p.count("/") != 1


def _missing(path: str, detail: str, hint: str | None = None) -> PriorNotFoundError:
    name = str(path).rstrip("/").split("/")[-1] or "prior"
    lines = [f"Weights for prior '{path}' could not be loaded ({detail}).",
             "  Expected a diffusers folder: `scheduler/` + a denoiser (`unet/` UNet2DModel, `unet/` "
             "UNet2DConditionModel + `class_embedder/`, or `transformer/` DiT) [+ `vae/` AutoencoderKL or "
             "`vqvae/` VQModel], or a bare UNet (config.json + scheduler_config.json); or a Stable Diffusion "
             "pipeline folder (model_index.json, unet/ or transformer/, vae/, text_encoder*/, tokenizer*/, "
             "scheduler/)."]
    if hint:
        lines.append("  " + hint.strip().replace("\n", "\n  "))
    if not _looks_local(path):
        lines += [
            "  To get it, on a machine with a network, either:",
            f"  * fill the Hugging Face cache: `HF_HUB_OFFLINE=0 hf download {path}` (writes "
            f"{_hub_cache()}/models--{str(path).replace('/', '--')}; set HF_HOME on both machines to move it, "
            f"copy that folder over), then keep `path: {path}`;",
            f"  * or download into a folder: `hf download {path} --local-dir data/priors/{name}` and set "
            f"`model.prior.init_args.path: data/priors/{name}` in the experiment YAML "
            f"(or pass --model.prior.init_args.path=data/priors/{name}).",
        ]
    else:
        lines.append(f"  Fill that folder (a Hub prior: `hf download <org>/<name> --local-dir {path}` where a "
                     f"network exists; a CompVis checkpoint: `vipaint convert-ldm CKPT --config NAME --out {path}`; "
                     f"docs/latent_priors.md), or point `model.prior.init_args.path` in the experiment YAML "
                     f"(--model.prior.init_args.path=...) at another folder or a cached Hub id.")
    if _offline():
        lines.append("  HF_HUB_OFFLINE=1 is set, so nothing is downloaded.")
    return PriorNotFoundError("\n".join(lines))


class _Source:
    """Where the prior's files live: a local folder, or a Hub repo whose small json files are fetched
    (or found in the cache) first so the layout can be read before any weights are touched."""

    def __init__(self, path: str, local_files_only: bool, hint: str | None) -> None:
        self.path, self.lfo, self.hint = str(path), local_files_only, hint
        local = Path(self.path).expanduser()
        if local.exists():
            self.root, self.hub = local, False
            return
        if _looks_local(self.path):
            raise _missing(self.path, "no such directory", hint)
        try:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(self.path, local_files_only=local_files_only, allow_patterns=["*.json"])
        except Exception as err:   # LocalEntryNotFoundError, RepositoryNotFoundError, GatedRepoError, HTTP ...
            raise _missing(self.path, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", hint) from err
        self.root, self.hub = Path(snap), True

    @property
    def target(self) -> str:
        """What `from_pretrained` gets: the Hub id (diffusers resolves cache / downloads) or the folder."""
        return self.path if self.hub else str(self.root)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def json(self, rel: str) -> dict | None:
        f = self.root / rel
        return json.loads(f.read_text()) if f.exists() else None

    def file(self, rel: str) -> Path:
        if not self.hub:
            return self.root / rel
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.path, rel, local_files_only=self.lfo))


def _layout(src: _Source) -> tuple[tuple[str | None, str], tuple[str, str] | None, str | None]:
    """((denoiser subfolder, class), (codec subfolder, kind) or None, scheduler subfolder)."""
    index = src.json("model_index.json")
    den, codec = None, None
    if index is not None:
        comps = {k: v[1] for k, v in index.items()
                 if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], str)}
        for k, cls in comps.items():
            if cls in DENOISER_CLASSES and den is None:
                den = (k, cls)
            elif cls in CODEC_CLASSES and codec is None:
                codec = (k, CODEC_CLASSES[cls])
        if den is None:
            raise ValueError(f"{src.path}/model_index.json names no supported denoiser (components {comps}); "
                             f"supported: {sorted(DENOISER_CLASSES)}")
        return den, codec, "scheduler"
    for sub in ("unet", "transformer"):
        cfg = src.json(f"{sub}/config.json")
        if cfg is not None:
            den = (sub, cfg.get("_class_name") or ("UNet2DModel" if sub == "unet" else "DiTTransformer2DModel"))
            break
    sched: str | None = "scheduler"
    if den is None:
        cfg = src.json("config.json")
        if cfg is None:
            raise FileNotFoundError("no model_index.json, unet/, transformer/ or config.json")
        den, sched = (None, cfg.get("_class_name") or "UNet2DModel"), None
    if den[1] not in DENOISER_CLASSES:
        raise ValueError(f"unsupported denoiser class {den[1]!r}; supported: {sorted(DENOISER_CLASSES)}")
    for sub, default in (("vae", "AutoencoderKL"), ("vqvae", "VQModel")):
        cfg = src.json(f"{sub}/config.json")
        if cfg is not None:
            cls = cfg.get("_class_name") or default
            if cls not in CODEC_CLASSES:
                raise ValueError(f"unsupported codec class {cls!r} in {sub}/; supported: {sorted(CODEC_CLASSES)}")
            codec = (sub, CODEC_CLASSES[cls])
            break
    return den, codec, sched


def apply_attention_heads(unet: nn.Module, heads: str | Path | dict[str, int]) -> nn.Module:
    """Set per-module head counts that a UNet2DModel config cannot express (see `attention_heads.json`).

    `heads`: the folder holding `attention_heads.json`, the file, or its `{"module.path": heads}` map.
    No-op when the folder has no such file. Returns `unet` (modified in place).
    """
    if not isinstance(heads, dict):
        path = Path(heads)
        path = path / ATTENTION_HEADS_FILE if path.is_dir() else path
        if not path.exists():
            return unet
        heads = json.loads(path.read_text())["heads"]
    modules = dict(unet.named_modules())
    for name, h in heads.items():
        attn = modules[name]
        inner = attn.to_q.out_features
        if inner % h:
            raise ValueError(f"{name}: {inner} channels cannot be split into {h} heads")
        attn.heads, attn.scale = int(h), (inner // h) ** -0.5
    return unet


@dataclass
class LoadedComponents:
    """What `load_components` found: the denoiser adapter, the diffusers scheduler, the codec (None for pixel
    priors) and its kind ("identity", "kl" or "vq"), and a VQ codec's `scaling_factor` as written in its
    config file (None if absent or not VQ)."""

    denoiser: Denoiser
    scheduler: Any
    codec: nn.Module | None
    codec_kind: str
    vq_config_scaling: float | None = None
    text: Any = None       # a vipaint.priors.text.TextEncoder for Stable Diffusion pipelines


def _text_kind(src: _Source, den_kind: str) -> str | None:
    """"sd3", "clip" (an SD 1.x/2.x UNet with `text_encoder/`) or None (no text conditioning)."""
    if den_kind == "sd3":
        return "sd3"
    index = src.json("model_index.json") or {}
    listed = isinstance(index.get("text_encoder"), list) and isinstance(index["text_encoder"][1], str)
    return "clip" if den_kind == "unet_cond" and (listed or src.exists("text_encoder/config.json")) else None


def load_components(path: str, *, local_files_only: bool | None = None, download_hint: str | None = None,
                    text_options: dict[str, Any] | None = None) -> LoadedComponents:
    """Find the layout of the prior at `path` (a folder or a Hub id, cache included) and load its components
    with `from_pretrained`. Missing files raise `PriorNotFoundError` saying what to download and where
    (`download_hint` is appended); `local_files_only` None follows HF_HUB_OFFLINE. `text_options`: keyword
    options of `vipaint.priors.text.load_text_encoder` (device, dtype, drop_t5, max_sequence_length)."""
    diffusers = import_diffusers()
    path = str(path)
    lfo = local_files_only if local_files_only is not None else _offline()
    src = _Source(path, lfo, download_hint)
    kw = dict(local_files_only=lfo)
    try:
        (den_sub, den_cls), codec_spec, sched_sub = _layout(src)
    except FileNotFoundError as err:
        raise _missing(path, str(err), download_hint) from err
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
        elif kind == "sd3":
            model = diffusers.SD3Transformer2DModel.from_pretrained(src.target, **sub_kw(den_sub))
            denoiser = SD3Denoiser(model)
        elif kind == "unet_cond" and _text_kind(src, kind) == "clip":
            denoiser = TextUNetDenoiser(diffusers.UNet2DConditionModel.from_pretrained(src.target, **sub_kw(den_sub)))
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
            heads = f"{den_sub}/{ATTENTION_HEADS_FILE}" if den_sub else ATTENTION_HEADS_FILE
            if src.exists(heads):   # per-module head counts a UNet2DModel config cannot express
                apply_attention_heads(model, src.root / heads)   # (vipaint convert-ldm, lsun_churches256)
            denoiser = UNetDenoiser(model)
        sched_cfg = src.json(f"{sched_sub}/scheduler_config.json" if sched_sub else "scheduler_config.json") or {}
        sched_cls = (diffusers.FlowMatchEulerDiscreteScheduler  # rectified flow (docs/algorithm.md §11.2)
                     if sched_cfg.get("_class_name") == "FlowMatchEulerDiscreteScheduler" else diffusers.DDPMScheduler)
        sched = sched_cls.from_pretrained(src.target, **sub_kw(sched_sub))
        codec: nn.Module | None = None
        codec_kind, vq_scale = "identity", None
        if codec_spec is not None:
            csub, codec_kind = codec_spec
            cls = diffusers.AutoencoderKL if codec_kind == "kl" else diffusers.VQModel
            codec = cls.from_pretrained(src.target, subfolder=csub, **kw)
            if codec_kind == "vq":
                vq_scale = (src.json(f"{csub}/config.json") or {}).get("scaling_factor")
        text = None
        text_kind = _text_kind(src, kind)
        if text_kind is not None:
            from vipaint.priors.text import load_text_encoder

            joint = getattr(denoiser.config, "joint_attention_dim", None)
            text = load_text_encoder(src.target, src.json("model_index.json"), text_kind, local_files_only=lfo,
                                     joint_attention_dim=joint, **(text_options or {}))
    except OSError as err:
        damaged = _damaged(path, err)
        if damaged is not None:
            raise damaged from err
        raise _missing(path, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", download_hint) from err
    return LoadedComponents(denoiser, sched, codec, codec_kind, vq_scale, text)
