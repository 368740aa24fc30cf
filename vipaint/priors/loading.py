"""Locating a diffusers prior's files: local folders, Hub ids and the Hub cache, the folder layouts, and
the errors that say what to download and where to put it (used by `vipaint.priors.DiffusersPrior`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vipaint.priors.denoisers import DENOISER_CLASSES

_CODEC_CLASSES = {"AutoencoderKL": "kl", "VQModel": "vq"}
_DIFFUSERS_DEFAULT_SCALE = 0.18215

def _vq_scaling(value: float | None) -> float:
    """A VQ codec's latent scale: the config's `scaling_factor` when it was set to something other than
    diffusers' VQModel default 0.18215 (the SD KL value, never right for CompVis VQ-LDMs, which are trained
    unscaled; `vipaint convert-ldm` writes the checkpoint's value), else 1.0."""
    if value is None or abs(float(value) - _DIFFUSERS_DEFAULT_SCALE) < 1e-9:
        return 1.0
    return float(value)


class PriorNotFoundError(FileNotFoundError):
    """The prior's weights are not where the configuration points."""


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
             "`vqvae/` VQModel], or a bare UNet (config.json + scheduler_config.json)."]
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
            elif cls in _CODEC_CLASSES and codec is None:
                codec = (k, _CODEC_CLASSES[cls])
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
            if cls not in _CODEC_CLASSES:
                raise ValueError(f"unsupported codec class {cls!r} in {sub}/; supported: {sorted(_CODEC_CLASSES)}")
            codec = (sub, _CODEC_CLASSES[cls])
            break
    return den, codec, sched
