"""Benchmark runner: several methods on the same prior, images, masks and seeds, then one table.

    python -m vipaint.benchmark --spec benchmarks/fashion_mnist.yaml [--out DIR] [--data.num_images=100 ...]

A spec names an experiment YAML (prior, data, masks), overrides, and the methods with their options.
Each method runs through the same Lightning predict path as `vipaint predict` into
`<out>/<method>/` (so an interrupted benchmark resumes), then the report adds distribution and
diversity metrics computed from the written samples and writes `<out>/results.{md,csv,json}`, `<out>/summary.md`,
`<out>/metric_vs_nfe.png` and `<out>/panels.png`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

__all__ = ["main", "run_methods", "report"]


def _cli(config: str, overrides: list[str]):  # noqa: ANN202
    from lightning.pytorch.cli import LightningCLI

    from vipaint.cli import ExplicitArgsMixin
    from vipaint.data import InverseProblemDataModule
    from vipaint.module import VIPaintModule

    class _CLI(ExplicitArgsMixin, LightningCLI):
        pass

    return _CLI(VIPaintModule, InverseProblemDataModule, run=False,
                        args=["--config", config, *overrides, "--trainer.logger=false"],
                        trainer_defaults={"inference_mode": False}, save_config_callback=None)


def run_methods(spec: dict, out: Path) -> dict[str, dict]:
    """Run every method of the spec; returns {method: {"seconds": .., "computed": n_new_images}}."""
    from vipaint.writer import PredictionWriter

    cli = _cli(spec["config"], [str(o) for o in spec.get("overrides", [])])
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PredictionWriter))
    timings: dict[str, dict] = {}
    for name, opts in spec["methods"].items():
        method = (opts or {}).pop("method", name) if isinstance(opts, dict) else name
        cli.model.method, cli.model.method_options = method, dict(opts or {})
        cli.model.hparams.method = method
        writer.template = str(out / name)
        writer.set_output_dir(out / name)
        before = len(list((writer.output_dir / "metrics").glob("*.json")))
        t0 = time.perf_counter()
        cli.trainer.predict(cli.model, cli.datamodule, return_predictions=False)
        seconds = time.perf_counter() - t0
        computed = len(list((writer.output_dir / "metrics").glob("*.json"))) - before
        tfile = writer.output_dir / "timing.json"
        if computed > 0 and before == 0:      # a complete fresh run: its time per image is meaningful
            tfile.write_text(json.dumps({"seconds": seconds, "images": computed,
                                         "seconds_per_image": seconds / computed,
                                         "threads": torch.get_num_threads(),
                                         "device": str(cli.model.device)}))
        timings[name] = _read_timing(writer.output_dir)
    return timings


def _read_timing(method_dir: Path) -> dict:
    """The `timing.json` of a complete fresh run of a method ({} if its images came from several runs)."""
    tfile = method_dir / "timing.json"
    return json.loads(tfile.read_text()) if tfile.exists() else {}


class _CachedFeatures(nn.Module):
    """Wraps a feature network with a per-image cache keyed by the image's bytes: real images shared by
    every method's FID and KID are computed once, and `save` / `load` keep the features of a benchmark
    folder on disk (`<out>/cache/fid_features.pt`), so a rebuilt report or `vipaint.fid_bootstrap`
    does not run the Inception again."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.cache = net, {}
        self.num_features = getattr(net, "num_features", 2048)
        self.label = getattr(net, "label", type(net).__name__)
        self._saved = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = [hashlib.sha1(row.detach().float().cpu().numpy().tobytes()).hexdigest() for row in x]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            feats = self.net(x[[first[k] for k in todo]])
            self.cache.update(zip(todo, feats.detach()))
        return torch.stack([self.cache[k] for k in keys])

    def load(self, path: Path) -> None:
        """Add the features saved at `path` if they came from the same network (label)."""
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("label") == self.label:
                self.cache.update(zip(saved["keys"], saved["features"]))

    def save(self, path: Path) -> None:
        """Write the cache to `path` (only when it grew since the last save)."""
        if len(self.cache) != self._saved:
            self._saved = len(self.cache)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"label": self.label, "keys": list(self.cache),
                        "features": torch.stack(list(self.cache.values()))}, path)


def feature_cache_path(out: Path) -> Path:
    """Where a benchmark folder keeps its cached FID features (ignored by git with the sample folders)."""
    return out / "cache" / "fid_features.pt"


def _load(method_dir: Path) -> list[dict]:
    items = []
    for p in sorted((method_dir / "samples").glob("*.npz")):
        with np.load(p) as z:
            meta = json.loads((method_dir / "metrics" / f"{p.stem}.json").read_text())
            items.append({"index": int(p.stem), "mask_name": meta["mask"], "meta": meta,
                          **{k: torch.from_numpy(z[k]) for k in ("composite", "samples", "image", "mask")}})
    return items


def _distribution_metrics(items: list[dict], features: nn.Module | None, chunk: int = 64) -> dict:
    from vipaint.metrics import make_fid, make_kid

    if features is None or not items:
        return {}
    fake = torch.cat([it["composite"] for it in items])
    real = torch.stack([it["image"] for it in items])
    if len(real) < 2:          # a covariance needs two images: FID/KID are left out, not faked
        return {"n_fake": len(fake), "n_real": len(real)}
    fid, kid = make_fid(features), make_kid(features, subset_size=1000)
    for metric in (fid, kid):
        for i in range(0, len(real), chunk):
            metric.update(real[i:i + chunk], real=True)
        for i in range(0, len(fake), chunk):
            metric.update(fake[i:i + chunk], real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset": kid.subset_size_used, "n_fake": len(fake), "n_real": len(real)}


def _per_item_metrics(items: list[dict], perceptual) -> dict:  # noqa: ANN001
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


def _previous_rows(out: Path) -> tuple[dict[str, list[dict]], str | None]:
    """Rows of `<out>/results.json` by method, and the feature network they were computed with."""
    f = out / "results.json"
    if not f.is_file():
        return {}, None
    saved = json.loads(f.read_text())
    rows: dict[str, list[dict]] = {}
    for r in saved.get("rows", []):
        rows.setdefault(r["method"], []).append(r)
    return rows, saved.get("features")


def report(out: Path, methods: list[str], timings: dict[str, dict], *, fid: bool = True,
           perceptual_kind: str = "auto") -> list[dict]:
    """Build the comparison table from `<out>/<method>/`.

    A method whose samples are not in `out` (they are not committed, so a fresh clone has none) keeps its
    rows from the previous `results.json`, provided they were computed with the same FID features; adding
    a method with `--only` then never drops the others' rows.
    """
    from vipaint.metrics import default_inception, perceptual_metric

    features, feat_label = None, "FID/KID skipped"
    if fid:
        try:
            net, feat_label = default_inception()
            features = _CachedFeatures(net) if isinstance(net, nn.Module) else None
            if features is not None:
                features.load(feature_cache_path(out))
        except FileNotFoundError as err:
            feat_label = f"FID/KID skipped: {err}"
    perceptual, perc_label = perceptual_metric(perceptual_kind)
    previous, previous_label = _previous_rows(out)
    rows = []
    for name in methods:
        items = _load(out / name)
        if not items:
            if name in previous and previous_label == feat_label:
                print(f"{name}: no samples in {out / name}; keeping its rows from {out / 'results.json'}")
                rows.extend(previous[name])
            elif name in previous:
                print(f"{name}: no samples in {out / name}, and its rows in {out / 'results.json'} used other "
                      f"features ({previous_label!r}, now {feat_label!r}); dropped, rerun it")
            continue
        masks = sorted({it["mask_name"] for it in items})
        for mask in masks + ["all"]:
            sel = [it for it in items if mask in ("all", it["mask_name"])]
            if not sel:
                continue
            metas = [it["meta"] for it in sel]
            row = {"method": name, "mask": mask, "images": len(sel),
                   "nfe": _mean_count(metas, "nfe"), "backprops": _mean_count(metas, "n_backprop")}
            for key in ("psnr", "ssim", "psnr_hole", "exact_mean_rmse", "exact_std_ratio", "sliced_w2",
                        "mode_weight_error", "coverage90", "coverage90_exact"):
                vals = [m[key] for m in metas if key in m]
                if vals:
                    row[key] = float(np.mean(vals))
            row.update(_per_item_metrics(sel, perceptual))
            row.update(_distribution_metrics(sel, features))
            if features is not None:
                features.save(feature_cache_path(out))
            row["s_per_image"] = timings.get(name, {}).get("seconds_per_image", float("nan"))
            rows.append(row)
    _write(out, rows, feat_label, perc_label)
    _plots(out, rows, methods)
    return rows


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _md_table(rows: list[dict], cols: list[str]) -> list[str]:
    """Markdown lines: header, separator, one line per row (missing / NaN cells as –)."""
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows])


def _write(out: Path, rows: list[dict], feat_label: str, perc_label: str) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps({"rows": rows, "features": feat_label,
                                                  "perceptual": perc_label}, indent=2))
    shown = [c for c in ("method", "mask", "images", "nfe", "backprops", "exact_mean_rmse", "exact_std_ratio",
                         "sliced_w2", "mode_weight_error", "coverage90", "fid", "kid", "psnr", "psnr_hole",
                         "ssim", "psnr_best", "diversity_l2", "hole_std", "diversity_perceptual",
                         "s_per_image") if c in cols]
    lines = _md_table(rows, shown) + ["", f"FID/KID features: {feat_label}.", f"Perceptual distance: {perc_label}."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    overall = [r for r in rows if r.get("mask") == "all"]        # one row per method: summary.md
    summary = _md_table(overall, [c for c in shown if c not in ("mask", "backprops")])
    (out / "summary.md").write_text("\n".join(summary) + "\n")


def _plots(out: Path, rows: list[dict], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    allrows = [r for r in rows if r["mask"] == "all"]
    keys = [k for k in ("sliced_w2", "kid", "psnr", "diversity_l2") if any(k in r for r in allrows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, key in zip(np.atleast_1d(axes), keys):
        for r in allrows:
            ax.scatter(r["nfe"], r.get(key, float("nan")), s=30)
            ax.annotate(r["method"], (r["nfe"], r.get(key, float("nan"))), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("network passes per sample (NFE)")
        ax.set_ylabel(key)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_nfe.png", dpi=100)
    plt.close(fig)
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
        from PIL import ImageDraw

        w = max(sum(im.width for im in row) + 8 * len(row) for row in tiles)
        h = sum(row[0].height + 6 for row in tiles)
        label_w = max(90, 12 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(m)) for m in methods))
        canvas = Image.new("RGB", (w + label_w, h), "white")
        draw, y = ImageDraw.Draw(canvas), 0
        for m, row in zip(methods, tiles):
            draw.text((4, y + row[0].height // 2 - 6), m, fill="black")
            x = label_w
            for im in row:
                canvas.paste(im, (x, y))
                x += im.width + 8
            y += row[0].height + 6
        canvas.save(out / "panels.png")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vipaint.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="benchmark YAML (config, overrides, methods, out)")
    p.add_argument("--only", nargs="*", help="run only these methods of the spec")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID (Inception on CPU is slow)")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from existing outputs")
    p.add_argument("--out", help="output folder (default: the spec's `out`)")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith(("--data.", "--model.", "--trainer.", "--seed_everything"))]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (extra LightningCLI overrides must start with "
                "--data., --model., --trainer. or --seed_everything)")
    spec = yaml.safe_load(Path(args.spec).read_text())
    spec["overrides"] = [*spec.get("overrides", []), *extra]     # later flags win in LightningCLI
    if args.out:
        spec["out"] = args.out
    unknown = sorted(set(args.only or []) - set(spec["methods"]))
    if unknown:
        p.error(f"--only: {', '.join(unknown)} not in {args.spec} (its methods: {', '.join(spec['methods'])})")
    out = Path(spec.get("out", f"results/benchmarks/{Path(args.spec).stem}"))
    out.mkdir(parents=True, exist_ok=True)
    to_run = {} if args.report_only else {k: dict(v or {}) for k, v in spec["methods"].items()
                                          if not args.only or k in args.only}
    timings = run_methods({**spec, "methods": to_run}, out) if to_run else {}
    # the table covers every method of the spec with outputs in `out` or rows in its results.json, so
    # `--only` adds rows to a benchmark instead of replacing its table with a subset
    previous, _ = _previous_rows(out)
    methods = [m for m in spec["methods"]
               if m in to_run or m in previous or any((out / m / "samples").glob("*.npz"))]
    timings.update({m: _read_timing(out / m) for m in methods if m not in timings})
    report(out, methods, timings, fid=not args.no_fid and spec.get("fid", True),
           perceptual_kind=spec.get("perceptual", "auto"))
    print(f"\nwrote {out}/results.md, results.csv and the plots")


if __name__ == "__main__":
    main()
