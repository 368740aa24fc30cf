"""The input contract of `vipaint.solve` / `solve_full` (issue 22, case 4 and the option checks)."""

import math

import pytest
import torch

from vipaint.api import InputError, UnknownOptionError, check_options, solve, solve_full
from vipaint.operators import Downsample, Inpainting
from vipaint.priors import GaussianMixturePrior


def _prior(h: int = 4, c: int = 1) -> GaussianMixturePrior:
    d = c * h * h
    g = torch.Generator().manual_seed(0)
    means = 0.5 * torch.randn(2, d, generator=g, dtype=torch.float64)
    covs = torch.stack([0.2 * torch.eye(d, dtype=torch.float64)] * 2)
    return GaussianMixturePrior(torch.ones(2), means, covs, image_shape=(c, h, h))


def _problem(h: int = 4, sigma_y: float = 0.1):
    mask = torch.ones(2, 1, h, h)
    mask[:, :, : h // 2] = 0
    op = Inpainting(mask, sigma_y=sigma_y)
    return op, op(torch.zeros(2, 1, h, h))


def test_valid_input_gives_samples_of_the_prior_shape() -> None:
    op, y = _problem()
    x = solve("exact", _prior(), op, y, n_samples=3)
    assert x.shape == (3, 2, 1, 4, 4)


def test_observation_smaller_than_the_prior_is_refused() -> None:
    # was: a 16×16 observation on a 32×32 prior returned 16×16 "samples"
    op, y = _problem(h=2)
    with pytest.raises(InputError, match=r"mask has shape \(2, 1, 2, 2\).*\(1, 4, 4\)"):
        solve("exact", _prior(h=4), op, y, n_samples=1)


def test_non_binary_mask_is_refused() -> None:
    # was: a mask with value 7 gave samples in [−43, 31]
    op, y = _problem()
    op.mask[0, 0, 0, 0] = 7.0
    with pytest.raises(InputError, match=r"must be binary.*\[0, 7\]"):
        solve("exact", _prior(), op, y, n_samples=1)


@pytest.mark.parametrize("sigma", [math.nan, math.inf])
def test_non_finite_sigma_y_is_refused(sigma: float) -> None:
    # was: σ_y = NaN was treated as 0
    op, y = _problem(sigma_y=sigma)
    with pytest.raises(InputError, match="sigma_y must be a finite number >= 0"):
        solve("exact", _prior(), op, y, n_samples=1)


def test_y_of_the_wrong_shape_for_the_operator_is_a_clear_error() -> None:
    # was: a bare RuntimeError from torch
    op, _ = _problem()
    with pytest.raises(InputError, match=r"y has shape \(2, 1, 3, 3\).*\[B, 1, 4, 4\]"):
        solve("exact", _prior(), op, torch.zeros(2, 1, 3, 3), n_samples=1)
    with pytest.raises(InputError, match="operator describes 2 images but y holds 3"):
        solve("exact", _prior(), op, torch.zeros(3, 1, 4, 4), n_samples=1)


def test_y_must_match_a_non_inpainting_operator_too() -> None:
    op = Downsample(factor=2, sigma_y=0.0)
    with pytest.raises(InputError, match=r"\[B, 1, 2, 2\]"):
        solve("exact", _prior(), op, torch.zeros(1, 1, 4, 4), n_samples=1)


def test_non_finite_y_is_refused() -> None:
    op, y = _problem()
    y[0, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match="NaN or inf"):
        solve("exact", _prior(), op, y, n_samples=1)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_n_samples_must_be_a_positive_integer(n: object) -> None:
    op, y = _problem()
    with pytest.raises(InputError, match=r"n_samples must be an integer >= 1"):
        solve("exact", _prior(), op, y, n_samples=n)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("n_mc", 0, r"option n_mc must be an integer >= 1, got 0"),
    ("iterations", 2.5, r"option iterations must be an integer >= 1, got 2.5"),
    ("iterations", -1, r"option iterations must be an integer >= 1"),
    ("keypoints", [], r"option keypoints must be a non-empty.*\[1, 999\)"),
    ("keypoints", [400, 550], r"strictly decreasing"),
    ("keypoints", [2000], r"\[1, 999\)"),
    ("likelihood_scale", 0, r"option likelihood_scale must be a finite number > 0, got 0"),
    ("likelihood_scale", math.nan, r"likelihood_scale must be a finite number > 0"),
    ("refine_steps", 0, r"option refine_steps must be an integer >= 1 or None"),
    ("zeta", -1.0, r"option zeta must be a finite number >= 0"),
    ("no_such_option", 1, r"unknown VIPaint option\(s\) \['no_such_option'\]; allowed: .*n_mc"),
])
def test_vipaint_options_are_checked_before_computing(option: str, value: object, message: str) -> None:
    op, y = _problem()
    with pytest.raises(InputError, match=message):
        solve("vipaint", _prior(), op, y, n_samples=1, **{option: value})


def test_peer_options_are_checked_and_unknown_names_listed() -> None:
    op, y = _problem()
    with pytest.raises(InputError, match=r"option n_steps must be an integer >= 1 or None, got 0"):
        solve("dps", _prior(), op, y, n_samples=1, n_steps=0)
    with pytest.raises(InputError, match=r"unknown option\(s\) for method 'dps' \['iterations'\]; allowed: .*n_steps"):
        solve("dps", _prior(), op, y, n_samples=1, iterations=3)


def test_valid_options_pass_and_input_error_is_a_value_error() -> None:
    check_options("vipaint", _prior(), {"iterations": 2, "n_mc": 1, "keypoints": [550, 400], "likelihood_scale": None,
                                        "refine_steps": None})
    assert issubclass(InputError, ValueError) and issubclass(UnknownOptionError, TypeError)
    op, y = _problem()
    with pytest.raises(ValueError, match="unknown method"):
        solve_full("nope", _prior(), op, y)


def test_s_top_zero_is_valid_and_out_of_range_refused() -> None:
    """s_top = 0 (μ_1 at the filled observation, the committed ablation row `s_top_0`) is valid; outside [0, 1]
    is refused."""
    check_options("vipaint", _prior(), {"s_top": 0.0})
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match=r"option s_top must be a number in \[0, 1\]"):
            check_options("vipaint", _prior(), {"s_top": bad})
