"""The leaderboard of a benchmark spec, built from committed result files only (nothing is rerun).

    python -m vipaint.bench.leaderboard --spec benchmarks/gaussian_mixture_tune.yaml [--name gaussian_mixture]

Reads the test-split run `python -m vipaint.bench --spec … --split test` left in the spec's `out`: per
method `metrics/<index>.json` (per-image metrics, UNet and codec passes), `samples_u8/<index>.npz` (uint8
composites, `vipaint.samples_u8`), its seconds per image (`timing.json`, else the per-index `timing/`
files: `vipaint.bench.run.read_timing`), and the tuned YAMLs the spec names. The Inception features of
each row's uint8 images are kept in `<row>/features/leaderboard_u8.pt` (not committed), so a rebuild on the
same machine skips them. Refuses a folder
whose images are not exactly the test split's, or a tuned setting chosen on test rows. Writes
`benchmarks/results/leaderboard/<name>.md` (ranked table, per-mask table, budgets), `<name>_summary.md`
(the ranked table alone, for `scripts/readme_tables.py`), `<name>.json`,
`<name>_panels.png` and `<name>_compute.png` (the ranking metric against NFE and against seconds per image).

Ranking: by the spec's tuning criterion when it is a per-image metric (else PSNR), with a paired bootstrap
over the observations (the same resampled observations for every method) of the difference to the best
method that is not a reference (`leaderboard: {references: [exact, prior]}` in the spec, these by
default): its 95 % percentile interval and the share of resamples in which the best one stays better.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from vipaint.bench.bootstrap import U8_CACHE
from vipaint.bench.report import md_table, resumed_timing_note
from vipaint.bench.run import gpu_device, read_timing
from vipaint.bench.splits import check_tuned, image_source, load_tuned, spec_split
from vipaint.samples_u8 import load_records

__all__ = ["leaderboard", "main", "paired_mean_bootstrap"]

PER_IMAGE = ("sliced_w2", "exact_mean_rmse", "exact_std_ratio", "coverage90", "psnr", "ssim", "lpips",
             "st_lpips", "diversity_l2")
HIGHER_BETTER = ("psnr", "ssim", "coverage90")
REFERENCES = ("exact", "prior")     # shown and ranked, but never "the best method" the others are compared with


def paired_mean_bootstrap(values: dict[str, np.ndarray], replicates: int = 1000,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Means of each method's per-observation values [N] over `replicates` resamples of the N observations,
    the same resample for every method (paired); {method: [replicates]}."""
    n = len(next(iter(values.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    return {m: v[idx].mean(1) for m, v in values.items()}


def _expected_indices(split_rows: range, items: dict[int, dict]) -> set[int]:
    g = len({it["meta"]["mask"] for it in items.values()})
    return {r * g + k for r in split_rows for k in range(g)}


def _row(name: str, items: list[dict], folder: Path, features) -> dict:
    from vipaint.bench.features import distribution_metrics, image_key
    from vipaint.metrics import to_unit_rgb

    metas = [it["meta"] for it in items]
    row: dict = {"method": name, "images": len(items)}
    for key in PER_IMAGE:
        vals = [m[key] for m in metas if key in m]
        if vals:
            row[key] = float(np.mean(vals))
    for key, col in (("nfe", "nfe"), ("n_decode", "nfe_decoder"), ("n_encode", "nfe_encoder")):
        vals = [m[key] for m in metas if m.get(key) is not None]
        row[col] = float(np.mean(vals)) if vals else None
    timing = read_timing(folder)
    row["s_per_image"], row["timing"] = timing.get("seconds_per_image"), timing.get("source", "run")
    if gpu := gpu_device(timing):
        row["timing_device"] = gpu
    if features is not None and all("composite" in it for it in items):
        real = torch.stack([it["image"] for it in items])
        fake = torch.cat([it["composite"] for it in items])
        cache = folder / "features" / U8_CACHE     # not committed (.gitignore): a rebuild's shortcut
        features.load(cache)
        row.update({k: v for k, v in distribution_metrics(real, fake, features).items() if k in ("fid", "kid")})
        features.save(cache, [image_key(u) for u in to_unit_rgb(torch.cat([real, fake]))])
    return row


def leaderboard(spec: dict, spec_path: str, name: str, dest: Path, replicates: int = 1000) -> list[dict]:
    """Build the leaderboard files of `spec` under `dest`; returns the ranked rows."""
    from vipaint.bench.features import feature_network

    split, source, out = spec_split(spec, "test"), image_source(spec), Path(spec["out"])
    crit = (spec.get("tune") or {}).get("criterion", {})
    metric = crit.get("metric") if crit.get("metric") in PER_IMAGE else "psnr"
    higher = metric in HIGHER_BETTER if crit.get("metric") != metric else crit.get("goal") == "max"
    budgets, data, setting = [], {}, {}
    for m, entry in spec["methods"].items():
        folder = out / m
        if not (folder / "metrics").is_dir():
            print(f"{m}: no results in {folder}; left out")
            continue
        if isinstance(entry, dict) and entry.get("tuned"):
            tuned = load_tuned(entry["tuned"])
            check_tuned(tuned, f"{m}: {entry['tuned']}", split, source)
            t = tuned["tuning"]
            budgets.append({"method": m, "configurations": t["budget"]["configurations"],
                            "nfe_cap": t["budget"]["nfe_cap"], "wall_seconds": t["budget"]["wall_seconds"],
                            "validation": f"{t['criterion']['metric']} = {t['value']:.4g}",
                            "chosen": json.dumps(tuned["model"]["method_options"], sort_keys=True)})
        items = load_records(folder)
        want = _expected_indices(split.rows, items)
        if set(items) != want:
            raise ValueError(f"{folder} holds indices {sorted(set(items) ^ want)[:5]}… outside / missing from the "
                             f"test split rows {split.start}…{split.rows[-1]}: tables come from the test split only")
        data[m] = items
        entry = entry if isinstance(entry, dict) else {}
        setting[m] = "tuned" if entry.get("tuned") else "published" if entry.get("published") else "as given"
    if not data:
        raise FileNotFoundError(f"no method of {spec_path} has results in {out}")
    features, _ = feature_network(bool(spec.get("fid", True)))
    rows = [_row(m, [its[i] for i in sorted(its)], out / m, features) for m, its in data.items()]
    sign = -1.0 if higher else 1.0
    rows.sort(key=lambda r: sign * r.get(metric, np.inf))
    refs = set((spec.get("leaderboard") or {}).get("references", REFERENCES))
    best_row = next((r for r in rows if r["method"] not in refs), rows[0])
    best = best_row["method"]
    indices = sorted(data[best])
    for m in data:
        if sorted(data[m]) != indices:
            raise ValueError(f"{m} and {best} have different observations; run both on the same split")
    per_obs = {m: np.array([data[m][i]["meta"][metric] for i in indices], dtype=float) for m in data}
    boot = paired_mean_bootstrap(per_obs, replicates)
    for rank, r in enumerate(rows, 1):
        r["rank"], r["setting"] = rank, setting[r["method"]]
        if r["method"] != best:
            d = boot[r["method"]] - boot[best]
            r[f"delta_{metric}"] = r[metric] - best_row[metric]
            r["delta_lo95"], r["delta_hi95"] = float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))
            r["p_best_better"] = float((sign * d > 0).mean())
    masks = sorted({it["meta"]["mask"] for its in data.values() for it in its.values()})
    per_mask = [{"method": r["method"], **{mk: float(np.mean([it["meta"][metric] for it in data[r["method"]].values()
                                                            if it["meta"]["mask"] == mk])) for mk in masks}}
                for r in rows]
    _write(dest, name, spec_path, rows, per_mask, budgets, metric, best, replicates, split, masks)
    _panels(dest / f"{name}_panels.png", {r["method"]: data[r["method"]] for r in rows}, indices[:3])
    _compute_plot(dest / f"{name}_compute.png", rows, metric)
    return rows


def _write(dest: Path, name: str, spec_path: str, rows: list[dict], per_mask: list[dict], budgets: list[dict],
           metric: str, best: str, replicates: int, split, masks: list[str]) -> None:
    cols = ["rank", "method", "setting", "images", metric, f"delta_{metric}", "delta_lo95", "delta_hi95",
            "p_best_better",
            *[c for c in ("fid", "kid", "lpips", "st_lpips", "psnr", "ssim", "exact_mean_rmse", "diversity_l2")
              if c != metric and any(c in r for r in rows)],
            "nfe", "nfe_decoder", "nfe_encoder", "s_per_image"]
    lines = [f"# Leaderboard: {name}", "",
             f"Generated by `python -m vipaint.bench.leaderboard --spec {spec_path}` from the committed result "
             f"files of the test split (rows {split.start}…{split.rows[-1]}, × mask types {', '.join(masks)}); "
             "tuned methods were chosen on the validation split (budgets below).", "",
             *md_table(rows, cols), "",
             f"Ranked by {metric} (mean over observations). delta = method − {best}, with a 95 % interval from "
             f"{replicates} paired bootstrap resamples of the observations; p_best_better = share of resamples in "
             f"which {best} is better ({best}: the best method that is not a reference such as the exact "
             "posterior or the prior). nfe: network passes per sample (UNet); nfe_decoder / nfe_encoder: codec "
             "passes (0 for a pixel prior); s_per_image: wall seconds per observation (all its samples) of the "
             "run, on the machine that ran it. setting: tuned (chosen on the validation split), published (the "
             "values of vipaint/tune/spaces.py, with the spec's fixed options) or as given in the spec.",
             *resumed_timing_note(rows), "",
             f"## {metric} per mask type", "",
             *md_table(per_mask, ["method", *masks]), ""]
    if budgets:
        lines += ["## Tuning budgets (validation split)", "",
                  *md_table(budgets, ["method", "configurations", "nfe_cap", "wall_seconds", "validation", "chosen"]),
                  ""]
    lines += [f"![panels]({name}_panels.png)", "", f"![compute]({name}_compute.png)", ""]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{name}.md").write_text("\n".join(lines))
    (dest / f"{name}_summary.md").write_text("\n".join(md_table(rows, cols)) + "\n")    # one table, for the docs
    (dest / f"{name}.json").write_text(json.dumps({"spec": spec_path, "metric": metric, "rows": rows,
                                                  "per_mask": per_mask, "budgets": budgets}, indent=1))
    print("\n".join(lines))


def _panels(path: Path, data: dict[str, dict[int, dict]], indices: list[int], n_show: int = 4) -> None:
    """One row per method: for each shown observation, the masked truth then up to `n_show` composites."""
    from PIL import Image, ImageDraw

    if not all("composite" in data[m][i] for m in data for i in indices):
        return

    def tile(x: torch.Tensor) -> Image.Image:
        a = ((x.clamp(-1, 1) + 1) * 127.5).round().byte()
        a = a[0] if a.shape[0] == 1 else a.permute(1, 2, 0)
        return Image.fromarray(a.numpy()).resize((64, 64), Image.NEAREST)

    label_w, gap = 110, 4
    first = next(iter(data.values()))
    ncol = len(indices) * (1 + min(n_show, first[indices[0]]["composite"].shape[0]))
    canvas = Image.new("RGB", (label_w + ncol * (64 + gap) + gap * len(indices) * 2, len(data) * (64 + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (m, its) in enumerate(data.items()):
        y, x = r * (64 + gap), label_w
        draw.text((4, y + 26), m, fill="black")
        for i in indices:
            truth = its[i]["image"] * its[i]["mask"] + (-1.0) * (1 - its[i]["mask"])
            for im in [truth, *its[i]["composite"][:n_show]]:
                canvas.paste(tile(im), (x, y))
                x += 64 + gap
            x += 2 * gap
    canvas.save(path)


def _compute_plot(path: Path, rows: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "nfe", "network passes per sample (NFE)"),
                           (axes[1], "s_per_image", "seconds per observation")):
        for r in rows:
            if r.get(key):
                ax.scatter(r[key], r[metric], s=30)
                ax.annotate(r["method"], (r[key], r[metric]), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vipaint.bench.leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="benchmark YAML with `splits` (its `out` holds the test run)")
    p.add_argument("--name", help="file name under --dest (default: the spec's tune.prior, else its stem)")
    p.add_argument("--dest", default="benchmarks/results/leaderboard")
    p.add_argument("--replicates", type=int, default=1000)
    args = p.parse_args(argv)
    spec = yaml.safe_load(Path(args.spec).read_text())
    name = args.name or (spec.get("tune") or {}).get("prior") or Path(args.spec).stem
    leaderboard(spec, args.spec, name, Path(args.dest), args.replicates)


if __name__ == "__main__":
    main()
