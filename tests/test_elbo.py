"""The ELBO's prior bound: the exact constant sum equals the interval-by-interval KL / NLL terms."""

import torch

from vipaint.diffusion import bridge_posterior, ddpm_posterior, edm_time_grid, gaussian_kl, gaussian_nll, tweedie_x0
from vipaint.elbo import _prior_terms, interval_constants
from vipaint.priors.schedules import make_alphas_cumprod


def test_prior_bound_matches_direct_terms():
    abar = make_alphas_cumprod(1000).float()
    grid = edm_time_grid(abar.double(), 550, n=200)
    n = grid.numel() - 1
    g = torch.Generator().manual_seed(0)
    z_e = torch.randn(1, 1, 2, 4, 4, generator=g).expand(n, 1, 2, 4, 4).clone()
    z_t = torch.randn(n, 1, 2, 4, 4, generator=g)
    eps = torch.randn(n, 1, 2, 4, 4, generator=g)
    j = torch.arange(n)[:, None]
    ours = _prior_terms(z_e, z_t, eps, j, grid, abar).mean(0)           # mean over j = Σ_j term_j / N · N

    direct = torch.zeros(())
    ab_e = abar[grid[0]]
    for k in range(n):
        lo, hi = abar[grid[k]], abar[grid[k + 1]]
        m_p, v_p = ddpm_posterior(tweedie_x0(z_t[k], eps[k], hi), z_t[k], hi, lo)
        if k == 0:
            direct = direct + gaussian_nll(z_e[k], m_p, v_p).sum()
        else:
            m_q, v_q = bridge_posterior(z_e[k], z_t[k], ab_e, lo, hi)
            direct = direct + gaussian_kl(m_q, v_q.expand_as(m_q), m_p, v_p.expand_as(m_p)).sum()
    ab_T = abar[grid[-1]] / ab_e
    direct = direct + gaussian_kl(ab_T.sqrt() * z_e[0], (1 - ab_T).expand_as(z_e[0]), torch.zeros_like(z_e[0]),
                                  torch.ones_like(z_e[0])).sum()
    torch.testing.assert_close(ours[0], direct, rtol=2e-4, atol=1e-2)


def test_interval_constants_finite_and_first_is_nll_constant():
    abar = make_alphas_cumprod(1000).float()
    grid = edm_time_grid(abar.double(), 550, n=300)
    c = interval_constants(grid, abar)
    assert c.shape == (grid.numel() - 1,) and torch.isfinite(c).all()
    assert (c[1:] >= 0).all()                       # KL of the variances alone is non-negative
