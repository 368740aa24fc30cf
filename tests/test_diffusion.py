"""The pure maths of `vipaint/diffusion.py` (docs/algorithm.md §1–§4) and the likelihood energies of
`vipaint/likelihood.py` (docs/algorithm.md §1), against closed forms computed independently here."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Laplace, Normal, kl_divergence

from vipaint.diffusion import (
    bcast,
    bridge_posterior,
    ddim_mean,
    ddim_sigma,
    ddpm_posterior,
    edm_time_grid,
    eps_from_x0,
    gaussian_kl,
    gaussian_nll,
    tweedie_x0,
)
from vipaint.likelihood import Likelihood
from vipaint.operators import Downsample, Identity, Inpainting
from vipaint.priors.schedules import make_alphas_cumprod

F64 = torch.float64
AB = make_alphas_cumprod(1000)                    # DDPM linear schedule, float64
PAIRS = [(1, 0), (10, 9), (400, 399), (550, 400), (999, 550), (999, 0), (700, 100)]   # (t, s), s < t




def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- Tweedie / ε conversion -------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 1, 400, 999])
def test_tweedie_and_eps_from_x0_are_inverse(t):
    ab = AB[t]
    x0 = torch.randn(3, 2, 4, 4, generator=_g(0), dtype=F64)
    eps = torch.randn(3, 2, 4, 4, generator=_g(1), dtype=F64)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * eps     # the forward process z_t = α x0 + σ ε
    torch.testing.assert_close(tweedie_x0(z, eps, ab), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_from_x0(z, x0, ab), eps, rtol=1e-9, atol=1e-7)
    # inverse for an arbitrary (not self-consistent) pair as well
    other = torch.randn(3, 2, 4, 4, generator=_g(2), dtype=F64)
    torch.testing.assert_close(eps_from_x0(z, tweedie_x0(z, other, ab), ab), other, rtol=1e-9, atol=1e-7)


def test_per_sample_abar_broadcast():
    ab = AB[torch.tensor([5, 500, 990])]
    z = torch.randn(3, 1, 2, 2, dtype=F64)
    e = torch.randn(3, 1, 2, 2, dtype=F64)
    x0 = tweedie_x0(z, e, bcast(ab, z))
    for i in range(3):
        torch.testing.assert_close(x0[i], (z[i] - (1 - ab[i]).sqrt() * e[i]) / ab[i].sqrt())
    assert bcast(ab, z).shape == (3, 1, 1, 1)


# -- DDPM / DDIM kernels ----------------------------------------------------------------------------

def _bayes_posterior(x0, z_t, ab_t, ab_s):
    """q(z_s | z_t, x0) ∝ N(z_s; α_s x0, 1−ᾱ_s) · N(z_t; √(ᾱ_t/ᾱ_s) z_s, 1−ᾱ_t/ᾱ_s), as a product of
    Gaussians in z_s (precisions add, precision-weighted means add)."""
    a = (ab_t / ab_s).sqrt()
    v1, m1 = 1 - ab_s, ab_s.sqrt() * x0
    v2 = 1 - ab_t / ab_s                          # the likelihood in z_s: N(z_t/a; z_s, v2/a²)
    prec = 1 / v1 + a ** 2 / v2
    mean = (m1 / v1 + a * z_t / v2) / prec
    return mean, 1 / prec


@pytest.mark.parametrize("t, s", PAIRS)
def test_ddpm_posterior_is_bayes(t, s):
    x0 = torch.randn(5, dtype=F64, generator=_g(3))
    z_t = torch.randn(5, dtype=F64, generator=_g(4))
    mean, var = ddpm_posterior(x0, z_t, AB[t], AB[s])
    m_ref, v_ref = _bayes_posterior(x0, z_t, AB[t], AB[s])
    torch.testing.assert_close(mean, m_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var.expand_as(v_ref), v_ref, rtol=1e-9, atol=1e-14)


def test_ddpm_posterior_monte_carlo():
    """Draw (z_s, z_t) from the two forward kernels and check that z_s − mean(x0, z_t) has mean 0, the
    predicted variance and no correlation with z_t."""
    t, s, n = 600, 300, 200_000
    x0 = torch.tensor(0.7, dtype=F64)
    g = _g(5)
    z_s = AB[s].sqrt() * x0 + (1 - AB[s]).sqrt() * torch.randn(n, generator=g, dtype=F64)
    a_ts = AB[t] / AB[s]
    z_t = a_ts.sqrt() * z_s + (1 - a_ts).sqrt() * torch.randn(n, generator=g, dtype=F64)
    mean, var = ddpm_posterior(x0, z_t, AB[t], AB[s])
    r = z_s - mean
    assert abs(r.mean().item()) < 5 * math.sqrt(var / n)
    assert abs(r.var().item() / var.item() - 1) < 0.02
    assert abs(torch.corrcoef(torch.stack([r, z_t]))[0, 1].item()) < 0.01


@pytest.mark.parametrize("t, s", PAIRS)
def test_ddim_sigma_eta1_is_ddpm_std(t, s):
    _, var = ddpm_posterior(torch.zeros(()), torch.zeros(()), AB[t], AB[s])
    torch.testing.assert_close(ddim_sigma(AB[t], AB[s], 1.0), var.sqrt(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ddim_sigma(AB[t], AB[s], 0.3), 0.3 * var.sqrt(), rtol=1e-12, atol=1e-15)
    assert ddim_sigma(AB[t], AB[s], 0.0) == 0


def test_ddim_mean():
    ab_t, ab_s = AB[500], AB[300]
    x0 = torch.randn(4, dtype=F64, generator=_g(6))
    eps = torch.randn(4, dtype=F64, generator=_g(7))
    sig = ddim_sigma(ab_t, ab_s, 0.5)
    want = ab_s.sqrt() * x0 + (1 - ab_s - sig ** 2).sqrt() * eps
    torch.testing.assert_close(ddim_mean(x0, eps, ab_s, sig), want)
    # η = 0, s = t: a deterministic step of length 0 returns z_t = α x0 + σ ε
    torch.testing.assert_close(ddim_mean(x0, eps, ab_t, torch.zeros(())), ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps)
    # η = 1: the DDIM mean with ε̂ = ε(z_t, x0) equals the DDPM posterior mean (Song et al. 2021)
    z_t = ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps
    m_ddpm, _ = ddpm_posterior(x0, z_t, ab_t, ab_s)
    torch.testing.assert_close(ddim_mean(x0, eps, ab_s, ddim_sigma(ab_t, ab_s, 1.0)), m_ddpm, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t, s", PAIRS)
def test_bridge_with_clean_end_is_ddpm(t, s):
    z_e = torch.randn(6, dtype=F64, generator=_g(8))
    z_t = torch.randn(6, dtype=F64, generator=_g(9))
    one = torch.tensor(1.0, dtype=F64)
    mb, vb = bridge_posterior(z_e, z_t, one, AB[s], AB[t])
    md, vd = ddpm_posterior(z_e, z_t, AB[t], AB[s])
    torch.testing.assert_close(mb, md, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(vb, vd, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("e, s, t", [(550, 600, 999), (550, 551, 552), (100, 300, 301), (400, 400, 550)])
def test_bridge_is_bayes_on_relative_kernels(e, s, t):
    """q(z_s | z_t, z_e) from q(z_s|z_e) = N(√(ᾱ_s/ᾱ_e) z_e, 1−ᾱ_s/ᾱ_e) and q(z_t|z_s)."""
    z_e = torch.randn(6, dtype=F64, generator=_g(10))
    z_t = torch.randn(6, dtype=F64, generator=_g(11))
    mb, vb = bridge_posterior(z_e, z_t, AB[e], AB[s], AB[t])
    if s == e:   # the bridge collapses onto z_e
        torch.testing.assert_close(mb, z_e, rtol=1e-9, atol=1e-12)
        assert float(vb) == pytest.approx(0.0, abs=1e-15)
        return
    m_ref, v_ref = _bayes_posterior(z_e, z_t, AB[t] / AB[e], AB[s] / AB[e])
    torch.testing.assert_close(mb, m_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vb.expand_as(v_ref), v_ref, rtol=1e-9, atol=1e-14)


# -- KL / NLL -------------------------------------------------------------------------------------

def test_gaussian_kl():
    m = torch.randn(10, dtype=F64, generator=_g(12))
    v = torch.rand(10, dtype=F64, generator=_g(13)) + 0.1
    torch.testing.assert_close(gaussian_kl(m, v, m, v), torch.zeros(10, dtype=F64), rtol=0, atol=1e-15)
    m2 = torch.randn(10, dtype=F64, generator=_g(14))
    v2 = torch.rand(10, dtype=F64, generator=_g(15)) + 0.05
    kl = gaussian_kl(m, v, m2, v2)
    ref = kl_divergence(Normal(m, v.sqrt()), Normal(m2, v2.sqrt()))
    torch.testing.assert_close(kl, ref, rtol=1e-10, atol=1e-12)
    assert (kl > 0).all()
    # the orientation matters: KL(q‖p) ≠ KL(p‖q) in general
    assert not torch.allclose(kl, gaussian_kl(m2, v2, m, v))


def test_gaussian_nll():
    x = torch.randn(7, dtype=F64, generator=_g(16))
    m = torch.randn(7, dtype=F64, generator=_g(17))
    v = torch.rand(7, dtype=F64, generator=_g(18)) + 0.01
    torch.testing.assert_close(gaussian_nll(x, m, v), -Normal(m, v.sqrt()).log_prob(x), rtol=1e-10, atol=1e-12)


# -- the prior-loss time grid -----------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [("linear", 1e-4, 0.02), ("scaled_linear", 0.0015, 0.0195)])
@pytest.mark.parametrize("start", [0, 100, 550, 990])
@pytest.mark.parametrize("n", [50, 300, 1000])
def test_edm_time_grid(schedule, start, n):
    ab = make_alphas_cumprod(1000, *schedule)
    g = edm_time_grid(ab, start, n=n)
    assert g.dtype == torch.long
    assert int(g[0]) == start and int(g[-1]) == 999
    assert (g[1:] > start).all()
    assert (g[1:] > g[:-1]).all()                  # strictly ascending, no duplicates
    assert len(g) <= n + 2


def test_edm_time_grid_start_at_last_time():
    """T_e = T-1 leaves no interval for the prior bound: a clear error, not a NaN ELBO."""
    with pytest.raises(ValueError, match="T_e < T-1"):
        edm_time_grid(make_alphas_cumprod(1000), 999)


def test_edm_time_grid_follows_rho_schedule():
    """Interior times are the discrete VP times nearest to the EDM ρ = 7 noise levels."""
    ab = make_alphas_cumprod(1000, "scaled_linear", 0.0015, 0.0195)
    g = edm_time_grid(ab, 550, n=300)
    vp_sigma = ((1 - ab) / ab).sqrt()
    ramp = torch.linspace(0, 1, 300, dtype=F64)
    edm = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    nearest = {int((vp_sigma - s).abs().argmin()) for s in edm}
    assert set(g[1:-1].tolist()) == {t for t in nearest if 550 < t < 999}
    # docs/algorithm.md §3a: the official grid has ≈ 139 points above T_e = 550
    assert 125 <= len(g) - 1 <= 155


# -- likelihood energies --------------------------------------------------------------------------

def _hand_case():
    """A(x̂) − y = [1, −2, 0, 3] on one 1×2×2 image."""
    op = Identity(sigma_y=0.5)
    y = torch.zeros(1, 1, 2, 2, dtype=F64)
    x = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=F64).reshape(1, 1, 2, 2)
    return op, x, y


@pytest.mark.parametrize("kind, scale, total", [
    ("gaussian", None, 14 / (2 * 0.25)),           # Σr² / (2σ_y²), σ_y = 0.5
    ("gaussian", 2.0, 14 / 8),
    ("laplace", 0.01, 6 / 0.01),                   # Σ|r| / b
    ("laplace", None, 6 / 0.5),
    ("l2norm", None, math.sqrt(14)),               # ‖r‖₂, scale 1
    ("l2norm", 0.5, math.sqrt(14) / 0.5),
])
def test_likelihood_hand_computed(kind, scale, total):
    op, x, y = _hand_case()
    e_sum = Likelihood(kind, scale, "sum")(x, y, op)
    e_mean = Likelihood(kind, scale, "mean")(x, y, op)
    assert e_sum.shape == (1,) and e_mean.shape == (1,)
    assert e_sum.item() == pytest.approx(total, rel=1e-12)
    assert e_mean.item() == pytest.approx(total / 4, rel=1e-12)


def test_likelihood_samples_and_reduction():
    op = Downsample(factor=2, mode="area", sigma_y=0.1)
    y = torch.randn(3, 2, 4, 4, dtype=F64, generator=_g(19))
    x = torch.randn(5, 3, 2, 8, 8, dtype=F64, generator=_g(20))   # [S, B, C, H, W]
    for kind in ("gaussian", "laplace", "l2norm"):
        e_sum = Likelihood(kind, None, "sum")(x, y, op)
        e_mean = Likelihood(kind, None, "mean")(x, y, op)
        assert e_sum.shape == (5, 3)
        torch.testing.assert_close(e_mean, e_sum / (2 * 4 * 4))
        for s in range(5):                         # per sample equals the unbatched energy
            torch.testing.assert_close(e_sum[s], Likelihood(kind, None, "sum")(x[s], y, op))
        r = (op(x[1, 2]) - y[2]).flatten()
        want = {"gaussian": (r ** 2).sum() / (2 * 0.01), "laplace": r.abs().sum() / 0.1,
                "l2norm": r.norm()}[kind]
        assert e_sum[1, 2].item() == pytest.approx(want.item(), rel=1e-10)


def test_likelihood_ignores_holes():
    mask = torch.ones(1, 1, 2, 2)
    mask[..., 0, 1] = 0
    op = Inpainting(mask, sigma_y=0.5)
    y = op(torch.tensor([0.0, 9.0, 1.0, 0.0]).reshape(1, 1, 2, 2))
    x = torch.tensor([1.0, 100.0, 1.0, 2.0]).reshape(1, 1, 2, 2)   # the hole value is irrelevant
    assert Likelihood("laplace", 1.0, "sum")(x, y, op).item() == pytest.approx(3.0)
    assert Likelihood("gaussian", None, "sum")(x, y, op).item() == pytest.approx(5 / (2 * 0.25))


@pytest.mark.parametrize("kind, dist", [("gaussian", lambda m, s: Normal(m, s)),
                                        ("laplace", lambda m, s: Laplace(m, s))])
def test_likelihood_constant_completes_log_density(kind, dist):
    """energy(reduction='sum') + constant() = −log p(y | x̂) exactly."""
    op = Identity(sigma_y=0.3)
    x = torch.randn(2, 1, 3, 3, dtype=F64, generator=_g(21))
    y = torch.randn(2, 1, 3, 3, dtype=F64, generator=_g(22))
    lik = Likelihood(kind, None, "sum")
    nll = -dist(op(x), torch.tensor(0.3, dtype=F64)).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(lik(x, y, op) + lik.constant(y, op), nll, rtol=1e-10, atol=1e-10)
    assert lik.constant(y, op) == pytest.approx(
        0.5 * 9 * math.log(2 * math.pi * 0.09) if kind == "gaussian" else 9 * math.log(0.6))
    assert math.isnan(Likelihood("l2norm", None, "sum").constant(y, op))


def test_likelihood_errors():
    with pytest.raises(ValueError, match="kind"):
        Likelihood("cauchy")
    with pytest.raises(ValueError, match="reduction"):
        Likelihood("laplace", 0.01, "max")
    op, x, y = _hand_case()
    op0 = Identity(sigma_y=0.0)
    with pytest.raises(ValueError, match="sigma_y > 0"):
        Likelihood("gaussian", None)(x, y, op0)
    # l2norm without a scale needs no σ_y; an explicit scale works at σ_y = 0
    assert Likelihood("l2norm", None, "sum")(x, y, op0).item() == pytest.approx(math.sqrt(14))
    assert Likelihood("gaussian", 1.0, "sum")(x, y, op0).item() == pytest.approx(7.0)
