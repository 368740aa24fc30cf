"""The guided DDIM step shared by VIPaint's refinement, DPS and PSLD (`vipaint.sampling`), and the
package's time convention (network times t ≥ 0, CLEAN = −1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from vipaint.diffusion import ddim_step, tweedie_x0
from vipaint.operators import Inpainting
from vipaint.priors import SyntheticMixturePrior
from vipaint.sampling import CLEAN, GuidedStep, abar, descend, guided_denoise, guided_step, time_grid
from vipaint.seeding import ImageRNG

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def prior() -> SyntheticMixturePrior:
    return SyntheticMixturePrior(image_shape=SHAPE, n_components=2, seed=0)


def _problem(b: int = 2) -> tuple[Inpainting, Tensor]:
    x = torch.rand(b, *SHAPE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = (torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    return op, op(x)


def _l2_energy(op: Inpainting, y: Tensor) -> Callable[[Tensor, Tensor | None], Tensor]:
    return lambda x, _: (op(x) - y).flatten(2).square().sum(-1)                         # [S, B]


def _z(s: int, b: int, seed: int = 0) -> Tensor:
    return torch.randn(s, b, *SHAPE, generator=torch.Generator().manual_seed(seed))


# -- time convention ------------------------------------------------------------------------------
def test_abar_clean_is_one_and_network_times_follow_the_schedule(prior: SyntheticMixturePrior) -> None:
    like = torch.zeros(3, dtype=torch.float32)
    assert abar(prior, CLEAN, like).item() == 1.0 and CLEAN == -1
    for t in (0, 1, 500, prior.num_timesteps - 1):
        assert torch.equal(abar(prior, t, like), prior.alpha_bar(t))
    assert abar(prior, 0, like).item() < 1.0                      # t = 0 is a noisy network time, not clean
    with pytest.raises(ValueError, match="CLEAN"):
        abar(prior, -2, like)


def test_descend_ends_in_clean() -> None:
    assert descend([9, 5, 0]) == [(9, 5), (5, 0), (0, CLEAN)]
    assert descend([3]) == [(3, CLEAN)]


@pytest.mark.parametrize("t_start,n_steps", [(400, None), (400, 400), (400, 1000), (400, 4), (400, 7), (550, 100),
                                             (5, 2), (1, None)])
def test_time_grid_lists_network_times_only(t_start: int, n_steps: int | None) -> None:
    times = time_grid(t_start, n_steps)
    assert times[0] == t_start and min(times) >= 1 and CLEAN not in times
    assert times == sorted(set(times), reverse=True)
    assert len(times) == (t_start if n_steps is None or n_steps >= t_start else n_steps)


def test_time_grid_values() -> None:
    assert time_grid(400, None) == list(range(400, 0, -1))
    assert time_grid(400, 4) == [400, 300, 200, 100]
    with pytest.raises(ValueError):
        time_grid(400, 0)


# -- the step -------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,t_prev,eta,stochastic", [(600, 500, 0.2, False), (600, 500, 1.0, True),
                                                     (30, CLEAN, 1.0, True), (0, CLEAN, 0.5, False)])
def test_zeta_zero_is_the_plain_ddim_step(prior: SyntheticMixturePrior, t: int, t_prev: int, eta: float,
                                          stochastic: bool) -> None:
    z = _z(3, 2)
    rng, twin = ImageRNG(0, [4, 7]), ImageRNG(0, [4, 7])
    called = []
    out = guided_step(prior, z, t, t_prev, GuidedStep(zeta=0.0, eta=eta, stochastic=stochastic),
                      energy=lambda x, _: called.append(1) or x.sum((-3, -2, -1)), rng=rng)
    ab_t, ab_prev = prior.alpha_bar(t), abar(prior, t_prev, z)
    e = prior.eps(z, t)
    x0 = tweedie_x0(z, e, ab_t)
    noise = twin.randn(3, *SHAPE, batch_dim=1) if stochastic and t_prev != CLEAN else None
    assert torch.equal(out.z, ddim_step(x0, e, ab_t, ab_prev, eta, noise))
    assert torch.equal(out.x0, x0) and torch.equal(out.eps, e) and out.image is None
    assert not called and not out.z.requires_grad
    # the same streams were consumed: one draw per image, none into CLEAN
    assert torch.equal(rng.randn(2), twin.randn(2))
    if t_prev == CLEAN:
        assert torch.equal(out.z, x0)                             # into ᾱ = 1 the step returns x̂0


def test_guided_step_subtracts_zeta_times_the_energy_gradient(prior: SyntheticMixturePrior) -> None:
    op, y = _problem()
    z, t, t_prev = _z(2, 2, seed=3), 300, 250
    energy = _l2_energy(op, y)
    plain = guided_step(prior, z, t, t_prev, GuidedStep(zeta=0.0, eta=0.3), energy=energy)
    out = guided_step(prior, z, t, t_prev, GuidedStep(zeta=0.7, eta=0.3), energy=energy)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(tweedie_x0(zz, prior.eps(zz, t), prior.alpha_bar(t)), None).sum(), zz)
    torch.testing.assert_close(out.z, plain.z - 0.7 * g)
    torch.testing.assert_close(out.image, plain.x0)               # pixel prior: D(x̂0) = x̂0
    # a per-sample norm divides each sample's gradient
    norm = torch.tensor([[1.0, 2.0], [4.0, 8.0]])
    scaled = guided_step(prior, z, t, t_prev, GuidedStep(zeta=0.7, eta=0.3), energy=energy,
                         grad_norm=lambda x: norm)
    torch.testing.assert_close(scaled.z - plain.z, (out.z - plain.z) / norm[:, :, None, None, None])


@pytest.mark.parametrize("t", [700, 300, 50])
def test_small_guided_step_reduces_the_energy(prior: SyntheticMixturePrior, t: int) -> None:
    """The move −ζ∇E applied to z_t lowers E(x̂0(z_t)) of every sample (a descent direction)."""
    op, y = _problem()
    z, energy = _z(4, 2, seed=5), _l2_energy(op, y)
    ab = prior.alpha_bar(t)

    def e_of(zt: Tensor) -> Tensor:
        return energy(tweedie_x0(zt, prior.eps(zt, t), ab), None)

    plain = guided_step(prior, z, t, t - 1, GuidedStep(zeta=0.0, eta=0.0), energy=energy)
    guided = guided_step(prior, z, t, t - 1, GuidedStep(zeta=1e-3 * ab.item(), eta=0.0), energy=energy)
    move = guided.z - plain.z
    assert (move.flatten(2).norm(dim=-1) > 0).all()
    assert (e_of(z + move) < e_of(z)).all()


def test_clip_modes(prior: SyntheticMixturePrior) -> None:
    """'energy' clamps x̂0 only for the energy (DPS); 'both' also in the update (VIPaint's clip_x0)."""
    op, y = _problem()
    z, t, t_prev = 3 * _z(2, 2, seed=7), 20, 10            # x̂0 ≈ z far outside [−1, 1] at low noise
    seen = {}

    def energy(x: Tensor, x0: Tensor) -> Tensor:
        seen["x"] = x.detach()
        return _l2_energy(op, y)(x, x0)

    off = guided_step(prior, z, t, t_prev, GuidedStep(zeta=0.0, eta=0.0), need_image=True)
    assert off.x0.abs().max() > 1.0 and torch.equal(off.image, off.x0)
    for clip in ("energy", "both"):
        out = guided_step(prior, z, t, t_prev, GuidedStep(zeta=0.1, eta=0.0, clip=clip), energy=energy)
        assert torch.equal(seen["x"], off.x0.clamp(-1, 1)) and torch.equal(out.image, seen["x"])
        assert torch.equal(out.x0, off.x0 if clip == "energy" else off.x0.clamp(-1, 1))
    with pytest.raises(ValueError, match="clip"):
        GuidedStep(clip="yes")  # type: ignore[arg-type]


def test_step_needs_energy_and_rng(prior: SyntheticMixturePrior) -> None:
    z = _z(1, 1)
    with pytest.raises(ValueError, match="energy"):
        guided_step(prior, z, 10, 5, GuidedStep(zeta=1.0))
    with pytest.raises(ValueError, match="rng"):
        guided_step(prior, z, 10, 5, GuidedStep(stochastic=True))


def test_batch_of_two_equals_two_batches_of_one(prior: SyntheticMixturePrior) -> None:
    """Per-image independence: energies, gradients, norms and noise are per sample and image."""
    op, y = _problem()
    z = _z(3, 2, seed=11)
    opts = GuidedStep(zeta=0.5, eta=1.0, stochastic=True, clip="both")

    def run(sel: list[int]) -> Tensor:
        o = Inpainting(op.mask[sel], sigma_y=0.05)
        yy = y[sel]
        out = guided_denoise(prior, z[:, sel], [400, 300, 200], opts, energy=_l2_energy(o, yy),
                             grad_norm=lambda x: (o(x) - yy).flatten(2).norm(dim=-1).clamp_min(1e-8),
                             rng=ImageRNG(2, [10 + i for i in sel]), final_image=True)
        return torch.stack([out.z, out.image])

    both = run([0, 1])
    torch.testing.assert_close(both[:, :, :1], run([0]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(both[:, :, 1:], run([1]), atol=1e-6, rtol=1e-6)


def test_guided_denoise_is_the_loop_of_steps(prior: SyntheticMixturePrior) -> None:
    op, y = _problem()
    z, times = _z(2, 2, seed=13), time_grid(60, 3)
    opts = GuidedStep(zeta=0.2, eta=0.5, stochastic=True)
    ticks: list[tuple[int, int]] = []
    out = guided_denoise(prior, z, times, opts, energy=_l2_energy(op, y), rng=ImageRNG(1, [0, 1]),
                         final_image=True, progress=lambda d, n: ticks.append((d, n)))
    rng, zz = ImageRNG(1, [0, 1]), z
    for t, t_prev in descend(times):
        last = guided_step(prior, zz, t, t_prev, opts, energy=_l2_energy(op, y), rng=rng)
        zz = last.z
    assert torch.equal(out.z, zz) and torch.equal(out.image, last.image)
    assert ticks == [(i + 1, len(times)) for i in range(len(times))]
    no_image = guided_denoise(prior, z, times, GuidedStep(eta=0.5), rng=ImageRNG(1, [0, 1]))
    assert no_image.image is None
    with pytest.raises(ValueError):
        guided_denoise(prior, z, [], opts, energy=_l2_energy(op, y))
