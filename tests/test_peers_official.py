"""The peers' official settings (docs/algorithm.md §10): DDNM+ under observation noise, clamping of x̂0 for
pixel priors, PSLD's official transpose, CoPaint's config constants, RePaint's schedule presets, and the
counting of decoder / encoder calls. Analytic priors and a few steps, so each test takes about a second."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import vipaint
from vipaint.diffusion import ddpm_posterior, tweedie_x0
from vipaint.methods.ddnm import ddnm_plus_scales
from vipaint.methods.psld import glue_target, official_transpose
from vipaint.methods.steps import count_codec
from vipaint.operators import Downsample, GaussianBlur, Inpainting, LinearOperator
from vipaint.priors import GaussianPrior, SyntheticMixturePrior, smooth_covariance
from vipaint.sampling import GuidedStep, guided_step
from vipaint.seeding import ImageRNG

SHAPE = (1, 8, 8)


def _gaussian_problem(sigma_y: float, mean: float = 0.0, variance: float = 0.1, b: int = 2
                      ) -> tuple[GaussianPrior, Inpainting, Tensor, Tensor]:
    cov = smooth_covariance(SHAPE, length_scale=2.0, variance=variance)
    prior = GaussianPrior(torch.full(SHAPE, mean), cov)
    x = prior.sample(b, torch.Generator().manual_seed(1))
    mask = (torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=sigma_y)
    return prior, op, op.observe(x, ImageRNG(0, range(b), "observation")), mask


# -- DDNM+ ---------------------------------------------------------------------------------------------
def test_ddnm_plus_scales() -> None:
    """λ = 1 and d = √(σ² − a²σ_y²) while σ_s ≥ a σ_y; below, λ = σ_s√(1−η²)/(aσ_y) and d = ησ_s; λ = d = 0
    into the clean image."""
    ab = torch.tensor([0.5, 0.999, 1.0], dtype=torch.float64)
    lam, d = ddnm_plus_scales(ab, 0.85, 0.05)
    a, sig = ab.sqrt(), (1 - ab).sqrt()
    torch.testing.assert_close(lam[0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(d[0], (sig[0] ** 2 - (a[0] * 0.05) ** 2).sqrt())
    torch.testing.assert_close(lam[1], sig[1] * (1 - 0.85 ** 2) ** 0.5 / (a[1] * 0.05))
    torch.testing.assert_close(d[1], 0.85 * sig[1])
    assert float(lam[2]) == 0.0 and float(d[2]) == 0.0


@pytest.mark.parametrize("sigma_y", [0.05, 0.2])
def test_ddnm_plus_does_not_copy_noisy_y(sigma_y: float) -> None:
    prior, op, y, mask = _gaussian_problem(sigma_y)
    obs = mask.expand(-1, *SHAPE).bool()
    old = vipaint.solve("ddnm", prior, op, y, n_samples=8, seed=0, n_steps=20, mode="ddnm")
    assert (old - y)[:, obs].abs().max() < 1e-5                           # DDNM pastes the noisy y
    new = vipaint.solve("ddnm", prior, op, y, n_samples=8, seed=0, n_steps=20)     # default: DDNM+ (σ_y > 0)
    assert torch.equal(new, vipaint.solve("ddnm", prior, op, y, n_samples=8, seed=0, n_steps=20, mode="ddnm+"))
    assert (new - y)[:, obs].abs().mean() > 0.2 * sigma_y                  # observed pixels are not copies of y


@pytest.mark.parametrize("sigma_y", [0.1, 0.2])
def test_ddnm_plus_observed_pixels_move_to_exact_posterior_mean(sigma_y: float) -> None:
    """On the observed pixels the exact posterior mean is far from the noisy y; DDNM+'s sample mean there
    (official 100 levels) is much closer to it than y — DDNM's copy — is. (With 20 levels DDNM+ keeps a bias
    of its own on the observed pixels and does not pass this at σ_y = 0.1.)"""
    prior, op, y, mask = _gaussian_problem(sigma_y)
    exact = prior.exact_posterior(op, y).mean().float().reshape(y.shape)
    obs = mask.expand(-1, *SHAPE).bool()
    mean = vipaint.solve("ddnm", prior, op, y, n_samples=16, seed=0).mean(0)
    err_plus = (mean - exact)[obs].square().mean().sqrt()
    err_copy = (y - exact)[obs].square().mean().sqrt()
    assert err_plus < 0.5 * err_copy, (float(err_plus), float(err_copy))


def test_ddnm_noise_free_operator_is_plain_ddnm_and_modes_checked() -> None:
    prior, op, _, mask = _gaussian_problem(0.05)
    op0 = Inpainting(mask, sigma_y=0.0)
    y0 = op0(prior.sample(2, torch.Generator().manual_seed(3)))
    a = vipaint.solve("ddnm", prior, op0, y0, n_samples=2, seed=0, n_steps=6)
    assert torch.equal(a, vipaint.solve("ddnm", prior, op0, y0, n_samples=2, seed=0, n_steps=6, mode="ddnm"))
    with pytest.raises(ValueError, match="mode"):
        vipaint.solve("ddnm", prior, op0, y0, n_samples=1, n_steps=2, mode="ddnm++")


# -- clamping ------------------------------------------------------------------------------------------
def test_guided_step_full_clip_is_ddpm_posterior_of_clamped_x0() -> None:
    """clip="full" at η = 1: the step's mean is q(z_s | z_t, clamp(x̂0)), and the energy sees clamp(x̂0)."""
    prior = GaussianPrior(torch.full(SHAPE, 0.9), smooth_covariance(SHAPE, variance=0.5))
    z = 2 * torch.randn(3, 1, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    t, s = 30, 20
    seen = []
    out = guided_step(prior, z, t, s, GuidedStep(zeta=0.0, eta=1.0, clip="full"),
                      energy=lambda x, _: seen.append(x) or x.flatten(2).sum(-1), need_image=True)
    ab_t, ab_s = prior.alpha_bar(t).float(), prior.alpha_bar(s).float()
    x0 = tweedie_x0(z, prior.eps(z, t), ab_t)
    assert (x0.abs() > 1).any()                                           # clamping matters here
    mean, _ = ddpm_posterior(x0.clamp(-1, 1), z, ab_t, ab_s)
    torch.testing.assert_close(out.z, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image, x0.clamp(-1, 1))


@pytest.mark.parametrize("method,kw", [("dps", dict(n_steps=10, zeta=0.0)),
                                       ("repaint", dict(t_T=10, jump_length=3, jump_n_sample=2)),
                                       ("copaint", dict(n_steps=6))])
def test_pixel_peers_clamp_by_default(method: str, kw: dict) -> None:
    """A prior with mass beyond [−1, 1]: by default (official) the samples stay in [−1, 1] (RePaint: its
    unobserved pixels; the observed ones are y); `clip_x0=False` leaves them unclamped."""
    prior = GaussianPrior(torch.full(SHAPE, 0.9), smooth_covariance(SHAPE, variance=0.5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2] = 1
    op = Inpainting(mask, sigma_y=0.05)
    y = op(torch.zeros(1, *SHAPE))
    on = vipaint.solve(method, prior, op, y, n_samples=8, seed=0, **kw)
    off = vipaint.solve(method, prior, op, y, n_samples=8, seed=0, clip_x0=False, **kw)
    hole = (1 - mask).expand(1, *SHAPE).bool()
    assert on[:, hole].abs().max() <= 1 + 1e-6
    assert off[:, hole].abs().max() > 1.05
    assert torch.equal(on, vipaint.solve(method, prior, op, y, n_samples=8, seed=0, clip_x0=True, **kw))


# -- PSLD's transpose ----------------------------------------------------------------------------------
def test_psld_official_sr_gluing_meets_the_measurement() -> None:
    """×4 area SR: the official transpose (nearest upsampling, no 1/f²) glues onto {A x = y} exactly; the
    true adjoint removes only 1/16 of the residual."""
    op = Downsample(factor=4, sigma_y=0.05)
    shape = (1, 16, 16)
    x = torch.randn(3, 2, *shape, generator=torch.Generator().manual_seed(0))
    y = op(torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)))
    r0 = (op(x) - y).flatten(2).norm(dim=-1)
    r_off = (op(glue_target(op, x, y, shape, "official")) - y).flatten(2).norm(dim=-1)
    r_adj = (op(glue_target(op, x, y, shape, "adjoint")) - y).flatten(2).norm(dim=-1)
    assert (r_off < 1e-5 * r0).all()
    torch.testing.assert_close(r_adj, (1 - 1 / 16) * r0)
    v = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(official_transpose(op, v, shape), 16 * op.adjoint(v, shape))


def test_psld_official_transpose_blur_inpainting_and_unknown() -> None:
    shape = (1, 8, 8)
    x = torch.randn(2, 1, *shape)
    blur = GaussianBlur(kernel_size=3, sigma=1.0, sigma_y=0.05)
    y = blur(torch.randn(1, *shape))
    torch.testing.assert_close(glue_target(blur, x, y, shape), y + x - blur(x))       # Tᵀ = I for blur
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    inp = Inpainting(mask, sigma_y=0.05)
    yi = inp(torch.randn(1, *shape))
    assert torch.equal(glue_target(inp, x, yi, shape, "official"), glue_target(inp, x, yi, shape, "adjoint"))

    class Other(LinearOperator):
        def forward(self, v: Tensor) -> Tensor:
            return 2 * v

    with pytest.raises(ValueError, match="adjoint"):
        official_transpose(Other(), x, shape)
    with pytest.raises(ValueError, match="transpose"):
        glue_target(inp, x, yi, shape, "nearest")


# -- CoPaint and RePaint presets -----------------------------------------------------------------------
def test_copaint_config_constants() -> None:
    prior = SyntheticMixturePrior(image_shape=SHAPE, n_components=2, seed=0)
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(prior.sample(1, torch.Generator().manual_seed(1)), ImageRNG(0, [0], "observation"))
    run = lambda **kw: vipaint.solve("copaint", prior, op, y, n_samples=2, seed=0, n_steps=6, **kw)  # noqa: E731
    default = run()
    assert torch.equal(default, run(config="imagenet", coef_reg=0.01, coef_reg_decay=1.0))
    celeb = run(config="celebahq")
    assert torch.equal(celeb, run(coef_reg=1e-4, coef_reg_decay=1.01))
    assert not torch.equal(default, celeb)
    with pytest.raises(ValueError, match="config"):
        run(config="ffhq")


def test_repaint_schedules() -> None:
    prior = SyntheticMixturePrior(image_shape=SHAPE, n_components=2, seed=0)
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    y = op(prior.sample(1, torch.Generator().manual_seed(1)))
    run = lambda **kw: vipaint.solve_full("repaint", prior, op, y, n_samples=1, seed=0, **kw)  # noqa: E731
    assert run().nfe == 2410                                       # official: 250 levels, L = 10, 10 passes
    cheap = run(schedule="cheap")
    assert cheap.nfe == 190
    assert torch.equal(cheap.samples, run(t_T=100, jump_length=10, jump_n_sample=2).samples)
    with pytest.raises(ValueError, match="schedule"):
        run(schedule="fast")


# -- decoder / encoder counts ----------------------------------------------------------------------------
class _IdentityCodecPrior(SyntheticMixturePrior):
    """The analytic prior posing as a latent prior whose decoder and encoder are the identity."""

    @property
    def is_latent(self) -> bool:
        return True


@pytest.mark.parametrize("method,kw,counts", [
    ("dps", dict(n_steps=4), (5, 0)),           # one decode per guided step, one for the output
    ("psld", dict(n_steps=4), (5, 4)),          # + one encode per step (the gluing term)
    ("reddiff", dict(n_steps=4), (5, 1)),       # E(A⁺y) once, D(μ) per step and for the output
    ("ddnm", dict(n_steps=4), (5, 4)),          # D and E per step, D for the output
    ("prior", dict(n_steps=4), (1, 0)),
])
def test_decoder_encoder_calls_counted(method: str, kw: dict, counts: tuple[int, int]) -> None:
    prior = _IdentityCodecPrior(image_shape=SHAPE, n_components=2, seed=0)
    op = Downsample(factor=2, sigma_y=0.05)
    y = op(prior.sample(2, torch.Generator().manual_seed(1)))
    res = vipaint.solve_full(method, prior, op, y, n_samples=2, seed=0, **kw)
    assert (res.n_decode, res.n_encode) == counts and res.nfe == 4
    pix = vipaint.solve_full(method if method != "psld" else "dps", SyntheticMixturePrior(image_shape=SHAPE),
                             op, y, n_samples=1, seed=0, **kw)
    assert (pix.n_decode, pix.n_encode) == (0, 0)                       # pixel priors: no codec


def test_count_codec_restores_prior_methods() -> None:
    prior = SyntheticMixturePrior(image_shape=SHAPE, n_components=2, seed=0)
    with count_codec(prior) as c:                                        # pixel prior: identity, 0 calls
        prior.decode(torch.zeros(1, *SHAPE))
    assert (c.decode, c.encode) == (0, 0)

    lat = _IdentityCodecPrior(image_shape=SHAPE, n_components=2, seed=0)
    with pytest.raises(RuntimeError), count_codec(lat) as c:
        lat.decode(torch.zeros(1, *SHAPE))
        lat.decode(torch.zeros(1, *SHAPE))
        lat.encode(torch.zeros(1, *SHAPE))
        raise RuntimeError
    assert (c.decode, c.encode) == (2, 1)
    assert "decode" not in lat.__dict__ and "encode" not in lat.__dict__


def test_vipaint_codec_calls_counted() -> None:
    """VIPaint is counted the same way, from outside: one encode of the initial image, a decode at least
    per fit iteration."""
    prior = _IdentityCodecPrior(image_shape=SHAPE, n_components=2, seed=0)
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    y = op(prior.sample(2, torch.Generator().manual_seed(1)))
    res = vipaint.solve_full("vipaint", prior, op, y, n_samples=2, seed=0, iterations=3, refine_steps=2, n_mc=1,
                             prior_grid_points=10)
    assert res.n_encode == 1 and res.n_decode >= 3


def test_latent_priors_never_clamped_and_psld_transposes_differ() -> None:
    """DPS clamps only pixel priors (a latent is not an image in [−1, 1]); PSLD's official and adjoint
    gluing give different samples for SR (same seed), both finite."""
    prior = _IdentityCodecPrior(image_shape=SHAPE, n_components=2, seed=0, separation=3.0)
    op = Downsample(factor=2, sigma_y=0.05)
    y = op(prior.sample(2, torch.Generator().manual_seed(1)))
    run = lambda m, **kw: vipaint.solve(m, prior, op, y, n_samples=2, seed=0, n_steps=6, **kw)  # noqa: E731
    assert torch.equal(run("dps", zeta=0.0), run("dps", zeta=0.0, clip_x0=False))
    pixel = SyntheticMixturePrior(image_shape=SHAPE, n_components=2, seed=0, separation=3.0)
    clamped = vipaint.solve("dps", pixel, op, y, n_samples=2, seed=0, n_steps=6, zeta=0.0)
    assert clamped.abs().max() <= 1 and run("dps", zeta=0.0).abs().max() > 1
    official, adjoint = run("psld"), run("psld", transpose="adjoint")
    assert torch.isfinite(official).all() and torch.isfinite(adjoint).all()
    assert not torch.allclose(official, adjoint)


class _SpyPrior(SyntheticMixturePrior):
    """Records every ε call (z, t, ε̂)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def eps_flat(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        e = super().eps_flat(z, t, cond, guidance_scale)
        self.calls.append((z.detach().clone(), t.clone(), e.detach().clone()))
        return e


def test_ddnm_time_travel_renoises_the_uncorrected_x0() -> None:
    """As both official samplers (`x0_preds`): after going back up, x_j = √ᾱ_j x̂0 + √(1−ᾱ_j) ξ with the last
    Tweedie x̂0, not the corrected x̂0|y. Levels 3, 2, 1, 0, ↑1, ↑2, 1, 0, −1 (a call per downward step): the 4th
    call, at level 2, sees x re-noised from the 3rd call's x̂0."""
    prior = _SpyPrior(image_shape=SHAPE, n_components=2, seed=0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    op = Inpainting(mask, sigma_y=0.0)
    y = op(torch.full((1, *SHAPE), 3.0))                     # far from the prior: x̂0|y ≠ x̂0 on observed pixels
    vipaint.solve("ddnm", prior, op, y, n_samples=256, seed=0, n_steps=4, travel_length=2, travel_repeat=2)
    assert len(prior.calls) == 6
    (z4, t4, e4), (z5, t5, _) = prior.calls[2], prior.calls[3]
    assert int(t4[0]) < int(t5[0])                           # went back up
    ab4, ab5 = prior.alpha_bar(int(t4[0])).float(), prior.alpha_bar(int(t5[0])).float()
    x0 = tweedie_x0(z4, e4, ab4)
    xi = (z5 - ab5.sqrt() * x0) / (1 - ab5).sqrt()          # must be standard normal noise
    xi = xi.reshape(256, *SHAPE)[:, mask[0].expand(*SHAPE).bool()]        # observed pixels, where x̂0|y ≠ x̂0
    assert xi.mean().abs() < 0.05 and (xi.std() - 1).abs() < 0.05
