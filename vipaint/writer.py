"""Per-index outputs of a predict run and the run report built from them.

Files under `output_dir` (written by the rank that processed the image, atomically):
    samples/<index>.npz   samples [S, C, H, W], composite, observation y, ground truth, mask, ELBO trace
    samples_u8/<index>.npz with `save_u8`: composites, ground truth and mask as uint8 (`vipaint.samples_u8`;
                          small enough to commit, and a resume counts an index with it as done)
    panels/<index>.png    observation | samples | ground truth
    features/<index>.pt   FID features of ground truth, composites and raw samples (`vipaint.bench.features`)
    timing/<index>.json   wall-clock seconds per image of its batch (kept out of metrics/, which must not
                          differ between identical runs)
    metrics/<index>.json  per-image metrics, perceptual distance, diversity, decoder/encoder calls and
                          seconds per image (written last: its presence marks the index as done)
    failed/<index>.json   the reason an image failed (a rerun retries it)
    settings.json         what determines the results (method, options, prior, operator, data, masks,
                          seeds), written just before the first result (not by a run that stops on an error
                          before computing anything); a rerun into the same folder with other settings stops
                          with an error instead of mixing results (batch size, device count and num_images may change)
Resume: at setup the writer hands its `is_done` to the `InverseProblemDataModule` (`skip_done`), which then
yields only the indices without outputs (with another datamodule every index is computed and rewritten).
At the end of the predict run (`teardown`, reached by every rank, also when a rank had nothing to compute),
after a barrier, rank 0 builds `metrics.csv`, `metrics_per_mask.csv`, `metrics.md`, `metrics.json` (means
per mask type and overall, FID/KID from the feature files of every rank) and an ELBO-curve plot from the
files, and `throughput.json` (images and seconds of each rank, from ranks/<rank>.json), and logs them to the
logger (`vipaint.run_log`). Since the report is built from files, a resumed or multi-GPU run reports every
index exactly once and gives the same FID/KID.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from vipaint.api import InputError, check_options
from vipaint.data import InverseProblemDataModule
from vipaint.methods import METHODS
from vipaint.provenance import atomic_write, clean_temporary, load_problem, move_aside
from vipaint.report import build_report, panel
from vipaint.run_log import configure_wandb, log_run, observation_records, run_metric_networks
from vipaint.run_settings import SettingsMismatchError, check_fingerprint, check_settings, run_settings
from vipaint.samples_u8 import save_u8

if TYPE_CHECKING:
    from vipaint.module import Prediction

__all__ = ["PredictionWriter", "SettingsMismatchError", "check_settings", "run_settings"]


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` beside `path`, fsynced, then moved into place (`vipaint.provenance.atomic_write`)."""
    atomic_write(path, write)


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
                 fid: bool = True, fid_raw: bool = True, perceptual: str = "auto", save_u8: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.save_u8 = save_u8
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

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Resolve `{method}` in the output folder from the module, so runs of different methods on the
        same experiment never share (or wrongly resume from) one folder."""
        if "{method}" in self.template:
            self.set_output_dir(self.template.format(method=getattr(pl_module, "method", "run")))
        if stage == "predict":
            datamodule = getattr(trainer, "datamodule", None)
            if getattr(trainer, "is_global_zero", True) and self.output_dir.exists():
                # no rank writes before the barrier that follows setup, so no live temporary file is removed
                for p in clean_temporary(self.output_dir):
                    print(f"[vipaint] removed {p}, left by an interrupted run")
                for p in (self.output_dir / "ranks").glob("*.json"):   # throughput of an earlier run
                    p.unlink()
            self.started, self.n_written, self.metric_seconds = time.perf_counter(), 0, 0.0
            check_writable(self.output_dir)
            check_method_options(pl_module)
            self.pending_settings = run_settings(pl_module, datamodule)
            check_settings(self.output_dir, self.pending_settings, write=False)
            if isinstance(datamodule, InverseProblemDataModule):
                datamodule.skip_done(self.is_done)
            self.setup_metrics(trainer, pl_module)

    def setup_metrics(self, trainer, pl_module) -> None:
        """The FID feature network and the perceptual distance on the module's device (built once per
        device and options), and the W&B run's group and name."""
        key = (self.fid, self.fid_raw, self.perceptual, str(pl_module.device))
        if getattr(self, "_networks_key", None) != key:
            self.networks = run_metric_networks(self.fid, self.perceptual, pl_module.device, raw=self.fid_raw)
            self._networks_key = key
        configure_wandb(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        # the outputs go to files; keeping every batch's samples in memory would grow without bound on a
        # large dataset, so `trainer.predict` returns None
        trainer.predict_loop.return_predictions = False

    def is_done(self, index: int, *, path: str | None = None, mask: str | None = None,
                fingerprint: dict[str, str] | None = None) -> bool:
        """Whether `index` has its outputs. Given the item's image `path` and `mask` name, also checks that
        the stored outputs are of that image and mask type: with several mask types, dataset index k is
        (image k mod N, mask k div N), so a rerun with another data.num_images N maps the same index to
        another observation, which must not be taken as done. Given its `fingerprint` (content hashes of
        the image and mask files, `InverseProblemDataset.fingerprint`), stops if a file changed since. A
        per-index file that does not load (a truncated .npz, an empty .json) is named, moved to corrupt/
        and the index recomputed."""
        f = self.output_dir / "metrics" / f"{index:06d}.json"
        if not f.exists() or not self._loadable(index):
            return False
        if path is not None or mask is not None:
            old = json.loads(f.read_text())
            same_image = path is None or Path(str(old.get("path"))).name == Path(str(path)).name
            if not same_image or (mask is not None and old.get("mask") != mask):
                raise SettingsMismatchError(
                    f"{f} holds the {old.get('mask')} mask of {old.get('path')}, but dataset index {index} is now "
                    f"the {mask} mask of {path}: the map from index to (image, mask) changed (data.num_images "
                    "or the mask list differs from the run that wrote this folder). Rerun with that run's "
                    "data.num_images, or write to a new folder.")
            check_fingerprint(f, old, fingerprint, index=index, path=path)
        return True

    def _loadable(self, index: int) -> bool:
        """Whether the metrics and samples files of `index` load; damaged ones are moved aside."""
        name = f"{index:06d}"
        files = [self.output_dir / "metrics" / f"{name}.json", self.output_dir / "samples" / f"{name}.npz"]
        if not files[1].exists() and (self.output_dir / "samples_u8" / f"{name}.npz").exists():
            files[1] = self.output_dir / "samples_u8" / f"{name}.npz"       # a committed run, continued
        problems = [(p, load_problem(p) if p.exists() else "missing") for p in files]
        if all(why is None for _, why in problems):
            return True
        for p, why in problems:
            if why is not None and why != "missing":
                try:
                    dest = move_aside(p, self.output_dir)
                except FileNotFoundError:   # another rank moved it first
                    continue
                print(f"[vipaint] {p} does not load ({why}); moved to {dest}, dataset index {index} is recomputed")
        (self.output_dir / "metrics" / f"{name}.json").unlink(missing_ok=True)   # no "done" mark without samples
        return False

    def write_on_batch_end(self, trainer, pl_module, prediction: Prediction, batch_indices, batch,
                           batch_idx: int, dataloader_idx: int) -> None:
        ds = getattr(trainer, "datamodule", None)
        ds = ds.full_dataset() if isinstance(ds, InverseProblemDataModule) else None
        fps = None if ds is None else [ds.fingerprint(ds.position(i)) for i in prediction.index.tolist()]
        self.write(prediction, fingerprints=fps)

    def write(self, prediction: Prediction, *, fingerprints: list[dict[str, str]] | None = None) -> None:
        """Each image's files; a failed image gets failed/<index>.json only. `fingerprints` (content hashes
        of each image's input files) go into its metrics record, for `is_done` to compare on a rerun."""
        p, res = prediction, prediction.result
        self.write_pending_settings()
        t0 = time.perf_counter()
        extra = observation_records(p, self.output_dir, self.networks)     # saves features/<index>.pt
        self.metric_seconds = getattr(self, "metric_seconds", 0.0) + time.perf_counter() - t0
        for b, index in enumerate(p.index.tolist()):
            self.n_written = getattr(self, "n_written", 0) + 1     # computed by this rank (failed ones too)
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
            if self.save_u8:
                (self.output_dir / "samples_u8").mkdir(exist_ok=True)
                _atomic(self.output_dir / "samples_u8" / f"{name}.npz",
                        partial(save_u8, composite=p.composite[:, b], image=p.image[b], mask=p.mask[b]))
            img = panel(p.y[b], p.mask[b], p.composite[:self.max_panel_samples, b], p.image[b], operator=p.operator)
            _atomic(self.output_dir / "panels" / f"{name}.png", partial(img.save, format="PNG"))
            rec = {"index": index, "mask": p.mask_name[b], "path": p.path[b], "nfe": res.nfe,
                   "n_backprop": res.n_backprop}
            rec.update({k: float(v[b]) for k, v in p.metrics.items()})
            rec.update(fingerprints[b] if fingerprints is not None else {})
            rec.update(extra[b])
            _atomic(self.output_dir / "metrics" / f"{name}.json", partial(Path.write_text, data=json.dumps(rec)))
            failed = self.output_dir / "failed" / f"{name}.json"
            if failed.exists():
                failed.unlink()

    def run_indices(self, trainer) -> list[int] | None:
        """The dataset indices of this run (the report covers exactly these; None: every file in the folder,
        with a datamodule other than `InverseProblemDataModule`). Damaged files among them are moved aside."""
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, InverseProblemDataModule) or dm.dataset is None:
            return None
        indices = [dm.dataset.index_of(p) for p in range(len(dm.dataset))]
        for i in indices:
            if (self.output_dir / "metrics" / f"{i:06d}.json").exists():
                self._loadable(i)
        return indices

    def write_rank_throughput(self, rank: int) -> None:
        """ranks/<rank>.json: the images this rank computed (failed ones included), its wall time since
        setup, their ratio, and the seconds spent in the metric networks (FID features, perceptual distance)
        while writing."""
        started = getattr(self, "started", None)
        seconds = 0.0 if started is None else time.perf_counter() - started
        n = getattr(self, "n_written", 0)
        rec = {"rank": rank, "images": n, "seconds": round(seconds, 3),
               "images_per_second": round(n / seconds, 4) if seconds > 0 else None,
               "metric_seconds": round(getattr(self, "metric_seconds", 0.0), 3)}
        (self.output_dir / "ranks").mkdir(exist_ok=True)
        _atomic(self.output_dir / "ranks" / f"{rank}.json", partial(Path.write_text, data=json.dumps(rec)))

    def write_pending_settings(self) -> None:
        """`settings.json`, once, just before the first result is written (so a run that stops on an error
        before any result leaves the folder free for a corrected rerun)."""
        settings = getattr(self, "pending_settings", None)
        if settings is not None:
            check_settings(self.output_dir, settings)
            self.pending_settings = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """The run report, once every rank is done (Lightning skips the epoch hooks of a rank whose
        dataloader is empty, but every rank reaches `teardown`)."""
        if stage != "predict":
            return
        self.write_rank_throughput(int(getattr(trainer, "global_rank", 0)))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            print(rank_throughput(self.output_dir))
            report = build_report(self.output_dir, indices=self.run_indices(trainer),
                                  features=self.networks.features, feature_label=self.networks.feature_label,
                                  perceptual_label=self.networks.perceptual_label, raw=self.networks.raw)
            hints = log_run(trainer, report, self.output_dir,
                            run_settings(pl_module, getattr(trainer, "datamodule", None)), self.log_images)
            n_failed = report["overall"]["n_failed"]
            print(f"\n[vipaint] {self.output_dir}: {report['overall']['n']} images done"
                  + (f", {n_failed} failed (see failed/)" if n_failed else "")
                  + "; panels/, metrics.md, metrics.csv, metrics_per_mask.csv, metrics.json, elbo.png\n"
                  + report["markdown"])
            for line in hints:
                print(line)
        trainer.strategy.barrier()


def check_writable(output_dir: Path) -> None:
    """Stop before computing if the results folder cannot be written (e.g. read-only)."""
    for sub in ("", "samples", "panels", "metrics", "failed"):
        d = output_dir / sub
        if not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(f"results folder {d} is not a writable folder; fix its permissions or set "
                                  "the PredictionWriter's output_dir to another folder")


def check_method_options(pl_module) -> None:
    """The module's n_samples, sigma_y and method options against their allowed ranges
    (`vipaint.api.check_options`), before any file is written."""
    hp = dict(getattr(pl_module, "hparams", {}) or {})
    n = hp.get("n_samples", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"model.n_samples must be an integer >= 1, got {n!r}")
    sigma = hp.get("sigma_y", 0.0)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"model.sigma_y must be a finite number >= 0, got {sigma!r}")
    method, prior = getattr(pl_module, "method", None), getattr(pl_module, "prior", None)
    if method in METHODS and prior is not None:
        check_options(method, prior, dict(getattr(pl_module, "method_options", None) or {}))


def rank_throughput(output_dir: Path) -> str:
    """throughput.json (the ranks/<rank>.json of this run, in rank order) and its lines for the log."""
    recs = sorted((json.loads(p.read_text()) for p in (output_dir / "ranks").glob("*.json")), key=lambda r: r["rank"])
    _atomic(output_dir / "throughput.json", partial(Path.write_text, data=json.dumps(recs, indent=1)))
    return "\n".join(f"[vipaint] rank {r['rank']}: {r['images']} images in {r['seconds']:.1f} s"
                     + (f" ({r['images_per_second']:.3g} images/s)" if r["images"] and r["images_per_second"] else "")
                     + _metric_share(r)
                     for r in recs)


def _metric_share(rec: dict) -> str:
    """`; metric networks X s (Y %)`: the share of a rank's wall time spent on FID features and the
    perceptual distance (empty for records written before it was measured)."""
    m, total = rec.get("metric_seconds"), rec.get("seconds") or 0.0
    if m is None or total <= 0:
        return ""
    return f"; FID features + perceptual distance {m:.1f} s ({100 * m / total:.0f} % of it)"
