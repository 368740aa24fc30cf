"""Refresh the SSIM columns of a committed benchmark table from a rerun, when nothing else changed.

The committed tables written before 2026-12-02 computed SSIM on [−1, 1] images with data range 2 and reflect
padding; `vipaint.metrics.image` now follows the published convention (README, "What a run reports"). Rerun the
benchmark into another folder with the current code, then:

    python scripts/refresh_ssim.py --committed benchmarks/results/gaussian_mixture --rerun /tmp/rr/gaussian_mixture

It compares every row of the two `results.json` files field by field and stops unless the rows and every
value other than the SSIM columns (and the wall-clock seconds, which depend on the machine's load) are
identical; then it writes the committed folder's tables with the rerun's SSIM values and the committed
values of everything else, so the seconds per image of the original run are kept. Fields the committed rows
lack altogether (measured by code newer than the study, such as the decoder/encoder pass counts) are added
from the rerun.

A study too costly to rerun has its former-convention SSIM withdrawn from its tables instead:

    python scripts/refresh_ssim.py --committed benchmarks/results/mnist_n100 --withdraw

moves `ssim`/`ssim_hole` to `ssim_legacy`/`ssim_hole_legacy` in `results.json`/`.csv` (kept, labelled, not shown
in `results.md`/`summary.md`); a later rerun refreshed as above restores the `ssim` columns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vipaint.bench.report import write_results

REFRESHED = ("ssim", "ssim_hole")
MACHINE = ("s_per_image", "seconds")
LEGACY = tuple(f"{k}_legacy" for k in REFRESHED)          # former-convention values of a withdrawn study


def withdraw(committed: Path) -> list[str]:
    """Move `committed`'s former-convention SSIM values to the `*_legacy` keys, so its tables no longer show
    them; returns the problems found (nothing is written when there is one)."""
    old = json.loads((committed / "results.json").read_text())
    if not any(k in r for r in old["rows"] for k in REFRESHED):
        return [f"{committed}: no {'/'.join(REFRESHED)} values to withdraw"]
    rows = [{(f"{k}_legacy" if k in REFRESHED else k): v for k, v in r.items()} for r in old["rows"]]
    write_results(committed, rows, old.get("features", ""), old.get("perceptual", ""))
    return []


def refresh(committed: Path, rerun: Path) -> list[str]:
    """Rewrite `committed`'s tables with `rerun`'s SSIM values; returns the problems found (nothing is
    written when there is one)."""
    old = json.loads((committed / "results.json").read_text())
    new = json.loads((rerun / "results.json").read_text())
    key = lambda r: (r["method"], r["mask"])  # noqa: E731
    new_rows = {key(r): r for r in new["rows"]}
    problems = []
    if {key(r) for r in old["rows"]} != set(new_rows):
        problems.append(f"rows differ: {sorted({key(r) for r in old['rows']} ^ set(new_rows))}")
    for r in old["rows"]:
        n = new_rows.get(key(r), {})
        for k in set(r) | set(n):
            if k not in r:
                continue                      # a field the former code did not record (e.g. codec passes): added
            if k not in REFRESHED + MACHINE + LEGACY and r.get(k) != n.get(k):
                problems.append(f"{key(r)} {k}: committed {r.get(k)!r}, rerun {n.get(k)!r}")
    if problems:
        return problems
    rows = []
    for r in old["rows"]:
        r = {(k.removesuffix("_legacy") if k in LEGACY else k): v for k, v in r.items()}   # a withdrawn study
        row = {k: (new_rows[key(r)].get(k) if k in REFRESHED else v) for k, v in r.items()}
        rows.append({**row, **{k: v for k, v in new_rows[key(r)].items() if k not in row}})
    write_results(committed, rows, old.get("features", ""), old.get("perceptual", ""))
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--committed", required=True, type=Path)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rerun", type=Path, help="the rerun's folder (its results.json)")
    how.add_argument("--withdraw", action="store_true", help="move the former-convention SSIM to *_legacy keys")
    a = p.parse_args(argv)
    problems = withdraw(a.committed) if a.withdraw else refresh(a.committed, a.rerun)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
