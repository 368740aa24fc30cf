"""`vipaint inpaint IMAGE MASK --prior DIR --out result.png`: one image, no config file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vipaint inpaint",
        description="Inpaint one image with a diffusion prior. The mask is white (1) where the image is "
                    "observed and black (0) in the hole; pass --invert-mask for the opposite convention.")
    p.add_argument("image", help="image file (resized/cropped to the prior's resolution)")
    p.add_argument("mask", help="mask file (PNG/JPG/NPY/NPZ)")
    p.add_argument("--prior", required=True, help="diffusers prior folder (e.g. data/priors/fashion_mnist) or Hub id")
    p.add_argument("--out", default="result.png", help="output PNG (composite of the first sample); a panel "
                   "<out>_panel.png and all samples <out>_samples.npz are written beside it")
    p.add_argument("--method", default="vipaint", help="vipaint or a peer method name")
    p.add_argument("--samples", type=int, default=4, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma-y", type=float, default=0.05, help="observation noise std")
    p.add_argument("--iterations", type=int, default=None, help="VIPaint: ELBO iterations (default 50)")
    p.add_argument("--refine-steps", type=int, default=None, help="VIPaint: refinement steps (default: all)")
    p.add_argument("--invert-mask", action="store_true", help="white marks the hole in the mask file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    import numpy as np

    from vipaint.api import solve_full
    from vipaint.data import load_image
    from vipaint.masks import FileMask, check_mask
    from vipaint.operators import Inpainting
    from vipaint.priors import DiffusersPrior
    from vipaint.report import panel, to_pil
    from vipaint.seeding import ImageRNG

    if not Path(args.image).exists():
        raise SystemExit(f"vipaint inpaint: image file '{args.image}' does not exist")
    prior = DiffusersPrior(args.prior).to(args.device)
    c, h, w = prior.image_shape
    x = load_image(args.image, where=f"image {args.image}", size=h, channels=c)[None].to(args.device)
    m = FileMask(path=args.mask, invert=args.invert_mask)(index=0, seed=args.seed, size=(h, w))
    mask = check_mask(m, where=f"mask {args.mask}")[None].to(args.device)
    op = Inpainting(mask, sigma_y=args.sigma_y)
    y = op.observe(x, ImageRNG(args.seed, [0], "observation", device=args.device))
    opts = {k: v for k, v in (("iterations", args.iterations), ("refine_steps", args.refine_steps)) if v is not None}
    res = solve_full(args.method, prior, op, y, n_samples=args.samples, seed=args.seed, progress=True, **opts)
    if res.failed.any():
        raise SystemExit(f"vipaint inpaint: the method failed: {res.reasons[0]}")
    comp = op.paste(res.samples, y)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(comp[0, 0]).save(out)
    panel(y[0], mask[0], comp[:, 0], x[0]).save(out.with_name(out.stem + "_panel.png"))
    np.savez_compressed(out.with_name(out.stem + "_samples.npz"), samples=comp[:, 0].cpu().numpy(),
                        raw=res.samples[:, 0].cpu().numpy())
    print(f"wrote {out} and {out.stem}_panel.png ({args.samples} samples, {res.nfe} network passes)")
    return out
