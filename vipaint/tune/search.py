"""The configurations a tuning run tries, the one it chooses, and the files that record them.

- `propose`: configuration 0 is the published setting, the others seeded random draws (each knob uniform
  on its scale), drawn one after another from one generator, so a larger budget extends a smaller one. A
  configuration whose predicted network passes exceed the cap is listed as rejected and another is drawn:
  every method gets the same number of configurations that run.
- `choose`: the best run configuration under the criterion declared in the spec (one metric and its goal,
  a tie-break metric), among those within the NFE cap as measured.
- `write_trials` / `read_trials`: `<method>.trials.csv`, rewritten atomically after every configuration;
  a rerun (after a kill, or from a fresh clone with the committed file) skips the configurations it lists.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vipaint.tune.spaces import SearchSpace, predicted_nfe

__all__ = ["Criterion", "Trial", "choose", "propose", "read_trials", "write_trials"]

TRIAL_COLUMNS = ("config", "status", "options", "nfe", "predicted_nfe", "value", "tie_break", "s_per_image",
                 "images", "metrics", "split_sha256")


@dataclass(frozen=True)
class Criterion:
    """The tuning criterion: `metric` of the benchmark's "all" row, minimised or maximised (`goal`), ties
    broken by `tie_break` (maximised if its name is psnr/ssim-like, else minimised)."""

    metric: str
    goal: str = "min"
    tie_break: str | None = "psnr"

    def __post_init__(self) -> None:
        if self.goal not in ("min", "max"):
            raise ValueError(f"criterion goal must be 'min' or 'max', got {self.goal!r}")

    def key(self, value: float, tie: float | None) -> tuple[float, float]:
        """Sort key, smaller is better (NaN last)."""
        v = math.inf if value is None or math.isnan(value) else (value if self.goal == "min" else -value)
        higher = self.tie_break is not None and self.tie_break.startswith(("psnr", "ssim", "coverage"))
        t = 0.0 if tie is None or math.isnan(tie) else (-tie if higher else tie)
        return v, t


@dataclass
class Trial:
    """One configuration of a tuning run and, once run, its scores."""

    config: int
    options: dict
    status: str = "pending"                  # pending | done | rejected: <why>
    predicted_nfe: int | None = None
    nfe: float | None = None
    value: float | None = None
    tie_break: float | None = None
    s_per_image: float | None = None
    images: int | None = None
    metrics: dict | None = None
    split_sha256: str = ""

    def row(self) -> dict:
        d = {k: getattr(self, k) for k in TRIAL_COLUMNS}
        d["options"] = json.dumps(self.options, sort_keys=True)
        d["metrics"] = json.dumps(self.metrics or {}, sort_keys=True)
        return d


def propose(space: SearchSpace, n: int, seed: int, num_timesteps: int, nfe_cap: int | None,
            max_draws: int = 1000) -> list[Trial]:
    """`n` configurations within the NFE cap (configuration 0 the published setting when it fits), plus
    the rejected draws, in the order drawn."""
    rng = np.random.default_rng(seed)
    out: list[Trial] = []
    accepted = 0
    for i in range(max_draws):
        if accepted == n:
            break
        opts = space.published() if i == 0 else {**space.fixed, **{k.name: k.value(float(u)) for k, u in
                                                                      zip(space.knobs, rng.random(len(space.knobs)),
                                                                          strict=True)}}
        nfe = predicted_nfe(space, opts, num_timesteps)
        t = Trial(i, opts, predicted_nfe=nfe)
        if nfe_cap is not None and nfe is not None and nfe > nfe_cap:
            t.status = f"rejected: {nfe} network passes > cap {nfe_cap}"
        else:
            accepted += 1
        out.append(t)
    if accepted < n:
        raise ValueError(f"{space.method}: only {accepted} of {n} configurations fit the NFE cap {nfe_cap}")
    return out


def choose(trials: list[Trial], criterion: Criterion) -> Trial:
    """The best finished configuration (ties: the tie-break, then the lower configuration number)."""
    done = [t for t in trials if t.status == "done"]
    if not done:
        raise ValueError("no configuration finished within the NFE cap")
    return min(done, key=lambda t: (*criterion.key(t.value, t.tie_break), t.config))


def write_trials(path: Path, trials: list[Trial]) -> None:
    """The per-configuration table, written atomically (a kill leaves the old or the new file)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TRIAL_COLUMNS), lineterminator="\n")
    w.writeheader()
    for t in trials:
        w.writerow({k: ("" if v is None else v) for k, v in t.row().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def read_trials(path: Path) -> list[Trial]:
    """The trials of a `write_trials` file ([] if there is none)."""
    if not path.is_file():
        return []

    def num(v: str) -> float | None:
        return None if v in ("", "None") else float(v)

    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            pn = num(r["predicted_nfe"])
            nfe = num(r["nfe"])
            nfe = int(nfe) if nfe is not None and nfe.is_integer() else nfe
            out.append(Trial(int(r["config"]), json.loads(r["options"]), r["status"],
                             None if pn is None else int(pn), nfe, num(r["value"]), num(r["tie_break"]),
                             num(r["s_per_image"]), None if num(r["images"]) is None else int(num(r["images"])),
                             json.loads(r["metrics"] or "{}"), r["split_sha256"]))
    return out
