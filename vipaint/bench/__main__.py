"""Benchmark runner: several methods on the same prior, images, masks and seeds, then one table.

    python -m vipaint.bench --spec benchmarks/fashion_mnist.yaml [--out DIR] [--data.num_images=100 ...]

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

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run (or with `--report-only` only tabulate) the methods of a benchmark spec."""
    p = argparse.ArgumentParser(prog="python -m vipaint.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="benchmark YAML (config, overrides, methods, out)")
    p.add_argument("--only", nargs="*", help="run only these methods of the spec")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID (Inception on CPU is slow)")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from existing outputs")
    p.add_argument("--out", help="output folder (default: the spec's `out`)")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith(("--data.", "--model.", "--trainer.", "--seed_everything"))]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (extra LightningCLI overrides must start with "
                "--data., --model., --trainer. or --seed_everything)")
    spec = yaml.safe_load(Path(args.spec).read_text())
    spec["overrides"] = [*spec.get("overrides", []), *extra]     # later flags win in LightningCLI
    if args.out:
        spec["out"] = args.out
    unknown = sorted(set(args.only or []) - set(spec["methods"]))
    if unknown:
        p.error(f"--only: {', '.join(unknown)} not in {args.spec} (its methods: {', '.join(spec['methods'])})")
    out = Path(spec.get("out", f"results/benchmarks/{Path(args.spec).stem}"))
    out.mkdir(parents=True, exist_ok=True)
    to_run = {} if args.report_only else {k: dict(v or {}) for k, v in spec["methods"].items()
                                          if not args.only or k in args.only}
    timings = run_methods({**spec, "methods": to_run}, out) if to_run else {}
    # the table covers every method of the spec with outputs in `out` or rows in its results.json, so
    # `--only` adds rows to a benchmark instead of replacing its table with a subset
    previous, _ = previous_rows(out)
    methods = [m for m in spec["methods"]
               if m in to_run or m in previous or any((out / m / "samples").glob("*.npz"))]
    timings.update({m: read_timing(out / m) for m in methods if m not in timings})
    report(out, methods, timings, fid=not args.no_fid and spec.get("fid", True),
           perceptual_kind=spec.get("perceptual", "auto"))
    print(f"\nwrote {out}/results.md, results.csv and the plots")


if __name__ == "__main__":
    main()
