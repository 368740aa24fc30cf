"""Tune methods on a benchmark spec's validation split; write the chosen settings as YAML.

    python -m vipaint.tune --spec benchmarks/gaussian_mixture_tune.yaml [--only dps ddnm]

The spec's `tune` block declares, before the run, the methods, the budget (the same number of
configurations for every method, the same cap on network passes), the seed and the criterion:

    tune: {prior: gaussian_mixture, methods: [dps, ddnm], configurations: 4, seed: 0, nfe_cap: 1000,
           split: validation, criterion: {metric: sliced_w2, goal: min, tie_break: psnr},
           fixed: {dps: {clip_x0: false}}, work: results/tune/gaussian_mixture}

(`fixed`: options every configuration of a method gets, published one included: conventions of the prior,
e.g. no [−1, 1] clamping for a prior whose images leave that range; the tuned knobs stay those of
`vipaint.tune.spaces`.)

Every configuration (`vipaint.tune.spaces`, `vipaint.tune.search`) runs through the benchmark's predict
path into its own folder `<work>/<method>/c<NNN>/run/` (the writer resumes per image), is scored by the
benchmark report, and is appended to `benchmarks/tuned/<prior>/<method>.trials.csv` (atomically), which a
rerun reads to skip finished configurations (after a kill, or from a fresh clone). The chosen setting goes
to `benchmarks/tuned/<prior>/<method>.yaml`, a config file that `vipaint predict --config …` reads and a
spec names as `methods: {dps: {tuned: benchmarks/tuned/<prior>/dps.yaml}}`; it records the split (rows and
their hash) it was chosen on, so `python -m vipaint.bench --split test` refuses it on overlapping rows.

`--samples-only` runs the configurations without scoring them (a GPU machine without the Inception
weights); with `samples_u8: true` in the spec their uint8 composites count as done, so the same command
without the flag, on a machine with the weights and only those files, scores every configuration without
recomputing it. Extra flags may set only what changes no result: `--data.batch_size`, `--data.num_workers`,
`--trainer.accelerator`, `--trainer.devices`, `--trainer.enable_progress_bar`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml

from vipaint.bench.report import report
from vipaint.bench.run import build_cli, run_method
from vipaint.bench.splits import image_source, spec_split
from vipaint.tune.search import Criterion, Trial, choose, propose, read_trials, write_trials
from vipaint.tune.spaces import search_spaces

__all__ = ["main", "tune_method"]


def _score(folder: Path, trial: Trial, criterion: Criterion, timing: dict, spec: dict) -> None:
    """Fill `trial` from the benchmark report of its run folder."""
    rows = report(folder, ["run"], {"run": timing}, fid=spec.get("fid", True),
                  perceptual_kind=spec.get("perceptual", "auto"))
    row = next(r for r in rows if r["mask"] == "all")
    if criterion.metric not in row:
        raise ValueError(f"criterion {criterion.metric!r} is not among the benchmark's metrics {sorted(row)}")
    trial.value = float(row[criterion.metric])
    trial.tie_break = None if criterion.tie_break is None else float(row.get(criterion.tie_break, math.nan))
    trial.nfe, trial.images = row.get("nfe"), int(row["images"])
    trial.s_per_image = row.get("s_per_image")
    trial.metrics = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "images"}


def tune_method(name: str, spec: dict, cli, writer, tuned_dir: Path, spec_path: str,
                samples_only: bool = False) -> Trial | None:
    """Run the configurations of method `name` not yet in its trials file; write trials and tuned YAML.
    With `samples_only`, only run them (their folders resume per image) and return None: for a machine
    without the criterion's feature network, whose folders a later run elsewhere scores."""
    t = spec["tune"]
    space = search_spaces()[name]
    split = spec_split(spec, t.get("split", "validation"))
    source = image_source(spec)
    split_sha = split.sha256(source)
    criterion = Criterion(**t["criterion"])
    cap = t.get("nfe_cap")
    trials = propose(space, int(t["configurations"]), int(t.get("seed", 0)), cli.model.prior.num_timesteps, cap)
    for trial in trials:       # the spec's fixed options of this method: conventions of its prior, not tuned
        trial.options.update((t.get("fixed") or {}).get(name) or {})
    trials_path = tuned_dir / f"{name}.trials.csv"
    finished = {json.dumps(x.options, sort_keys=True): x for x in read_trials(trials_path)
                if x.status != "pending" and x.split_sha256 == split_sha}
    work = Path(t.get("work", f"results/tune/{t['prior']}")) / name
    for i, trial in enumerate(trials):          # first every configuration the trials file already has
        trial.split_sha256 = split_sha
        old = finished.get(json.dumps(trial.options, sort_keys=True))
        if old is not None and old.config == trial.config:
            trials[i] = old
            print(f"[tune] {name} c{trial.config:03d}: finished in {trials_path}, skipped")
    for trial in trials:
        if trial.status == "pending":
            folder = work / f"c{trial.config:03d}"
            print(f"[tune] {name} c{trial.config:03d}: {trial.options}")
            timing = run_method(cli, writer, "run", {"method": space.method, **trial.options}, folder / "run")
            if samples_only:
                continue
            _score(folder, trial, criterion, timing, spec)
            over = cap is not None and trial.nfe is not None and trial.nfe > cap
            trial.status = f"rejected: measured {trial.nfe} network passes > cap {cap}" if over else "done"
        if not samples_only:
            write_trials(trials_path, [x for x in trials if x.status != "pending"])   # never drops a finished row
    if samples_only:
        print(f"[tune] {name}: samples of every configuration are in {work}; score them with the same command "
              "without --samples-only")
        return None
    best = choose(trials, criterion)
    ran = [x for x in trials if x.status == "done" or x.status.startswith("rejected: measured")]
    tuned = {
        "model": {"method": space.method, "method_options": best.options},
        "tuning": {
            "method": name, "spec": spec_path, "split": split.name, "start": split.start,
            "num_images": split.num_images, "source": source, "rows_sha256": split_sha,
            "criterion": {"metric": criterion.metric, "goal": criterion.goal, "tie_break": criterion.tie_break},
            "value": best.value, "tie_break_value": best.tie_break, "config": best.config, "nfe": best.nfe,
            "budget": {"configurations": int(t["configurations"]), "nfe_cap": cap, "seed": int(t.get("seed", 0)),
                       "wall_seconds": round(sum((x.s_per_image or 0) * (x.images or 0) for x in ran), 1)},
            "trials": str(trials_path),
            "command": f"python -m vipaint.tune --spec {spec_path}",
        },
    }
    out = tuned_dir / f"{name}.yaml"
    out.write_text(f"# Chosen by `python -m vipaint.tune --spec {spec_path}` on the {split.name} split; use with\n"
                   f"# vipaint predict --config {spec['config']} --config {out}\n"
                   + yaml.safe_dump(tuned, sort_keys=False))
    print(f"[tune] {name}: configuration {best.config} {best.options}, {criterion.metric} = {best.value:.4g} "
          f"-> {out}")
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vipaint.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="benchmark YAML with `splits` and a `tune` block")
    p.add_argument("--only", nargs="*", help="tune only these methods of the spec's tune.methods")
    p.add_argument("--tuned-dir", help="where the tuned YAMLs go (default benchmarks/tuned/<tune.prior>)")
    p.add_argument("--samples-only", action="store_true",
                   help="run the configurations without scoring them (no FID network needed; e.g. on a GPU machine "
                        "without the Inception weights); the same command without it scores the written folders")
    args, extra = p.parse_known_args(argv)
    ok = ("--data.batch_size", "--data.num_workers", "--trainer.accelerator", "--trainer.devices",
          "--trainer.enable_progress_bar")
    bad = [a for a in extra if not a.startswith(ok)]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (extra flags may only set {', '.join(ok)}: nothing "
                "that changes a result)")
    spec = yaml.safe_load(Path(args.spec).read_text())
    t = spec.get("tune")
    if not t:
        p.error(f"{args.spec} has no `tune` block (methods, configurations, nfe_cap, criterion, prior)")
    spaces = search_spaces()
    methods = [m for m in t["methods"] if not args.only or m in args.only]
    unknown = [m for m in methods if m not in spaces]
    if unknown:
        p.error(f"no search space for {unknown}; spaces: {sorted(spaces)}")
    split = spec_split(spec, t.get("split", "validation"))
    if split.name == "test":
        p.error("tuning on the test split is refused: tune on validation, report on test")
    from vipaint.writer import PredictionWriter

    cli = build_cli(spec["config"], [str(o) for o in spec.get("overrides", [])] + split.overrides() + extra)
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PredictionWriter))
    writer.fid = bool(spec.get("fid", True)) and not args.samples_only     # no Inception in the predict path
    writer.save_u8 = bool(spec.get("samples_u8", False))     # uint8 composites: a run elsewhere scores from them
    tuned_dir = Path(args.tuned_dir or f"benchmarks/tuned/{t['prior']}")
    for m in methods:
        tune_method(m, spec, cli, writer, tuned_dir, args.spec, samples_only=args.samples_only)


if __name__ == "__main__":
    main()
