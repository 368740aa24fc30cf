"""Per-index outputs of a predict run and the run report built from them.

Files under `output_dir` (written by the rank that processed the image, atomically):
    samples/<index>.npz   samples [S, C, H, W], composite, observation y, ground truth, mask, ELBO trace
    panels/<index>.png    observation | samples | ground truth
    features/<index>.pt   FID features of ground truth, composites and raw samples (`vipaint.bench.features`)
    timing/<index>.json   wall-clock seconds per image of its batch (kept out of metrics/, which must not
                          differ between identical runs)
    metrics/<index>.json  per-image metrics, perceptual distance, diversity, decoder/encoder calls and
                          seconds per image (written last: its presence marks the index as done)
    failed/<index>.json   the reason an image failed (a rerun retries it)
    settings.json         what determines the results (method, options, prior, operator, data, masks,
                          seeds); a rerun into the same folder with other settings stops with an error
                          instead of mixing results (batch size, device count and num_images may change)
Resume: at setup the writer hands its `is_done` to the `InverseProblemDataModule` (`skip_done`), which then
yields only the indices without outputs (with another datamodule every index is computed and rewritten).
At the end of the predict run (`teardown`, reached by every rank, also when a rank had nothing to compute),
after a barrier, rank 0 builds `metrics.csv`, `metrics_per_mask.csv`, `metrics.md`, `metrics.json` (means
per mask type and overall, FID/KID from the feature files of every rank) and an ELBO-curve plot from the
files, and logs them to the logger (`vipaint.run_log`). Since the report is built from files, a resumed or multi-GPU run reports
every index exactly once and gives the same FID/KID.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from vipaint.data import InverseProblemDataModule
from vipaint.report import build_report, panel
from vipaint.run_log import configure_wandb, log_run, observation_records, run_metric_networks

if TYPE_CHECKING:
    from vipaint.module import Prediction

__all__ = ["PredictionWriter"]


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then move it into place (readers never see half a file)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict[str, torch.Tensor]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: v.numpy() for k, v in arrays.items()})


class PredictionWriter(BasePredictionWriter):
    """Writes each image's outputs as soon as its batch is done; skips indices already written.

    Args:
        output_dir: the run folder; `{method}` is replaced by the module's method name
            (e.g. results/fashion_mnist/{method}).
        max_panel_samples: samples shown per panel.
        log_images: number of panels logged to the logger.
        fid: compute FID/KID (features saved per index as it is written; `vipaint.bench.features`).
        fid_raw: also FID/KID of the raw samples where they differ from the composites (inpainting);
            False halves the feature extraction (1 + S instead of 1 + 2S images per observation).
        perceptual: perceptual distance per image, a kind of `vipaint.metrics.perceptual_metric`
            ("auto": LPIPS if its backbone file is local, else ST-LPIPS, else skipped; "none").
    """

    def __init__(self, output_dir: str = "results/{method}", *, max_panel_samples: int = 4, log_images: int = 16,
                 fid: bool = True, fid_raw: bool = True, perceptual: str = "auto") -> None:
        super().__init__(write_interval="batch")
        self.template = str(output_dir)
        self.max_panel_samples, self.log_images = max_panel_samples, log_images
        self.fid, self.fid_raw, self.perceptual = fid, fid_raw, perceptual
        self.networks = run_metric_networks(False, "none")
        self.set_output_dir(self.template.replace("{method}", "_pending") if "{method}" in self.template
                            else self.template, create="{method}" not in self.template)

    def set_output_dir(self, path: str | Path, *, create: bool = True) -> None:
        self.output_dir = Path(path)
        if create:
            for sub in ("samples", "panels", "metrics", "failed"):
                (self.output_dir / sub).mkdir(parents=True, exist_ok=True)

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001
        """Resolve `{method}` in the output folder from the module, so runs of different methods on the
        same experiment never share (or wrongly resume from) one folder."""
        if "{method}" in self.template:
            self.set_output_dir(self.template.format(method=getattr(pl_module, "method", "run")))
        if stage == "predict":
            datamodule = getattr(trainer, "datamodule", None)
            check_settings(self.output_dir, run_settings(pl_module, datamodule))
            if isinstance(datamodule, InverseProblemDataModule):
                datamodule.skip_done(self.is_done)
            self.setup_metrics(trainer, pl_module)

    def setup_metrics(self, trainer, pl_module) -> None:  # noqa: ANN001
        """The FID feature network and the perceptual distance on the module's device (built once per
        device and options), and the W&B run's group and name."""
        key = (self.fid, self.fid_raw, self.perceptual, str(pl_module.device))
        if getattr(self, "_networks_key", None) != key:
            self.networks = run_metric_networks(self.fid, self.perceptual, pl_module.device, raw=self.fid_raw)
            self._networks_key = key
        configure_wandb(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        # the outputs go to files; keeping every batch's samples in memory would grow without bound on a
        # large dataset, so `trainer.predict` returns None
        trainer.predict_loop.return_predictions = False

    def is_done(self, index: int, *, path: str | None = None, mask: str | None = None) -> bool:
        """Whether `index` has its outputs. Given the item's image `path` and `mask` name, also checks that
        the stored outputs are of that image and mask type: with several mask types, dataset index k is
        (image k mod N, mask k div N), so a rerun with another data.num_images N maps the same index to
        another observation, which must not be taken as done."""
        f = self.output_dir / "metrics" / f"{index:06d}.json"
        if not f.exists():
            return False
        if path is not None or mask is not None:
            old = json.loads(f.read_text())
            same_image = path is None or Path(str(old.get("path"))).name == Path(str(path)).name
            if not same_image or (mask is not None and old.get("mask") != mask):
                raise RuntimeError(
                    f"{f} holds the {old.get('mask')} mask of {old.get('path')}, but dataset index {index} is now "
                    f"the {mask} mask of {path}: the map from index to (image, mask) changed (data.num_images "
                    "or the mask list differs from the run that wrote this folder). Rerun with that run's "
                    "data.num_images, or write to a new folder.")
        return True

    def write_on_batch_end(self, trainer, pl_module, prediction: Prediction, batch_indices, batch,  # noqa: ANN001
                           batch_idx: int, dataloader_idx: int) -> None:
        self.write(prediction)

    def write(self, prediction: Prediction) -> None:
        """Each image's files; a failed image gets failed/<index>.json only."""
        p, res = prediction, prediction.result
        extra = observation_records(p, self.output_dir, self.networks)     # saves features/<index>.pt
        for b, index in enumerate(p.index.tolist()):
            name = f"{index:06d}"
            if bool(res.failed[b]):
                reason = res.reasons[b]
                _atomic(self.output_dir / "failed" / f"{name}.json", partial(
                    Path.write_text, data=json.dumps({"index": index, "reason": reason, "path": p.path[b]})))
                print(f"[vipaint] dataset index {index} ({p.path[b]}) failed: {reason}; nothing written for it")
                continue
            arrays = {"samples": res.samples[:, b], "composite": p.composite[:, b], "y": p.y[b], "image": p.image[b],
                      "mask": p.mask[b]}
            arrays.update({f"trace_{k}": v[:, b] for k, v in res.traces.items()})
            _atomic(self.output_dir / "samples" / f"{name}.npz", partial(_save_npz, arrays=arrays))
            img = panel(p.y[b], p.mask[b], p.composite[:self.max_panel_samples, b], p.image[b], operator=p.operator)
            _atomic(self.output_dir / "panels" / f"{name}.png", partial(img.save, format="PNG"))
            rec = {"index": index, "mask": p.mask_name[b], "path": p.path[b], "nfe": res.nfe,
                   "n_backprop": res.n_backprop}
            rec.update({k: float(v[b]) for k, v in p.metrics.items()})
            rec.update(extra[b])
            _atomic(self.output_dir / "metrics" / f"{name}.json", partial(Path.write_text, data=json.dumps(rec)))
            failed = self.output_dir / "failed" / f"{name}.json"
            if failed.exists():
                failed.unlink()

    def teardown(self, trainer, pl_module, stage: str) -> None:  # noqa: ANN001
        """The run report, once every rank is done (Lightning skips the epoch hooks of a rank whose
        dataloader is empty, but every rank reaches `teardown`)."""
        if stage != "predict":
            return
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            report = build_report(self.output_dir, features=self.networks.features,
                                  feature_label=self.networks.feature_label,
                                  perceptual_label=self.networks.perceptual_label, raw=self.networks.raw)
            hints = log_run(trainer, report, self.output_dir,
                            run_settings(pl_module, getattr(trainer, "datamodule", None)), self.log_images)
            n_failed = report["overall"]["n_failed"]
            print(f"\n[vipaint] {self.output_dir}: {report['overall']['n']} images done"
                  + (f", {n_failed} failed (see failed/)" if n_failed else "")
                  + "; panels/, metrics.md, metrics.csv, metrics_per_mask.csv, metrics.json, elbo.png\n" + report["markdown"])
            for line in hints:
                print(line)
        trainer.strategy.barrier()


def _prior_id(prior) -> dict:  # noqa: ANN001
    """A prior is identified by its folder / Hub id when it has one, else by a hash of its tensors."""
    if getattr(prior, "path", None):
        return {"class": type(prior).__name__, "path": str(prior.path)}
    h = hashlib.sha1()
    for k, v in sorted(prior.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return {"class": type(prior).__name__, "sha1": h.hexdigest()}


def run_settings(pl_module, datamodule=None) -> dict:  # noqa: ANN001
    """Everything that changes an image's results, JSON-ready: not the batch size, device count or
    num_images (results do not depend on them; with one mask type adding images to a run is a valid
    resume, with several the index map changes and `PredictionWriter.is_done` stops the run)."""
    hp = {k: v for k, v in dict(getattr(pl_module, "hparams", {})).items() if k not in ("method", "method_options")}
    out = {"method": getattr(pl_module, "method", None),
           "method_options": dict(getattr(pl_module, "method_options", {}) or {}),
           "module": hp}
    prior = getattr(pl_module, "prior", None)
    if prior is not None:
        out["prior"] = _prior_id(prior)
    if datamodule is not None and hasattr(datamodule, "hparams"):
        dh = dict(datamodule.hparams)
        out["data"] = {k: dh.get(k) for k in ("source", "split", "image_size", "channels", "seed")}
        out["data"]["masks"] = [repr(m) for m in (getattr(datamodule, "masks", None) or [])]
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def check_settings(output_dir: Path, settings: dict) -> None:
    """Writes `settings.json` on the first run; on a rerun, stops if the folder holds results of other
    settings (a resume must not mix them)."""
    f = Path(output_dir) / "settings.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            detail = "; ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(settings.get(k))}" for k in diff)
            raise RuntimeError(f"{output_dir} holds results made with other settings ({detail}). "
                               f"Delete the folder or write to another output_dir.")
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    _atomic(f, lambda p: p.write_text(json.dumps(settings, indent=1, sort_keys=True)))

