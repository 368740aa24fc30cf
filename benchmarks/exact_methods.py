"""Every method against the exact posterior of an analytic Gaussian-mixture prior (docs/algorithm.md §8).

SyntheticMixturePrior 1×8×8 (2 components), 8 observations × 32 samples, σ_y = 0.05, for inpainting
(50 % random pixels), SR ×2 (area) and Gaussian blur (3×3, σ = 1). Each method runs with its defaults as
they were when the committed table was made (DPS ζ = 0.5 inpainting / 0.3 SR and blur; `COMMITTED` restores
the peers' settings from before their official defaults); VIPaint with exact-posterior-friendly options.

Columns: RMS error over pixels of the sample mean against the exact posterior mean (mean over images);
the same for the prior mean; std ratio = RMS per-pixel sample std / RMS exact posterior std (1 = right
spread; mean over images); network passes per sample; wall-clock seconds (CPU, noisy; compare within
one run only). Writes benchmarks/results/exact_methods.{md,csv}.

    nice python -m benchmarks.exact_methods [--methods dps,ddnm] [--tasks sr] [--fast]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

import vipaint
from vipaint.operators import Downsample, GaussianBlur, Inpainting, LinearOperator
from vipaint.priors import SyntheticMixturePrior
from vipaint.seeding import ImageRNG

TASKS = ("inpainting", "sr", "blur")
VIPAINT_EXACT = dict(likelihood="gaussian", likelihood_scale=None, reduction="sum", beta_prior=1.0,
                     beta_hier=1.0, zeta=0.002, refine_steps=100)
# method → tasks it applies to (RePaint/CoPaint: inpainting only; PSLD: latent priors only)
APPLIES = {"exact": TASKS, "prior": TASKS, "vipaint": TASKS, "dps": TASKS, "reddiff": TASKS, "ddnm": TASKS,
           "repaint": ("inpainting",), "copaint": ("inpainting",), "copaint_tt": ("inpainting",)}
# the peers' settings of the committed table, from before their official defaults (docs/algorithm.md §10):
# unclamped (this prior's support is not [−1, 1]), DDNM's noise-free projection, CoPaint's old constants
COMMITTED = {"dps": dict(clip_x0=False), "repaint": dict(clip_x0=False), "ddnm": dict(mode="ddnm"),
             "copaint": dict(coef_reg=0.01, coef_reg_decay=1.01, clip_x0=False),
             "copaint_tt": dict(coef_reg=0.01, coef_reg_decay=1.01, clip_x0=False)}
FAST = {"dps": dict(n_steps=100), "reddiff": dict(n_steps=100), "ddnm": dict(n_steps=20), "prior": dict(n_steps=100),
        "repaint": dict(t_T=50, jump_length=5, jump_n_sample=3), "copaint": dict(n_steps=50),
        "copaint_tt": dict(n_steps=50, jump_length=5), "vipaint": dict(iterations=20, refine_steps=20)}


def make_problem(task: str, n_images: int, seed: int = 0
                 ) -> tuple[SyntheticMixturePrior, LinearOperator, torch.Tensor]:
    """The prior, the operator and observations y of `n_images` prior draws."""
    prior = SyntheticMixturePrior(image_shape=(1, 8, 8), n_components=2, seed=seed)
    x = prior.sample(n_images, torch.Generator().manual_seed(seed + 1))
    if task == "inpainting":
        mask = (torch.rand(n_images, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 2)) > 0.5).float()
        op: LinearOperator = Inpainting(mask, sigma_y=0.05)
    elif task == "sr":
        op = Downsample(factor=2, sigma_y=0.05)
    else:
        op = GaussianBlur(kernel_size=3, sigma=1.0, sigma_y=0.05)
    return prior, op, op.observe(x, ImageRNG(seed, range(n_images), "observation"))


def options(method: str, task: str, fast: bool) -> dict:
    """Per-method options: official defaults (DPS ζ per task), VIPaint's exact-friendly settings."""
    opts: dict = dict(VIPAINT_EXACT) if method == "vipaint" else dict(COMMITTED.get(method, {}))
    if method == "dps":
        opts["zeta"] = 0.5 if task == "inpainting" else 0.3
    if fast:
        opts.update(FAST.get(method, {}))
    return opts


def evaluate(method: str, task: str, n_images: int, n_samples: int, fast: bool) -> dict:
    prior, op, y = make_problem(task, n_images)
    post = prior.exact_posterior(op, y)
    exact_mean, exact_std = post.mean().float(), post.std().float()                       # [B, D]
    prior_mean = (prior.weights[:, None] * prior.means).sum(0).float()
    t0 = time.perf_counter()
    res = vipaint.solve_full(method, prior, op, y, n_samples=n_samples, seed=0, **options(method, task, fast))
    sec = time.perf_counter() - t0
    s = res.samples.flatten(2).float()                                                     # [S, B, D]
    rms = lambda a: a.square().mean(-1).sqrt()  # noqa: E731
    std_ratio = s.std(0).square().mean(-1).sqrt() / exact_std.square().mean(-1).sqrt()
    return dict(method=method, task=task, mean_err=rms(s.mean(0) - exact_mean).mean().item(),
                prior_err=rms(prior_mean - exact_mean).mean().item(), std_ratio=std_ratio.mean().item(),
                nfe=res.nfe, seconds=sec, failed=int(res.failed.sum()))


def to_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| method | task | mean err | prior-mean err | std ratio | NFE | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(f"| {r['method']}{flag} | {r['task']} | {r['mean_err']:.4f} | {r['prior_err']:.4f} | "
                     f"{r['std_ratio']:.2f} | {r['nfe']} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(APPLIES), help="comma-separated method names")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--fast", action="store_true", help="few steps per method (smoke run)")
    p.add_argument("--out", default="benchmarks/results/exact_methods")
    args = p.parse_args(argv)
    rows = []
    for task in args.tasks.split(","):
        for method in args.methods.split(","):
            if task not in APPLIES.get(method, TASKS):
                continue
            rows.append(evaluate(method, task, args.images, args.samples, args.fast))
            r = rows[-1]
            print(f"{method:>10s} {task:>10s}  err {r['mean_err']:.4f}  prior {r['prior_err']:.4f}  "
                  f"std {r['std_ratio']:.2f}  nfe {r['nfe']}  {r['seconds']:.1f}s", flush=True)
    header = (f"SyntheticMixturePrior 1×8×8 (J = 2), {args.images} images × {args.samples} samples, σ_y = 0.05"
              f"{' (fast settings)' if args.fast else ', official defaults'}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads.")
    md = to_markdown(rows, header)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
