"""CoPaint / CoPaint-TT — coherent inpainting by optimising x_t (Zhang et al., "Towards Coherent Image
Inpainting Using Denoising Diffusion Implicit Models", ICML 2023; docs/algorithm.md §10.6).

Deterministic DDIM (σ = 0). Before each step, `n_opt` gradient steps on x_t of

    L(x_t) = ‖M ⊙ (y − x̂0(x_t))‖² + c_reg ‖x_t − x_t^orig‖²

(backprop through the network), with the official step-size schedule: the step size is
lr_k = lr_xt · lr_decay^k · √(ᾱ_t/ᾱ_{τ_0}) at the k-th reverse step ("smart" decay), c_reg grows by
`coef_reg_decay` per step (both undone on time-travel moves), and a step is accepted only if it does
not increase L, else its step size shrinks ×0.8 and it is retried ("adaptive" rule).

Pitfall avoided: the official code compares the BATCH-SUMMED loss and shrinks ONE scalar step size for
the whole batch, so an image's result depends on its batch. Here the rule is applied per sample and
image (an [S, B] tensor of step sizes); only the (batched) network calls are shared. The retry loop
is capped at `max_backtracks` (official: unbounded); a sample still failing then keeps x_t unchanged.

CoPaint-TT (`time_travel=True`) adds RePaint-style time travel with one-level forward re-noising and
(official `optimize_before_time_travel`) one more optimisation of x_t before going back.
Defaults [repo `configs/imagenet.yaml`, `config="imagenet"`]: 250 steps, n_opt = 2, lr_xt = 0.02,
lr_decay = 1.012, coef_reg = 0.01, coef_reg_decay = 1.0; `config="celebahq"` [repo `configs/celebahq.yaml`]
has coef_reg = 1e-4, coef_reg_decay = 1.01 (same step sizes); TT [repo `scripts/copaint-tt.sh`]:
jump_length = 10, jump_n_sample = 2. (The studies committed before the fix ran coef_reg 0.01 with decay
1.01, a mix of the two configs, and no clamping: pass both constants and `clip_x0=False` to reproduce them.)

Clamping (default on, as the official `clip_denoised: true`): x̂0 is clamped to [−1, 1] in the loss and in
the DDIM update, and x_t is clamped at the end.

NFE counts every network call (≥ 1 + n_opt per step: the accepted check's pass is reused as the next
iteration's graph, where the official code recomputes it); n_backprop = n_opt per optimisation.
Inpainting operators only.

Latent priors (docs/algorithm.md §10.6, eq. 10.6b): the data term is taken on the decoded estimate,
‖M ⊙ (y − D(ẑ0(z_t)))‖², backpropagating through decoder and network; the regulariser stays on the optimised
variable, c_reg ‖z_t − z_t^orig‖² (a noisy latent has no image to decode). Every loss evaluation decodes once,
so n_decode = NFE + 1 (the last decode is the output D(z)). The constants are the pixel ones, untuned for
latents; latent ẑ0 and z are never clamped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vipaint.diffusion import bcast, ddim_step, tweedie_x0
from vipaint.methods.base import MethodResult, Progress
from vipaint.methods.steps import finish, forward_jump, jump_schedule, level_times, pixel_clip
from vipaint.operators import Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.sampling import CLEAN, abar
from vipaint.seeding import ImageRNG

__all__ = ["copaint", "copaint_tt", "optimize_xt", "COPAINT_CONFIGS"]

COPAINT_CONFIGS: dict[str, tuple[float, float]] = {
    "imagenet": (0.01, 1.0),      # coef_xt_reg, coef_xt_reg_decay of the repo's configs/imagenet.yaml
    "celebahq": (1e-4, 1.01),     # configs/celebahq.yaml
}


def _loss(x: Tensor, x0: Tensor, origin: Tensor, y: Tensor, m: Tensor, coef: float) -> Tensor:
    """L per sample and image [S, B]: ‖M ⊙ (y − x̂0)‖² + c_reg ‖x − x^orig‖² (sums, as in the code); x̂0 the
    decoded estimate on a latent prior."""
    return (m * (y - x0)).flatten(2).square().sum(-1) + coef * (x - origin).flatten(2).square().sum(-1)


def optimize_xt(prior: Prior, z: Tensor, t: int, y: Tensor, m: Tensor, *, lr: float, coef: float, n_opt: int,
                adaptive: bool = True, max_backtracks: int = 30, clip_x0: bool = False,
                cond: Tensor | None = None, guidance_scale: float = 1.0
                ) -> tuple[Tensor, Tensor, Tensor, int]:
    """`n_opt` per-sample gradient steps on x_t [S, B, ...] (CoPaint eq. 10 with the adaptive rule;
    docs/algorithm.md §10.6, eq. 10.6 for pixel priors, 10.6b through the decoder for latent ones).

    Returns the optimised x_t, its ε̂ and x̂0 (detached; latents for a latent prior) and the number of network
    calls (each with one decoder call on a latent prior)."""
    ab = abar(prior, t, z)
    origin = z.detach()

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = prior.eps(x, t, cond, guidance_scale)
        x0 = tweedie_x0(x, e, ab)
        x0 = x0.clamp(-1, 1) if clip_x0 else x0
        image = prior.decode(x0) if prior.is_latent else x0                 # latent: D(ẑ0), eq. 10.6b
        return e, x0, _loss(x, image, origin, y, m, coef)

    x = origin.clone().requires_grad_(True)
    lrs = torch.full(z.shape[:2], float(lr), device=z.device, dtype=z.dtype)     # one step size per sample
    with torch.enable_grad():
        e, x0, loss = evaluate(x)
        calls = 1
        for _ in range(n_opt):
            (g,) = torch.autograd.grad(loss.sum(), x)
            tries = 0
            while True:
                cand = (x - bcast(lrs, g) * g).detach().requires_grad_(True)
                e_c, x0_c, new = evaluate(cand)
                calls += 1
                ok = torch.isfinite(new) & (new <= loss)
                if not adaptive or bool(ok.all()) or tries > max_backtracks:
                    break
                tries += 1                                       # last retry: step size 0 (x_t unchanged)
                lrs = torch.where(ok, lrs, lrs * 0.8 if tries < max_backtracks else torch.zeros_like(lrs))
            x, e, x0, loss = cand, e_c, x0_c, new
    return x.detach(), e.detach(), x0.detach(), calls


def copaint(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
            cond: Tensor | None = None, progress: bool = False, n_steps: int = 250, n_opt: int = 2,
            lr_xt: float = 0.02, lr_decay: float = 1.012, smart_lr: bool = True, adaptive_lr: bool = True,
            config: str = "imagenet", coef_reg: float | None = None, coef_reg_decay: float | None = None,
            max_backtracks: int = 30,
            time_travel: bool = False, jump_length: int = 10, jump_n_sample: int = 2,
            optimize_before_travel: bool = True, clip_x0: bool | None = None,
            guidance_scale: float = 1.0) -> MethodResult:
    """CoPaint (or CoPaint-TT with `time_travel=True`) samples [S, B, C, H, W] for masked y [B, C, H, W].

    Args:
        n_steps: DDIM levels (official 250).
        n_opt: gradient steps on x_t per level (official 2).
        lr_xt, lr_decay, smart_lr: step-size schedule lr_xt · lr_decay^k (· √(ᾱ_t/ᾱ_{τ_0}) if smart_lr).
        adaptive_lr: per-sample backtracking (×0.8 until the loss does not increase).
        config: which official config's regularisation constants to use: "imagenet" (0.01, 1.0) or
            "celebahq" (1e-4, 1.01), see `COPAINT_CONFIGS`.
        coef_reg, coef_reg_decay: weight of ‖x_t − x_t^orig‖² and its per-step growth factor (None: the
            config's).
        max_backtracks: cap on the retries of one gradient step.
        time_travel, jump_length, jump_n_sample, optimize_before_travel: CoPaint-TT settings.
        clip_x0: clamp x̂0 to [−1, 1] in the loss and update and x_t at the end (official on; it zeroes
            the gradient of clipped pixels); None: on for pixel priors, off for latent ones (True on a
            latent prior raises).
        guidance_scale: classifier-free guidance for class-conditional and text-conditioned priors.

    Raises:
        ValueError: for a non-inpainting operator, an unknown config, or clip_x0=True on a latent prior.
    """
    if config not in COPAINT_CONFIGS:
        raise ValueError(f"unknown CoPaint config {config!r}; use one of {sorted(COPAINT_CONFIGS)}")
    coef_reg = COPAINT_CONFIGS[config][0] if coef_reg is None else coef_reg
    coef_reg_decay = COPAINT_CONFIGS[config][1] if coef_reg_decay is None else coef_reg_decay
    if not isinstance(operator, Inpainting):
        raise ValueError(f"copaint only solves inpainting (an Inpainting operator); got {type(operator).__name__}")
    clip_x0 = pixel_clip(clip_x0, prior.is_latent, "copaint")
    s, shape, m = n_samples, tuple(prior.latent_shape), operator.mask
    times = level_times(prior, n_steps)
    levels = jump_schedule(len(times), jump_length, jump_n_sample) if time_travel else \
        list(range(len(times) - 1, -2, -1))
    n_rev = sum(1 for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a)
    bar = Progress("CoPaint-TT" if time_travel else "CoPaint", progress)
    ab_min = prior.alpha_bar(times[0]).to(y)
    opt = dict(n_opt=n_opt, adaptive=adaptive_lr, max_backtracks=max_backtracks, clip_x0=clip_x0, cond=cond,
               guidance_scale=guidance_scale)
    z = rng.randn(s, *shape, batch_dim=1).to(y)
    lr, coef, nfe, nbp, done, reverse = lr_xt, coef_reg, 0, 0, 0, False
    for cur, nxt in zip(levels[:-1], levels[1:], strict=True):
        t = times[cur]
        step_lr = lr * float((prior.alpha_bar(t).to(y) / ab_min).sqrt()) if smart_lr else lr
        if nxt > cur:                                                     # time travel back one level
            if reverse and optimize_before_travel:
                z, _, _, calls = optimize_xt(prior, z, t, y, m, lr=step_lr, coef=coef, **opt)
                nfe, nbp = nfe + calls, nbp + n_opt
            with torch.no_grad():
                z = forward_jump(z, abar(prior, t, z), abar(prior, times[nxt], z),
                                 rng.randn(s, *shape, batch_dim=1).to(z))
            lr, coef, reverse = lr / lr_decay, coef / coef_reg_decay, False
            continue
        z, e, x0, calls = optimize_xt(prior, z, t, y, m, lr=step_lr, coef=coef, **opt)
        nfe, nbp = nfe + calls, nbp + n_opt
        with torch.no_grad():
            z = ddim_step(x0, e, abar(prior, t, z), abar(prior, times[nxt] if nxt >= 0 else CLEAN, z), 0.0, None)
        lr, coef, reverse = lr * lr_decay, coef * coef_reg_decay, True
        done += 1
        bar(done, n_rev)
    z = z.clamp(-1.0, 1.0) if clip_x0 else z                              # official: x_t clamped at the end
    if prior.is_latent:
        with torch.no_grad():
            z = prior.decode(z)
    return finish(z, nfe=nfe, n_backprop=nbp)


def copaint_tt(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int, rng: ImageRNG,
               cond: Tensor | None = None, progress: bool = False, **options: object) -> MethodResult:
    """CoPaint-TT: `copaint` with `time_travel=True` (official TT: jump_length 10, jump_n_sample 2)."""
    return copaint(prior, operator, y, n_samples=n_samples, rng=rng, cond=cond, progress=progress,
                   time_travel=True, **options)  # type: ignore[arg-type]
