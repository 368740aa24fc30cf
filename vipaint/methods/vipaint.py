"""VIPaint: fit q_λ by maximising the ELBO, then refine its samples by guided denoising
(docs/algorithm.md §2–§4)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from vipaint.conditional_score import conditional_score_cg, linearised_forward
from vipaint.diffusion import x0_variance
from vipaint.likelihood import Likelihood
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.vipaint_objective import FitObjective, initialise_fit, prior_data_variance
from vipaint.methods.vipaint_presets import preset_values
from vipaint.operators import LinearOperator
from vipaint.posterior import HierarchicalPosterior, sample_chain
from vipaint.priors.base import Prior
from vipaint.sampling import GuidedStep, abar, descend, guided_denoise, guided_step, time_grid
from vipaint.seeding import ImageRNG

__all__ = ["VIPaintConfig", "FitObjective", "vipaint", "initialise_fit", "fit_posterior", "refine",
           "prior_data_variance"]


class _Unset:
    """Marks a field the caller did not set: `VIPaintConfig.__post_init__` fills it from the preset."""

    def __repr__(self) -> str:
        return "<from preset>"


_FROM_PRESET: Any = _Unset()


@dataclass
class VIPaintConfig:
    """All VIPaint options. `preset` ("principled", the default, "official" or "sd35_official"; `preset_values`)
    fills every field the caller leaves out; explicit fields win (docs/algorithm.md §5, §9, §11.5).

    Keypoints: `keypoints` are time indices of the prior's grid (T_e > … > T_s); `keypoint_sigmas`, when set,
    replaces them by the times of these noise levels λ = σ/(α+σ) on the prior's path (`Prior.time_of_sigma`,
    docs/algorithm.md §11.4: the rectified-flow σ; on a VP prior λ = 0.5 is ᾱ = 1/2), so one setting means
    the same noise on every path. `zeta_latent_area` A, when set, rescales the refinement step to the prior's
    latent: ζ·(h·w)/A (a step tuned on mean-reduced losses at an h·w = A latent, docs/algorithm.md §11.5).

    Fit (stage 1, docs/algorithm.md §2–§3): `likelihood` / `likelihood_scale` / `reduction` as in
    `Likelihood`; `likelihood_variance` "tweedie" adds r_t² = v σ_t²/(ᾱ_t v + σ_t²) (eq. 3.8) to a Gaussian
    likelihood's variance, "jacobian" adds r_t² estimated per image from the network's Jacobian
    (Tweedie's second-order identity, eq. 3.9), "covariance" refines with the full-covariance likelihood
    N(y; A x̂0, σ_y² I + A Cov[x0|z_t] Aᵀ) solved by `cg_iterations` conjugate-gradient steps (eq. 4.3; the
    fit keeps the scalar r_{T_s}² of 3.9), "plugin" adds nothing; `data_variance` v for r_t² (None:
    `prior_data_variance`);
    `prior_exact_intervals` prior-loss intervals next to T_e summed exactly each iteration (eq. 3.6);
    `prior_interval_sampling` "uniform" (official: stratified, weight N) or "importance" (∝ the expected
    term of each interval, `interval_weights`, eq. 3.6–3.7);
    `std_scale` q's initial transition std in units of the DDPM posterior std (None: η_fit, the prior
    kernel's, so the hierarchical KL starts near 0); `init_fill` "zero" (official, A⁺y) or "observed_mean"
    (`initial_image`); `lr_relative` multiplies `lr_mu` by √v (the latent's std).
    Refinement (stage 2, docs/algorithm.md §4): `refine_steps` network times from T_s, spaced as
    T_s·(1 − i/n)^`refine_time_power` (1: uniform, eq. 4.4); `guidance_form` "subtract" (z_s = z' − ζ∇E,
    official) or
    "score" (ε̂ ← ε̂ + ζ σ_t ∇E, eq. 4.2); `zeta_over_samples` divides ζ by S (the official code
    differentiates the mean over its S samples). Stage 2 guides with the fit's likelihood (with r_t² at
    each step when "tweedie") unless `refine_likelihood` is set; DPS's guidance is `refine_likelihood:
    l2norm, refine_reduction: sum, zeta: 0.5, stochastic: true, eta_refine: 1.0`."""

    preset: str = "principled"
    keypoints: list[int] = _FROM_PRESET
    keypoint_sigmas: list[float] | None = _FROM_PRESET
    iterations: int = _FROM_PRESET
    n_mc: int = _FROM_PRESET
    lr_mu: float = _FROM_PRESET
    lr_logvar: float = _FROM_PRESET
    lr_gamma: float = _FROM_PRESET
    adam_betas: tuple[float, float] = _FROM_PRESET
    lr_step: int = _FROM_PRESET
    lr_gamma_decay: float = _FROM_PRESET
    lr_relative: bool = _FROM_PRESET
    beta_prior: float = _FROM_PRESET
    beta_hier: float = _FROM_PRESET
    reduction: str = _FROM_PRESET
    likelihood: str = _FROM_PRESET
    likelihood_scale: float | None = _FROM_PRESET
    likelihood_variance: str = _FROM_PRESET
    data_variance: float | None = _FROM_PRESET
    prior_exact_intervals: int = _FROM_PRESET
    prior_interval_sampling: str = _FROM_PRESET
    eta_fit: float = _FROM_PRESET
    s_top: float = _FROM_PRESET
    gamma_init: float = _FROM_PRESET
    std_scale: float | None = _FROM_PRESET
    init_fill: str = _FROM_PRESET
    prior_grid_points: int = _FROM_PRESET
    fit_guidance: float = _FROM_PRESET
    refine_steps: int | None = _FROM_PRESET
    refine_time_power: float = _FROM_PRESET
    zeta: float = _FROM_PRESET
    zeta_latent_area: float | None = _FROM_PRESET
    zeta_over_samples: bool = _FROM_PRESET
    guidance_form: str = _FROM_PRESET
    eta_refine: float = _FROM_PRESET
    stochastic: bool = _FROM_PRESET
    normalize_guidance: bool = _FROM_PRESET
    refine_guidance: float = _FROM_PRESET
    clip_x0: bool = _FROM_PRESET
    refine_likelihood: str | None = _FROM_PRESET
    refine_likelihood_scale: float | None = _FROM_PRESET
    refine_reduction: str | None = _FROM_PRESET
    cg_iterations: int = _FROM_PRESET
    explicit: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = preset_values(self.preset)
        explicit = set()
        for name, value in values.items():
            if getattr(self, name) is _FROM_PRESET:
                setattr(self, name, value)
            else:
                explicit.add(name)
        self.explicit = frozenset(explicit)
        if self.prior_interval_sampling not in ("uniform", "importance"):
            raise ValueError("prior_interval_sampling must be 'uniform' or 'importance', got "
                             f"{self.prior_interval_sampling!r}")
        if self.likelihood_variance not in ("plugin", "tweedie", "jacobian", "covariance"):
            raise ValueError("likelihood_variance must be 'plugin', 'tweedie', 'jacobian' or 'covariance', got "
                             f"{self.likelihood_variance!r}")

    def overridden(self, **options: object) -> VIPaintConfig:
        """A copy with `options` set; a new `preset` keeps only this config's explicit fields."""
        unknown = set(options) - (set(self.__dataclass_fields__) - {"explicit"})
        if unknown:
            raise TypeError(f"unknown VIPaint option(s) {sorted(unknown)}; see VIPaintConfig")
        mine = {k: getattr(self, k) for k in self.explicit}
        return VIPaintConfig(**{"preset": self.preset, **mine, **options})  # type: ignore[arg-type]

    def for_prior(self, prior: Prior) -> VIPaintConfig:
        """This config resolved against `prior` (idempotent): `keypoint_sigmas` → `keypoints` (times of those
        noise levels, docs/algorithm.md §11.4) and ζ rescaled by `zeta_latent_area` (§11.5)."""
        out = copy.copy(self)
        if self.keypoint_sigmas is not None:
            times = [prior.time_of_sigma(s) for s in self.keypoint_sigmas]
            if any(a <= b for a, b in zip(times[:-1], times[1:], strict=False)):
                raise ValueError(f"keypoint_sigmas {self.keypoint_sigmas} give times {times} on this prior; they must "
                                 f"be strictly decreasing noise levels that land on distinct times")
            out.keypoints = times
        if self.zeta_latent_area is not None:
            _, h, w = prior.latent_shape
            out.zeta, out.zeta_latent_area = self.zeta * h * w / float(self.zeta_latent_area), None
        return out

    def make_likelihood(self) -> Likelihood:
        return Likelihood(self.likelihood, self.likelihood_scale, self.reduction)

    def make_refine_likelihood(self) -> Likelihood:
        """The guidance energy of stage 2: the fit's likelihood unless `refine_likelihood` is set (e.g.
        "l2norm" with `refine_reduction: sum` and ζ = 0.5 is DPS's guidance)."""
        if self.refine_likelihood is None:
            return self.make_likelihood()
        return Likelihood(self.refine_likelihood, self.refine_likelihood_scale,
                          self.refine_reduction or self.reduction)

    def variance_mode(self, likelihood: Likelihood) -> str:
        """How `likelihood` gets r_t² added: "tweedie" (eq. 3.8, from v), "jacobian" (eq. 3.9, estimated
        from the network) or "plugin" (not at all; always for non-Gaussian likelihoods)."""
        return self.likelihood_variance if likelihood.kind == "gaussian" else "plugin"


def fit_posterior(prior: Prior, operator: LinearOperator, y: Tensor, rng: ImageRNG, cfg: VIPaintConfig,
                  *, cond: Tensor | None = None, progress: Progress | None = None
                  ) -> tuple[HierarchicalPosterior, Tensor, Tensor, list[str]]:
    """Stage 1 (docs/algorithm.md §3): Adam on the summed negative ELBO of the B observations.

    Returns the posterior, the objective trace [iterations, B], per-image failure flags [B] and reasons.
    An image whose objective or gradients turn non-finite is frozen and flagged.
    """
    cfg = cfg.for_prior(prior)
    post, objective = initialise_fit(prior, operator, y, rng, cfg, cond=cond)
    lr_mu = cfg.lr_mu * objective.data_variance ** 0.5 if cfg.lr_relative else cfg.lr_mu
    opt = torch.optim.Adam(post.param_groups(lr_mu, cfg.lr_logvar, cfg.lr_gamma), betas=cfg.adam_betas)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma_decay)
    b = y.shape[0]
    failed = torch.zeros(b, dtype=torch.bool)
    reasons = [""] * b
    trace = torch.zeros(cfg.iterations, b)
    for it in range(cfg.iterations):
        opt.zero_grad(set_to_none=True)
        obj = objective(post, prior, operator, y, rng, cond)
        bad = ~torch.isfinite(obj.detach()).cpu()
        for i in torch.nonzero(bad & ~failed).flatten().tolist():
            reasons[i] = f"non-finite ELBO at iteration {it} (objective {obj[i].item()})"
        failed |= bad
        trace[it] = obj.detach().cpu()
        torch.where(failed.to(obj.device), torch.zeros_like(obj), obj).sum().backward()   # sum, never mean
        for p in post.parameters():
            g = p.grad
            gbad = (~torch.isfinite(g)).flatten(2).any(-1).any(0).cpu() if g is not None else None
            if gbad is not None and gbad.any():
                for i in torch.nonzero(gbad & ~failed).flatten().tolist():
                    reasons[i] = f"non-finite gradient at iteration {it}"
                failed |= gbad
        for p in post.parameters():
            if p.grad is not None:
                p.grad[:, failed.to(p.device)] = 0.0
                p.grad.nan_to_num_(0.0, 0.0, 0.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress(it + 1, cfg.iterations, {"elbo": -float(trace[it].nanmean())})   # mean over the batch
    return post, trace, failed, reasons


def refine(prior: Prior, operator: LinearOperator, y: Tensor, z: Tensor, rng: ImageRNG, cfg: VIPaintConfig, *,
           likelihood: Likelihood | None = None, cond: Tensor | None = None,
           progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, int]:
    """Stage 2 (docs/algorithm.md §4): guided DDIM from z_{T_s} [S, B, *latent] (T_s = the last keypoint) on
    `time_grid(T_s, cfg.refine_steps)`, guided by ζ ∇ ℓ(D(x̂0); y) with ℓ = `likelihood` (default
    `cfg.make_refine_likelihood()`; with r_t² added at each step t under `likelihood_variance: tweedie` or
    `jacobian`, its full-covariance form (eq. 4.3) under `covariance`),
    ζ/S per sample if `cfg.zeta_over_samples`, ζ/‖A(x̂) − y‖₂ per sample if `cfg.normalize_guidance`, in
    the form `cfg.guidance_form` (eq. 4.1 "subtract", eq. 4.2 "score").

    Returns the samples [S, B, *image] — D(x̂0) of the last network step ("subtract"; the official
    output) or D(z_0) of the guided last step ("score") — and the number of ε_θ passes (each with
    backprop when ζ ≠ 0)."""
    cfg = cfg.for_prior(prior)
    lik = likelihood if likelihood is not None else cfg.make_refine_likelihood()
    times = time_grid(cfg.keypoints[-1], cfg.refine_steps, cfg.refine_time_power)
    zeta = cfg.zeta / z.shape[0] if cfg.zeta_over_samples else cfg.zeta
    opts = GuidedStep(zeta=zeta, eta=cfg.eta_refine, stochastic=cfg.stochastic,
                      clip="both" if cfg.clip_x0 else "off", guidance_scale=cfg.refine_guidance,
                      form="score" if cfg.guidance_form == "score" else "subtract")
    if cfg.guidance_form not in ("score", "subtract"):
        raise ValueError(f"guidance_form must be 'subtract' or 'score', got {cfg.guidance_form!r}")

    def residual_norm(x: Tensor) -> Tensor:
        return (operator(x) - y).flatten(2).norm(dim=-1).clamp_min(1e-8)             # [S, B]

    grad_norm = residual_norm if cfg.normalize_guidance else None
    mode = cfg.variance_mode(lik)
    if mode == "covariance":
        out = _refine_covariance(prior, operator, y, z, rng, cfg, lik, opts, times, cond, progress, grad_norm)
    elif mode == "jacobian":
        opts = replace(opts, x0_variance=True)

        def energy_r(x: Tensor, _: Tensor, r2: Tensor) -> Tensor:
            return lik(x, y, operator, r2)                                            # [S, B]

        out = guided_denoise(prior, z, times, opts, energy=energy_r, grad_norm=grad_norm,  # type: ignore[arg-type]
                             cond=cond, rng=rng, final_image=True, progress=progress)
    elif mode == "plugin":
        def energy(x: Tensor, _: Tensor) -> Tensor:
            return lik(x, y, operator)                                                # [S, B]

        out = guided_denoise(prior, z, times, opts, energy=energy, grad_norm=grad_norm, cond=cond, rng=rng,
                             final_image=True, progress=progress)
    else:
        v = prior_data_variance(prior, cfg)
        steps = descend(times)
        for i, (t, t_prev) in enumerate(steps):
            r2 = float(x0_variance(abar(prior, t, z).double().item(), v))

            def energy(x: Tensor, _: Tensor, r2: float = r2) -> Tensor:
                return lik(x, y, operator, r2)                                        # [S, B]

            out = guided_step(prior, z, t, t_prev, opts, energy=energy, grad_norm=grad_norm, cond=cond, rng=rng,
                              need_image=i == len(steps) - 1)
            z = out.z
            if progress is not None:
                progress(i + 1, len(steps))
    if opts.form == "score":
        with torch.no_grad():
            return prior.decode(out.z), len(times)
    return out.image, len(times)


def _refine_covariance(prior: Prior, operator: LinearOperator, y: Tensor, z: Tensor, rng: ImageRNG,
                       cfg: VIPaintConfig, lik: Likelihood, opts: GuidedStep, times: list[int],
                       cond: Tensor | None, progress: Callable[[int, int], None] | None,
                       grad_norm: Callable[[Tensor], Tensor] | None) -> Any:
    """Stage 2 under `likelihood_variance: covariance`: the guided steps of `refine` with ∇_{z_t} E the
    full-covariance Gaussian likelihood's, C_t v = y − A D(x̂0) solved by `cfg.cg_iterations` CG iterations
    (`conditional_score_cg`, docs/algorithm.md §4, eq. 4.3)."""
    s2 = lik.noise_variance(operator)

    def energy_grad(zt: Tensor, x0: Tensor, image: Tensor, ab: Tensor) -> Tensor:
        meas = operator(image)
        fwd = (linearised_forward(lambda x: operator(prior.decode(x)), x0) if prior.is_latent
               else (lambda s: operator(prior.decode(s))))
        return -conditional_score_cg(zt, meas, (y - meas).detach(), ab, s2, fwd, cfg.cg_iterations)

    steps = descend(times)
    out = None
    for i, (t, t_prev) in enumerate(steps):
        out = guided_step(prior, z, t, t_prev, opts, energy_grad=energy_grad, grad_norm=grad_norm, cond=cond,
                          rng=rng, need_image=i == len(steps) - 1)
        z = out.z
        if progress is not None:
            progress(i + 1, len(steps))
    return out


def vipaint(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
            cond: Tensor | None = None, progress: bool = False, config: VIPaintConfig | None = None,
            **options: object) -> MethodResult:
    """VIPaint for B observations y [B, ...]: one fit of q_λ per observation, then `n_samples` refined
    samples per observation. Options override `VIPaintConfig` fields (`preset` picks the defaults)."""
    cfg = (config or VIPaintConfig()).overridden(**options) if options else (config or VIPaintConfig())
    cfg = cfg.for_prior(prior)
    post, trace, failed, reasons = fit_posterior(prior, operator, y, rng, cfg, cond=cond,
                                                 progress=Progress("VIPaint fit", progress))
    with torch.no_grad():
        z = sample_chain(post, prior, n_samples, rng, eta=cfg.eta_fit, cond=cond,
                         guidance_scale=cfg.fit_guidance).z[-1]
    x, n_ref = refine(prior, operator, y, z, rng, cfg, cond=cond, progress=Progress("VIPaint refine", progress))
    bad = ~torch.isfinite(x).flatten(2).all(-1).all(0).cpu()
    for i in torch.nonzero(bad & ~failed).flatten().tolist():
        reasons[i] = "non-finite samples after refinement"
    failed = failed | bad
    k = len(cfg.keypoints)
    per_it = k + 1 + cfg.prior_exact_intervals            # + one pass per exactly summed interval
    jac = cfg.variance_mode(cfg.make_likelihood()) in ("jacobian", "covariance")
    ref_mode = cfg.variance_mode(cfg.make_refine_likelihood()) if cfg.zeta != 0 else "off"
    per_step = {"off": 0, "jacobian": 2, "covariance": cfg.cg_iterations}.get(ref_mode, 1)   # backprops per step
    nfe = cfg.iterations * per_it + (k - 1) + n_ref + (k if jac else 0)
    nbp = cfg.iterations * per_it + n_ref * per_step + (1 if jac else 0)
    return MethodResult(samples=x, nfe=nfe, n_backprop=nbp, failed=failed, reasons=reasons,
                        traces={"objective": trace})
