"""VIPaint's presets and the principled pieces (docs/algorithm.md §3–§4, §9): the preset switch, r_t²
against the Gaussian closed form, the exact and importance-sampled prior-loss intervals, the score-form
refinement step's resolution invariance, and the initialisation on the prior."""

import math

import pytest
import torch

import vipaint
from vipaint.api import InputError
from vipaint.diffusion import edm_time_grid, x0_variance
from vipaint.elbo import _interval_stoch, interval_weights, negative_elbo
from vipaint.likelihood import Likelihood
from vipaint.methods.base import initial_image
from vipaint.methods.vipaint import VIPaintConfig, prior_data_variance, refine
from vipaint.methods.vipaint_presets import PRESET_NAMES, preset_values
from vipaint.operators import Inpainting
from vipaint.posterior import HierarchicalPosterior, sample_chain
from vipaint.priors import GaussianPrior, SyntheticMixturePrior, smooth_covariance
from vipaint.priors.schedules import make_alphas_cumprod
from vipaint.sampling import GuidedStep, guided_step
from vipaint.seeding import ImageRNG


def _white_prior(h: int, v: float = 0.3) -> GaussianPrior:
    d = h * h
    return GaussianPrior(torch.zeros(d), v * torch.eye(d, dtype=torch.float64), image_shape=(1, h, h))


def _problem(h: int = 8, b: int = 2, sigma_y: float = 0.05, n_components: int = 1):
    prior = SyntheticMixturePrior(image_shape=(1, h, h), n_components=n_components)
    x = prior.sample(b, torch.Generator().manual_seed(1))
    mask = (torch.rand(b, 1, h, h, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=sigma_y)
    return prior, op, op.observe(x, ImageRNG(0, range(b), "observation")), mask


# -- presets ---------------------------------------------------------------------------------------

def test_presets_cover_every_field_and_explicit_fields_win():
    fields = set(VIPaintConfig.__dataclass_fields__) - {"preset", "explicit"}
    for name in PRESET_NAMES:
        assert set(preset_values(name)) == fields
    assert VIPaintConfig().preset == "principled"
    off = VIPaintConfig(preset="official")
    assert (off.beta_prior, off.likelihood, off.reduction, off.zeta, off.zeta_over_samples) == \
        (100.0, "laplace", "mean", 2.0, True)
    assert off.explicit == frozenset()
    mine = VIPaintConfig(preset="official", beta_prior=1.0, refine_steps=7)
    assert (mine.beta_prior, mine.refine_steps, mine.beta_hier) == (1.0, 7, 100.0)
    assert mine.explicit == {"beta_prior", "refine_steps"}
    again = mine.overridden(preset="principled")             # explicit fields survive a preset change
    assert (again.beta_prior, again.refine_steps, again.reduction) == (1.0, 7, "sum")
    with pytest.raises(ValueError, match="preset"):
        VIPaintConfig(preset="paper")
    with pytest.raises(TypeError, match="unknown VIPaint option"):
        VIPaintConfig().overridden(explicit=frozenset())


def test_preset_switch_changes_the_run_and_official_divides_zeta_by_s():
    prior, op, y, _ = _problem()
    kw = dict(n_samples=2, seed=0, iterations=2, refine_steps=3)
    a = vipaint.solve_full("vipaint", prior, op, y, **kw)
    b = vipaint.solve_full("vipaint", prior, op, y, preset="official", **kw)
    assert not torch.allclose(a.samples, b.samples)
    c = vipaint.solve_full("vipaint", prior, op, y, preset="official", zeta_over_samples=False, zeta=1.0, **kw)
    d = vipaint.solve_full("vipaint", prior, op, y, preset="official", zeta=2.0, **kw)   # ζ/S = 2/2
    assert torch.equal(c.traces["objective"], d.traces["objective"])
    torch.testing.assert_close(c.samples, d.samples)


# -- r_t² --------------------------------------------------------------------------------------------

def test_x0_variance_is_the_gaussian_posterior_variance():
    """For x0 ~ N(0, v I) and z_t = α x0 + σ ε, Var[x0 | z_t] = v σ²/(α² v + σ²) (closed form, Bayes)."""
    abar = make_alphas_cumprod(1000)
    for v in (0.05, 0.3, 1.0):
        for t in (10, 400, 900):
            ab = abar[t].item()
            a2, s2 = ab, 1 - ab
            prec = 1 / v + a2 / s2                                  # posterior precision of x0 given z_t
            assert x0_variance(ab, v) == pytest.approx(1 / prec, rel=1e-12)
    # and against Monte Carlo on the exact-score prior: E[(x0 − x̂0(z_t))²] = r_t²
    prior, g = _white_prior(4, 0.3), torch.Generator().manual_seed(0)
    x0 = prior.sample(4000, g)
    t = 300
    ab = prior.alpha_bar(t)
    z = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
    x_hat = (z - (1 - ab).sqrt() * prior.eps(z, t)) / ab.sqrt()
    assert ((x0 - x_hat) ** 2).mean().item() == pytest.approx(x0_variance(ab.item(), 0.3), rel=0.05)


def test_prior_data_variance():
    prior = _white_prior(4, 0.3)
    assert prior_data_variance(prior, VIPaintConfig()) == pytest.approx(0.3)
    assert prior_data_variance(prior, VIPaintConfig(data_variance=0.7)) == 0.7


def test_variance_aware_likelihood():
    op = Inpainting(torch.ones(1, 1, 2, 2), sigma_y=0.1)
    y = torch.zeros(1, 1, 2, 2)
    x = torch.full((1, 1, 1, 2, 2), 0.5)
    lik = Likelihood("gaussian", None, "sum")
    assert lik(x, y, op, 0.03).item() == pytest.approx(4 * 0.25 / (2 * 0.04))
    assert lik.constant(y, op, 0.03) == pytest.approx(2 * math.log(2 * math.pi * 0.04))
    assert torch.equal(lik(x, y, op, 0.0), lik(x, y, op))
    with pytest.raises(ValueError, match="gaussian"):
        Likelihood("laplace", 0.01, "sum")(x, y, op, 0.03)


# -- the prior loss ---------------------------------------------------------------------------------

def _interval_setup():
    abar = make_alphas_cumprod(1000).float()
    grid = edm_time_grid(abar.double(), 550, n=300)
    return abar, grid


def test_interval_weights_match_monte_carlo_on_the_surrogate():
    """interval_weights = E[z-dependent term] for the prior N(0, v I) with z_{T_e} from its marginal."""
    v = 0.3
    prior = _white_prior(4, v)
    abar, grid = _interval_setup()
    w = interval_weights(grid, abar, v)
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 16
    ab_e = abar[grid[0]]
    z_e = (ab_e * v + 1 - ab_e).sqrt() * torch.randn(n, 1, 1, 4, 4, generator=g)
    for j in (0, 1, 5, 60):
        jj = torch.full((n, 1), j)
        ab_rel = abar[grid[j + 1]] / ab_e
        z_t = ab_rel.sqrt() * z_e + (1 - ab_rel).sqrt() * torch.randn(z_e.shape, generator=g)
        st = _interval_stoch(z_e, z_t, prior.eps(z_t, grid[jj + 1]), jj, grid, abar)
        assert st.mean().item() / d == pytest.approx(w[j].item(), rel=0.06)


def _fixed_posterior(prior, op, y, cfg):
    return HierarchicalPosterior.initialise(initial_image(op, y, prior.image_shape, "observed_mean"), prior,
                                            cfg.keypoints, ImageRNG(0, range(y.shape[0]), "init"),
                                            std_scale=cfg.eta_fit)


@pytest.mark.parametrize("n_exact,importance", [(0, False), (2, False), (0, True), (2, True)])
def test_prior_loss_estimators_are_unbiased(n_exact, importance):
    """Every estimator's mean over repeats agrees with the brute-force sum of every interval's term."""
    prior, op, y, _ = _problem(h=4, b=1)
    cfg = VIPaintConfig()
    abar = prior.alphas_cumprod.float()
    grid = edm_time_grid(prior.alphas_cumprod, 550, n=300)
    n_int = grid.numel() - 1
    post = _fixed_posterior(prior, op, y, cfg)
    lik = Likelihood("gaussian", None, "sum")
    probs = interval_weights(grid, abar, 0.3)[n_exact:] if importance else None
    with torch.no_grad():
        est = torch.stack([negative_elbo(post, prior, op, y, lik, ImageRNG(r, [0], "x"), n_mc=5, grid=grid,
                                         eta=cfg.eta_fit, beta_prior=1.0, beta_hier=1.0, reduction="sum",
                                         n_exact=n_exact, interval_probs=probs).prior for r in range(40)])
        # brute force: z_{T_e} from q, every interval at its own z_t, many samples
        g = torch.Generator().manual_seed(9)
        m = 400
        z_e = post.sample_top(torch.randn(m, 1, 1, 4, 4, generator=g))
        total = torch.zeros(m, 1)
        for j in range(n_int):
            jj = torch.full((m, 1), j)
            ab_rel = abar[grid[j + 1]] / abar[grid[0]]
            z_t = ab_rel.sqrt() * z_e + (1 - ab_rel).sqrt() * torch.randn(z_e.shape, generator=g)
            total += _interval_stoch(z_e, z_t, prior.eps(z_t, grid[jj + 1]), jj, grid, abar)
    # the estimators differ from the brute-force sum only in how the z-dependent part is sampled: compare
    # prior − (constants + top KL − entropy), the same for every estimator, with the brute-force sum
    base = est.mean().item()
    ref = total.mean().item()
    spread = est.std().item() / math.sqrt(est.numel()) + total.std().item() / math.sqrt(m)
    offset = _constant_part(post, prior, grid, abar)
    assert base - offset == pytest.approx(ref, abs=4 * spread + 0.05 * abs(ref))


def _constant_part(post, prior, grid, abar):
    """Everything of the prior loss except the sampled interval terms, averaged over many z_{T_e}."""
    from vipaint.diffusion import gaussian_kl
    from vipaint.elbo import interval_constants

    d = post.mu[0, 0].numel()
    g = torch.Generator().manual_seed(5)
    z_e = post.sample_top(torch.randn(20000, 1, *post.mu.shape[2:], generator=g))
    ab_T = abar[grid[-1]] / abar[grid[0]]
    top = gaussian_kl(ab_T.sqrt() * z_e, (1 - ab_T).expand_as(z_e), torch.zeros_like(z_e), torch.ones_like(z_e))
    entropy = 0.5 * (post.top_logvar() + math.log(2 * math.pi * math.e)).flatten(1).sum(-1)
    return (d * interval_constants(grid, abar).sum() + top.flatten(2).sum(-1).mean() - entropy.sum()).item()


def test_exact_intervals_remove_the_variance_of_the_first_terms():
    """With the intervals next to T_e exact and importance weights on the rest, the prior loss of a fixed q
    varies far less over repeats than the official estimator (benchmarks/elbo_variance.py measures it)."""
    prior, op, y, _ = _problem(h=8, b=1)
    cfg = VIPaintConfig()
    grid = edm_time_grid(prior.alphas_cumprod, 550, n=300)
    post = _fixed_posterior(prior, op, y, cfg)
    lik = Likelihood("gaussian", None, "sum")
    probs = interval_weights(grid, prior.alphas_cumprod, prior_data_variance(prior, cfg))[2:]

    def spread(**kw: object) -> float:
        with torch.no_grad():
            return torch.stack([negative_elbo(post, prior, op, y, lik, ImageRNG(r, [0], "x"), n_mc=5, grid=grid,
                                              eta=cfg.eta_fit, beta_prior=1.0, beta_hier=1.0, reduction="sum",
                                              **kw).prior for r in range(16)]).std().item()

    assert spread(n_exact=2, interval_probs=probs) < spread() / 5


# -- initialisation on the prior ---------------------------------------------------------------------

def test_initial_hierarchical_kl_is_near_zero():
    """std_scale None → q's transition std is the prior kernel's (η_fit × DDPM std): the hierarchical KL
    at initialisation is the mean term of (1 − w) alone, far below the official 0.7 × DDPM std's."""
    prior, op, y, _ = _problem(h=8, b=2)
    kls = {}
    for preset in ("principled", "official"):
        cfg = VIPaintConfig(preset=preset)
        std = cfg.eta_fit if cfg.std_scale is None else cfg.std_scale
        post = HierarchicalPosterior.initialise(initial_image(op, y, prior.image_shape, cfg.init_fill), prior,
                                                cfg.keypoints, ImageRNG(0, range(2)), std_scale=std)
        with torch.no_grad():
            kls[preset] = sample_chain(post, prior, 8, ImageRNG(1, range(2)), eta=cfg.eta_fit).kl.mean().item()
    d = 64
    assert kls["principled"] < 0.05 * d                 # ≈ 0 per element
    assert kls["official"] > 10 * kls["principled"]


def test_fit_moves_weights_and_means():
    """The learned mixing weights w = σ(γ) and the means μ_k move away from their initial values."""
    from vipaint.methods.vipaint import fit_posterior

    prior, op, y, _ = _problem(h=8, b=2)
    cfg = VIPaintConfig(iterations=50)
    rng = ImageRNG(0, range(2))
    post, trace, failed, _ = fit_posterior(prior, op, y, rng, cfg)
    assert not failed.any()
    w = torch.sigmoid(post.gamma[1:])
    assert (w - torch.sigmoid(torch.tensor(cfg.gamma_init))).abs().max() > 0.05
    init = HierarchicalPosterior.initialise(initial_image(op, y, prior.image_shape, cfg.init_fill), prior,
                                            cfg.keypoints, ImageRNG(0, range(2)), std_scale=cfg.eta_fit)
    assert (post.mu - init.mu).abs().mean() > 0.05


# -- refinement --------------------------------------------------------------------------------------

def _score_step_effect(h: int) -> torch.Tensor:
    """Per-pixel change of z_{t−1} caused by the guidance in one score-form step, white Gaussian prior,
    every pixel observed at residual 0.2."""
    prior = _white_prior(h, 0.3)
    t, v, sy = 200, 0.3, 0.05
    r2 = float(x0_variance(prior.alpha_bar(t).item(), v))
    op = Inpainting(torch.ones(1, 1, h, h), sigma_y=sy)
    z = torch.zeros(1, 1, 1, h, h)
    y = torch.full((1, 1, h, h), 0.2)
    lik = Likelihood("gaussian", None, "sum")
    guided = guided_step(prior, z, t, t - 1, GuidedStep(zeta=1.0, eta=0.0, form="score"),
                         energy=lambda x, _: lik(x, y, op, r2)).z
    plain = guided_step(prior, z, t, t - 1, GuidedStep(zeta=0.0, eta=0.0)).z
    return (guided - plain).flatten()


def test_score_step_is_resolution_invariant_and_exact_on_a_gaussian():
    """The per-pixel move of the score-form step is the same at 8×8 and 32×32 (no pixel-count constant),
    and equals the exact conditional-score DDIM move on the white Gaussian prior."""
    a, b = _score_step_effect(8), _score_step_effect(32)
    torch.testing.assert_close(a, torch.full_like(a, a[0].item()), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b, torch.full_like(b, a[0].item()), rtol=1e-4, atol=1e-7)
    assert a[0] > 0
    # closed form: z = 0, so x̂0 = 0; ∇_z log p(y|z) = k (y − 0)/(σ_y² + r²) with k = ∂x̂0/∂z = α v/(α² v + σ²);
    # ε' = −σ ∇ log p, x̂0' = −σ ε'/α, and the DDIM(η = 0) step moves by α_s Δx̂0 + σ_s Δε.
    prior = _white_prior(8, 0.3)
    ab, ab_s = prior.alpha_bar(200).double(), prior.alpha_bar(199).double()
    v, sy = 0.3, 0.05
    k = ab.sqrt() * v / (ab * v + 1 - ab)
    r2 = v * (1 - ab) / (ab * v + 1 - ab)
    d_eps = -(1 - ab).sqrt() * k * 0.2 / (sy ** 2 + r2)
    d_x0 = -(1 - ab).sqrt() * d_eps / ab.sqrt()
    move = ab_s.sqrt() * d_x0 + (1 - ab_s).sqrt() * d_eps
    assert a[0].item() == pytest.approx(move.item(), rel=1e-4)


def test_official_step_is_not_resolution_invariant():
    """Contrast: the official 100·L1 energy with element means moves each pixel by ζ·100/P·sign(r)/α·…,
    i.e. inversely to the pixel count P."""
    moves = []
    for h in (8, 32):
        prior = _white_prior(h, 0.3)
        op = Inpainting(torch.ones(1, 1, h, h), sigma_y=0.05)
        y = torch.full((1, 1, h, h), 0.2)
        lik = Likelihood("laplace", 0.01, "mean")
        z = torch.zeros(1, 1, 1, h, h)
        g = guided_step(prior, z, 200, 199, GuidedStep(zeta=2.0, eta=0.0),
                        energy=lambda x, _, lik=lik, y=y, op=op: lik(x, y, op)).z
        p = guided_step(prior, z, 200, 199, GuidedStep(zeta=0.0, eta=0.0)).z
        moves.append((g - p).abs().mean().item())
    assert moves[0] / moves[1] == pytest.approx(16.0, rel=1e-3)


def test_noisy_observed_pixels_are_not_copied():
    """σ_y > 0: the refined samples' observed pixels scatter around the posterior, not onto y."""
    prior, op, y, mask = _problem(h=8, b=2, sigma_y=0.2)
    cfg = VIPaintConfig(iterations=3, refine_steps=20)
    z = torch.randn(16, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9
    x, _ = refine(prior, op, y, z, ImageRNG(0, range(2)), cfg)
    obs = mask.bool().expand(16, -1, -1, -1, -1)
    dev = (x - y)[obs].abs().mean().item()
    assert dev > 0.05                          # not copied (σ_y = 0.2: the posterior shrinks toward the prior)


def test_jacobian_x0_variance_matches_the_gaussian_posterior_covariance():
    """x0_variance_estimate = (σ²/α) ξᵀ(∂x̂0/∂z)ξ / D: exact for a white Gaussian prior (J = k I, ξ² = 1),
    and on average the mean diagonal of (Σ⁻¹ + ᾱ/σ² I)⁻¹ for a correlated one."""
    from vipaint.sampling import x0_variance_estimate

    t = 300
    for prior, exact_white in ((_white_prior(4, 0.3), True), (None, False)):
        if prior is None:
            cov = smooth_covariance((1, 4, 4), length_scale=1.5, variance=0.3)
            prior = GaussianPrior(torch.zeros(16), cov, image_shape=(1, 4, 4))
        ab = prior.alpha_bar(t)
        s = 2000 if not exact_white else 3
        z = torch.randn(s, 1, 1, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        x0 = (z - (1 - ab).sqrt() * prior.eps(z, t)) / ab.sqrt()
        probe = (torch.rand(z.shape, generator=torch.Generator().manual_seed(1)) < 0.5).float() * 2 - 1
        est = x0_variance_estimate(z, x0, ab, probe).item()
        c = prior.covs[0]
        post_cov = torch.linalg.inv(torch.linalg.inv(c) + ab.double() / (1 - ab.double()) * torch.eye(16,
                                                                                                     dtype=c.dtype))
        want = post_cov.diagonal().mean().item()
        if exact_white:
            assert est == pytest.approx(float(x0_variance(ab.item(), 0.3)), rel=1e-4)
        assert est == pytest.approx(want, rel=1e-4 if exact_white else 0.05)


def test_jacobian_likelihood_variance_runs_and_counts_passes():
    prior, op, y, _ = _problem(h=8, b=2)
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=0, iterations=3, refine_steps=4,
                             likelihood_variance="jacobian")
    k = 2
    assert torch.isfinite(res.samples).all() and not res.failed.any()
    assert res.nfe == 3 * (k + 1 + 2) + (k - 1) + 4 + k
    assert res.n_backprop == 3 * (k + 1 + 2) + 4 + 1 + 4
    with pytest.raises(ValueError, match="likelihood_variance"):
        VIPaintConfig(likelihood_variance="exact")


# -- the refinement grid (eq. 4.4) ------------------------------------------------------------------------

def test_time_grid_power_one_is_the_uniform_grid_and_larger_powers_pack_steps_near_zero():
    from vipaint.sampling import time_grid

    assert time_grid(400, 100) == time_grid(400, 100, 1.0) == list(range(400, 0, -4))
    assert time_grid(10, None, 2.0) == list(range(10, 0, -1))          # every time: the power has no effect
    g = time_grid(400, 100, 2.0)
    assert g[0] == 400 and g == sorted(set(g), reverse=True) and min(g) == 1
    assert len(g) < 100                                                    # duplicates near 0 removed
    assert g[0] - g[1] == 8 and g[-2] - g[-1] == 1                         # coarse at T_s, fine near 0
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="power"):
            time_grid(400, 100, bad)
    prior, op, y, _ = _problem()
    with pytest.raises(InputError, match="refine_time_power"):
        vipaint.solve("vipaint", prior, op, y, refine_time_power=0.5)


def test_a_grid_packed_toward_zero_keeps_the_variance_of_fine_directions():
    """Unguided refinement (nothing observed) from exact z_{T_s} of a white prior with the variance of fine
    image detail (v = 10⁻³): the last step returns E[x0 | z_{t_last}] and drops Var[x0 | z_{t_last}], which at
    the uniform grid's t_last = 4 is 41 % of v, at the squared grid's t_last = 1 18 % (eq. 4.4)."""
    h, v = 4, 1e-3
    prior = GaussianPrior(torch.zeros(h * h), v * torch.eye(h * h, dtype=torch.float64), image_shape=(1, h, h))
    op, y = Inpainting(torch.zeros(1, 1, h, h), sigma_y=0.05), torch.zeros(1, 1, h, h)
    ab = prior.alpha_bar(400)
    z = (ab * v + 1 - ab).sqrt() * torch.randn(500, 1, 1, h, h, generator=torch.Generator().manual_seed(0))
    ratio = {}
    for p in (1.0, 2.0):
        x, nfe = refine(prior, op, y, z, ImageRNG(0, range(1)), VIPaintConfig(refine_steps=100, refine_time_power=p))
        ratio[p] = (x.var(0).mean() / v).item()
        assert nfe == (100 if p == 1 else 94)
    assert ratio[1.0] < 0.6 and ratio[2.0] > 0.68
