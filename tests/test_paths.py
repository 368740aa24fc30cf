"""Gaussian paths and rectified flow (docs/algorithm.md §11): the flow grid against diffusers' scheduler, the
VP-equivalent rescaling, the output conversions against closed forms on a Gaussian, the analytic prior on a flow
path, and a tiny flow UNet saved with a `FlowMatchEulerDiscreteScheduler` and reloaded via `from_pretrained`."""

from __future__ import annotations

import math

import pytest
import torch

from vipaint.priors import GaussianPrior
from vipaint.priors.paths import (
    FLOW_ABAR_FLOOR,
    cap_flow_sigmas,
    eps_x0_from_output,
    flow_schedule,
    flow_sigmas,
    path_scale,
    shift_from_mu,
    vp_equivalent_abar,
)

F64 = torch.float64


def _gaussian(d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return 0.3 * torch.randn(d, generator=g, dtype=F64), 0.2 * a @ a.T + 0.1 * torch.eye(d, dtype=F64)


def _posterior_means(x, m, cov, alpha, sigma):
    """Closed-form E[ε | x] and E[x0 | x] for x = α x0 + σ ε, x0 ~ N(m, C): E[x0|x] = m + α C K⁻¹(x − α m),
    E[ε|x] = σ K⁻¹(x − α m), K = α² C + σ² I."""
    k = alpha ** 2 * cov + sigma ** 2 * torch.eye(len(m), dtype=F64)
    r = torch.linalg.solve(k, (x - alpha * m).T).T
    return sigma * r, m + alpha * r @ cov.T


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas_match_diffusers_scheduler(shift):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ours = flow_sigmas(1000, shift)
    torch.testing.assert_close(ours.flip(0).float(), sched.sigmas.float(), rtol=0, atol=3e-7)
    torch.testing.assert_close((ours * 1000).flip(0).float(), sched.timesteps.float(), rtol=0, atol=3e-4)
    assert ours[-1] == 1.0 and bool((ours.diff() > 0).all())


def test_cap_keeps_abar_above_floor_and_dynamic_shift_needs_a_shift():
    sig = cap_flow_sigmas(flow_sigmas(1000, 3.0))
    abar = vp_equivalent_abar(1 - sig, sig)
    assert abar.min().item() == pytest.approx(FLOW_ABAR_FLOOR, rel=1e-9)
    assert int((abar <= FLOW_ABAR_FLOOR * (1 + 1e-9)).sum()) == 30      # the top 30 times share σ_cap (s = 3)
    assert bool((abar.diff() <= 0).all()) and abar[0] < 1
    with pytest.raises(ValueError, match="dynamic"):
        flow_schedule({"num_train_timesteps": 1000, "use_dynamic_shifting": True})
    a, s, mt = flow_schedule({"num_train_timesteps": 1000, "use_dynamic_shifting": True}, shift=shift_from_mu(0.0))
    torch.testing.assert_close(s, cap_flow_sigmas(flow_sigmas(1000, 1.0)))
    torch.testing.assert_close(a + s, torch.ones_like(s))
    torch.testing.assert_close(mt, 1000 * s)
    assert shift_from_mu(math.log(3.0)) == pytest.approx(3.0) and shift_from_mu(2.0, "linear") == 2.0


def test_vp_rescaling_keeps_the_noise():
    alpha, sigma = torch.tensor(0.3, dtype=F64), torch.tensor(0.7, dtype=F64)
    x0, eps = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    z = (alpha * x0 + sigma * eps) / path_scale(alpha, sigma)
    ab = vp_equivalent_abar(alpha, sigma)
    torch.testing.assert_close(z, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction", "flow_prediction"])
@pytest.mark.parametrize("path", ["vp", "flow"])
def test_output_conversions_against_gaussian_closed_forms(kind, path):
    """A network that outputs the exact conditional mean of its target (ε, x0, v = αε − σx0, u = ε − x0) is
    converted back to the closed-form E[ε|x] and E[x0|x]."""
    m, cov = _gaussian()
    g = torch.Generator().manual_seed(1)
    for sig in (0.05, 0.5, 0.97):
        sigma = torch.tensor(sig if path == "flow" else math.sqrt(sig), dtype=F64)
        alpha = 1 - sigma if path == "flow" else (1 - sigma ** 2).sqrt()
        x = alpha * m + torch.randn(6, 4, generator=g, dtype=F64)
        e_true, x0_true = _posterior_means(x, m, cov, alpha, sigma)
        out = {"epsilon": e_true, "sample": x0_true, "v_prediction": alpha * e_true - sigma * x0_true,
               "flow_prediction": e_true - x0_true}[kind]
        e, x0 = eps_x0_from_output(out, x, alpha, sigma, kind)
        torch.testing.assert_close(e, e_true)
        torch.testing.assert_close(x0, x0_true)
    with pytest.raises(ValueError, match="prediction_type"):
        eps_x0_from_output(out, x, alpha, sigma, "velocity")


def test_analytic_gaussian_on_flow_path_gives_the_closed_form_eps():
    m, cov = _gaussian()
    prior = GaussianPrior(m.reshape(1, 2, 2), cov, noise_path="flow", shift=3.0)
    assert prior.noise_path == "flow" and prior.num_timesteps == 1000
    t = torch.tensor([0, 120, 500, 900, 999])
    a, s = prior.path_alpha(t).double(), prior.path_sigma(t).double()
    torch.testing.assert_close(a + s, torch.ones_like(a))
    x = a[:, None] * m + torch.randn(5, 4, dtype=F64)            # path states x_t
    e_true = torch.cat([_posterior_means(x[i:i + 1], m, cov, a[i], s[i])[0] for i in range(5)])
    z = x / path_scale(a, s)[:, None]                            # VP coordinates the methods pass
    e = prior.eps(z.reshape(5, 1, 2, 2), t).reshape(5, 4).double()
    torch.testing.assert_close(e, e_true, rtol=1e-6, atol=1e-6)
    # noise levels: the flow prior's σ itself; keypoints map back to the nearest time
    torch.testing.assert_close(prior.sigma_of(t), prior.path_sigmas[t])
    assert abs(prior.sigma_of(prior.time_of_sigma(0.75)).item() - 0.75) < 2e-3
    vp = GaussianPrior(m.reshape(1, 2, 2), cov)
    t_vp = vp.time_of_sigma(0.5)                                 # SNR 1 on the VP path: ᾱ ≈ 1/2
    assert abs(vp.alphas_cumprod[t_vp].item() - 0.5) < 5e-3 and vp.noise_path == "vp"
    torch.testing.assert_close(vp.path_alpha(t), vp.alpha_bar(t).sqrt())
    with pytest.raises(ValueError, match="noise_path"):
        GaussianPrior(m.reshape(1, 2, 2), cov, noise_path="edm")


@pytest.fixture(scope="module")
def flow_unet(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("flow_prior")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(root / "unet")
    diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(root / "scheduler")
    return root, unet.eval()


def test_flow_unet_prior_loads_and_converts_velocity(flow_unet):
    from vipaint.priors import DiffusersPrior

    root, unet = flow_unet
    prior = DiffusersPrior(str(root))
    assert prior.noise_path == "flow" and prior.prediction_type == "flow_prediction"
    sig = cap_flow_sigmas(flow_sigmas(1000, 3.0))
    torch.testing.assert_close(prior.path_sigmas, sig)
    torch.testing.assert_close(prior.alphas_cumprod, vp_equivalent_abar(1 - sig, sig))
    t = torch.tensor([0, 400, 999])
    z = torch.randn(3, 1, 8, 8)
    e = prior.eps(z, t)
    s = sig[t].float()
    x = z * path_scale(1 - s, s)[:, None, None, None]
    with torch.no_grad():
        u = unet(x, s * 1000).sample                              # the network sees x and σ·N
    assert u.abs().mean() > 1e-3
    torch.testing.assert_close(e, x + (1 - s)[:, None, None, None] * u, rtol=1e-5, atol=1e-5)
    assert torch.allclose(prior.model_time(t), s * 1000)
    z.requires_grad_(True)
    prior.eps(z, t).square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # a config with dynamic shifting is refused unless a fixed flow_shift is given
    import json
    cfg_file = root / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "use_dynamic_shifting": True}))
    try:
        with pytest.raises(ValueError, match="flow_shift"):
            DiffusersPrior(str(root))
        p2 = DiffusersPrior(str(root), flow_shift=2.0)
        torch.testing.assert_close(p2.path_sigmas, cap_flow_sigmas(flow_sigmas(1000, 2.0)))
    finally:
        cfg_file.write_text(json.dumps(cfg))


def test_flow_prior_from_in_memory_models_and_flow_shift_needs_a_flow_scheduler(flow_unet):
    import diffusers

    from vipaint.priors import DiffusersPrior

    _, unet = flow_unet
    prior = DiffusersPrior.from_models(unet, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    assert prior.noise_path == "flow" and prior.prediction_type == "flow_prediction"
    torch.testing.assert_close(prior.path_sigmas, cap_flow_sigmas(flow_sigmas(1000, 3.0)))
    with pytest.raises(ValueError, match="flow_shift"):
        DiffusersPrior.from_models(unet, diffusers.DDPMScheduler(), flow_shift=3.0)
