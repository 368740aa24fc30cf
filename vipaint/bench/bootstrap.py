"""How sure is an FID ranking? A paired bootstrap over the observations of a benchmark folder.

    python -m vipaint.bench.bootstrap --out benchmarks/results/fashion_mnist_n100 --reference vipaint

Reads the samples a `python -m vipaint.bench` run kept in `<out>/<method>/samples/`, takes their
Inception features from the run's cache (`<out>/<method>/features/`; computes the missing ones),
checks that the full-set FID equals the one in `<out>/results.json`, then draws the observations with
replacement (the same draws for every method) and writes `<out>/fid_bootstrap.{md,json}` (`--name` for
another file name, e.g. a second reference): per method and mask the FID, its bootstrap std, the difference to
the reference method with a 95 % percentile interval, and the share of resamples in which the reference
has the lower FID. FID is biased upwards on resamples (repeated images), so the table reports the
full-set FID and uses the resamples only for spread and paired differences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vipaint.bench.features import CachedFeatures, image_features, load_saved_features
from vipaint.bench.report import (
    legacy_feature_cache,
    load_items,
    md_table,
    save_item_features,
)
from vipaint.metrics.bootstrap import paired_fid_bootstrap

__all__ = ["bootstrap_table", "main"]


def _check_same_observations(out: Path, items: dict[str, dict[int, dict]], reference: str) -> list[int]:
    """The dataset indices of the reference; raises unless every method has the same ones and truths."""
    for m, its in items.items():
        if not its:
            raise FileNotFoundError(f"{out / m / 'samples'} has no samples (the benchmark keeps them only locally; "
                                    "rerun it to regenerate them)")
    indices = sorted(items[reference])
    for m, its in items.items():
        if sorted(its) != indices:
            raise ValueError(f"{m} has observations {sorted(set(its) ^ set(indices))[:5]}… that {reference} lacks "
                             "or the reverse: run both on the same data")
        bad = [i for i in indices if not torch.equal(its[i]["image"], items[reference][i]["image"])]
        if bad:
            raise ValueError(f"{m}: ground truth of dataset index {bad[0]} differs from {reference}'s")
    return indices


def bootstrap_table(out: Path, methods: list[str], reference: str, net: nn.Module, label: str,
                    replicates: int = 1000, seed: int = 0) -> list[dict]:
    """Paired-bootstrap FID rows (per mask and "all") for `methods` of the benchmark folder `out`."""
    if reference not in methods:
        raise ValueError(f"reference {reference!r} is not among the methods {methods}")
    items = {m: {it["index"]: it for it in load_items(out / m)} for m in methods}
    indices = _check_same_observations(out, items, reference)
    ref_items = [items[reference][i] for i in indices]
    cached = CachedFeatures(net, label)
    cached.load(legacy_feature_cache(out))
    for m in methods:
        load_saved_features(cached, out / m)
    real = image_features(cached, torch.stack([it["image"] for it in ref_items]), desc="ground truth").double()
    fakes = {}
    for m in methods:
        comp = torch.stack([items[m][i]["composite"] for i in indices])       # [N, S, C, H, W]
        fakes[m] = image_features(cached, comp.flatten(0, 1), desc=m).double().unflatten(0, comp.shape[:2])
        save_item_features(cached, out / m, [items[m][i] for i in indices])
    masks = [it["mask_name"] for it in ref_items]
    published = {}
    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if saved.get("features") == label:          # FIDs of results.json are comparable only with the same network
        published = {(r["method"], r["mask"]): r.get("fid") for r in saved["rows"]}
    rows = []
    for mask in sorted(set(masks)) + ["all"]:
        sel = torch.tensor([i for i, name in enumerate(masks) if mask in ("all", name)])
        full, boot = paired_fid_bootstrap(real[sel], {m: f[sel] for m, f in fakes.items()}, replicates, seed)
        for m in methods:
            row = {"method": m, "mask": mask, "images": len(sel), "fid": float(full[m]),
                   "fid_results_json": published.get((m, mask)), "fid_boot_std": float(boot[m].std())}
            if m != reference:
                diff = (boot[m] - boot[reference]).numpy()
                row.update({"delta_vs_ref": float(full[m] - full[reference]),
                            "delta_lo95": float(np.percentile(diff, 2.5)),
                            "delta_hi95": float(np.percentile(diff, 97.5)),
                            "p_ref_lower": float((diff > 0).mean())})
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Write `<out>/<name>.{md,json}`; stops if a full-set FID differs from `<out>/results.json`."""
    p = argparse.ArgumentParser(prog="python -m vipaint.bench.bootstrap", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="benchmark output folder (holds <method>/samples/)")
    p.add_argument("--methods", nargs="*", help="methods to compare (default: every folder with samples)")
    p.add_argument("--reference", help="method the others are compared with (default: the first)")
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="fid_bootstrap",
                   help="output files <out>/<name>.{md,json} (another name keeps a comparison with another reference)")
    args = p.parse_args(argv)
    out = Path(args.out)
    methods = args.methods or sorted(d.name for d in out.iterdir() if (d / "samples").is_dir())
    if not methods:
        p.error(f"{out} has no <method>/samples/ folders")
    reference = args.reference or methods[0]
    from vipaint.metrics import default_inception

    net, label = default_inception()
    if not isinstance(net, nn.Module):
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    rows = bootstrap_table(out, methods, reference, net.eval(), label, args.replicates, args.seed)
    cols = ["method", "mask", "images", "fid", "fid_boot_std", "delta_vs_ref", "delta_lo95", "delta_hi95",
            "p_ref_lower"]
    lines = md_table(rows, cols) + [
        "", f"Reference: {reference}; delta = FID(method) − FID({reference}) on the full set, its 95 % interval "
        f"from {args.replicates} paired bootstrap resamples of the observations (seed {args.seed}); "
        f"p_ref_lower = share of resamples in which {reference} has the lower FID. Features: {label}."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps({"reference": reference, "replicates": args.replicates,
                                                        "seed": args.seed, "features": label, "rows": rows}, indent=2))
    print("\n".join(lines))
    off = [r for r in rows if r["fid_results_json"] is not None and abs(r["fid"] - r["fid_results_json"]) > 1e-3]
    if off:
        raise SystemExit(f"full-set FID differs from results.json for {[(r['method'], r['mask']) for r in off]}")


if __name__ == "__main__":
    main()
