#!/usr/bin/env python
"""VIPaint time and peak memory per stage on Stable Diffusion shapes, with random weights (a sibling of
`benchmarks/gpu_paper_shapes.py`, whose stage timer it reuses).

Builds randomly initialised models with the shapes of two text-conditioned priors (no weights, nothing
downloaded; the tokenizer is a local character vocabulary, so only the token *count* is realistic):

* `sd2_base` — stabilityai/stable-diffusion-2-1-base: `UNet2DConditionModel` on 4×64×64 latents, block_out
  (320, 640, 1280, 1280), head dims (5, 10, 20, 20), cross-attention 1024, linear projections; OpenCLIP-H
  text encoder as diffusers holds it (`CLIPTextModel`, 23 layers, width 1024, 77 tokens); KL-f8
  `AutoencoderKL` → 3×512×512; scaled_linear betas 0.00085→0.012, ε-prediction. Default CFG 3 in refinement.
* `sd35_medium` — stabilityai/stable-diffusion-3.5-medium: `SD3Transformer2DModel` (MMDiT-X: 24 layers,
  24 heads × 64, dual attention in layers 0–12, RMS q/k norm, patch 2) on 16×128×128 latents; CLIP-L (12 × 768)
  + CLIP-G (32 × 1280) with projections, T5-XXL encoder (24 × 4096, unless `--drop-t5`); 16-channel
  `AutoencoderKL` with shift → 3×1024×1024; `FlowMatchEulerDiscreteScheduler` shift 3 (docs/algorithm.md §11).
  Preset `sd35_official` (keypoints at σ 0.75 / 0.50, 249 refinement steps), CFG 1 (the journal version's).

Stages, each timed (CUDA-synchronised) with its peak memory: `text` (encode prompt + negative prompt once,
on `--text-device`), `fit` (VIPaint stage 1) and `refine` (drawing z from q, then stage 2).

    python benchmarks/gpu_sd_shapes.py --dtype bfloat16 --denoiser-checkpointing --gradient-checkpointing \\
        --decode-chunk 1 --iterations 5 --refine-steps 20      # shortened real shapes on a GPU
    python benchmarks/gpu_sd_shapes.py --tiny --device cpu      # scaled-down CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):          # run from a checkout without `pip install -e .`
    if p not in sys.path:
        sys.path.insert(0, p)

from gpu_paper_shapes import StageTimer, _fmt, time_vipaint  # noqa: E402

from vipaint.masks import BoxMask  # noqa: E402
from vipaint.methods.vipaint import VIPaintConfig  # noqa: E402
from vipaint.operators import Inpainting  # noqa: E402
from vipaint.priors import DiffusersPrior  # noqa: E402
from vipaint.priors.text import TextEncoder, import_transformers  # noqa: E402
from vipaint.seeding import ImageRNG  # noqa: E402

MODELS = ("sd2_base", "sd35_medium")
SETTINGS = {"sd2_base": dict(keypoints=[550, 400], refine_guidance=3.0),          # default (principled) preset
            "sd35_medium": dict(preset="sd35_official", refine_guidance=1.0)}   # docs/algorithm.md §11.5


def char_tokenizer(max_length: int):
    """A CLIPTokenizer over single characters (no download); real SD tokenizers give other ids, same counts."""
    tf = import_transformers()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c + suffix] = len(vocab)
    return tf.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _clip(width: int, layers: int, heads: int, projection: bool, tiny: bool):
    tf = import_transformers()
    if tiny:
        width, layers, heads = 16, 2, 2
    cfg = tf.CLIPTextConfig(vocab_size=49408 if not tiny else 54, hidden_size=width, intermediate_size=4 * width,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            projection_dim=width, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (tf.CLIPTextModelWithProjection if projection else tf.CLIPTextModel)(cfg)


def _vae(latent: int, tiny: bool, **extra):
    import diffusers

    blocks = (8, 16) if tiny else (128, 256, 512, 512)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent, block_out_channels=blocks,
                                   layers_per_block=1 if tiny else 2, norm_num_groups=4 if tiny else 32,
                                   down_block_types=("DownEncoderBlock2D",) * len(blocks),
                                   up_block_types=("UpDecoderBlock2D",) * len(blocks), **extra)


def build_models(name: str, tiny: bool, drop_t5: bool):
    """(denoiser, scheduler, codec, tokenizers, text encoders) with random weights."""
    import diffusers

    if name == "sd2_base":
        if tiny:
            unet = diffusers.UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4, use_linear_projection=True,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        else:
            unet = diffusers.UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                use_linear_projection=True, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        return unet, sched, _vae(4, tiny), [char_tokenizer(77)], [_clip(1024, 23, 16, False, tiny)]
    if tiny:
        tr = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                             caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8,
                                             dual_attention_layers=(0,), qk_norm="rms_norm")
    else:
        tr = diffusers.SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                             num_layers=24, attention_head_dim=64, num_attention_heads=24,
                                             joint_attention_dim=4096, caption_projection_dim=1536,
                                             pooled_projection_dim=2048, pos_embed_max_size=384,
                                             dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    t5 = None
    if not drop_t5:
        tf = import_transformers()
        cfg = (tf.T5Config(vocab_size=54, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4) if tiny else
               tf.T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                           feed_forward_proj="gated-gelu"))
        t5 = tf.T5EncoderModel(cfg)
    vae = _vae(16, tiny, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    encs = [_clip(768, 12, 12, True, tiny), _clip(1280, 32, 20, True, tiny), t5]
    toks = [char_tokenizer(77), char_tokenizer(77), None if drop_t5 else char_tokenizer(256)]
    return tr, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae, toks, encs


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    with torch.device(device if args.build_on_device else "cpu"):
        den, sched, codec, toks, encs = build_models(name, args.tiny, args.drop_t5)
    text_device = args.text_device or str(device)
    joint = getattr(den.config, "joint_attention_dim", None)
    te = TextEncoder("clip" if name == "sd2_base" else "sd3", toks, encs, device=text_device, dtype=args.text_dtype,
                     max_sequence_length=args.max_sequence_length, joint_attention_dim=joint)
    prior = DiffusersPrior.from_models(den, sched, codec, text_encoder=te, dtype=args.dtype, autocast=args.autocast,
                                       gradient_checkpointing=args.gradient_checkpointing,
                                       denoiser_checkpointing=args.denoiser_checkpointing,
                                       decode_chunk=args.decode_chunk).to(device)
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in
              (("denoiser", prior.denoiser), ("codec", prior.codec))}
    params["text"] = sum(p.numel() for e in encs if e is not None for p in e.parameters()) / 1e6
    set_ = dict(SETTINGS[name])
    if args.guidance is not None:
        set_["refine_guidance"] = args.guidance
    given = {k: getattr(args, k) for k in ("iterations", "refine_steps", "n_mc") if getattr(args, k) is not None}
    cfg = VIPaintConfig(**{**set_, **given}).for_prior(prior)
    b, s = args.images, args.samples
    c, h, w = prior.image_shape
    x = (torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)
    mask = torch.stack([BoxMask(size=0.5)(index=i, seed=0, size=(h, w)) for i in range(b)]).to(device)
    op = Inpainting(mask, sigma_y=0.05)
    idx = list(range(b))
    y = op.observe(x, ImageRNG(0, idx, stream="observation", device=device))
    rng = ImageRNG(args.seed, idx, stream="method:vipaint", device=device)
    row = {"model": name, "denoiser": prior.denoiser_class, "path": prior.noise_path,
           "latent_shape": list(prior.latent_shape), "image_shape": list(prior.image_shape),
           **{f"{k}_params_m": v for k, v in params.items()}, "images": b, "samples": s, "n_mc": cfg.n_mc,
           "iterations": cfg.iterations, "refine_steps": cfg.refine_steps, "refine_guidance": cfg.refine_guidance,
           "t5": not args.drop_t5 and name == "sd35_medium", "text_device": text_device}
    try:
        with StageTimer(torch.device(text_device)) as text:
            cond = prior.prompt_ids([f"a photo number {i}" for i in range(b)], "blurry, low quality")
        row.update(text.summary("text"))
        row.update(time_vipaint(prior, op, y, rng, cfg, s, device, cond=cond))
    except torch.cuda.OutOfMemoryError as err:
        row["error"] = f"OOM: {str(err).splitlines()[0]}"
    del prior, te, encs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(rows: list[dict], meta: dict) -> None:
    print(f"\nVIPaint at Stable Diffusion shapes — {meta['device_name']} — dtype={meta['dtype']} "
          f"autocast={meta['autocast']}")
    head = ("model", "params M", "B", "S", "text s", "fit s", "fit GiB", "steps", "refine s", "s/step", "refine GiB",
            "s/image")
    print(" | ".join(head))
    print(" | ".join("-" * len(x) for x in head))
    for r in rows:
        if "error" in r:
            print(f"{r['model']} | {r['error']}")
            continue
        total = r["denoiser_params_m"] + r["codec_params_m"] + r["text_params_m"]
        print(" | ".join([r["model"], _fmt(total, ".1f"), str(r["images"]), str(r["samples"]), _fmt(r["text_s"]),
                          _fmt(r["fit_s"]), _fmt(r["fit_peak_gib"]), str(r["refine_steps_run"]), _fmt(r["refine_s"]),
                          _fmt(r["refine_median_step_s"], ".3f"), _fmt(r["refine_peak_gib"]), _fmt(r["s_per_image"])]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--samples", type=int, default=None, help="refined samples per observation (default 4)")
    p.add_argument("--iterations", type=int, default=None, help="stage-1 iterations (default 50)")
    p.add_argument("--n-mc", type=int, default=None, help="MC samples per iteration (default: the preset's)")
    p.add_argument("--refine-steps", type=int, default=None, help="guided steps (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="refinement CFG (default: 3 SD2, 1 SD3.5)")
    p.add_argument("--dtype", default="float32", help="denoiser + codec weights: float32 or bfloat16")
    p.add_argument("--autocast", default=None, choices=[None, "bf16", "fp16"])
    p.add_argument("--text-device", default=None, help="where the text encoders run (default: --device)")
    p.add_argument("--text-dtype", default=None, help="text encoder weights (e.g. bfloat16)")
    p.add_argument("--drop-t5", action="store_true", help="SD3.5 without T5-XXL")
    p.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens (SD3.5)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint the VAE decoder")
    p.add_argument("--denoiser-checkpointing", action="store_true", help="checkpoint the UNet / MMDiT")
    p.add_argument("--decode-chunk", type=int, default=None, help="decode at most N latents at once")
    p.add_argument("--build-on-device", action="store_true", help="initialise the random weights on --device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="scaled-down models and schedule (CPU smoke test)")
    p.add_argument("--output", default=None, help="JSON path (default results/benchmarks/gpu_sd_shapes[_tiny].json)")
    a = p.parse_args(argv)
    small = a.tiny
    if small:   # a schedule that runs in seconds on a CPU, unless set explicitly
        a.iterations = 2 if a.iterations is None else a.iterations
        a.refine_steps = 3 if a.refine_steps is None else a.refine_steps
        a.n_mc = 1 if a.n_mc is None else a.n_mc
    a.samples = a.samples if a.samples is not None else (2 if small else 4)
    return a


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import diffusers

    tf = import_transformers()
    meta = {"device": str(device), "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                   else platform.processor() or "cpu"),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": tf.__version__,
            "dtype": args.dtype, "autocast": args.autocast, "gradient_checkpointing": args.gradient_checkpointing,
            "denoiser_checkpointing": args.denoiser_checkpointing, "decode_chunk": args.decode_chunk,
            "tiny": args.tiny, "argv": sys.argv[1:] if argv is None else list(argv)}
    rows = []
    for name in args.models:
        rows.append(run_model(name, args, device))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, meta)
    out = Path(args.output or f"results/benchmarks/gpu_sd_shapes{'_tiny' if args.tiny else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
    out.write_text(json.dumps({"meta": meta, "results": clean}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
