"""Does VIPaint's fit objective descend visibly on a shipped prior, under each preset?

    python benchmarks/fit_descent.py [--prior data/priors/fashion_mnist] [--data data/fashion_mnist/test]
        [--images 4] [--evaluations 32] [--out benchmarks/results/vipaint_principled]

Fits q_λ (stage 1 only, docs/algorithm.md §3) on `--images` observations (box masks, σ_y = 0.05) under
`preset: principled` (the default) and `preset: official`, and measures the descent two ways per image:
- **paired** (the criterion): the objective evaluated `--evaluations` (R) times at the initial q_λ
  (`initialise_fit`, the same draws as the fit's start) and R times at the fitted q_λ, evaluation r of both
  with the same random numbers (stream "evaluate", seed + r). `descent` = mean of (initial − fitted),
  `se` = std of the R differences / √R, `descent_in_se` = their ratio; `se_unpaired` is what independent
  draws would give (√(var_init/R + var_fit/R)), to show what the common random numbers remove.
- **trace**: the fit's own per-iteration estimate, mean of the first against the last 10 iterations
  (`trace_in_se`, SE² = var(first)/10 + var(last)/10), the noisier measure `elbo.png` shows.
`noise_at_init`: the std of one evaluation at the initial q_λ. The two presets' objectives are on different
scales (nats vs the official β-weighted element means) and are compared only through the ratios. Writes
fit_descent_<prior>.md / .json (with the traces) and fit_descent_<prior>.png (objective per iteration and
the paired means) under --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vipaint.bench.report import write_table
from vipaint.data import InverseProblemDataset
from vipaint.masks import BoxMask
from vipaint.methods.vipaint import VIPaintConfig, fit_posterior, initialise_fit
from vipaint.operators import Inpainting
from vipaint.priors import DiffusersPrior
from vipaint.seeding import ImageRNG


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", default="data/priors/fashion_mnist")
    p.add_argument("--data", default="data/fashion_mnist/test")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluations", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/vipaint_principled")
    args = p.parse_args(argv)
    prior = DiffusersPrior(args.prior).eval()
    for q in prior.parameters():
        q.requires_grad_(False)
    c, h, _ = prior.image_shape
    ds = InverseProblemDataset(source=args.data, masks=[BoxMask(size=0.5)], num_images=args.images, channels=c,
                               image_size=h, seed=args.seed)
    items = [ds[i] for i in range(args.images)]
    idx = list(range(args.images))
    x = torch.stack([it["image"] for it in items])
    op = Inpainting(torch.stack([it["mask"] for it in items]), sigma_y=0.05)
    y = op.observe(x, ImageRNG(args.seed, idx, "observation"))
    rows = []
    for preset in ("principled", "official"):
        t0 = time.time()
        cfg = VIPaintConfig(preset=preset)
        fitted, trace, failed, _ = fit_posterior(prior, op, y, ImageRNG(args.seed, idx, "method:vipaint"), cfg)
        initial, objective = initialise_fit(prior, op, y, ImageRNG(args.seed, idx, "method:vipaint"), cfg)
        with torch.no_grad():
            pairs = [(objective(initial, prior, op, y, ImageRNG(args.seed + r, idx, "evaluate")),
                      objective(fitted, prior, op, y, ImageRNG(args.seed + r, idx, "evaluate")))
                     for r in range(args.evaluations)]
        e0 = torch.stack([a for a, _ in pairs]).double().cpu()       # [R, B]
        e1 = torch.stack([b for _, b in pairs]).double().cpu()
        d = e0 - e1
        r = args.evaluations
        se = d.std(0) / r ** 0.5
        se_unpaired = (e0.var(0) / r + e1.var(0) / r).sqrt()
        first, last = trace[:10], trace[-10:]
        se_trace = (first.var(0) / 10 + last.var(0) / 10).sqrt()
        for i in idx:
            rows.append({"preset": preset, "image": i, "initial": e0[:, i].mean().item(),
                         "fitted": e1[:, i].mean().item(), "descent": d[:, i].mean().item(), "se": se[i].item(),
                         "descent_in_se": (d[:, i].mean() / se[i]).item(), "se_unpaired": se_unpaired[i].item(),
                         "trace_in_se": ((first[:, i].mean() - last[:, i].mean()) / se_trace[i]).item(),
                         "noise_at_init": e0[:, i].std().item(), "failed": bool(failed[i]),
                         "seconds": time.time() - t0, "trace": trace[:, i].tolist()})
            print({k: v for k, v in rows[-1].items() if k != "trace"}, flush=True)
    cols = ["preset", "image", "initial", "fitted", "descent", "se", "descent_in_se", "se_unpaired",
            "trace_in_se", "noise_at_init"]
    name = f"fit_descent_{Path(args.prior).name}"
    print(write_table(Path(args.out), name, rows, cols, vars(args)))
    _plot(rows, Path(args.out) / f"{name}.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(5 * len(presets), 3.5))
    for ax, preset in zip(axes if len(presets) > 1 else [axes], presets, strict=True):
        for r in (r for r in rows if r["preset"] == preset):
            n = len(r["trace"])
            line, = ax.plot(range(1, n + 1), r["trace"], lw=0.8, label=f"image {r['image']}")
            ax.errorbar([0, n + 1], [r["initial"], r["fitted"]], yerr=[r["se"], r["se"]], fmt="o",
                        color=line.get_color())
        ax.set(title=f"preset: {preset} (dots: mean of the paired evaluations at q_init, q_fit)",
               xlabel="iteration", ylabel="objective (per image)")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
