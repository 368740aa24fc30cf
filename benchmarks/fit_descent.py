"""Does VIPaint's fit objective descend visibly on a shipped prior, under each preset?

    python benchmarks/fit_descent.py [--prior data/priors/fashion_mnist] [--data data/fashion_mnist/test]
        [--images 2] [--out benchmarks/results/vipaint_principled]

Fits q_λ (stage 1 only, 50 iterations, docs/algorithm.md §3) on `--images` observations (box masks,
σ_y = 0.05) under `preset: principled` (the default) and `preset: official`, and reports per image the
mean objective of the first and of the last 10 iterations and their difference in standard errors
(SE² = var(first)/10 + var(last)/10): many standard errors means a visible descent. The two presets'
objectives are on different scales (nats vs the official β-weighted element means) and are only
compared through this ratio. `noise_at_init`: the std of the objective over `--noise-repeats` evaluations
at the initial q_λ (the same fit with every learning rate 0), the estimator's own noise; `late_noise`: the
std of the last 20 iterations around their least-squares line. Writes fit_descent.md / .json (with the
traces) and fit_descent.png (the objective per iteration, one panel per preset) under --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vipaint.bench.report import write_table
from vipaint.data import InverseProblemDataset
from vipaint.masks import BoxMask
from vipaint.methods.vipaint import VIPaintConfig, fit_posterior
from vipaint.operators import Inpainting
from vipaint.priors import DiffusersPrior
from vipaint.seeding import ImageRNG


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", default="data/priors/fashion_mnist")
    p.add_argument("--data", default="data/fashion_mnist/test")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-repeats", type=int, default=10)
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
        _, trace, failed, _ = fit_posterior(prior, op, y, ImageRNG(args.seed, idx, "method:vipaint"), cfg)
        frozen = cfg.overridden(iterations=args.noise_repeats, lr_mu=0.0, lr_logvar=0.0, lr_gamma=0.0)
        _, noise, _, _ = fit_posterior(prior, op, y, ImageRNG(args.seed, idx, "method:vipaint"), frozen)
        first, last = trace[:10], trace[-10:]
        se = (first.var(0) / 10 + last.var(0) / 10).sqrt()
        late = trace[-20:].double()
        it = torch.arange(20, dtype=torch.float64)[:, None]
        design = torch.cat([torch.ones_like(it), it], 1)
        resid = late - design @ torch.linalg.lstsq(design, late).solution
        for i in idx:
            rows.append({"preset": preset, "image": i, "first10": first[:, i].mean().item(),
                         "last10": last[:, i].mean().item(),
                         "descent_in_se": ((first[:, i].mean() - last[:, i].mean()) / se[i]).item(),
                         "noise_at_init": noise[:, i].std().item(), "late_noise": resid[:, i].std().item(),
                         "failed": bool(failed[i]), "seconds": time.time() - t0,
                         "trace": trace[:, i].tolist()})
            print(rows[-1], flush=True)
    cols = ["preset", "image", "first10", "last10", "descent_in_se", "noise_at_init", "late_noise"]
    print(write_table(Path(args.out), "fit_descent", rows, cols, vars(args)))
    _plot(rows, Path(args.out) / "fit_descent.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(5 * len(presets), 3.5))
    for ax, preset in zip(axes if len(presets) > 1 else [axes], presets, strict=True):
        for r in (r for r in rows if r["preset"] == preset):
            ax.plot(range(1, len(r["trace"]) + 1), r["trace"], label=f"image {r['image']}")
        ax.set(title=f"preset: {preset}", xlabel="iteration", ylabel="objective (per image)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
