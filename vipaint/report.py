"""Pictures and tables of a run: image panels, the metrics table (per-image means, FID/KID per mask type
and overall, the perceptual distance), ELBO curves."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vipaint.samples_u8 import load_u8

__all__ = ["COUNTERS", "build_report", "distribution_table", "fid_note", "panel", "to_pil"]

COUNTERS = ("nfe", "n_backprop", "n_decode", "n_encode")     # in metrics.json / .csv, not in the table
DISTRIBUTION_KEYS = ("fid", "kid", "fid_raw", "kid_raw")     # shown in metrics.md where computed


def to_pil(x: Tensor, scale: int = 1) -> Image.Image:
    """[C, H, W] in [−1, 1] → PIL image, nearest-upscaled by `scale`."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    img = Image.fromarray(arr)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def panel(y: Tensor, mask: Tensor, samples: Tensor, truth: Tensor, *, operator: str = "inpainting",
          gap: int = 2) -> Image.Image:
    """One row: observation (holes grey) | samples | ground truth. Small images are upscaled."""
    c, h, w = truth.shape
    if operator == "inpainting":
        obs = mask * y + (1 - mask) * torch.full_like(truth, 0.0)
    else:
        obs = torch.nn.functional.interpolate(y[None], size=(h, w), mode="nearest")[0]
    tiles = [obs] + list(samples) + [truth]
    scale = max(1, 96 // h)
    ims = [to_pil(t, scale).convert("RGB") for t in tiles]
    out = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) - 1), ims[0].height), (255, 255, 255))
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def _mean(vals: list[float]) -> float:
    v = [x for x in vals if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _load_observations(out: Path, rows: list[dict]) -> list[dict]:
    """Ground truth, composites and raw samples of each done index, by index: `samples/<index>.npz`, or, for
    an index computed in another clone (a committed run continued here, whose float samples stay local), its
    committed `samples_u8/<index>.npz` (composites within 1/255 of the float ones; no raw samples, so such
    an item has `"u8": True` and its composites stand in for them)."""
    items = []
    for r in sorted(rows, key=lambda r: r["index"]):
        name = f"{r['index']:06d}.npz"
        if not (out / "samples" / name).is_file() and (out / "samples_u8" / name).is_file():
            z = load_u8(out / "samples_u8" / name)
            items.append({"index": r["index"], "mask": r["mask"], "u8": True,
                          **{k: z[k] for k in ("image", "composite", "samples")}})
            continue
        try:
            with np.load(out / "samples" / name) as z:
                items.append({"index": r["index"], "mask": r["mask"], "u8": False,
                              **{k: torch.from_numpy(z[k]) for k in ("image", "composite", "samples")}})
        except FileNotFoundError:
            raise FileNotFoundError(f"{out}: index {r['index']} has metrics/{r['index']:06d}.json but neither "
                                    f"samples/{name} nor samples_u8/{name}") from None
    return items


def distribution_table(out: Path, rows: list[dict], features, raw: bool = True) -> dict[str, dict]:
    """FID/KID per mask type and "all" (`vipaint.bench.features.distribution_metrics`, the benchmark's code
    path): composites (`fid`, `kid`) and, where they differ from them (inpainting), raw samples (`fid_raw`,
    `kid_raw`; unless `raw` is False), against the run's ground truths. Every rank's saved feature files are
    read first; a missing one (an index written before features were saved) is computed and saved now."""
    from vipaint.bench.features import (
        CachedFeatures,
        distribution_metrics,
        extract_observation_features,
        load_saved_features,
    )

    if features is None or not rows:
        return {}
    cached = CachedFeatures(features.net, features.label)     # CPU cache of the files of every rank
    load_saved_features(cached, out)
    items = _load_observations(out, rows)
    for it in items:
        extract_observation_features(cached, out, it["index"], it["image"], it["composite"],
                                     it["samples"] if raw and not it["u8"] else None)
    table: dict[str, dict] = {}
    for mask in sorted({it["mask"] for it in items}) + ["all"]:
        sel = [it for it in items if mask in ("all", it["mask"])]
        real = torch.stack([it["image"] for it in sel])
        row = distribution_metrics(real, torch.cat([it["composite"] for it in sel]), cached)
        # raw samples only where every item has them (a continued run's uint8 items hold composites only)
        if raw and not any(it["u8"] for it in sel) and any(not torch.equal(it["samples"], it["composite"])
                                                             for it in sel):
            raw_row = distribution_metrics(real, torch.cat([it["samples"] for it in sel]), cached)
            row.update({f"{k}_raw": v for k, v in raw_row.items() if k in ("fid", "kid", "kid_std")})
        if n_u8 := sum(it["u8"] for it in sel):
            row["n_from_u8"] = n_u8          # observations scored from their committed uint8 composites
        table[mask] = row
    return table


def fid_note(n_real: int | None, n_fake: int | None) -> str:
    """FID's small-n bias, stated with the n used."""
    return (f"FID is biased upwards at small n and its bias depends on n (here, overall: {n_real} real vs "
            f"{n_fake} generated images; per mask type fewer): compare FIDs only at equal n, not with published "
            "values at n = 10k–50k. Interval: `python -m vipaint.bench.bootstrap` (paired bootstrap); KID is "
            "unbiased.")


def build_report(out: Path, indices: list[int] | None = None, *, features=None,
                 feature_label: str = "FID/KID skipped", perceptual_label: str | None = None, raw: bool = True) -> dict:
    """Collect metrics/<index>.json into metrics.csv (per image), metrics_per_mask.csv, metrics.md and
    metrics.json (means per mask type and overall); plot ELBO curves. With a
    `CachedFeatures` network, FID/KID per mask type and overall are added (`distribution_table`);
    `feature_label` / `perceptual_label` say which networks produced them (or why they were skipped).
    `indices`: report only these dataset indices (None: every file)."""
    out = Path(out)
    keep = None if indices is None else {f"{i:06d}" for i in indices}
    rows = [json.loads(p.read_text()) for p in sorted((out / "metrics").glob("*.json"))
            if keep is None or p.stem in keep]
    failed = [json.loads(p.read_text()) for p in sorted((out / "failed").glob("*.json"))
              if keep is None or p.stem in keep]
    cols = ["index", "mask", "path"] + sorted({k for r in rows for k in r} - {"index", "mask", "path"})
    with open(out / "metrics.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=cols)
        wr.writeheader()
        wr.writerows(rows)
    numeric = [c for c in cols if c not in ("index", "mask", "path")
               and not any(isinstance(r.get(c), str) for r in rows)]   # not the input hashes (*_sha256)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["mask"]].append(r)
    per_mask = {m: {c: _mean([r.get(c) for r in rs]) for c in numeric} | {"n": len(rs)} for m, rs in groups.items()}
    overall = {c: _mean([r.get(c) for r in rows]) for c in numeric} | {"n": len(rows), "n_failed": len(failed)}
    dist = distribution_table(out, rows, features, raw)
    for m, d in dist.items():
        (overall if m == "all" else per_mask[m]).update(d)
    summary = {"overall": overall, "per_mask": per_mask, "failed": failed, "features": feature_label,
               "perceptual": perceptual_label}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    shown = [c for c in numeric if c not in COUNTERS] + [k for k in DISTRIBUTION_KEYS if k in overall]
    table = [{"mask": m, **d} for m, d in sorted(per_mask.items()) + [("all", overall)]]
    with open(out / "metrics_per_mask.csv", "w", newline="") as f:      # the table below, every column
        wr = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table for k in r)))
        wr.writeheader()
        wr.writerows(table)
    lines = ["| mask | n | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for m, d in sorted(per_mask.items()) + [("all", overall)]:
        lines.append(f"| {m} | {d['n']} | " + " | ".join(f"{d.get(c, float('nan')):.4g}" for c in shown) + " |")
    lines.append("")
    if "fid" in overall:
        lines += [f"FID/KID features: {feature_label}; fid/kid: composited samples"
                  + ("; fid_raw/kid_raw: raw samples" if "fid_raw" in overall else "") + ".",
                  fid_note(overall.get("n_real"), overall.get("n_fake"))]
    else:
        lines.append(feature_label if feature_label.startswith("FID/KID skipped")
                     else f"FID/KID skipped (features: {feature_label}).")
    if perceptual_label is not None:
        lines.append(f"Perceptual distance: {perceptual_label}.")
    if failed:
        lines.append(f"\n{len(failed)} image(s) failed: " + ", ".join(str(f["index"]) for f in failed))
    markdown = "\n".join(lines) + "\n"
    (out / "metrics.md").write_text(markdown)
    _plot_traces(out, keep=keep)
    return {"overall": overall, "per_mask": per_mask, "rows": rows, "columns": cols, "markdown": markdown}


def _plot_traces(out: Path, max_curves: int = 32, keep: set[str] | None = None) -> None:
    """elbo.png: the fit objective per iteration, `max_curves` images as thin lines and the median over every
    image (of equal trace length) as a bold line, so a descent shows through the per-iteration noise."""
    curves = []
    for p in sorted((out / "samples").glob("*.npz")):
        if keep is not None and p.stem not in keep:
            continue
        with np.load(p) as z:
            if "trace_objective" in z:
                curves.append((p.stem, z["trace_objective"]))
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for _name, c in curves[:max_curves]:
        ax.plot(np.arange(1, len(c) + 1), c, lw=0.8, alpha=0.5)
    n = max(len(c) for _, c in curves)
    full = np.stack([c for _, c in curves if len(c) == n])
    ax.plot(np.arange(1, n + 1), np.nanmedian(full, axis=0), lw=2.5, color="black",
            label=f"median of {len(full)} images")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("negative ELBO (objective)")
    ax.set_title(f"VIPaint fit, {min(len(curves), max_curves)} of {len(curves)} images")
    fig.tight_layout()
    fig.savefig(out / "elbo.png", dpi=100)
    plt.close(fig)
