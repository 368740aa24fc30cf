#!/usr/bin/env python
"""VIPaint time and peak memory per stage at the paper's model shapes, with random weights.

Builds randomly initialised diffusers models with the shapes of the paper's two LDM priors (no weights are
needed, nothing is downloaded):

* `lsun_church_ldm` — CompVis lsun_churches256: `UNet2DModel` on 4×32×32 latents, block_out (192, 384, 384,
  768, 768), 2 res blocks per level, self-attention at 32/16/8/4 and in the mid block with 8 heads each (set
  per module after building, as `vipaint convert-ldm`'s attention_heads.json does), scale-shift norm, resnet
  up/down-sampling; KL-f8 `AutoencoderKL`
  (latent 4, block_out 128×[1, 2, 4, 4]) → 3×256×256; CompVis "linear" betas 0.0015→0.0155 (scaled_linear).
  Official LSUN settings: S = 10, no CFG.
* `cin256_v2` — CompVis cin256-v2: `UNet2DConditionModel` on 3×64×64 latents, block_out 192×[1, 2, 3, 5],
  spatial transformers (1 head, cross-attention dim 512) at 32/16/8, external class embedding 1001×512;
  VQ-f4 `VQModel` (latent 3, 8192 codes, block_out 128×[1, 2, 4]) → 3×256×256; betas 0.0015→0.0195.
  Official ImageNet settings: S = 5, CFG 3 in refinement (one batched 2N call per step).

and runs VIPaint for `--images` observations (box mask) with `--samples` samples each: stage 1 (fit: K = 2
keypoints [550, 400], 50 iterations, S MC samples) and stage 2 (refine: 400 guided steps), timing each
stage (CUDA-synchronised) and its peak memory. Prints a table and writes JSON (default
results/benchmarks/gpu_paper_shapes.json).

    python benchmarks/gpu_paper_shapes.py                       # official schedule, fp32, one image
    python benchmarks/gpu_paper_shapes.py --autocast bf16 --channels-last --tf32 --images 4
    python benchmarks/gpu_paper_shapes.py --iterations 5 --refine-steps 20   # shortened (per-step times stay valid)
    python benchmarks/gpu_paper_shapes.py --tiny --device cpu   # scaled-down CPU smoke run (seconds)

Needs only torch + diffusers + this package (no lightning / wandb / lpips / datasets on this path; numpy and
Pillow come in through `vipaint.masks`). Runs from a plain checkout (it puts the repository on sys.path). Where
diffusers is missing, carry its pure-Python wheel: `pip download --no-deps diffusers==0.42.1 -d .whl`, then
`pip install --no-deps .whl/diffusers-*.whl` there (it needs huggingface_hub >= 1.32 and safetensors >= 0.8).
Stage 1 and 2 are the body of `vipaint.methods.vipaint.vipaint`, split so each stage can be timed; the first
step of each stage carries the warm-up (cuDNN autotuning, `--compile`), so per-step medians are reported too.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from vipaint.masks import BoxMask  # noqa: E402
from vipaint.methods.vipaint import VIPaintConfig, fit_posterior, refine  # noqa: E402
from vipaint.operators import Inpainting  # noqa: E402
from vipaint.posterior import sample_chain  # noqa: E402
from vipaint.priors import ClassEmbedder, DiffusersPrior  # noqa: E402
from vipaint.seeding import ImageRNG  # noqa: E402

MODELS = ("lsun_church_ldm", "cin256_v2")
OFFICIAL = {   # docs/algorithm.md §5
    "lsun_church_ldm": dict(n_mc=10, s_top=0.1, gamma_init=4.0, refine_guidance=1.0, likelihood_scale=0.01),
    "cin256_v2": dict(n_mc=5, s_top=0.8, gamma_init=5.0, refine_guidance=3.0, likelihood_scale=0.00640712),
}


def _set_heads(model: torch.nn.Module, heads: int) -> None:
    """Give every attention module `heads` heads (as `vipaint.convert.apply_attention_heads` does)."""
    from diffusers.models.attention_processor import Attention

    for m in model.modules():
        if isinstance(m, Attention):
            inner = m.to_q.out_features
            m.heads, m.scale = heads, (inner // heads) ** -0.5


def build_models(name: str, tiny: bool):
    """(denoiser, scheduler, codec, class_embedder or None) with random weights."""
    import diffusers

    if name == "lsun_church_ldm":
        if tiny:
            unet = diffusers.UNet2DModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=4, attention_head_dim=4, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D"), resnet_time_scale_shift="scale_shift",
                downsample_type="resnet", upsample_type="resnet")
            vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                          layers_per_block=1, norm_num_groups=4, sample_size=16,
                                          down_block_types=("DownEncoderBlock2D",) * 2,
                                          up_block_types=("UpDecoderBlock2D",) * 2)
        else:
            unet = diffusers.UNet2DModel(
                sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(192, 384, 384, 768, 768), norm_num_groups=32, attention_head_dim=48,
                down_block_types=("AttnDownBlock2D",) * 4 + ("DownBlock2D",),
                up_block_types=("ResnetUpsampleBlock2D",) + ("AttnUpBlock2D",) * 4,
                resnet_time_scale_shift="scale_shift", downsample_type="resnet", upsample_type="resnet")
            vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                          block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                          norm_num_groups=32, sample_size=256,
                                          down_block_types=("DownEncoderBlock2D",) * 4,
                                          up_block_types=("UpDecoderBlock2D",) * 4)
            _set_heads(unet, 8)   # CompVis num_heads: 8 at every width (what `vipaint convert-ldm` restores)
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.0015, beta_end=0.0155)
        return unet, sched, vae, None
    if name == "cin256_v2":
        if tiny:
            unet = diffusers.UNet2DConditionModel(
                sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
            emb = ClassEmbedder(1000, 16)
            vq = diffusers.VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=64,
                                   vq_embed_dim=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2)
        else:
            unet = diffusers.UNet2DConditionModel(
                sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                block_out_channels=(192, 384, 576, 960), norm_num_groups=32, cross_attention_dim=512,
                attention_head_dim=1,   # diffusers' legacy name: 1 attention HEAD per block (CompVis num_heads: 1)
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",))
            emb = ClassEmbedder(1000, 512)
            vq = diffusers.VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=8192,
                                   vq_embed_dim=3, block_out_channels=(128, 256, 512), layers_per_block=2,
                                   norm_num_groups=32, sample_size=256,
                                   down_block_types=("DownEncoderBlock2D",) * 3,
                                   up_block_types=("UpDecoderBlock2D",) * 3)
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.0015, beta_end=0.0195)
        return unet, sched, vq, emb
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


class StageTimer:
    """Wall time and peak memory of one stage; `tick` (a `progress` callback) records per-step times."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.steps = device, []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> StageTimer:
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = self.last = time.perf_counter()
        return self

    def tick(self, done: int, total: int, values: dict | None = None) -> None:
        self._sync()
        now = time.perf_counter()
        self.steps.append(now - self.last)
        self.last = now

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.t0
        self.peak_gib = (torch.cuda.max_memory_allocated(self.device) / 2 ** 30
                         if self.device.type == "cuda" else float("nan"))

    def summary(self, prefix: str) -> dict:
        rest = self.steps[1:] or self.steps
        return {f"{prefix}_s": self.seconds, f"{prefix}_peak_gib": self.peak_gib, f"{prefix}_steps": len(self.steps),
                f"{prefix}_first_step_s": self.steps[0] if self.steps else float("nan"),
                f"{prefix}_median_step_s": statistics.median(rest) if rest else float("nan")}


def time_vipaint(prior, op, y, rng, cfg, n_samples: int, device: torch.device, cond=None) -> dict:
    """VIPaint's two stages on one batch, each under a `StageTimer`: the fit (`fit_s`, peak memory), a draw
    of `n_samples` chains from q and the refinement (`refine_s`), the refinement steps run, whether every
    sample is finite, seconds per image and the process's peak resident memory so far."""
    b = y.shape[0]
    row: dict = {}
    with StageTimer(device) as fit:
        post, _, failed, _ = fit_posterior(prior, op, y, rng, cfg, cond=cond, progress=fit.tick)
    row.update(fit.summary("fit"))
    with StageTimer(device) as ref:
        with torch.no_grad():
            z = sample_chain(post, prior, n_samples, rng, eta=cfg.eta_fit, cond=cond,
                             guidance_scale=cfg.fit_guidance).z[-1]
        samples, n_ref = refine(prior, op, y, z, rng, cfg, likelihood=cfg.make_likelihood(), cond=cond,
                                progress=ref.tick)
    row.update(ref.summary("refine"))
    row["refine_steps_run"] = n_ref
    row["samples_finite"] = bool(torch.isfinite(samples).all()) and not bool(failed.any())
    row["s_per_image"] = (row["fit_s"] + row["refine_s"]) / b
    row["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # process peak so far (KiB)
    return row


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    den, sched, codec, emb = build_models(name, args.tiny)
    prior = DiffusersPrior.from_models(den, sched, codec, class_embedder=emb, autocast=args.autocast,
                                       channels_last=args.channels_last, compile=args.compile,
                                       gradient_checkpointing=args.gradient_checkpointing,
                                       decode_chunk=args.decode_chunk).to(device)
    n_den = sum(p.numel() for p in prior.denoiser.parameters())
    n_codec = sum(p.numel() for p in prior.codec.parameters())
    official = dict(OFFICIAL[name])
    if args.n_mc is not None:
        official["n_mc"] = args.n_mc
    cfg = VIPaintConfig(preset="official", zeta_over_samples=False, keypoints=[550, 400],
                        iterations=args.iterations, refine_steps=args.refine_steps, **official)
    b, s = args.images, args.samples
    c, h, w = prior.image_shape
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(b, c, h, w, generator=g) * 2 - 1).to(device)
    mask = torch.stack([BoxMask(size=0.5)(index=i, seed=0, size=(h, w)) for i in range(b)]).to(device)
    op = Inpainting(mask, sigma_y=0.05)
    idx = list(range(b))
    y = op.observe(x, ImageRNG(0, idx, stream="observation", device=device))
    cond = (torch.arange(b) * 7 % 1000).to(device) if prior.num_classes else None
    rng = ImageRNG(args.seed, idx, stream="method:vipaint", device=device)
    row = {"model": name, "denoiser": prior.denoiser_class, "codec": prior.codec_kind,
           "latent_shape": list(prior.latent_shape), "image_shape": list(prior.image_shape),
           "denoiser_params_m": n_den / 1e6, "codec_params_m": n_codec / 1e6, "images": b, "samples": s,
           "n_mc": cfg.n_mc, "iterations": cfg.iterations, "refine_steps": cfg.refine_steps or cfg.keypoints[-1],
           "refine_guidance": cfg.refine_guidance}
    try:
        row.update(time_vipaint(prior, op, y, rng, cfg, s, device, cond=cond))
    except torch.cuda.OutOfMemoryError as err:   # keep going with the next model
        row["error"] = f"OOM: {str(err).splitlines()[0]}"
        torch.cuda.empty_cache()
    del prior
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _fmt(v: object, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, float) and v == v else ("-" if isinstance(v, float) else str(v))


def print_table(rows: list[dict], meta: dict) -> None:
    print(f"\nVIPaint at paper shapes — {meta['device_name']} — autocast={meta['autocast']} "
          f"channels_last={meta['channels_last']} compile={meta['compile']} tf32={meta['tf32']}")
    head = ("model", "params M", "B", "S", "MC", "iters", "fit s", "fit s/iter", "fit GiB", "steps", "refine s",
            "s/step", "refine GiB", "s/image")
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for r in rows:
        if "error" in r:
            print(f"{r['model']} | {r['error']}")
            continue
        fit_iter = r["fit_s"] / max(1, r["iterations"])
        print(" | ".join([r["model"], _fmt(r["denoiser_params_m"] + r["codec_params_m"], ".1f"), str(r["images"]),
                          str(r["samples"]), str(r["n_mc"]), str(r["iterations"]), _fmt(r["fit_s"]),
                          _fmt(fit_iter, ".3f"), _fmt(r["fit_peak_gib"]), str(r["refine_steps_run"]),
                          _fmt(r["refine_s"]), _fmt(r["refine_median_step_s"], ".3f"), _fmt(r["refine_peak_gib"]),
                          _fmt(r["s_per_image"])]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--images", type=int, default=1, help="observations per batch (B)")
    p.add_argument("--samples", type=int, default=None, help="refined samples per observation (default 10)")
    p.add_argument("--iterations", type=int, default=None, help="stage-1 Adam iterations (default: official 50)")
    p.add_argument("--n-mc", type=int, default=None, help="MC samples per iteration (default: official per model, "
                   "10 LSUN / 5 ImageNet)")
    p.add_argument("--refine-steps", type=int, default=None, help="guided steps from 400 to 0 (official: all 400)")
    p.add_argument("--autocast", default=None, choices=[None, "bf16", "fp16"], help="autocast dtype on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (cuDNN convolutions use TF32 by default)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint the decoder")
    p.add_argument("--decode-chunk", type=int, default=None, help="decode at most N latents at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="scaled-down models and schedule (CPU smoke test)")
    p.add_argument("--output", default=None, help="JSON path (default results/benchmarks/gpu_paper_shapes[_tiny].json)")
    a = p.parse_args(argv)
    if a.tiny:   # a schedule that runs in seconds on a CPU, unless set explicitly
        a.iterations = 2 if a.iterations is None else a.iterations
        a.refine_steps = 3 if a.refine_steps is None else a.refine_steps
        a.samples = 2 if a.samples is None else a.samples
        a.n_mc = 2 if a.n_mc is None else a.n_mc
    a.iterations = 50 if a.iterations is None else a.iterations
    a.samples = 10 if a.samples is None else a.samples
    return a


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import diffusers

    meta = {"device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or "cpu"),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "autocast": args.autocast, "channels_last": args.channels_last, "compile": args.compile, "tf32": args.tf32,
            "gradient_checkpointing": args.gradient_checkpointing, "decode_chunk": args.decode_chunk,
            "tiny": args.tiny, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    rows = []
    for name in args.models:
        row = run_model(name, args, device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(rows, meta)
    out = Path(args.output or f"results/benchmarks/gpu_paper_shapes{'_tiny' if args.tiny else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]  # NaN → null
    out.write_text(json.dumps({"meta": meta, "results": clean}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
