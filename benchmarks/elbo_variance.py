"""How noisy is VIPaint's prior-loss estimator, before and after the variance reduction?

    python benchmarks/elbo_variance.py [--images 2] [--repeats 12] [--out benchmarks/results/vipaint_principled]

For q_λ at its initialisation (the principled preset's, docs/algorithm.md §2) it evaluates the prior loss
L_prior (docs/algorithm.md §3a, nats, S = 5 samples as in the fit) `--repeats` times with independent
randomness, under four estimators of the sum over the N grid intervals:
- uniform: one stratified interval per sample, weight N (the official estimator);
- exact2+uniform: the two intervals next to T_e summed exactly, stratified uniform draws over the rest;
- importance: draws ∝ the closed-form expected term of each interval (`vipaint.elbo.interval_weights`);
- exact2+importance: both (the principled preset's).
It reports, per problem, the std of the estimate over repeats (mean over images), the mean of the
estimate (all four are unbiased for the same quantity, so the means should agree within noise), the
per-element variance of ∂L_prior/∂μ_1 over repeats (mean over elements and images), its SNR |mean|/std
(median over elements and images; near an optimum the mean gradient is small, so the SNR stays low
whatever the estimator), and the network
evaluations per fit iteration. Problems: the analytic 3-component mixture of experiments/gaussian_mixture.yaml
(8×8, random-pixel masks) and the shipped Fashion-MNIST pixel prior (half-plane masks), σ_y = 0.05.
Writes elbo_variance.md / .json under --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vipaint.bench.report import write_table
from vipaint.data import InverseProblemDataset
from vipaint.diffusion import edm_time_grid
from vipaint.elbo import interval_weights, negative_elbo
from vipaint.masks import HalfPlaneMask
from vipaint.methods.base import initial_image
from vipaint.methods.vipaint import VIPaintConfig, prior_data_variance
from vipaint.operators import Inpainting
from vipaint.posterior import HierarchicalPosterior
from vipaint.priors import DiffusersPrior, SyntheticMixturePrior
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

ESTIMATORS = {"uniform": (0, False), "exact2+uniform": (2, False), "importance": (0, True),
              "exact2+importance": (2, True)}


def _problems(images: int, seed: int) -> list[tuple[str, Prior, Inpainting, torch.Tensor]]:
    out = []
    gm = SyntheticMixturePrior(image_shape=(1, 8, 8), n_components=3, length_scale=2.0, variance=0.1,
                               separation=0.6, seed=0)
    x = gm.sample(images, torch.Generator().manual_seed(seed))
    mask = (torch.rand(images, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    out.append(("gaussian mixture 8x8", gm, op, op.observe(x, ImageRNG(seed, range(images), "observation"))))
    fm = DiffusersPrior("data/priors/fashion_mnist").eval()
    for q in fm.parameters():
        q.requires_grad_(False)
    c, h, _ = fm.image_shape
    ds = InverseProblemDataset(source="data/fashion_mnist/test", masks=[HalfPlaneMask()], num_images=images,
                               channels=c, image_size=h, seed=seed)
    items = [ds[i] for i in range(images)]
    x = torch.stack([it["image"] for it in items])
    op = Inpainting(torch.stack([it["mask"] for it in items]), sigma_y=0.05)
    out.append(("fashion_mnist pixel 28x28", fm, op, op.observe(x, ImageRNG(seed, range(images), "observation"))))
    return out


def _measure(prior: Prior, op: Inpainting, y: torch.Tensor, n_exact: int, importance: bool, repeats: int,
             seed: int) -> dict[str, float]:
    cfg = VIPaintConfig()
    b = y.shape[0]
    v = prior_data_variance(prior, cfg)
    grid = edm_time_grid(prior.alphas_cumprod, cfg.keypoints[0], n=cfg.prior_grid_points)
    probs = interval_weights(grid, prior.alphas_cumprod, v)[n_exact:] if importance else None
    lik = cfg.make_likelihood()
    vals, grads = [], []
    t0 = time.time()
    for r in range(repeats):
        rng0 = ImageRNG(seed, range(b), "init")                      # the same q_λ in every repeat
        post = HierarchicalPosterior.initialise(
            prior.encode(initial_image(op, y, prior.image_shape, cfg.init_fill)), prior, cfg.keypoints, rng0,
            s_top=cfg.s_top, gamma_init=cfg.gamma_init, std_scale=cfg.eta_fit)
        terms = negative_elbo(post, prior, op, y, lik, ImageRNG(seed + 1000 + r, range(b), "repeat"),
                              n_mc=cfg.n_mc, grid=grid, eta=cfg.eta_fit, beta_prior=1.0, beta_hier=1.0,
                              reduction="sum", n_exact=n_exact, interval_probs=probs)
        (g,) = torch.autograd.grad(terms.prior.sum(), post.mu)
        vals.append(terms.prior.detach())
        grads.append(g[0].detach().flatten(1))
    vals_t, grads_t = torch.stack(vals), torch.stack(grads)                       # [R, B], [R, B, D]
    snr = grads_t.mean(0).abs() / grads_t.std(0).clamp_min(1e-30)
    n_int = grid.numel() - 1
    k = len(cfg.keypoints)
    return {"n_intervals": n_int, "value_mean": vals_t.mean().item(), "value_std": vals_t.std(0).mean().item(),
            "grad_var": grads_t.var(0).mean().item(), "grad_snr_median": snr.median().item(),
            "nfe_per_iteration": k + 1 + n_exact,
            "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/vipaint_principled")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    rows = []
    for name, prior, op, y in _problems(args.images, args.seed):
        for est, (n_exact, imp) in ESTIMATORS.items():
            row = {"problem": name, "estimator": est, **_measure(prior, op, y, n_exact, imp, args.repeats, args.seed)}
            rows.append(row)
            print(row, flush=True)
    cols = ["problem", "estimator", "n_intervals", "value_mean", "value_std", "grad_var", "grad_snr_median",
            "nfe_per_iteration"]
    print(write_table(Path(args.out), "elbo_variance", rows, cols, vars(args)))


if __name__ == "__main__":
    main()
