"""The search space of every tuned method, in this one place.

Each method has a `SearchSpace`: fixed options (e.g. VIPaint's preset), and one `Knob` per tuned
hyper-parameter with its range, its scale (log for step sizes and weights, linear otherwise) and the
published value, which lies inside the range (a test checks it). Configuration 0 of every search is the
published setting. Ranges are wide around the published values because those were set for 256² images and
the guidance weights scale with the image size (docs/algorithm.md §10.0).

`predicted_nfe` gives the network passes of a configuration before it runs, for the methods whose count
follows from their options; the others (VIPaint, CoPaint's backtracking) are checked after the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from vipaint.methods.repaint import REPAINT_SCHEDULES
from vipaint.methods.steps import jump_schedule, spaced_times

__all__ = ["Knob", "SearchSpace", "predicted_nfe", "search_spaces"]


@dataclass(frozen=True)
class Knob:
    """One tuned hyper-parameter: values in [low, high] on a `scale` ("log" or "linear"), integers if
    `integer`; `published` is the paper's / official code's value."""

    name: str
    low: float
    high: float
    published: float
    scale: str = "log"
    integer: bool = False

    def __post_init__(self) -> None:
        if self.scale not in ("log", "linear"):
            raise ValueError(f"knob {self.name}: scale must be 'log' or 'linear', got {self.scale!r}")
        if not self.low <= self.published <= self.high:
            raise ValueError(f"knob {self.name}: published value {self.published} outside [{self.low}, {self.high}]")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"knob {self.name}: a log scale needs low > 0")

    def value(self, u: float) -> float | int:
        """The value at quantile u ∈ [0, 1] of the range on the knob's scale."""
        if self.scale == "log":
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        return int(round(v)) if self.integer else float(f"{v:.4g}")


@dataclass(frozen=True)
class SearchSpace:
    """A method's tuned knobs and fixed options; `method` is the `vipaint.methods` name it runs."""

    method: str
    knobs: tuple[Knob, ...]
    fixed: dict = field(default_factory=dict)
    nfe: Callable[[dict, int], int] | None = None

    def published(self) -> dict:
        """The published setting: the fixed options and every knob at its published value."""
        return {**self.fixed, **{k.name: (int(k.published) if k.integer else k.published) for k in self.knobs}}


def _steps_nfe(opts: dict, num_timesteps: int) -> int:
    return len(spaced_times(num_timesteps, opts.get("n_steps")))


def _ddnm_nfe(opts: dict, num_timesteps: int) -> int:
    levels = jump_schedule(len(spaced_times(num_timesteps, opts.get("n_steps", 100))),
                           opts.get("travel_length", 1), opts.get("travel_repeat", 1))
    return sum(1 for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a)


def _repaint_nfe(opts: dict, num_timesteps: int) -> int:
    t_T, jl, jn = REPAINT_SCHEDULES[opts.get("schedule", "official")]
    levels = jump_schedule(len(spaced_times(num_timesteps, opts.get("t_T", t_T))), opts.get("jump_length", jl),
                           opts.get("jump_n_sample", jn))
    return sum(1 for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a)


def predicted_nfe(space: SearchSpace, opts: dict, num_timesteps: int) -> int | None:
    """Network passes per sample of options `opts` on a prior with T = `num_timesteps` (None: known only
    after the run)."""
    return None if space.nfe is None else space.nfe(opts, num_timesteps)


def search_spaces() -> dict[str, SearchSpace]:
    """Every tunable method's space, by the name a benchmark spec gives it."""
    steps = Knob("n_steps", 50, 1000, 1000, integer=True)
    return {
        # VIPaint: the refinement's guidance weight ζ, the mean's learning rate and the fitting iterations
        "vipaint": SearchSpace("vipaint", (Knob("zeta", 0.1, 10.0, 1.0), Knob("lr_mu", 0.01, 1.0, 0.1),
                                           Knob("iterations", 10, 100, 50, integer=True)),
                               fixed={"preset": "principled"}),
        "vipaint_official": SearchSpace("vipaint", (Knob("zeta", 0.2, 20.0, 2.0), Knob("lr_mu", 0.01, 1.0, 0.1),
                                                    Knob("beta_prior", 1.0, 1000.0, 100.0)),
                                        fixed={"preset": "official"}),
        "dps": SearchSpace("dps", (Knob("zeta", 0.01, 5.0, 0.5), steps), nfe=_steps_nfe),
        "psld": SearchSpace("psld", (Knob("omega", 0.05, 5.0, 1.0), Knob("gamma", 0.005, 1.0, 0.1), steps),
                            nfe=_steps_nfe),
        "reddiff": SearchSpace("reddiff", (Knob("lr", 0.01, 1.0, 0.1), Knob("grad_term_weight", 0.025, 2.5, 0.25),
                                           steps), nfe=_steps_nfe),
        "ddnm": SearchSpace("ddnm", (Knob("eta", 0.0, 1.0, 0.85, scale="linear"),
                                     Knob("n_steps", 20, 250, 100, integer=True)), fixed={"mode": "auto"},
                            nfe=_ddnm_nfe),
        "repaint": SearchSpace("repaint", (Knob("t_T", 50, 250, 250, integer=True),
                                           Knob("jump_n_sample", 1, 10, 10, scale="linear", integer=True),
                                           Knob("jump_length", 5, 20, 10, integer=True)),
                               fixed={"schedule": "official"}, nfe=_repaint_nfe),
        "copaint": SearchSpace("copaint", (Knob("lr_xt", 0.002, 0.2, 0.02), Knob("coef_reg", 1e-4, 0.1, 0.01),
                                           Knob("n_steps", 50, 250, 250, integer=True)),
                               fixed={"config": "imagenet"}),
    }
