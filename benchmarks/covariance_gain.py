"""Why the scalar r_t² fails at 32×32 (docs/algorithm.md §4, eq. 4.3), in closed form on the Gaussian
component of the vipaint_principled problems (squared-exponential covariance, variance 0.1, length scale
H/4, box hole of H/2 × H/2, σ_y = 0.05):

    python benchmarks/covariance_gain.py [--out benchmarks/results/vipaint_principled]

For Σ_t = Cov[x0 | z_t] = (Σ⁻¹ + ᾱ_t/σ_t² I)⁻¹ and A the mask, the map from the residual to the correction
of A x̂0 in the guided step (4.2) is A Σ_t Aᵀ (σ_y² I + A Σ_t Aᵀ)⁻¹ for the exact likelihood (eigenvalues ≤ 1)
and A Σ_t Aᵀ/(σ_y² + r̄²) for the scalar one, r̄² the mean diagonal of Σ_t (3.9). The table lists λ_max of
A Σ_t Aᵀ, its ratio to r̄², both maps' largest gains, and the rms correction in the hole for residuals
drawn from their predictive N(0, σ_y² I + A Σ_t Aᵀ). Writes covariance_gain.md / .json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vipaint.bench.report import write_table
from vipaint.priors import smooth_covariance
from vipaint.priors.schedules import make_alphas_cumprod


def rows_for(h: int, times: list[int], sigma_y: float = 0.05) -> list[dict]:
    abar = make_alphas_cumprod(1000).double()
    cov = smooth_covariance((1, h, h), length_scale=h / 4, variance=0.1)
    m = torch.ones(h, h)
    m[h // 4:3 * h // 4, h // 4:3 * h // 4] = 0
    obs = m.flatten().bool()
    eye = torch.eye(h * h, dtype=torch.float64)
    rows = []
    for t in times:
        ab = abar[t]
        sig = torch.linalg.inv(torch.linalg.inv(cov) + ab / (1 - ab) * eye)
        r2 = sig.diagonal().mean().item()
        asa = sig[obs][:, obs]
        ev = torch.linalg.eigvalsh(asa)
        c = sigma_y ** 2 * torch.eye(int(obs.sum()), dtype=torch.float64) + asa
        g = torch.Generator().manual_seed(0)
        r = torch.linalg.cholesky(c) @ torch.randn(int(obs.sum()), 200, generator=g, dtype=torch.float64)
        hole = sig[~obs][:, obs]
        rows.append({"size": f"{h}x{h}", "t": t, "r2_mean_diag": r2, "lambda_max": ev.max().item(),
                     "lambda_over_r2": ev.max().item() / r2,
                     "gain_exact": (ev / (sigma_y ** 2 + ev)).max().item(),
                     "gain_scalar": (ev / (sigma_y ** 2 + r2)).max().item(),
                     "hole_rms_exact": (hole @ torch.linalg.solve(c, r)).pow(2).mean().sqrt().item(),
                     "hole_rms_scalar": (hole @ r / (sigma_y ** 2 + r2)).pow(2).mean().sqrt().item()})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/vipaint_principled")
    args = p.parse_args(argv)
    rows = [r for h in (8, 32) for r in rows_for(h, [400, 200, 100, 30, 5])]
    cols = ["size", "t", "r2_mean_diag", "lambda_max", "lambda_over_r2", "gain_exact", "gain_scalar",
            "hole_rms_exact", "hole_rms_scalar"]
    print(write_table(Path(args.out), "covariance_gain", rows, cols, vars(args)))


if __name__ == "__main__":
    main()
