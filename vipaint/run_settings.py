"""What a results folder's results depend on, and the checks that stop a run from mixing results of other
settings or inputs into it: `run_settings` (the run's `settings.json`), `check_settings`,
`check_fingerprint` (an index's input files) and `describe_changes` (what differs, for the error)."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import torch

from vipaint.provenance import atomic_write, folder_hashes, prior_folder

__all__ = ["SettingsMismatchError", "check_fingerprint", "check_settings", "describe_changes", "prior_id",
           "run_settings"]


class SettingsMismatchError(RuntimeError):
    """A results folder holds results of other settings, inputs or index map than the run asked for."""


def prior_id(prior) -> dict:
    """A prior is identified by its folder / Hub id when it has one, else by a hash of its tensors."""
    if getattr(prior, "path", None):
        out = {"class": type(prior).__name__, "path": str(prior.path)}
        folder = prior_folder(str(prior.path))
        if folder is not None:
            out["files_sha256"] = folder_hashes(folder)   # weights and configs: a change under the same path shows
        return out
    h = hashlib.sha1()
    for k, v in sorted(prior.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return {"class": type(prior).__name__, "sha1": h.hexdigest()}


def run_settings(pl_module, datamodule=None) -> dict:
    """Everything that changes an image's results, JSON-ready: not the batch size, device count or
    num_images (results do not depend on them; with one mask type adding images to a run is a valid
    resume, with several the index map changes and `PredictionWriter.is_done` stops the run)."""
    hp = {k: v for k, v in dict(getattr(pl_module, "hparams", {})).items() if k not in ("method", "method_options")}
    out = {"method": getattr(pl_module, "method", None),
           "method_options": dict(getattr(pl_module, "method_options", {}) or {}),
           "module": hp}
    prior = getattr(pl_module, "prior", None)
    if prior is not None:
        out["prior"] = prior_id(prior)
    if datamodule is not None and hasattr(datamodule, "hparams"):
        dh = dict(datamodule.hparams)
        out["data"] = {k: dh.get(k) for k in ("source", "split", "image_size", "channels", "seed")}
        if dh.get("resize", "crop") != "crop":   # recorded only when not the default, so older folders still match
            out["data"]["resize"] = dh["resize"]
        out["data"]["masks"] = [repr(m) for m in (getattr(datamodule, "masks", None) or [])]
        out["data"].update({k: dh[k] for k in ("prompt", "negative_prompt") if dh.get(k)})   # only when set
        if dh.get("start") is not None:      # the global index map of a benchmark split (not the split itself)
            out["data"]["index_map"] = "row*masks+mask"
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def check_settings(output_dir: Path, settings: dict, *, write: bool = True) -> None:
    """Stops if `settings.json` in the folder records other settings (a resume must not mix them); writes
    it when absent and `write` is true."""
    f = Path(output_dir) / "settings.json"
    if f.exists():
        old = json.loads(f.read_text())
        if "files_sha256" not in (old.get("prior") or {}) and "files_sha256" in (settings.get("prior") or {}):
            # a folder written before the hashes were recorded: compare what it records
            settings = {**settings, "prior": {k: v for k, v in settings["prior"].items() if k != "files_sha256"}}
        if old != settings:
            detail = describe_changes(old, settings)
            raise SettingsMismatchError(f"{output_dir} holds results made with other settings ({detail}). "
                               f"Delete the folder or write to another output_dir.")
        return
    if not write:
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(f, partial(Path.write_text, data=json.dumps(settings, indent=1, sort_keys=True)))


def describe_changes(old: dict, new: dict) -> str:
    """What differs between two settings records, e.g. `prior.files_sha256.unet/model.safetensors: changed`."""
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "prior" and isinstance(a, dict) and isinstance(b, dict) and a.get("path") == b.get("path"):
            fa, fb = a.get("files_sha256") or {}, b.get("files_sha256") or {}
            files = [f"{name}: {'added' if name not in fa else 'removed' if name not in fb else 'changed'}"
                     for name in sorted(set(fa) | set(fb)) if fa.get(name) != fb.get(name)]
            rest = [x for x in sorted(set(a) | set(b)) if x != "files_sha256" and a.get(x) != b.get(x)]
            parts += [f"prior file {x}" for x in files] + [f"prior.{x}: {a.get(x)} -> {b.get(x)}" for x in rest]
        else:
            parts.append(f"{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return "; ".join(parts)


def check_fingerprint(f: Path, old: dict, fingerprint: dict[str, str] | None, *, index: int, path: str | None) -> None:
    """Stop if an input file of `index` changed since its record `old` (from file `f`) was written."""
    for key, value in (fingerprint or {}).items():
        if key in old and old[key] != value:
            what = {"image": "image file", "mask": "mask file"}.get(key.split("_")[0], key.replace("_", " "))
            raise SettingsMismatchError(
                f"{f}: the {what} of dataset index {index} ({path}) changed since it was computed ({key} "
                f"{old[key][:12]}… -> {value[:12]}…). Write to a new folder, or delete {f} to recompute it.")
