"""Pictures and tables of a run: image panels, the metrics table, ELBO curves."""

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

__all__ = ["panel", "to_pil", "build_report"]


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


def build_report(out: Path, indices: list[int] | None = None) -> dict:
    """Collect metrics/<index>.json into metrics.csv, metrics.md and metrics.json; plot ELBO curves.
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
    summary = {"overall": overall, "per_mask": per_mask, "failed": failed}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    shown = [c for c in numeric if c not in ("nfe", "n_backprop")]
    lines = ["| mask | n | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for m, d in sorted(per_mask.items()) + [("all", overall)]:
        lines.append(f"| {m} | {d['n']} | " + " | ".join(f"{d[c]:.4g}" for c in shown) + " |")
    if failed:
        lines.append(f"\n{len(failed)} image(s) failed: " + ", ".join(str(f["index"]) for f in failed))
    markdown = "\n".join(lines) + "\n"
    (out / "metrics.md").write_text(markdown)
    _plot_traces(out, keep=keep)
    return {"overall": overall, "per_mask": per_mask, "rows": rows, "columns": cols, "markdown": markdown}


def _plot_traces(out: Path, max_curves: int = 32, keep: set[str] | None = None) -> None:
    files = [p for p in sorted((out / "samples").glob("*.npz")) if keep is None or p.stem in keep][:max_curves]
    curves = []
    for p in files:
        with np.load(p) as z:
            if "trace_objective" in z:
                curves.append((p.stem, z["trace_objective"]))
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves:
        ax.plot(np.arange(1, len(c) + 1), c, lw=0.8, alpha=0.7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("negative ELBO (objective)")
    ax.set_title(f"VIPaint fit, {len(curves)} images")
    fig.tight_layout()
    fig.savefig(out / "elbo.png", dpi=100)
    plt.close(fig)
