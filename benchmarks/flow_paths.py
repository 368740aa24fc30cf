"""Does a rectified-flow path give the same exact-posterior accuracy as the VP path?

    python benchmarks/flow_paths.py [--seeds 4] [--out benchmarks/results/flow_paths]

One analytic 2-component Gaussian mixture over 8×8 images (`SyntheticMixturePrior(n_components=2, seed=0)`),
8 ground truths, 50 % random-pixel masks, σ_y = 0.05, 16 samples per observation: the problem of
tests/test_flow_methods.py. The prior is exposed on two VP grids (DDPM's linear β, Stable Diffusion's
scaled-linear β 0.00085–0.012) and on rectified flow (docs/algorithm.md §11) on the grid of diffusers'
`FlowMatchEulerDiscreteScheduler` with shift 3 (SD3's) and shift 1, each with its own 1000 times. DPS runs 250
steps spaced over the grid's indices; VIPaint runs the principled preset with its keypoints given as the noise
levels of the VP defaults' times 550 and 400 (`keypoint_sigmas`), so it fits at the same noise levels on every
path. Each row is the mean over `--seeds` seeds of the per-seed mean over images; `*_sd` is the standard
deviation over seeds (the Monte Carlo noise of one run), `d_rmse_vs_vp` the mean paired difference to the
DDPM-linear VP row at the same seeds. Writes flow_paths.md / .json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import vipaint
from vipaint.bench.report import write_table
from vipaint.metrics.posterior import mean_error, sliced_wasserstein
from vipaint.operators import Inpainting
from vipaint.priors import SyntheticMixturePrior
from vipaint.seeding import ImageRNG

B, S = 8, 16


def observed_problem(vp: SyntheticMixturePrior, n: int):
    """The study's observations of `n` prior samples (50 % random-pixel masks, σ_y = 0.05, fixed seeds) on the
    VP prior `vp`: (operator, y, exact posterior mean, 256 exact posterior samples). The same problem serves
    tests/test_flow_methods.py."""
    x = vp.sample(n, torch.Generator().manual_seed(1))
    mask = (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, range(n), "observation"))
    exact_mean = vp.exact_posterior(op, y).mean().float()
    return op, y, exact_mean, vipaint.solve("exact", vp, op, y, n_samples=256, seed=99)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/flow_paths")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    kw = dict(image_shape=(1, 8, 8), n_components=2, seed=0)
    priors = {("vp", "DDPM linear"): SyntheticMixturePrior(**kw),
              ("vp", "SD scaled-linear"): SyntheticMixturePrior(**kw, beta_schedule="scaled_linear",
                                                                beta_start=0.00085, beta_end=0.012),
              ("flow", "shift 3 (SD3)"): SyntheticMixturePrior(**kw, noise_path="flow", shift=3.0),
              ("flow", "shift 1"): SyntheticMixturePrior(**kw, noise_path="flow", shift=1.0)}
    vp = priors[("vp", "DDPM linear")]
    op, y, exact_mean, ref = observed_problem(vp, B)
    levels = [round(float(vp.sigma_of(550)), 4), round(float(vp.sigma_of(400)), 4)]
    methods = {"dps": dict(n_steps=250, clip_x0=False), "vipaint": dict(keypoint_sigmas=levels)}
    rows = []
    for method, opts in methods.items():
        base: list[float] = []
        for (path, grid), prior in priors.items():
            rmse, w2, nfe, t0 = [], [], 0, time.time()
            for seed in range(args.seeds):
                res = vipaint.solve_full(method, prior, op, y, n_samples=S, seed=seed, **opts)
                rmse.append(mean_error(res.samples, exact_mean).mean().item())
                dirs = torch.Generator().manual_seed(7)       # the same projections for every row
                w2.append(sliced_wasserstein(res.samples, ref, generator=dirs).mean().item())
                nfe = res.nfe
            base = rmse if grid == "DDPM linear" else base
            diff = statistics.mean(a - b for a, b in zip(rmse, base, strict=True))
            rows.append({"method": method, "path": path, "grid": grid, "nfe": nfe,
                         "exact_mean_rmse": round(statistics.mean(rmse), 5),
                         "rmse_sd": round(statistics.stdev(rmse), 5),
                         "sliced_w2": round(statistics.mean(w2), 5), "w2_sd": round(statistics.stdev(w2), 5),
                         "d_rmse_vs_vp": round(diff, 5)})
            print(rows[-1], f"{time.time() - t0:.1f} s", flush=True)
    cols = ["method", "path", "grid", "nfe", "exact_mean_rmse", "rmse_sd", "sliced_w2", "w2_sd", "d_rmse_vs_vp"]
    print(write_table(Path(args.out), "flow_paths", rows, cols,
                      {"seeds": args.seeds, "images": B, "samples": S, "keypoint_sigmas": levels}))


if __name__ == "__main__":
    main()
