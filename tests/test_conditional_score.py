"""The full-covariance Gaussian likelihood of z_t (docs/algorithm.md §4, eq. 4.3): CG against the closed-form
conditional score of a Gaussian prior, its one-iteration form, the decoder's linearisation, the refinement
option and its pass count, and resolution invariance on a smooth Gaussian prior with a box hole."""

import pytest
import torch
from torch import Tensor

import vipaint
from vipaint.conditional_score import conditional_score_cg, linearised_forward
from vipaint.methods.vipaint import VIPaintConfig, refine
from vipaint.operators import Inpainting
from vipaint.priors import GaussianPrior, SyntheticMixturePrior, smooth_covariance
from vipaint.seeding import ImageRNG


def _box(h: int, b: int = 1) -> Tensor:
    m = torch.ones(b, 1, h, h)
    m[:, :, h // 4:3 * h // 4, h // 4:3 * h // 4] = 0
    return m


def _smooth_gaussian(h: int) -> GaussianPrior:
    cov = smooth_covariance((1, h, h), length_scale=h / 4, variance=0.1)
    mean = 0.2 * torch.ones(h * h, dtype=torch.float64)
    return GaussianPrior(mean, cov, image_shape=(1, h, h))


def _setup(h: int = 6, t: int = 200, s: int = 3):
    prior = _smooth_gaussian(h)
    op = Inpainting(_box(h), sigma_y=0.05)
    x = prior.sample(1, torch.Generator().manual_seed(0)).double()
    y = op.observe(x, ImageRNG(0, range(1), "observation")).double()
    ab = prior.alpha_bar(t).double()
    z = torch.randn(s, 1, 1, h, h, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = z.requires_grad_(True)
    x0 = (z - (1 - ab).sqrt() * prior.eps(z, t)) / ab.sqrt()
    return prior, op, y, ab, z, x0


def _closed_form(prior, op, y, ab, x0) -> tuple[Tensor, Tensor, Tensor]:
    """∇_z log N(y; A x̂0, σ_y² I + A Σ_t Aᵀ) with Σ_t = (Σ⁻¹ + ᾱ/σ² I)⁻¹ and ∂x̂0/∂z = (α/σ²) Σ_t."""
    d = x0[0, 0].numel()
    sig = torch.linalg.inv(torch.linalg.inv(prior.covs[0]) + ab / (1 - ab) * torch.eye(d, dtype=torch.float64))
    a = op.mask.flatten().double().diag()
    obs = op.mask.flatten().bool()
    c = (op.sigma_y ** 2 * torch.eye(d, dtype=torch.float64) + a @ sig @ a)[obs][:, obs]
    r = (y - op(x0.detach())).flatten(2)[..., obs]                                    # [S, 1, P]
    v = torch.zeros_like((y - op(x0.detach())).flatten(2))
    v[..., obs] = torch.linalg.solve(c, r[..., None])[..., 0]
    return (ab.sqrt() / (1 - ab) * v @ sig).reshape(x0.shape), sig, a       # Jᵀ Aᵀ v, J = Jᵀ


def test_cg_matches_the_closed_form_gaussian_conditional_score():
    prior, op, y, ab, z, x0 = _setup()
    want, _, _ = _closed_form(prior, op, y, ab, x0)
    meas = op(x0)
    n_obs = int(op.mask.sum())
    got = conditional_score_cg(z, meas, (y - meas).detach(), ab, op.sigma_y ** 2, op, n_obs)
    assert ((got - want).norm() / want.norm()).item() < 1e-5          # measured 8·10⁻⁷ (float64, 27 pixels)
    err = [(conditional_score_cg(z, meas, (y - meas).detach(), ab, op.sigma_y ** 2, op, k) - want).norm().item()
           for k in (1, 4, 16)]
    assert err[0] > err[1] > err[2] and err[2] < 0.01 * err[0]    # truncated CG approaches it
    with pytest.raises(ValueError, match="n_iter"):
        conditional_score_cg(z, meas, (y - meas).detach(), ab, 0.0025, op, 0)


def test_one_cg_iteration_is_the_variance_along_the_residual():
    """k = 1: v = r/(σ_y² + r̃²), r̃² = rᵀ A Σ_t Aᵀ r/‖r‖² (the posterior variance along the residual)."""
    prior, op, y, ab, z, x0 = _setup()
    _, sig, a = _closed_form(prior, op, y, ab, x0)
    meas = op(x0)
    r = (y - meas).detach()
    rf = r.flatten(2)
    rt2 = ((rf @ (a @ sig @ a)) * rf).sum(-1) / (rf * rf).sum(-1)                        # [S, 1]
    v = rf / (op.sigma_y ** 2 + rt2)[..., None]
    want = (ab.sqrt() / (1 - ab) * v @ sig).reshape(x0.shape)
    got = conditional_score_cg(z, meas, r, ab, op.sigma_y ** 2, op, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_linearised_forward_is_the_jacobian_vector_product():
    x0 = torch.randn(2, 1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = _box(4).double()
    s = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fwd = linearised_forward(lambda x: mask * torch.tanh(x), x0)
    torch.testing.assert_close(fwd(s), mask * (1 - torch.tanh(x0) ** 2) * s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fwd(2 * s), 2 * fwd(s))                        # reusable, linear


def test_covariance_option_runs_and_counts_passes():
    prior = SyntheticMixturePrior(image_shape=(1, 8, 8), n_components=2)
    op = Inpainting(_box(8, 2), sigma_y=0.05)
    y = op.observe(prior.sample(2, torch.Generator().manual_seed(1)), ImageRNG(0, range(2), "observation"))
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=0, iterations=2, refine_steps=3,
                             likelihood_variance="covariance", cg_iterations=3)
    k = 2
    assert torch.isfinite(res.samples).all() and not res.failed.any()
    assert res.nfe == 2 * (k + 1 + 2) + (k - 1) + 3 + k
    assert res.n_backprop == 2 * (k + 1 + 2) + 3 * 3 + 1


def _hole_std_ratio(h: int, variance: str, steps: int = 20, s: int = 32) -> float:
    """Refinement alone from exact z_{T_s} ~ p(z_{T_s} | y) on a smooth Gaussian prior (length scale h/4)
    with a box hole: the samples' mean std in the hole over the exact posterior's."""
    prior = _smooth_gaussian(h)
    op = Inpainting(_box(h), sigma_y=0.05)
    y = op.observe(prior.sample(1, torch.Generator().manual_seed(0)), ImageRNG(0, range(1), "observation"))
    post = prior.exact_posterior(op, y)
    cfg = VIPaintConfig(refine_steps=steps, likelihood_variance=variance, cg_iterations=4)
    x0 = post.sample(s, [torch.Generator().manual_seed(2)]).float().reshape(s, 1, 1, h, h)
    ab = prior.alpha_bar(cfg.keypoints[-1]).float()
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    x, _ = refine(prior, op, y, z, ImageRNG(0, range(1), "refine"), cfg)
    hole = (1 - op.mask).flatten().bool()
    std = x.double().flatten(2).std(0)[0][hole].mean()
    return (std / post.std()[0][hole].mean()).item()


def test_covariance_refinement_is_resolution_invariant_where_the_scalar_is_not():
    """The same continuum problem at 8×8 and 16×16: the full-covariance refinement keeps the hole's spread
    near the exact posterior's at both sizes; the scalar r_t² (eq. 3.9) overshoots more at 16×16, where the
    smooth directions' variance exceeds the mean diagonal by more."""
    cov8, cov16 = _hole_std_ratio(8, "covariance"), _hole_std_ratio(16, "covariance")
    assert 0.5 < cov8 < 1.3 and 0.5 < cov16 < 1.3                 # measured 0.70 and 0.66
    assert abs(cov16 - cov8) < 0.2
    scalar16 = _hole_std_ratio(16, "jacobian")
    assert not scalar16 < 1.5                                     # measured 2.4·10⁵ (over-dispersed), or non-finite


def test_cg_stops_where_the_learned_covariance_is_not_positive():
    """A Jacobian with pᵀ H Σ_t Hᵀ p < 0 (possible for a learned network, never for a covariance) makes
    pᵀ C_t p smaller than σ_y² pᵀp; CG must stop there instead of dividing by a near-zero curvature (a
    2026-12-03 run on Fashion-MNIST had samples blow up to |x| ≈ 1,600 that way)."""
    ab = torch.tensor(0.5, dtype=torch.float64)
    c_t = float((1 - ab) / ab.sqrt())
    sy2 = 0.0025
    z = torch.randn(1, 1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z.requires_grad_(True)
    k = (sy2 - 1e-9) / c_t                  # pᵀ C_t p = σ_y² pᵀp − c_t k pᵀp = 1e-9 pᵀp > 0, but < σ_y² pᵀp
    meas = -k * z
    r = torch.ones(1, 1, 1, 4, 4, dtype=torch.float64)
    got = conditional_score_cg(z, meas, r, ab, sy2, lambda s: s, 3)
    assert torch.isfinite(got).all() and got.abs().max() == 0     # stopped at the first iteration
    ok = conditional_score_cg(z, k * z, r, ab, sy2, lambda s: s, 3)           # a positive one is solved
    torch.testing.assert_close(ok, k * r / (sy2 + c_t * k))
