"""Stage 2 alone: VIPaint's refinement started from exact z_{T_s} ~ p(z_{T_s} | y) on the unimodal mixture
problem of the vipaint_principled studies (3 components, variance 0.1, length scale H/4, σ_y = 0.05), so
the fit plays no part (docs/algorithm.md §4):

    python benchmarks/refine_from_exact.py --size 32 --mask box --options '{"refine_steps": 50}'

2 observations (ground truths from the prior, seed 3), `--samples` refined samples each; prints per image
the std ratio to the exact posterior in the hole and over all pixels, and the rmse of the sample mean.
`--options` are `VIPaintConfig` fields (JSON); `--grid-power p` replaces the uniform refinement grid by
round(T_s·(1 − i/n)^p) (p = 2: denser near t = 0; a diagnostic, not an option of the method).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from vipaint.methods.vipaint import VIPaintConfig, refine
from vipaint.operators import Inpainting
from vipaint.priors import SyntheticMixturePrior
from vipaint.seeding import ImageRNG


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--mask", choices=["box", "random"], default="box")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--options", default="{}")
    p.add_argument("--grid-power", type=float, default=None)
    args = p.parse_args(argv)
    h, n = args.size, 2
    if args.grid_power is not None:
        module = sys.modules[VIPaintConfig.__module__]

        def grid(t_start: int, steps: int) -> list[int]:
            ts = (t_start * torch.linspace(1, 0, steps + 1) ** args.grid_power).round().long().tolist()
            return sorted(set(ts) - {0}, reverse=True)

        module.time_grid = grid
    prior = SyntheticMixturePrior(image_shape=(1, h, h), n_components=3, length_scale=h / 4, variance=0.1,
                                  separation=0.6, seed=0)
    x = prior.sample(n, torch.Generator().manual_seed(3))
    if args.mask == "box":
        m = torch.ones(n, 1, h, h)
        m[:, :, h // 4:3 * h // 4, h // 4:3 * h // 4] = 0
    else:
        m = (torch.rand(n, 1, h, h, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    op = Inpainting(m, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, range(n), "observation"))
    post = prior.exact_posterior(op, y)
    cfg = VIPaintConfig(**json.loads(args.options))
    s = args.samples
    x0 = post.sample(s, [torch.Generator().manual_seed(10 + b) for b in range(n)]).float().reshape(s, n, 1, h, h)
    ab = prior.alpha_bar(cfg.keypoints[-1]).float()
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    t0 = time.time()
    xs, _ = refine(prior, op, y, z, ImageRNG(0, range(n), "refine"), cfg)
    xs = xs.double().flatten(2)
    std_ex, hole = post.std(), (1 - m).flatten(1).bool()
    out = []
    for b in range(n):
        hr = (xs.std(0)[b][hole[b]].mean() / std_ex[b][hole[b]].mean()).item()
        ar = (xs.std(0)[b].mean() / std_ex[b].mean()).item()
        rm = (xs.mean(0)[b] - post.mean()[b]).pow(2).mean().sqrt().item()
        out.append(f"image {b}: hole std ratio {hr:.3f}, all {ar:.3f}, mean rmse {rm:.4f}")
    print(f"{h}x{h} {args.mask} {args.options} grid_power={args.grid_power}: " + "; ".join(out)
          + f" ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
