"""Validation and test splits of a benchmark spec, and the tuned settings a spec may run.

A spec declares two disjoint row ranges of its image source,

    splits: {validation: {start: 1000, num_images: 4}, test: {start: 0, num_images: 8}}

run through `--data.start` / `--data.num_images` (`vipaint.data`: with `start` the dataset index is global,
row × mask types + mask type, so an image's seeds and results do not depend on its split). A tuned YAML
(`vipaint.tune`) records the rows it was chosen on; `check_tuned` refuses to report a split that overlaps
them, so nothing is reported on the images it was tuned on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["Split", "check_tuned", "image_source", "load_tuned", "method_options", "spec_split"]


@dataclass(frozen=True)
class Split:
    """Image rows start … start + num_images − 1 of the spec's image source."""

    name: str
    start: int
    num_images: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.num_images < 1:
            raise ValueError(f"split {self.name}: start must be ≥ 0 and num_images ≥ 1, got {self}")

    @property
    def rows(self) -> range:
        return range(self.start, self.start + self.num_images)

    def overrides(self) -> list[str]:
        """The LightningCLI flags that select these rows."""
        return [f"--data.start={self.start}", f"--data.num_images={self.num_images}"]

    def sha256(self, source: str) -> str:
        """A hash of the image rows and their source (recorded beside a tuned setting)."""
        return hashlib.sha256(json.dumps({"source": source, "rows": list(self.rows)}).encode()).hexdigest()

    def overlaps(self, other: Split) -> bool:
        return bool(set(self.rows) & set(other.rows))


def spec_split(spec: dict, name: str) -> Split:
    """Split `name` of a benchmark spec; raises unless the spec declares disjoint splits."""
    splits = spec.get("splits") or {}
    if name not in splits:
        raise ValueError(f"the spec declares no split {name!r} (its splits: {sorted(splits) or 'none'}); add "
                         "`splits: {validation: {start: ..., num_images: ...}, test: {...}}`")
    made = {k: Split(k, int(v["start"]), int(v["num_images"])) for k, v in splits.items()}
    for a in made.values():
        for b in made.values():
            if a.name < b.name and a.overlaps(b):
                raise ValueError(f"splits {a.name} {list(a.rows)[:3]}… and {b.name} share image rows; make them "
                                 "disjoint")
    return made[name]


def image_source(spec: dict) -> str:
    """What the spec's image rows are rows of: the experiment's `data.source` (for "prior", with the prior
    and data seed, whose samples they are)."""
    cfg = yaml.safe_load(Path(spec["config"]).read_text())
    data = cfg.get("data") or {}
    source = str(data.get("source", "prior"))
    if source == "prior":
        source += json.dumps({"prior": cfg.get("model", {}).get("prior"), "seed": data.get("seed", 0)}, sort_keys=True)
    return source


def load_tuned(path: str | Path) -> dict:
    """A tuned YAML: {"model": {"method", "method_options"}, "tuning": {...provenance}}."""
    tuned = yaml.safe_load(Path(path).read_text())
    if not isinstance(tuned, dict) or "model" not in tuned or "tuning" not in tuned:
        raise ValueError(f"{path} is not a tuned YAML of `python -m vipaint.tune` (needs `model` and `tuning`)")
    return tuned


def check_tuned(tuned: dict, where: str, split: Split, source: str) -> None:
    """Raise if the tuned setting was chosen on rows of `split` (the same image source), unless `split` is
    the very split it was tuned on (a rerun that reproduces the tuning score, written beside the test run)."""
    t = tuned["tuning"]
    tuned_on = Split(t["split"], int(t["start"]), int(t["num_images"]))
    if t.get("rows_sha256") != tuned_on.sha256(t.get("source", source)):
        raise ValueError(f"{where}: its recorded tuning rows do not match their hash; the file was edited")
    if split == tuned_on:           # rerunning the tuning rows reproduces the tuning score; it reports nothing
        return
    if t.get("source", source) == source and tuned_on.overlaps(split):
        raise ValueError(f"{where} was tuned on the {tuned_on.name} rows {tuned_on.start}…{tuned_on.rows[-1]}, which "
                         f"overlap the {split.name} rows {split.start}…{split.rows[-1]} asked for: a setting is "
                         "never reported on the images it was chosen on")


def method_options(name: str, opts: dict | None, split: Split | None, source: str) -> dict:
    """A spec's method entry as run options: `{tuned: PATH, ...}` becomes the tuned YAML's method and options
    (checked against `split` when the run is on a split), `{published: SPACE, ...}` the published setting of
    that search space (`vipaint.tune.spaces`, where the published values live); explicit entries win."""
    from vipaint.tune.spaces import search_spaces

    opts = dict(opts or {})
    space = opts.pop("published", None)
    if space is not None:
        spaces = search_spaces()
        if space not in spaces:
            raise ValueError(f"{name}: no search space {space!r} (spaces: {sorted(spaces)})")
        opts = {"method": spaces[space].method, **spaces[space].published(), **opts}
    path = opts.pop("tuned", None)
    if path is None:
        return opts
    if split is None:
        raise ValueError(f"{name}: a tuned setting ({path}) runs only on a declared split (--split test), so that "
                         "its images are checked against the ones it was tuned on")
    tuned = load_tuned(path)
    check_tuned(tuned, f"{name}: {path}", split, source)
    return {"method": tuned["model"]["method"], **dict(tuned["model"].get("method_options") or {}), **opts}
