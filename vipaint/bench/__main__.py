"""Benchmark runner: several methods on the same prior, images, masks and seeds, then one table.

    python -m vipaint.bench --spec benchmarks/fashion_mnist.yaml [--out DIR] [--data.num_images=100 ...]
    python -m vipaint.bench --spec benchmarks/gaussian_mixture_tune.yaml --split test

With `--split` the spec's declared image rows are run (`vipaint.bench.splits`; a split other than test writes
to `<out>_<split>`), and a method given as `{tuned: benchmarks/tuned/<prior>/<method>.yaml}` runs the tuned
setting, refused when it was chosen on rows of that split; `{published: <search space>}` runs the published
setting recorded in `vipaint.tune.spaces`. Entries that resolve to the same method and options (a tuning that
chose the published setting) share one run: the second's folder links to the first's (`vipaint.bench.shared_runs`).

A spec names an experiment YAML (prior, data, masks), overrides, and the methods with their options.
Each method runs through the same Lightning predict path as `vipaint predict` into
`<out>/<method>/` (so an interrupted benchmark resumes), then the report adds distribution and
diversity metrics computed from the written samples and writes `<out>/results.{md,csv,json}`, `<out>/summary.md`,
`<out>/metric_vs_nfe.png` and `<out>/panels.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from vipaint.bench.report import previous_rows, report
from vipaint.bench.run import read_timing, run_methods
from vipaint.bench.shared_runs import link_shared_runs, shared_run_targets
from vipaint.bench.splits import Split, image_source, method_options, spec_split

__all__ = ["main"]


def resolve_methods(spec: dict, only: list[str] | None, split: Split | None, source: str, out: Path) -> dict:
    """{name: run options} of the methods to run. A requested entry whose setting is identical to another
    entry's (a tuned setting that is the published one) shares that entry's run (`vipaint.bench.shared_runs`):
    its folder becomes a link and the run is made (or resumed) once, under the twin's name."""
    requested = [k for k in spec["methods"] if not only or k in only]
    resolved = {}
    for k, v in spec["methods"].items():
        try:
            resolved[k] = method_options(k, v, split, source)
        except (OSError, ValueError):
            if k in requested:      # an entry not asked for may lack its tuned YAML: it only can't be shared
                raise
    targets = shared_run_targets(resolved, out)
    link_shared_runs({k: t for k, t in targets.items() if k in requested or t in requested}, out)
    return {t: resolved[t] for t in dict.fromkeys(targets.get(k, k) for k in requested)}


def main(argv: list[str] | None = None) -> None:
    """Run (or with `--report-only` only tabulate) the methods of a benchmark spec."""
    p = argparse.ArgumentParser(prog="python -m vipaint.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="benchmark YAML (config, overrides, methods, out)")
    p.add_argument("--only", nargs="*", help="run only these methods of the spec")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID (Inception on CPU is slow)")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from existing outputs")
    p.add_argument("--out", help="output folder (default: the spec's `out`)")
    p.add_argument("--split", help="run the image rows of this split of the spec's `splits` (e.g. test)")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith(("--data.", "--model.", "--trainer.", "--seed_everything"))]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (extra LightningCLI overrides must start with "
                "--data., --model., --trainer. or --seed_everything)")
    spec = yaml.safe_load(Path(args.spec).read_text())
    split = spec_split(spec, args.split) if args.split else None
    spec["overrides"] = [*spec.get("overrides", []), *(split.overrides() if split else []), *extra]
    if args.out:        # (later flags win in LightningCLI)
        spec["out"] = args.out
    elif split is not None and split.name != "test":
        spec["out"] = f"{spec.get('out', f'results/benchmarks/{Path(args.spec).stem}')}_{split.name}"
    unknown = sorted(set(args.only or []) - set(spec["methods"]))
    if unknown:
        p.error(f"--only: {', '.join(unknown)} not in {args.spec} (its methods: {', '.join(spec['methods'])})")
    out = Path(spec.get("out", f"results/benchmarks/{Path(args.spec).stem}"))
    out.mkdir(parents=True, exist_ok=True)
    source = image_source(spec) if split else ""       # tuned / published entries resolved for the methods run
    to_run = {} if args.report_only else resolve_methods(spec, args.only, split, source, out)
    if args.no_fid:     # no Inception in the predict path either (a machine without its weights)
        spec["fid"] = False
    timings = run_methods({**spec, "methods": to_run}, out) if to_run else {}
    # the table covers every method of the spec with outputs in `out` or rows in its results.json, so
    # `--only` adds rows to a benchmark instead of replacing its table with a subset
    previous, _ = previous_rows(out)
    methods = [m for m in spec["methods"]
               if m in to_run or m in previous or (out / m).is_symlink() or any((out / m / "samples").glob("*.npz"))]
    timings.update({m: read_timing(out / m) for m in methods if m not in timings})
    report(out, methods, timings, fid=spec.get("fid", True),
           perceptual_kind=spec.get("perceptual", "auto"))
    print(f"\nwrote {out}/results.md, results.csv and the plots")


if __name__ == "__main__":
    main()
