"""VIPaint's presets: named sets of `VIPaintConfig` defaults (docs/algorithm.md §5, §9).

- "principled" (the default): a true ELBO in nats (β = 1, sums over elements) with the variance-aware
  Gaussian likelihood N(y; A x̂0(z_t), σ_y² + r_t²) at T_s and, in the refinement, its full-covariance form
  N(y; A x̂0(z_t), σ_y² I + A Cov[x0|z_t] Aᵀ) by 4 conjugate-gradient iterations (eq. 4.3), the prior-loss
  intervals next to T_e computed exactly every iteration, q initialised on the prior (transition std =
  the kernel's, holes at the observed mean), learning rates in units of the latent's std, and the
  refinement step ε̂ → ε̂ + ζ σ_t ∇_{z_t} E (ζ = 1: the conditional score; docs/algorithm.md §4, §9) on 100
  ancestral steps at times T_s(1 − i/100)² (eq. 4.4: packed toward t = 0, 94 distinct times from T_s = 400).
- "official": the official LDM code's behaviour (docs/algorithm.md §5): 100·L1 with element means,
  β = 100, the official learning rates and initialisation, and a refinement step of ζ/S per sample (the
  official code differentiates the mean over its S samples). Setting `zeta_over_samples: false` on top
  of it gives the settings this repository used as its defaults before the presets existed (the full ζ
  per sample); every committed study that ran those defaults says so in its spec.
- "sd35_official": the official SD3.5 (rectified-flow) VIPaint's settings where our code can express them, with
  its slips fixed (docs/algorithm.md §11.5): keypoints at noise levels σ 0.75 / 0.50, Adam lr 0.2 for 50
  iterations, 50·MSE in pixels, refinement of 249 deterministic steps from σ 0.5 guided by 20·L1 with step 650 on
  mean-reduced losses, rescaled from the official 128² latents to the prior's, initial transition std 1.

Explicit `VIPaintConfig` fields always win over the preset's value.
"""

from __future__ import annotations

__all__ = ["PRESET_NAMES", "preset_values"]

PRESET_NAMES = ("principled", "official", "sd35_official")


def _official() -> dict[str, object]:
    return dict(
        keypoints=[550, 400], keypoint_sigmas=None, iterations=50, n_mc=5,
        lr_mu=0.1, lr_logvar=1e-3, lr_gamma=1e-2, adam_betas=(0.9, 0.99), lr_step=10, lr_gamma_decay=0.99,
        lr_relative=False,
        beta_prior=100.0, beta_hier=100.0, reduction="mean",
        likelihood="laplace", likelihood_scale=0.01, likelihood_variance="plugin", data_variance=None,
        prior_exact_intervals=0, prior_interval_sampling="uniform",
        eta_fit=0.2 ** 0.5, s_top=0.8, gamma_init=5.0, std_scale=0.7, init_fill="zero",
        prior_grid_points=300, fit_guidance=1.0,
        refine_steps=None, refine_time_power=1.0, zeta=2.0, zeta_latent_area=None, zeta_over_samples=True,
        guidance_form="subtract",
        eta_refine=0.2, stochastic=False, normalize_guidance=False, refine_guidance=1.0, clip_x0=False,
        refine_likelihood=None, refine_likelihood_scale=None, refine_reduction=None, cg_iterations=4,
    )


def _principled() -> dict[str, object]:
    return {**_official(), **dict(
        lr_mu=0.1, lr_logvar=0.05, lr_gamma=0.1, lr_relative=True,
        beta_prior=1.0, beta_hier=1.0, reduction="sum",
        likelihood="gaussian", likelihood_scale=None, likelihood_variance="covariance", cg_iterations=4,
        prior_exact_intervals=2, prior_interval_sampling="importance",
        std_scale=None, init_fill="observed_mean",
        refine_steps=100, refine_time_power=2.0, zeta=1.0, zeta_over_samples=False, guidance_form="score",
        eta_refine=1.0, stochastic=True,
    )}


def _sd35_official() -> dict[str, object]:
    """docs/algorithm.md §11.5: the mapping and what it leaves out."""
    return {**_official(), **dict(
        keypoint_sigmas=[0.75, 0.5], iterations=50,
        lr_mu=0.2, lr_logvar=0.2, lr_gamma=0.2, adam_betas=(0.9, 0.999), lr_step=1, lr_gamma_decay=1.0,
        lr_relative=False,
        beta_prior=1.0, beta_hier=1.0, reduction="mean",
        likelihood="gaussian", likelihood_scale=0.1, likelihood_variance="plugin",     # 50·MSE = Σr²/(2·0.1²)/P
        eta_fit=1.0, std_scale=1.0, init_fill="zero",
        refine_steps=249, zeta=650.0, zeta_latent_area=128.0 * 128.0, zeta_over_samples=False,
        guidance_form="subtract", eta_refine=0.0, stochastic=False,
        refine_likelihood="laplace", refine_likelihood_scale=0.05, refine_reduction="mean",   # 20·L1
    )}


def preset_values(name: str) -> dict[str, object]:
    """Every `VIPaintConfig` field's value under preset `name` (a fresh dict)."""
    if name == "official":
        return _official()
    if name == "principled":
        return _principled()
    if name == "sd35_official":
        return _sd35_official()
    raise ValueError(f"unknown VIPaint preset {name!r}; use one of {PRESET_NAMES}")
