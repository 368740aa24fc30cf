"""VIPaint: fit q_λ by maximising the ELBO, then refine its samples by guided denoising
(docs/algorithm.md §2–§4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vipaint.diffusion import edm_time_grid
from vipaint.elbo import negative_elbo
from vipaint.likelihood import Likelihood
from vipaint.methods.base import MethodResult, Progress, initial_image
from vipaint.operators import LinearOperator
from vipaint.posterior import HierarchicalPosterior, sample_chain
from vipaint.priors.base import Prior
from vipaint.sampling import GuidedStep, guided_denoise, time_grid
from vipaint.seeding import ImageRNG

__all__ = ["VIPaintConfig", "vipaint", "fit_posterior", "refine"]


@dataclass
class VIPaintConfig:
    """All VIPaint options; defaults are the official code's (docs/algorithm.md §5), with its slips fixed
    (§7). Likelihood defaults to 100·L1 (Laplace, b = 0.01) with element means and β = 100. Stage 2
    guides with the same energy unless `refine_likelihood` is set; DPS's guidance is `refine_likelihood:
    l2norm, refine_reduction: sum, zeta: 0.5, stochastic: true, eta_refine: 1.0` (README, "VIPaint's
    options on the MNIST prior"). `init_fill` chooses what q's means start from in the holes: "zero"
    (official, A⁺y) or "observed_mean" (the mean of the observed pixels; `initial_image`)."""

    keypoints: list[int] = field(default_factory=lambda: [550, 400])
    iterations: int = 50
    n_mc: int = 5
    lr_mu: float = 0.1
    lr_logvar: float = 1e-3
    lr_gamma: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.99)
    lr_step: int = 10
    lr_gamma_decay: float = 0.99
    beta_prior: float = 100.0
    beta_hier: float = 100.0
    reduction: str = "mean"
    likelihood: str = "laplace"
    likelihood_scale: float | None = 0.01
    eta_fit: float = 0.2 ** 0.5
    s_top: float = 0.8
    gamma_init: float = 5.0
    std_scale: float = 0.7
    init_fill: str = "zero"
    prior_grid_points: int = 300
    fit_guidance: float = 1.0
    refine_steps: int | None = None
    zeta: float = 2.0
    eta_refine: float = 0.2
    stochastic: bool = False
    normalize_guidance: bool = False
    refine_guidance: float = 1.0
    clip_x0: bool = False
    refine_likelihood: str | None = None
    refine_likelihood_scale: float | None = None
    refine_reduction: str | None = None

    def make_likelihood(self) -> Likelihood:
        return Likelihood(self.likelihood, self.likelihood_scale, self.reduction)

    def make_refine_likelihood(self) -> Likelihood:
        """The guidance energy of stage 2: the fit's likelihood unless `refine_likelihood` is set (e.g.
        "l2norm" with `refine_reduction: sum` and ζ = 0.5 is DPS's guidance)."""
        if self.refine_likelihood is None:
            return self.make_likelihood()
        return Likelihood(self.refine_likelihood, self.refine_likelihood_scale,
                          self.refine_reduction or self.reduction)


def fit_posterior(prior: Prior, operator: LinearOperator, y: Tensor, rng: ImageRNG, cfg: VIPaintConfig,
                  *, cond: Tensor | None = None, progress: Progress | None = None
                  ) -> tuple[HierarchicalPosterior, Tensor, Tensor, list[str]]:
    """Stage 1 (docs/algorithm.md §3): Adam on the summed negative ELBO of the B observations.

    Returns the posterior, the objective trace [iterations, B], per-image failure flags [B] and reasons.
    An image whose objective or gradients turn non-finite is frozen and flagged.
    """
    if max(cfg.keypoints) >= prior.num_timesteps - 1 or min(cfg.keypoints) < 1:
        raise ValueError(f"keypoints {cfg.keypoints} must lie in [1, T-1) with T = {prior.num_timesteps}")
    y_enc = prior.encode(initial_image(operator, y, prior.image_shape, cfg.init_fill))
    post = HierarchicalPosterior.initialise(y_enc.detach(), prior, cfg.keypoints, rng, s_top=cfg.s_top,
                                            gamma_init=cfg.gamma_init, std_scale=cfg.std_scale)
    opt = torch.optim.Adam(post.param_groups(cfg.lr_mu, cfg.lr_logvar, cfg.lr_gamma), betas=cfg.adam_betas)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma_decay)
    grid = edm_time_grid(prior.alphas_cumprod, cfg.keypoints[0], n=cfg.prior_grid_points)
    lik = cfg.make_likelihood()
    b = y.shape[0]
    failed = torch.zeros(b, dtype=torch.bool)
    reasons = [""] * b
    trace = torch.zeros(cfg.iterations, b)
    for it in range(cfg.iterations):
        opt.zero_grad(set_to_none=True)
        terms = negative_elbo(post, prior, operator, y, lik, rng, n_mc=cfg.n_mc, grid=grid, eta=cfg.eta_fit,
                              beta_prior=cfg.beta_prior, beta_hier=cfg.beta_hier, reduction=cfg.reduction,
                              cond=cond)
        obj = terms.objective
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
    `cfg.make_refine_likelihood()`), ζ/‖A(x̂) − y‖₂ per sample if `cfg.normalize_guidance`.

    Returns D(x̂0) of the last step [S, B, *image] and the number of ε_θ passes (each with backprop
    when ζ ≠ 0)."""
    lik = likelihood if likelihood is not None else cfg.make_refine_likelihood()
    times = time_grid(cfg.keypoints[-1], cfg.refine_steps)
    opts = GuidedStep(zeta=cfg.zeta, eta=cfg.eta_refine, stochastic=cfg.stochastic,
                      clip="both" if cfg.clip_x0 else "off", guidance_scale=cfg.refine_guidance)

    def energy(x: Tensor, _: Tensor) -> Tensor:
        return lik(x, y, operator)                                                    # [S, B]

    def residual_norm(x: Tensor) -> Tensor:
        return (operator(x) - y).flatten(2).norm(dim=-1).clamp_min(1e-8)             # [S, B]

    out = guided_denoise(prior, z, times, opts, energy=energy,
                         grad_norm=residual_norm if cfg.normalize_guidance else None, cond=cond, rng=rng,
                         final_image=True, progress=progress)
    return out.image, len(times)


def vipaint(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
            cond: Tensor | None = None, progress: bool = False, config: VIPaintConfig | None = None,
            **options: object) -> MethodResult:
    """VIPaint for B observations y [B, ...]: one fit of q_λ per observation, then `n_samples` refined
    samples per observation. Options override `VIPaintConfig` fields."""
    cfg = config or VIPaintConfig()
    if options:
        unknown = set(options) - set(VIPaintConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown VIPaint option(s) {sorted(unknown)}; see VIPaintConfig")
        cfg = VIPaintConfig(**{**cfg.__dict__, **options})
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
    nfe = cfg.iterations * (k + 1) + (k - 1) + n_ref
    nbp = cfg.iterations * (k + 1) + (n_ref if cfg.zeta != 0 else 0)
    return MethodResult(samples=x, nfe=nfe, n_backprop=nbp, failed=failed, reasons=reasons,
                        traces={"objective": trace})
