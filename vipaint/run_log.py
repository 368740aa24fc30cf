"""What a predict run measures beyond the module's per-image metrics, and what it sends to the loggers.

- `run_metric_networks`: the FID feature network (`vipaint.bench.features.feature_network`, the one the
  benchmark uses) and the perceptual distance (`vipaint.metrics.perceptual_metric`), with their labels.
- `observation_records`: per written index, the perceptual distance to the ground truth (mean over the
  composited samples; key `lpips` for standard LPIPS, `stlpips` for ST-LPIPS, which is not comparable),
  the L2 diversity and the decoder/encoder calls; it also extracts and saves the index's FID features
  (`features/<index>.pt`), so a resumed run does not recompute them, and its wall-clock seconds
  (`timing/<index>.json`: kept out of the metrics files, which must not change between identical runs).
- `configure_wandb`: group = dataset, name = method for a W&B logger not yet started.
- `log_run`: scalars overall and per mask type, the per-image table with panel thumbnails, panels, ELBO
  curves and the run's settings (prior identity, method options) as the config; `wandb sync` hint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vipaint.bench.features import CachedFeatures, extract_observation_features, feature_network
from vipaint.metrics import pairwise_diversity, perceptual_metric
from vipaint.metrics.perceptual import PerceptualDistance

if TYPE_CHECKING:
    from vipaint.module import Prediction

__all__ = ["MetricNetworks", "configure_wandb", "log_run", "observation_records", "perceptual_key",
           "index_seconds", "run_metric_networks", "run_scalars", "save_seconds", "seconds_per_mask"]

_SCALARS = ("psnr", "ssim", "psnr_hole", "lpips", "stlpips", "fid", "kid", "fid_raw", "kid_raw", "diversity_l2",
            "nfe", "n_backprop", "n_decode", "n_encode", "s_per_image")


@dataclass
class MetricNetworks:
    """The networks of a run's extra metrics (None when skipped) and what they are (or why skipped)."""

    features: CachedFeatures | None
    feature_label: str
    perceptual: PerceptualDistance | None
    perceptual_label: str
    raw: bool = True        # also the raw samples' features (FID/KID of raw samples where they differ)


def run_metric_networks(fid: bool, perceptual: str, device: torch.device | str = "cpu", *,
                        raw: bool = True) -> MetricNetworks:
    """FID features (if `fid`; of the raw samples too if `raw`) and the perceptual distance of kind
    `perceptual`, on `device`."""
    features, feature_label = feature_network(fid, device)
    dist, perceptual_label = perceptual_metric(perceptual, device)
    return MetricNetworks(features, feature_label, dist, perceptual_label, raw)


def perceptual_key(label: str) -> str:
    """Column of a perceptual distance: `stlpips` for ST-LPIPS (not comparable to LPIPS), else `lpips`."""
    return "stlpips" if label.startswith("ST-LPIPS") else "lpips"


def observation_records(p: Prediction, out: Path, nets: MetricNetworks) -> list[dict]:
    """Extra per-index record entries of one batch (see the module docstring); failed indices get {}."""
    res, b_all = p.result, len(p.index)
    ok = [b for b in range(b_all) if not bool(res.failed[b])]
    recs: list[dict] = [{} for _ in range(b_all)]
    base = {k: v for k, v in (("n_decode", res.n_decode), ("n_encode", res.n_encode)) if v is not None}
    for b in ok:
        recs[b].update(base)
    if not ok:
        return recs
    if not math.isnan(p.seconds_per_image):
        save_seconds(out, [int(p.index[b]) for b in ok], p.seconds_per_image)
    comp, truth = p.composite[:, ok], p.image[ok]
    s = comp.shape[0]
    if s >= 2:
        for b, v in zip(ok, pairwise_diversity(comp).tolist(), strict=True):
            recs[b]["diversity_l2"] = v
    if nets.perceptual is not None:
        dev = next(nets.perceptual.parameters()).device
        flat = comp.reshape(-1, *comp.shape[2:]).to(dev)
        ref = truth[None].expand(s, *truth.shape).reshape(flat.shape).to(dev)
        with torch.no_grad():
            d = nets.perceptual(flat, ref).reshape(s, len(ok)).mean(0).cpu()
        key = perceptual_key(nets.perceptual_label)
        for b, v in zip(ok, d.tolist(), strict=True):
            recs[b][key] = v
    if nets.features is not None:
        for b in ok:
            extract_observation_features(nets.features, out, int(p.index[b]), p.image[b], p.composite[:, b],
                                         res.samples[:, b] if nets.raw else None)
    return recs


def save_seconds(out: Path, indices: list[int], seconds: float) -> None:
    """`timing/<index>.json` = {"s_per_image": seconds} for each index of a batch (its time / its size)."""
    folder = Path(out) / "timing"
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        (folder / f"{i:06d}.json").write_text(json.dumps({"s_per_image": seconds}))


def index_seconds(out: Path, index: int) -> float | None:
    """The `save_seconds` time of dataset index `index` in the run folder `out`; None when it has none."""
    f = Path(out) / "timing" / f"{index:06d}.json"
    return json.loads(f.read_text())["s_per_image"] if f.is_file() else None


def seconds_per_mask(out: Path, rows: list[dict]) -> dict[str, float]:
    """Mean seconds per image of the written indices, per mask type and "all" (from `timing/`)."""
    by_mask: dict[str, list[float]] = {}
    for r in rows:
        v = index_seconds(out, r["index"])
        if v is not None:
            by_mask.setdefault(r["mask"], []).append(v)
            by_mask.setdefault("all", []).append(v)
    return {m: sum(v) / len(v) for m, v in by_mask.items()}


def _dataset_name(trainer, logger) -> str:
    configured = getattr(logger, "_wandb_init", {}).get("name")
    if configured:
        return str(configured)
    dm = getattr(trainer, "datamodule", None)
    source = dict(getattr(dm, "hparams", {}) or {}).get("source")
    return Path(str(source)).name if source else Path(trainer.default_root_dir).name


def configure_wandb(trainer, pl_module) -> None:
    """Group W&B runs by dataset and name them by method, so methods on one dataset compare side by side:
    for a `WandbLogger` whose run has not started, the group becomes its configured run name (the experiment
    YAMLs name the run after the dataset) unless a group is set, and the run name becomes the method."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in getattr(trainer, "loggers", []):
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is None:
            init = logger._wandb_init
            init["group"] = init.get("group") or _dataset_name(trainer, logger)
            init["name"] = getattr(pl_module, "method", None) or init.get("name")
            logger._name = init["name"]


def run_scalars(report: dict, seconds: dict[str, float]) -> dict[str, float]:
    """"<mask>/<metric>" (mask "all" = overall) of `_SCALARS` and n, from the report and the seconds per image."""
    out = {}
    for group, d in [("all", report["overall"])] + sorted(report["per_mask"].items()):
        for k, v in {**d, "s_per_image": seconds.get(group)}.items():
            if k in _SCALARS + ("n",) and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                out[f"{group}/{k}"] = v
    return out


def _table(report: dict, out: Path) -> tuple[list[str], list[list]]:
    """The per-image rows with a panel thumbnail column (W&B images)."""
    import wandb

    cols = report["columns"] + ["panel"]
    data = []
    for r in report["rows"]:
        f = out / "panels" / f"{r['index']:06d}.png"
        data.append([r.get(c) for c in report["columns"]] + [wandb.Image(str(f)) if f.is_file() else None])
    return cols, data


def log_run(trainer, report: dict, out: Path, settings: dict, n_images: int = 16) -> list[str]:
    """Send the run report to every logger of `trainer` (rank 0 only; see the module docstring); returns
    the lines to print at the end (how to upload an offline W&B run)."""
    from lightning.pytorch.loggers import WandbLogger

    scalars = run_scalars(report, seconds_per_mask(out, report["rows"]))
    hints = []
    for logger in trainer.loggers:
        logger.log_hyperparams({"settings": settings})
        logger.log_metrics({f"summary/{k}": v for k, v in report["overall"].items()
                            if isinstance(v, (int, float))}, step=0)
        logger.log_metrics(scalars, step=0)
        if not hasattr(logger, "log_table"):
            continue
        if isinstance(logger, WandbLogger):
            cols, data = _table(report, out)
        else:
            cols = report["columns"]
            data = [[r.get(c) for c in cols] for r in report["rows"]]
        logger.log_table("per_image", columns=cols, data=data)
        panels = sorted((out / "panels").glob("*.png"))[:n_images]
        if panels:
            logger.log_image("panels", images=[str(p) for p in panels], caption=[p.stem for p in panels])
        if (out / "elbo.png").exists():
            logger.log_image("elbo_curves", images=[str(out / "elbo.png")])
        if isinstance(logger, WandbLogger):
            hints += _sync_hint(logger)
    return hints


def _sync_hint(logger) -> list[str]:
    run = logger.experiment
    run_dir = Path(run.dir).parent if isinstance(getattr(run, "dir", None), str) else None
    mode = getattr(logger, "_wandb_init", {}).get("mode") or os.environ.get("WANDB_MODE", "")
    if run_dir is None or mode not in ("offline", "dryrun"):
        return []
    return [f"[vipaint] W&B run saved offline in {run_dir}; upload it with:  wandb sync {run_dir}"]
