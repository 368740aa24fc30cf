"""VIPaint speed options on one machine, each measured against the plain setting in the same run.

    python benchmarks/speed.py --prior data/priors/fashion_mnist --images 8 [--out benchmarks/results/speed_cpu]
    python benchmarks/speed.py --dtype float64 --images 3 --samples 2 --out benchmarks/results/speed_cpu_float64

Settings: one image per call (the official schedule's shape) vs all images in one batch; fewer
refinement steps; bf16 autocast; channels-last. For each: seconds per image (median of --repeats),
network passes per sample, and the largest and mean absolute difference of its samples from the plain
batched run (same seeds), so a speed-up that changes results shows up. Float32 rounding differences (a
different batch shape or memory layout) grow over the 50 fit iterations and 100 stochastic refinement
steps to a max |Δ| of about 0.4 on a [−1, 1] scale (mean 0.02–0.04); in float64 the same per-image vs
batched comparison differs by 2e-11 and channels-last by 3e-10 (`--dtype float64`), so an image's result
does not depend on the batch beyond rounding. Writes speed.md / speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import vipaint
from vipaint.data import InverseProblemDataset
from vipaint.masks import FreeFormMask
from vipaint.operators import Inpainting
from vipaint.priors import DiffusersPrior
from vipaint.seeding import ImageRNG


def _problem(prior: DiffusersPrior, data: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    c, h, _ = prior.image_shape
    ds = InverseProblemDataset(source=data, masks=[FreeFormMask()], num_images=n, channels=c, image_size=h)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items]), list(range(n))


def _run(prior, x, mask, idx, *, per_image: bool, samples: int, **opts):
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, idx, "observation"))
    t0 = time.perf_counter()
    if per_image:
        outs, nfe = [], 0
        for b in range(len(idx)):
            r = vipaint.solve_full("vipaint", prior, Inpainting(mask[b:b + 1], sigma_y=0.05), y[b:b + 1],
                                   n_samples=samples, seed=0, indices=[idx[b]], **opts)
            outs.append(r.samples)
            nfe = r.nfe
        out = torch.cat(outs, dim=1)
    else:
        r = vipaint.solve_full("vipaint", prior, op, y, n_samples=samples, seed=0, indices=idx, **opts)
        out, nfe = r.samples, r.nfe
    return out, (time.perf_counter() - t0) / len(idx), nfe


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", default="data/priors/fashion_mnist")
    p.add_argument("--data", default="data/fashion_mnist/test")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/speed_cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="float64: only the batching and layout settings, to show that their differences in "
                        "float32 are rounding")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    base = dict(iterations=args.iterations, refine_steps=args.refine_steps)
    plain = DiffusersPrior(args.prior).to(dtype)
    x, mask, idx = _problem(plain, args.data, args.images)
    x, mask = x.to(dtype), mask.to(dtype)
    half = {**base, "refine_steps": args.refine_steps // 2}
    settings = [("one image per call", plain, True, base), ("batch of all images (plain)", plain, False, base)]
    if dtype == torch.float32:   # float64 keeps only the batching and layout settings
        settings += [(f"batch, refine_steps {args.refine_steps // 2}", plain, False, half),
                     ("batch, bf16 autocast", DiffusersPrior(args.prior, autocast="bf16", force_autocast=True),
                      False, base)]
    settings.append(("batch, channels-last", DiffusersPrior(args.prior, channels_last=True).to(dtype), False, base))
    for _, prior, per_image, _ in settings:     # warm-up: first calls pay one-off allocation costs
        _run(prior, x[:1], mask[:1], idx[:1], per_image=per_image, samples=args.samples, iterations=1,
             refine_steps=1)
    rows, ref = [], None
    for name, prior, per_image, opts in settings:
        times = []
        for _ in range(args.repeats):
            out, sec, nfe = _run(prior, x, mask, idx, per_image=per_image, samples=args.samples, **opts)
            times.append(sec)
        if name.endswith("(plain)"):
            ref = out
        rows.append({"setting": name, "s_per_image": statistics.median(times), "nfe": nfe, "out": out})
        print(f"{name:32s} {statistics.median(times):8.2f} s/image  nfe {nfe}", flush=True)
    plain_s = next(r["s_per_image"] for r in rows if r["setting"].endswith("(plain)"))
    for r in rows:
        r["speedup_vs_plain"] = plain_s / r["s_per_image"]
        diff = (r.pop("out") - ref).abs()
        r["max_abs_diff_vs_plain"], r["mean_abs_diff_vs_plain"] = float(diff.max()), float(diff.mean())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"prior": args.prior, "images": args.images, "samples": args.samples, "iterations": args.iterations,
            "refine_steps": args.refine_steps, "dtype": args.dtype, "threads": torch.get_num_threads(), "device": "cpu",
            "torch": torch.__version__}
    (out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| setting | s / image | speed-up vs plain | NFE per sample | max |Δ| vs plain | mean |Δ| vs plain |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['s_per_image']:.2f} | {r['speedup_vs_plain']:.2f}× | {r['nfe']} | "
              f"{r['max_abs_diff_vs_plain']:.2g} | {r['mean_abs_diff_vs_plain']:.2g} |" for r in rows]
    lines.append(f"\n{meta}")
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
