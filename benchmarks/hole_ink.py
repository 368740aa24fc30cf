"""How much ink do a benchmark's samples put into the hole, against the ground truth?

    python benchmarks/hole_ink.py --out benchmarks/results/mnist_init_fill

For every method folder with samples under `--out`, per mask type and overall: `ink_samples`, the mean
intensity (x + 1)/2 of the samples over the hole pixels; `ink_truth`, the same for the ground truths; and
`ink_abs_error`, the mean over samples of |hole mean of the sample − hole mean of the truth|. On MNIST-like
data (white strokes on black) these say whether a method draws too much or too little stroke where it has
to invent. Writes <out>/hole_ink.md and .json; needs the run's sample folders (they stay local).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vipaint.bench.report import md_table


def hole_ink(method_dir: Path) -> dict[str, dict[str, float]]:
    """Per-mask (and "all") ink statistics of one method folder's samples/ and metrics/."""
    per: dict[str, list[tuple[float, float, float]]] = {}
    for f in sorted((method_dir / "samples").glob("*.npz")):
        d = np.load(f)
        kind = json.loads((method_dir / "metrics" / f"{f.stem}.json").read_text())["mask"]
        hole = d["mask"][0] == 0
        s = (d["samples"][:, 0][:, hole] + 1) / 2            # [n_samples, n_hole]; channel 0
        x = (d["image"][0][hole] + 1) / 2
        if hole.any():
            per.setdefault(kind, []).append((s.mean(), x.mean(), np.abs(s.mean(1) - x.mean()).mean()))
    per["all"] = [v for k in list(per) for v in per[k]]
    names = ("ink_samples", "ink_truth", "ink_abs_error")
    return {k: {"images": len(v), **{n: float(np.mean([r[i] for r in v])) for i, n in enumerate(names)}}
            for k, v in per.items() if v}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="benchmark output folder (holds <method>/samples/)")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = [{"method": m.name, "mask": k, **v} for m in sorted(out.iterdir()) if (m / "samples").is_dir()
            for k, v in hole_ink(m).items()]
    if not rows:
        raise SystemExit(f"no <method>/samples/ folders under {out}")
    (out / "hole_ink.json").write_text(json.dumps(rows, indent=1))
    md = "\n".join(md_table(rows, ["method", "mask", "images", "ink_samples", "ink_truth", "ink_abs_error"]))
    (out / "hole_ink.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
