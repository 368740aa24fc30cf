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

`--u8` reads the committed uint8 composites (`<out>/<method>/samples_u8/`, `vipaint.samples_u8`) instead,
so a run resumed over several fresh clones, whose float samples are spread over machines, can still be
compared; its FIDs are those of the quantised images (as in the leaderboard), so the check against
results.json is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vipaint.bench.features import CachedFeatures, image_features, image_key, load_saved_features
from vipaint.bench.report import (
    legacy_feature_cache,
    load_items,
    md_table,
    save_item_features,
)
from vipaint.metrics import to_unit_rgb
from vipaint.metrics.bootstrap import paired_fid_bootstrap
from vipaint.samples_u8 import load_records

__all__ = ["bootstrap_table", "main"]

U8_CACHE = "leaderboard_u8.pt"      # the uint8 images' features, shared with vipaint.bench.leaderboard


def _same_truth(a: dict, b: dict) -> bool:
    """Equal ground truths; for uint8 files up to the two quantisation grids (each file's range covers its
    method's composites, so the same image can land on different grids)."""
    if "u8_step" not in a or "u8_step" not in b:
        return torch.equal(a["image"], b["image"])
    return bool((a["image"] - b["image"]).abs().max() <= (a["u8_step"] + b["u8_step"]) / 2 + 1e-6)


def _check_same_observations(out: Path, items: dict[str, dict[int, dict]], reference: str,
                             common: bool = False) -> list[int]:
    """The dataset indices of the reference (with `common`: those every method has); raises unless every
    method has the same ones (with `common`: unless some are shared) and the same truths on them."""
    for m, its in items.items():
        if not its:
            raise FileNotFoundError(f"{out / m} has no samples (the benchmark keeps samples/ only locally; rerun "
                                    "it to regenerate them, or use --u8 for the committed samples_u8/)")
    indices = sorted(items[reference])
    if common:
        indices = sorted(set(indices).intersection(*items.values()))
        if not indices:
            raise ValueError(f"the methods {sorted(items)} share no observation")
    for m, its in items.items():
        if not common and sorted(its) != indices:
            raise ValueError(f"{m} has observations {sorted(set(its) ^ set(indices))[:5]}… that {reference} lacks "
                             "or the reverse: run both on the same data")
        bad = [i for i in indices if not _same_truth(its[i], items[reference][i])]
        if bad:
            raise ValueError(f"{m}: ground truth of dataset index {bad[0]} differs from {reference}'s")
    return indices


def bootstrap_table(out: Path, methods: list[str], reference: str, net: nn.Module, label: str,
                    replicates: int = 1000, seed: int = 0, u8: bool = False, common: bool = False) -> list[dict]:
    """Paired-bootstrap FID rows (per mask and "all") for `methods` of the benchmark folder `out`; from the
    uint8 files with `u8`; on the observations all methods share with `common` (then, and with `u8`,
    `fid_results_json` stays None)."""
    if reference not in methods:
        raise ValueError(f"reference {reference!r} is not among the methods {methods}")
    items = {m: load_records(out / m, require_u8=True) if u8 else {it["index"]: it for it in load_items(out / m)}
             for m in methods}
    indices = _check_same_observations(out, items, reference, common)
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
        if u8:              # one file per method, keyed like the leaderboard's (not beside the float samples)
            cached.save(out / m / "features" / U8_CACHE, [image_key(u) for u in to_unit_rgb(torch.cat(
                [torch.stack([it["image"] for it in ref_items]), comp.flatten(0, 1)]))])
        else:
            save_item_features(cached, out / m, [items[m][i] for i in indices])
    masks = [it["mask_name"] for it in ref_items]
    published = {}
    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if saved.get("features") == label and not (u8 or common):      # same network, float images, all indices
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
    p.add_argument("--common", action="store_true",
                   help="compare on the observations every method has (e.g. a row still being completed)")
    p.add_argument("--u8", action="store_true",
                   help="read the committed uint8 composites (<method>/samples_u8/) instead of <method>/samples/")
    args = p.parse_args(argv)
    out = Path(args.out)
    kept = "samples_u8" if args.u8 else "samples"
    methods = args.methods or sorted(d.name for d in out.iterdir() if (d / kept).is_dir())
    if not methods:
        p.error(f"{out} has no <method>/{kept}/ folders")
    reference = args.reference or methods[0]
    from vipaint.metrics import default_inception

    net, label = default_inception()
    if not isinstance(net, nn.Module):
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    rows = bootstrap_table(out, methods, reference, net.eval(), label, args.replicates, args.seed, u8=args.u8,
                           common=args.common)
    cols = ["method", "mask", "images", "fid", "fid_boot_std", "delta_vs_ref", "delta_lo95", "delta_hi95",
            "p_ref_lower"]
    lines = md_table(rows, cols) + [
        "", f"Reference: {reference}; delta = FID(method) − FID({reference}) on the full set, its 95 % interval "
        f"from {args.replicates} paired bootstrap resamples of the observations (seed {args.seed}); "
        f"p_ref_lower = share of resamples in which {reference} has the lower FID. Features: {label}."
        + (" Images: the committed uint8 composites (samples_u8/)." if args.u8 else "")]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps({"reference": reference, "replicates": args.replicates,
                                                        "seed": args.seed, "features": label, "images": kept,
                                                        "rows": rows}, indent=2))
    print("\n".join(lines))
    off = [r for r in rows if r["fid_results_json"] is not None and abs(r["fid"] - r["fid_results_json"]) > 1e-3]
    if off:
        raise SystemExit(f"full-set FID differs from results.json for {[(r['method'], r['mask']) for r in off]}")


if __name__ == "__main__":
    main()
