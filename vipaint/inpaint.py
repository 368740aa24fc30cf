"""`vipaint inpaint IMAGE MASK --prior DIR --out result.png [--prompt "..."]`: one image, no config file (a
Stable Diffusion pipeline folder or Hub id takes `--prompt`, `--negative-prompt` and `--guidance`).

Everything the user gives is checked before the prior is loaded or anything is computed: the options'
ranges, the output path (writable, a known image format, never the input image or mask), the image and
mask sizes (one resize policy, `--resize`, applied identically to both) and the mask's values."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["main", "build_parser", "check_output", "load_pair", "method_options"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vipaint inpaint",
        description="Inpaint one image with a diffusion prior. The mask is white (1) where the image is "
                    "observed and black (0) in the hole; pass --invert-mask for the opposite convention.")
    p.add_argument("image", help="image file (8- or 16-bit, grey, palette or RGB), resized to the prior's "
                   "resolution as --resize says")
    p.add_argument("mask", help="mask file (PNG/JPG/NPY/NPZ) of the image's size (or of the prior's resolution); "
                   "it gets the same crop and resize as the image")
    p.add_argument("--prior", required=True, help="diffusers prior folder (e.g. data/priors/fashion_mnist) or Hub id")
    p.add_argument("--out", default="result.png", help="output PNG (composite of the first sample); a panel "
                   "<out>_panel.png and all samples <out>_samples.npz are written beside it")
    p.add_argument("--method", default="vipaint", help="vipaint or a peer method name")
    p.add_argument("--samples", type=_positive_int, default=4, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma-y", type=_nonnegative_float, default=0.05, help="observation noise std")
    p.add_argument("--iterations", type=_positive_int, default=None, help="VIPaint: ELBO iterations (default 50)")
    p.add_argument("--refine-steps", type=_positive_int, default=None,
                   help="VIPaint: refinement steps (default: all)")
    p.add_argument("--resize", choices=("none", "crop", "stretch"), default="none",
                   help="an image of another aspect ratio than the prior's: 'none' stops with an error (default), "
                        "'crop' centre-crops it, 'stretch' resizes each axis; the mask gets the same geometry")
    p.add_argument("--invert-mask", action="store_true", help="white marks the hole in the mask file")
    p.add_argument("--binarize-mask", action="store_true", help="threshold a non-binary (e.g. anti-aliased or "
                   "JPEG) mask at 0.5 instead of stopping")
    p.add_argument("--prompt", default=None, help="text prompt of a Stable Diffusion prior (default: the empty "
                   "prompt, i.e. unconditional)")
    p.add_argument("--negative-prompt", default="", help="negative prompt: the unconditional branch of "
                   "classifier-free guidance (default: empty)")
    p.add_argument("--guidance", type=_nonnegative_float, default=None, help="classifier-free guidance scale g "
                   "(VIPaint: during refinement; peers: every step); default: the method's (1, no guidance)")
    p.add_argument("--fit-guidance", type=_nonnegative_float, default=None,
                   help="VIPaint: guidance scale while fitting q (default: the preset's, 1)")
    p.add_argument("--text-device", default=None, help="where a Stable Diffusion prior's text encoders run "
                   "(e.g. cpu; default: --device)")
    p.add_argument("--drop-t5", action="store_true", help="SD3/3.5: do not load T5-XXL (zeros in its place)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def method_options(args: argparse.Namespace) -> dict[str, object]:
    """The method options the command line sets (guidance: VIPaint's `refine_guidance` / `fit_guidance`,
    a peer's `guidance_scale`)."""
    opts = {k: v for k, v in (("iterations", args.iterations), ("refine_steps", args.refine_steps)) if v is not None}
    if args.guidance is not None:
        opts["refine_guidance" if args.method == "vipaint" else "guidance_scale"] = args.guidance
    if args.fit_guidance is not None:
        if args.method != "vipaint":
            raise ValueError("--fit-guidance applies to --method vipaint only; use --guidance for peers")
        opts["fit_guidance"] = args.fit_guidance
    return opts


def _outputs(out: Path) -> list[Path]:
    return [out, out.with_name(out.stem + "_panel.png"), out.with_name(out.stem + "_samples.npz")]


def check_output(out: Path, inputs: list[Path]) -> None:
    """Refuse an output that would overwrite an input, has no image format, or cannot be written — before
    any computing."""
    from PIL import Image

    if out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {out}: unknown image format {out.suffix!r}; use a .png file name")
    for target in _outputs(out):
        for src in inputs:
            if target.resolve() == src.resolve():
                raise ValueError(f"--out {out} would overwrite the input {src}; choose another output name")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'result.png'}")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot create the folder {parent} ({err.strerror or err})") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the folder {parent} is not writable")


def load_pair(image: str, mask: str, *, shape: tuple[int, int, int], resize: str, invert: bool, binarize: bool
              ) -> tuple[Tensor, Tensor]:
    """The image [C, H, W] in [−1, 1] and its mask [1, H, W] in {0, 1}, both fitted to `shape` by one policy."""
    from vipaint.imageio import fit_mask_to_image, read_image
    from vipaint.masks import FileMask, check_mask

    c, h, w = shape
    if h != w:
        raise ValueError(f"the prior's images are {w}×{h}; `vipaint inpaint` handles square priors only")
    x, native, _ = read_image(image, where=f"image {image}", size=h, channels=c, resize=resize)
    m = fit_mask_to_image(FileMask(path=mask, invert=invert, binarize=binarize).native(0), native, (h, w), resize,
                          where=f"mask {mask}")
    if not bool(m.any()) or bool(m.all()):
        what = "no observed pixel (all black)" if not bool(m.any()) else "no hole (all white)"
        raise ValueError(f"mask {mask}: after fitting to {w}×{h} it has {what}; white marks observed pixels "
                         "and black the hole — pass --invert-mask if your file uses the opposite convention")
    return x, check_mask(m.to(torch.float32), where=f"mask {mask}")


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    import numpy as np

    from vipaint.api import check_options, solve_full
    from vipaint.methods import METHODS
    from vipaint.operators import Inpainting
    from vipaint.priors import DiffusersPrior
    from vipaint.report import panel, to_pil
    from vipaint.seeding import ImageRNG

    for what, name in (("image", args.image), ("mask", args.mask)):
        if not Path(name).exists():
            raise FileNotFoundError(f"{what} file '{name}' does not exist")
    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r} is not a method; available: {sorted(METHODS)}")
    out = Path(args.out)
    check_output(out, [Path(args.image), Path(args.mask)])
    opts = method_options(args)
    prior = DiffusersPrior(args.prior, text_device=args.text_device, drop_t5=args.drop_t5).to(args.device)
    check_options(args.method, prior, opts)
    cond = None
    if getattr(prior, "is_text_conditioned", False):
        cond = prior.prompt_ids([args.prompt or ""], args.negative_prompt)
    elif args.prompt is not None:
        raise ValueError(f"--prompt given, but the prior {args.prior} is not text-conditioned (not a Stable "
                         "Diffusion pipeline)")
    x, m = load_pair(args.image, args.mask, shape=tuple(prior.image_shape), resize=args.resize,
                     invert=args.invert_mask, binarize=args.binarize_mask)
    x, mask = x[None].to(args.device), m[None].to(args.device)
    op = Inpainting(mask, sigma_y=args.sigma_y)
    y = op.observe(x, ImageRNG(args.seed, [0], "observation", device=args.device))
    res = solve_full(args.method, prior, op, y, n_samples=args.samples, seed=args.seed, cond=cond, progress=True,
                     **opts)
    if res.failed.any():
        raise SystemExit(f"vipaint inpaint: the method failed: {res.reasons[0]}")
    comp = op.paste(res.samples, y)
    to_pil(comp[0, 0]).save(out)
    panel(y[0], mask[0], comp[:, 0], x[0]).save(out.with_name(out.stem + "_panel.png"))
    np.savez_compressed(out.with_name(out.stem + "_samples.npz"), samples=comp[:, 0].cpu().numpy(),
                        raw=res.samples[:, 0].cpu().numpy())
    print(f"wrote {out} and {out.stem}_panel.png ({args.samples} samples, {res.nfe} network passes)")
    return out
