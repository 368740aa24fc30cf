"""The benchmark's tables and plots, built from the per-method folders `<out>/<method>/`.

`report` adds distribution and diversity metrics computed from the written samples to the per-image
metrics the runs wrote, and writes `<out>/results.{md,csv,json}`, `<out>/summary.md`,
`<out>/metric_vs_nfe.png` and `<out>/panels.png`. Inception features are cached per observation beside
the samples (`vipaint.bench.features`), so a rebuilt report or the FID bootstrap does not run the
Inception again.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vipaint.bench.features import (
    CachedFeatures,
    distribution_metrics,
    feature_network,
    load_saved_features,
    save_observation_features,
)
from vipaint.bench.run import gpu_device
from vipaint.bench.shared_runs import shared_run_of
from vipaint.samples_u8 import load_records

__all__ = ["legacy_feature_cache", "load_items", "md_table", "previous_rows", "report", "resumed_timing_note",
           "save_item_features", "write_results", "write_table"]

METRIC_KEYS = ("psnr", "ssim", "psnr_hole", "exact_mean_rmse", "exact_std_ratio", "sliced_w2",
               "mode_weight_error", "coverage90", "coverage90_exact")
SHOWN = ("method", "mask", "images", "nfe", "n_decode", "n_encode", "backprops", "exact_mean_rmse", "exact_std_ratio",
         "sliced_w2", "mode_weight_error", "coverage90", "fid", "kid", "psnr", "psnr_hole",
         "ssim", "psnr_best", "diversity_l2", "hole_std", "diversity_perceptual", "s_per_image")


def load_items(method_dir: Path, u8_fallback: bool = False) -> list[dict]:
    """The observations of a method folder: index, mask name, per-image metrics (`meta`) and the
    `composite`, `samples`, `image` and `mask` arrays of `samples/<index>.npz`, by index. With `u8_fallback`,
    an index with `metrics/<index>.json` but no float file (computed in another clone, a committed run
    continued here) is read from its committed `samples_u8/<index>.npz` instead, marked `"u8": True`. A samples
    file without its metrics file (a run killed between the two writes) is left out: the index is not done."""
    items, orphans = {}, []
    for p in sorted((method_dir / "samples").glob("*.npz")):
        if not (method_dir / "metrics" / f"{p.stem}.json").is_file():     # killed between the two writes:
            orphans.append(p.stem)                                         # not done, the next run redoes it
            continue
        with np.load(p) as z:
            meta = json.loads((method_dir / "metrics" / f"{p.stem}.json").read_text())
            items[int(p.stem)] = {"index": int(p.stem), "mask_name": meta["mask"], "meta": meta, "u8": False,
                                  **{k: torch.from_numpy(z[k]) for k in ("composite", "samples", "image", "mask")}}
    if u8_fallback:
        for i, rec in load_records(method_dir, require_u8=True).items():
            if i not in items:
                items[i] = {**{k: rec[k] for k in ("index", "mask_name", "meta", "composite", "samples", "image",
                                                   "mask")}, "u8": True}
    if orphans:
        print(f"{method_dir}: {len(orphans)} samples file(s) without a metrics file (first {orphans[0]}.npz) are left "
              "out: those indices are not done, and a rerun computes them")
    return [items[i] for i in sorted(items)]


def legacy_feature_cache(out: Path) -> Path:
    """The single feature cache file earlier versions kept in a benchmark folder (read, no longer written)."""
    return out / "cache" / "fid_features.pt"


def save_item_features(cached: CachedFeatures, method_dir: Path, items: list[dict]) -> None:
    """Save the features of each observation of `items` (from `load_items`) beside its samples."""
    for it in items:
        save_observation_features(cached, method_dir, it["index"], it["image"], it["composite"])


def _distribution_metrics(items: list[dict], features: nn.Module | None, chunk: int = 64) -> dict:
    if not items:
        return {}
    fake = torch.cat([it["composite"] for it in items])
    real = torch.stack([it["image"] for it in items])
    return distribution_metrics(real, fake, features, chunk)


def _per_item_metrics(items: list[dict], perceptual) -> dict:
    from vipaint.metrics import hole_std, pairwise_diversity, per_sample, psnr

    out: dict[str, list[float]] = {"diversity_l2": [], "hole_std": [], "psnr_best": [], "psnr_mean": []}
    if perceptual is not None:
        out["diversity_perceptual"] = []
    for it in items:
        s, x, m = it["composite"][:, None], it["image"][None], it["mask"][None]
        p = per_sample(psnr, s, x)[:, 0]
        out["psnr_best"].append(float(p.max()))
        out["psnr_mean"].append(float(p.mean()))
        if s.shape[0] >= 2:
            out["diversity_l2"].append(float(pairwise_diversity(s)[0]))
            out["hole_std"].append(float(hole_std(s, m)[0]))
            if perceptual is not None:
                out["diversity_perceptual"].append(float(pairwise_diversity(s, perceptual)[0]))
    return {k: float(np.nanmean(v)) if v else float("nan") for k, v in out.items()}


def _mean_count(metas: list[dict], key: str) -> int | float | None:
    """Network passes over the selected images: the count when all agree, else their mean (CoPaint's
    backtracking makes a number of passes that varies by batch)."""
    vals = [m[key] for m in metas if m.get(key) is not None]
    if not vals:
        return None
    return vals[0] if all(v == vals[0] for v in vals) else float(np.mean(vals))


def previous_rows(out: Path) -> tuple[dict[str, list[dict]], str | None]:
    """Rows of `<out>/results.json` by method, and the feature network they were computed with."""
    f = out / "results.json"
    if not f.is_file():
        return {}, None
    saved = json.loads(f.read_text())
    rows: dict[str, list[dict]] = {}
    for r in saved.get("rows", []):
        rows.setdefault(r["method"], []).append(r)
    return rows, saved.get("features")


def _feature_network(out: Path, fid: bool) -> tuple[CachedFeatures | None, str]:
    """The cached FID feature network (None when FID/KID are skipped) and its label."""
    features, label = feature_network(fid)
    if features is not None:
        features.load(legacy_feature_cache(out))
    return features, label


def _method_rows(name: str, items: list[dict], features: CachedFeatures | None, perceptual,
                 timing: dict) -> list[dict]:
    """Rows of one method: one per mask type, then "all"."""
    rows = []
    for mask in sorted({it["mask_name"] for it in items}) + ["all"]:
        sel = [it for it in items if mask in ("all", it["mask_name"])]
        if not sel:
            continue
        metas = [it["meta"] for it in sel]
        row = {"method": name, "mask": mask, "images": len(sel),
               "nfe": _mean_count(metas, "nfe"), "backprops": _mean_count(metas, "n_backprop")}
        for key in ("n_decode", "n_encode"):       # codec passes, counted apart from the UNet's (latent priors)
            if any(m.get(key) for m in metas):
                row[key] = _mean_count(metas, key)
        for key in METRIC_KEYS:
            vals = [m[key] for m in metas if key in m]
            if vals:
                row[key] = float(np.mean(vals))
        row.update(_per_item_metrics(sel, perceptual))
        row.update(_distribution_metrics(sel, features))
        row["s_per_image"] = timing.get("seconds_per_image", float("nan"))
        if timing.get("source") == "per-index":
            row["timing"] = "per-index"
        if gpu := gpu_device(timing):
            row["timing_device"] = gpu
        rows.append(row)
    return rows


def report(out: Path, methods: list[str], timings: dict[str, dict], *, fid: bool = True,
           perceptual_kind: str = "auto") -> list[dict]:
    """Build the comparison table from `<out>/<method>/`.

    A method whose samples are not in `out` (they are not committed, so a fresh clone has none) keeps its
    rows from the previous `results.json`, provided they were computed with the same FID features; adding
    a method with `--only` then never drops the others' rows.
    """
    from vipaint.metrics import perceptual_metric

    features, feat_label = _feature_network(out, fid)
    perceptual, perc_label = perceptual_metric(perceptual_kind)
    previous, previous_label = previous_rows(out)
    if features is not None:        # every saved feature first: a ground truth is shared by all methods
        for name in methods:
            load_saved_features(features, out / name)
    rows = []
    for name in methods:
        items = load_items(out / name, u8_fallback=True)
        if not items:
            if name in previous and previous_label == feat_label:
                print(f"{name}: no samples in {out / name}; keeping its rows from {out / 'results.json'}")
                rows.extend(previous[name])
            elif name in previous:
                print(f"{name}: no samples in {out / name}, and its rows in {out / 'results.json'} used other "
                      f"features ({previous_label!r}, now {feat_label!r}); dropped, rerun it")
            continue
        rows.extend(_method_rows(name, items, features, perceptual, timings.get(name, {})))
        recorded = len(list((out / name / "metrics").glob("*.json")))
        if recorded > len(items):       # resumed from another clone without its uint8 files: rows cover fewer
            rows[-1]["metrics_files"] = recorded      # its "all" row
        if n_u8 := sum(it["u8"] for it in items):     # resumed from another clone: scored from its uint8 files
            rows[-1]["from_u8"] = n_u8
        if twin := shared_run_of(out / name):          # identical setting: one run, two rows
            rows[-1]["same_run_as"] = twin
        if features is not None:
            save_item_features(features, out / name, items)
    write_results(out, rows, feat_label, perc_label)
    _plots(out, rows, methods)
    return rows


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def md_table(rows: list[dict], cols: list[str]) -> list[str]:
    """Markdown lines: header, separator, one line per row (missing / NaN cells as –)."""
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows])


def write_table(out: Path, name: str, rows: list[dict], cols: list[str], meta: dict) -> str:
    """A study script's result: `<out>/<name>.md` (the `md_table` of `rows`) and `<out>/<name>.json`
    ({"args": meta, "rows": rows}); returns the Markdown."""
    md = "\n".join(md_table(rows, cols))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(md + "\n")
    (out / f"{name}.json").write_text(json.dumps({"args": meta, "rows": rows}, indent=1))
    return md


def resumed_timing_note(rows: list[dict]) -> list[str]:
    """The sentences that flag rows timed from per-index files of a resumed run (`read_timing`'s "per-index"
    source) and rows timed on a GPU (`timing_device`), or [] when no row is either."""
    resumed = list(dict.fromkeys(r["method"] for r in rows if r.get("timing") == "per-index"))
    gpu = {r["method"]: r["timing_device"] for r in rows if r.get("timing_device")}
    lines = [f"The s_per_image of {', '.join(resumed)} is the mean of per-index batch times of a run resumed over "
             "several sessions, which may have shared the machine with other runs (an upper bound)."] if resumed else []
    if gpu:
        devices = ", ".join(sorted(set(gpu.values())))
        lines.append(f"The s_per_image of {', '.join(gpu)} was measured on a GPU ({devices}; "
                     "benchmarks/gpu_leaderboard.sh), not on the CPU of the other rows: it is not comparable with "
                     "theirs. The network passes are.")
    return lines


def write_results(out: Path, rows: list[dict], feat_label: str, perc_label: str) -> None:
    """A benchmark's `results.csv`, `results.json`, `results.md` (every row) and `summary.md` (the "all" rows)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps({"rows": rows, "features": feat_label,
                                                  "perceptual": perc_label}, indent=2))
    shown = [c for c in SHOWN if c in cols]
    lines = md_table(rows, shown) + ["", f"FID/KID features: {feat_label}.", f"Perceptual distance: {perc_label}."]
    partial = {r["method"]: (r["images"], r["metrics_files"]) for r in rows if r.get("metrics_files")}
    lines += [f"{m}: the rows cover the {n} of its {k} observations whose samples are in this folder (the "
              "others ran in another clone and left neither float nor uint8 samples here)."
              for m, (n, k) in partial.items()]
    lines += [f"{r['method']}: {r['from_u8']} of its {r['images']} observations ran in another clone and are scored "
              "from their committed uint8 composites (within 1/255 of the float ones; the raw samples are not kept)."
              for r in rows if r.get("from_u8")]
    lines += [f"{r['method']} is the run of {r['same_run_as']}: both entries resolve to the same method and options "
              "(a tuning that chose the published setting), so it was run once; its rows repeat that run's."
              for r in rows if r.get("same_run_as")]
    lines += resumed_timing_note(rows)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    overall = [r for r in rows if r.get("mask") == "all"]        # one row per method: summary.md
    summary = md_table(overall, [c for c in shown if c not in ("mask", "backprops")])
    (out / "summary.md").write_text("\n".join(summary) + "\n")


def _plots(out: Path, rows: list[dict], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allrows = [r for r in rows if r["mask"] == "all"]
    keys = [k for k in ("sliced_w2", "kid", "psnr", "diversity_l2") if any(k in r for r in allrows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        for r in allrows:
            ax.scatter(r["nfe"], r.get(key, float("nan")), s=30)
            ax.annotate(r["method"], (r["nfe"], r.get(key, float("nan"))), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("network passes per sample (NFE)")
        ax.set_ylabel(key)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_nfe.png", dpi=100)
    plt.close(fig)
    _panel_grid(out, methods)


def _panel_grid(out: Path, methods: list[str]) -> None:
    """`<out>/panels.png`: the first three panels of every method, one row per method."""
    from PIL import Image, ImageDraw

    with_panels = [m for m in methods if any((out / m / "panels").glob("*.png"))]
    missing = [m for m in methods if m not in with_panels]
    if not with_panels or (missing and (out / "panels.png").is_file()):
        if missing:      # a partial grid would replace one that shows every method
            print(f"panels.png not rebuilt: no panels of {', '.join(missing)} in {out}")
        return
    methods = with_panels
    first = sorted((out / methods[0] / "panels").glob("*.png"))[:3]
    tiles = [[Image.open(out / m / "panels" / p.name) for p in first if (out / m / "panels" / p.name).exists()]
             for m in methods]
    tiles = [t for t in tiles if t]
    if tiles:
        w = max(sum(im.width for im in row) + 8 * len(row) for row in tiles)
        h = sum(row[0].height + 6 for row in tiles)
        label_w = max(90, 12 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(m)) for m in methods))
        canvas = Image.new("RGB", (w + label_w, h), "white")
        draw, y = ImageDraw.Draw(canvas), 0
        for m, row in zip(methods, tiles, strict=True):
            draw.text((4, y + row[0].height // 2 - 6), m, fill="black")
            x = label_w
            for im in row:
                canvas.paste(im, (x, y))
                x += im.width + 8
            y += row[0].height + 6
        canvas.save(out / "panels.png")
