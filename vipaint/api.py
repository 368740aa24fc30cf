"""The one-call public API: `vipaint.solve(method, prior, operator, y, ...)`.

The input contract is checked here, before any computation, with messages that name the offending
argument or option and its allowed range: y's shape against the prior's `image_shape` and the operator,
binary inpainting masks, a finite σ_y ≥ 0, and the numeric method options (`check_options`)."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from vipaint.methods import METHODS, MethodResult, VIPaintConfig
from vipaint.methods.steps import count_codec
from vipaint.operators import Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["solve", "solve_full", "check_inputs", "check_options", "InputError", "UnknownOptionError"]


class InputError(ValueError):
    """An argument or option of `solve` is outside its allowed range (a user error, not a bug)."""


class UnknownOptionError(InputError, TypeError):
    """A method option the method does not have (also a TypeError, as for an unexpected keyword)."""


_INT_OPTIONS: dict[str, tuple[int, bool]] = {          # name → (minimum, None allowed)
    "iterations": (1, False), "n_mc": (1, False), "n_steps": (1, True), "refine_steps": (1, True),
    "lr_step": (1, False), "prior_grid_points": (2, False), "t_T": (1, False), "jump_length": (1, False),
    "jump_n_sample": (1, False), "travel_length": (1, False), "travel_repeat": (1, False), "n_opt": (1, False),
    "max_backtracks": (0, False),
}
_POSITIVE_OPTIONS = ("likelihood_scale", "refine_likelihood_scale", "lr_mu", "lr_logvar", "lr_gamma", "lr", "lr_xt",
                     "gamma_init", "std_scale")   # finite and > 0 (None allowed where the default is None)
_NONNEGATIVE_OPTIONS = ("zeta", "eta", "eta_fit", "eta_refine", "beta_prior", "beta_hier", "omega", "gamma",
                        "grad_term_weight", "obs_weight", "sigma_x0", "coef_reg", "guidance_scale", "fit_guidance",
                        "refine_guidance")   # finite and ≥ 0


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_int(name: str, v: object, low: int, none_ok: bool) -> None:
    if v is None and none_ok:
        return
    if not _is_int(v) or v < low:
        extra = " or None" if none_ok else ""
        raise InputError(f"option {name} must be an integer >= {low}{extra}, got {v!r}")


def _check_real(name: str, v: object, *, strict: bool) -> None:
    if v is None:
        return
    if not _is_real(v) or not math.isfinite(float(v)) or (v <= 0 if strict else v < 0):
        bound = "> 0" if strict else ">= 0"
        raise InputError(f"option {name} must be a finite number {bound}, got {v!r}")


def _check_keypoints(v: object, prior: Prior) -> None:
    t = prior.num_timesteps
    if (not isinstance(v, Sequence) or isinstance(v, str) or len(v) == 0 or not all(_is_int(k) for k in v)
            or min(v) < 1 or max(v) >= t - 1 or list(v) != sorted(set(v), reverse=True)):
        raise InputError(f"option keypoints must be a non-empty, strictly decreasing list of integers in "
                         f"[1, {t - 1}) (T = {t}), got {v!r}")


def _allowed_options(method: str) -> set[str] | None:
    """The option names `method` accepts (None: any, checked by the method itself)."""
    if method == "vipaint":
        return set(VIPaintConfig.__dataclass_fields__) | {"config"}
    params = inspect.signature(METHODS[method]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n not in ("prior", "operator", "y", "n_samples", "rng", "cond", "progress")}


def check_options(method: str, prior: Prior, options: dict[str, object]) -> None:
    """Raise `InputError` naming the first method option outside its allowed range (or unknown)."""
    allowed = _allowed_options(method)
    if allowed is not None:
        unknown = sorted(set(options) - allowed)
        if unknown:
            label = "VIPaint option(s)" if method == "vipaint" else f"option(s) for method {method!r}"
            raise UnknownOptionError(f"unknown {label} {unknown}; allowed: {sorted(allowed)}")
    for name, v in options.items():
        if name in _INT_OPTIONS:
            _check_int(name, v, *_INT_OPTIONS[name])
        elif name in _POSITIVE_OPTIONS:
            _check_real(name, v, strict=True)
        elif name in _NONNEGATIVE_OPTIONS:
            _check_real(name, v, strict=False)
        elif name == "keypoints":
            _check_keypoints(v, prior)
        elif name == "s_top" and (not _is_real(v) or not 0 <= v <= 1):   # 0: μ_1 at the filled observation
            raise InputError(f"option s_top must be a number in [0, 1], got {v!r}")
        elif name == "refine_time_power" and (not _is_real(v) or not math.isfinite(float(v)) or v < 1):
            raise InputError(f"option refine_time_power must be a finite number >= 1, got {v!r}")


def _check_mask(operator: Inpainting, image_shape: tuple[int, int, int]) -> None:
    m = operator.mask
    c, h, w = image_shape
    if m.dim() != 4 or tuple(m.shape[-2:]) != (h, w) or m.shape[1] not in (1, c):
        raise InputError(f"the inpainting mask has shape {tuple(m.shape)}; the prior's images are {tuple(image_shape)} "
                         f"(C, H, W), so the mask must be [B, 1, {h}, {w}] or [B, {c}, {h}, {w}]")
    if not ((m == 0) | (m == 1)).all():
        lo, hi = float(m.min()), float(m.max())
        raise InputError(f"the inpainting mask must be binary (1 = observed, 0 = hole); its values span "
                         f"[{lo:g}, {hi:g}]. Threshold it first, e.g. (mask > 0.5).float()")


def check_inputs(prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int,
                 indices: Sequence[int] | Tensor | None = None) -> None:
    """Raise `InputError` unless y, the operator and n_samples fit the prior (the contract of `solve`)."""
    if not isinstance(y, Tensor):
        raise InputError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() < 2:
        raise InputError(f"y must have a batch dimension, got shape {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise InputError("the observation y contains NaN or inf values")
    if not _is_int(n_samples) or n_samples < 1:
        raise InputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    sigma = getattr(operator, "sigma_y", 0.0)
    if not _is_real(sigma) or not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"sigma_y must be a finite number >= 0, got {sigma!r}")
    b = y.shape[0]
    if indices is not None and len(indices) != b:
        raise InputError(f"got {len(indices)} indices for a batch of {b} observations")
    if operator.batch_size not in (None, b):
        raise InputError(f"operator describes {operator.batch_size} images but y holds {b}")
    shape = tuple(prior.image_shape)
    if isinstance(operator, Inpainting):
        _check_mask(operator, shape)
    try:
        expected = tuple(operator.output_shape(shape))
    except RuntimeError as err:
        raise InputError(f"the operator {type(operator).__name__} cannot act on the prior's images of shape {shape} "
                         f"({err})") from err
    if tuple(y.shape[1:]) != expected:
        raise InputError(f"y has shape {tuple(y.shape)}, but the operator maps the prior's images {shape} to "
                         f"{expected}; expected y of shape [B, {', '.join(map(str, expected))}]")


def solve_full(method: str, prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int = 4,
               seed: int = 0, indices: Sequence[int] | Tensor | None = None, cond: Tensor | None = None,
               progress: bool = False, **options: object) -> MethodResult:
    """Like `solve`, returning the full `MethodResult` (samples, network passes, decoder / encoder calls,
    failures, traces)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    check_inputs(prior, operator, y, n_samples=n_samples, indices=indices)
    check_options(method, prior, options)
    b = y.shape[0]
    if indices is None:
        indices = list(range(b))
    rng = ImageRNG(seed, indices, stream=f"method:{method}", device=y.device)
    with count_codec(prior) as codec:                                   # decoder / encoder calls, all methods
        res = METHODS[method](prior, operator, y, n_samples=n_samples, rng=rng, cond=cond, progress=progress,
                              **options)
    res.n_decode, res.n_encode = codec.decode, codec.encode
    return res


def solve(method: str, prior: Prior, operator: LinearOperator, y: Tensor, *, n_samples: int = 4,
          seed: int = 0, indices: Sequence[int] | Tensor | None = None, cond: Tensor | None = None,
          progress: bool = False, **options: object) -> Tensor:
    """Posterior samples [n_samples, B, C, H, W] for the B observations y = A(x) + n.

    Args:
        method: "vipaint" or a peer method's name (see `vipaint.methods.METHODS`).
        prior: a `vipaint.priors.Prior` (diffusers or analytic).
        operator: a `vipaint.operators.LinearOperator` whose per-image parameters match y's batch.
        y: observations [B, ...], of the shape the operator gives for the prior's `image_shape`.
        n_samples: samples per observation (≥ 1).
        seed: global seed; image b draws from a stream derived from (seed, indices[b]).
        indices: dataset index of each observation (default 0..B−1).
        cond: class labels [B] for class-conditional priors; prompt ids [B] (`prior.prompt_ids(prompts,
            negative)`) for text-conditioned ones (Stable Diffusion).
        progress: show progress bars.
        **options: method options (for VIPaint, fields of `vipaint.methods.VIPaintConfig`), checked by
            `check_options`.

    Raises:
        InputError (a ValueError): an input or option outside its allowed range.
    """
    return solve_full(method, prior, operator, y, n_samples=n_samples, seed=seed, indices=indices,
                      cond=cond, progress=progress, **options).samples
