"""Does a sample of the fitted q_λ carry the prior's noise level at each keypoint?

    python benchmarks/q_noise_level.py --prior data/priors/mnist --data data/mnist/test --images 8 \
        [--std-scale 0.7 0.4472] [--out benchmarks/results/q_noise_level_mnist]

For each `std_scale` (initial std of q's transitions as a multiple of the DDPM posterior std between
keypoints; docs/algorithm.md §2, official 0.7) it fits q on `--images` observations (half-plane masks, σ_y =
0.05, the official 50 iterations) and draws 4 chains. At each keypoint h it reports the mean of ε_θ(z_h, h)²
and the std of z_h. A z_h with the prior's marginal noise level gives mean ε̂² ≈ 1, as the forward-noised
ground-truth images z_h = α_h x + σ_h ε do (first rows); a larger value means the chain carries extra noise,
which the deterministic refinement steps (no noise added, DDIM η = 0.2 coefficients) never remove
explicitly. `rec` is the fit's reconstruction term (100·L1 mean, docs/algorithm.md §3c) of the one-step
estimate x̂0(z_{T_s}) of those chains: how well q's samples explain the observation before refinement.
Writes q_noise_level.md / .json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vipaint.bench.report import write_table
from vipaint.data import InverseProblemDataset
from vipaint.diffusion import tweedie_x0
from vipaint.masks import HalfPlaneMask
from vipaint.methods.vipaint import VIPaintConfig, fit_posterior
from vipaint.operators import Inpainting
from vipaint.posterior import sample_chain
from vipaint.priors import DiffusersPrior
from vipaint.seeding import ImageRNG


def _eps(prior: DiffusersPrior, z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z [S, B, *latent] flattened to [S·B, *latent], and ε_θ(z, t) on it."""
    flat = z.reshape((-1,) + tuple(z.shape[2:]))
    with torch.no_grad():
        return flat, prior.eps(flat, torch.full((flat.shape[0],), t, dtype=torch.long), None, 1.0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", default="data/priors/mnist")
    p.add_argument("--data", default="data/mnist/test")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--std-scale", type=float, nargs="+", default=[0.7, 0.2 ** 0.5])
    p.add_argument("--iterations", type=int, default=50, help="fit iterations (official 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/q_noise_level_mnist")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    prior = DiffusersPrior(args.prior).eval()
    for q in prior.parameters():
        q.requires_grad_(False)
    c, h, _ = prior.image_shape
    ds = InverseProblemDataset(source=args.data, masks=[HalfPlaneMask()], num_images=args.images, channels=c,
                               image_size=h, seed=args.seed)
    items = [ds[i] for i in range(args.images)]
    idx = list(range(args.images))
    x = torch.stack([it["image"] for it in items])
    op = Inpainting(torch.stack([it["mask"] for it in items]), sigma_y=0.05)
    y = op.observe(x, ImageRNG(args.seed, idx, "observation"))
    keypoints = VIPaintConfig(preset="official").keypoints
    rows = []
    g = torch.Generator().manual_seed(args.seed)
    for t in keypoints:
        ab = prior.alpha_bar(t)
        z = ab.sqrt() * x + (1 - ab).sqrt() * torch.randn((4,) + tuple(x.shape), generator=g)
        rows.append({"chain": "forward-noised truth", "keypoint": t,
                     "mean_eps_sq": _eps(prior, z, t)[1].pow(2).mean().item(), "z_std": z.std().item()})
    for s in args.std_scale:
        cfg = VIPaintConfig(preset="official", zeta_over_samples=False, std_scale=s, iterations=args.iterations)
        rng = ImageRNG(args.seed, idx, "method:vipaint")
        post, trace, failed, _ = fit_posterior(prior, op, y, rng, cfg)
        with torch.no_grad():
            chain = sample_chain(post, prior, 4, rng, eta=cfg.eta_fit)
            eps = [_eps(prior, z, t) for t, z in zip(cfg.keypoints, chain.z, strict=True)]
            flat, e = eps[-1]                                        # T_s: also the one-step estimate
            x_hat = prior.decode(tweedie_x0(flat, e, prior.alpha_bar(cfg.keypoints[-1])))
            rec = cfg.make_likelihood()(x_hat.reshape((4,) + tuple(x.shape)), y, op).mean().item()
        for t, z, (_, e) in zip(cfg.keypoints, chain.z, eps, strict=True):
            rows.append({"chain": f"q, std_scale {s:.4g}", "keypoint": t, "mean_eps_sq": e.pow(2).mean().item(),
                         "z_std": z.std().item(), "rec": rec, "objective_last": trace[-1].mean().item(),
                         "failed": int(failed.sum())})
        print(rows[-1], flush=True)
    cols = ["chain", "keypoint", "mean_eps_sq", "z_std", "rec"]
    print(write_table(Path(args.out), "q_noise_level", rows, cols, vars(args)))


if __name__ == "__main__":
    main()
