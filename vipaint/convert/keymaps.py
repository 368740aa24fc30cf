"""CompVis → diffusers key maps and configs, written as explicit rules that can be inverted.

A `Rule` moves one CompVis tensor into one diffusers tensor (`copy`, or `unconv`: a 1×1 conv weight
becomes a linear weight) or, for the fused `qkv` of openaimodel's AttentionBlock, into three (`qkv`).
`Rule.inverse` rebuilds the CompVis tensor bit for bit, which is what the tests check.

Layout correspondences (walked exactly as CompVis builds its modules):
* UNet: `input_blocks.{i}.{j}` → `down_blocks.{level}.{resnets|attentions|downsamplers}.{n}`,
  `middle_block.{0,1,2}` → `mid_block.{resnets.0, attentions.0, resnets.1}`, `output_blocks.{i}.{j}` →
  `up_blocks.{L-1-level}...`; ResBlock `in_layers.0/2, emb_layers.1, out_layers.0/3, skip_connection` →
  `norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut`; a `resblock_updown` ResBlock becomes the
  block's `downsamplers.0`/`upsamplers.0` ResnetBlock2D(down/up=True); SpatialTransformer keys keep
  their names inside Transformer2DModel.
* Autoencoders: `encoder.down.{i}.block.{j}` → `encoder.down_blocks.{i}.resnets.{j}`,
  `decoder.up.{i}` → `decoder.up_blocks.{L-1-i}`, `mid.block_1/attn_1/block_2` →
  `mid_block.resnets.0/attentions.0/resnets.1`, `nin_shortcut` → `conv_shortcut`, AttnBlock `q,k,v,
  proj_out, norm` → `to_q, to_k, to_v, to_out.0, group_norm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vipaint.convert.compvis import attention_heads_compvis

__all__ = ["Rule", "UNetPlan", "unet_plan", "autoencoder_plan", "apply_rules", "invert_rules"]


@dataclass(frozen=True)
class Rule:
    """One CompVis tensor `src` → diffusers tensor(s) `dst`."""

    src: str
    dst: tuple[str, ...]
    op: str = "copy"          # copy | unconv (k=1 conv → linear) | qkv (fused q,k,v → three linears)
    conv_dims: int = 0        # trailing kernel dims dropped by unconv/qkv (1: Conv1d, 2: Conv2d)
    heads: int = 1            # qkv: number of heads of the fused tensor
    legacy: bool = True       # qkv: QKVAttentionLegacy layout (per head: q,k,v) vs QKVAttention (q,k,v)

    def forward(self, t: Tensor) -> list[Tensor]:
        if self.op == "copy":
            return [t]
        if self.op == "unconv":
            return [t.reshape(t.shape[: t.dim() - self.conv_dims])]
        rest = t.shape[1: t.dim() - self.conv_dims]
        c = t.shape[0] // 3
        if self.legacy:
            parts = t.reshape(self.heads, 3, c // self.heads, *t.shape[1:]).unbind(1)
        else:
            parts = t.reshape(3, c, *t.shape[1:]).unbind(0)
        return [q.reshape(c, *rest).contiguous() for q in parts]

    def inverse(self, ts: list[Tensor]) -> Tensor:
        k = (1,) * self.conv_dims
        if self.op == "copy":
            return ts[0]
        if self.op == "unconv":
            return ts[0].reshape(*ts[0].shape, *k)
        c, rest = ts[0].shape[0], ts[0].shape[1:]
        if self.legacy:
            t = torch.stack([x.reshape(self.heads, c // self.heads, *rest) for x in ts], dim=1)
        else:
            t = torch.stack(ts, dim=0)
        return t.reshape(3 * c, *rest, *k)


def _wb(rules: list[Rule], src: str, dst: str, op: str = "copy", conv_dims: int = 0) -> None:
    for s in ("weight", "bias"):
        rules.append(Rule(f"{src}.{s}", (f"{dst}.{s}",), op if s == "weight" else "copy",
                          conv_dims if s == "weight" else 0))


def _resblock(rules: list[Rule], src: str, dst: str, cin: int, cout: int) -> None:
    for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2")):
        _wb(rules, f"{src}.{a}", f"{dst}.{b}")
    if cin != cout:
        _wb(rules, f"{src}.skip_connection", f"{dst}.conv_shortcut")


def _attention_block(rules: list[Rule], src: str, dst: str, heads: int, legacy: bool) -> None:
    _wb(rules, f"{src}.norm", f"{dst}.group_norm")
    q, k, v = (f"{dst}.to_{n}" for n in "qkv")
    rules.append(Rule(f"{src}.qkv.weight", (f"{q}.weight", f"{k}.weight", f"{v}.weight"), "qkv", 1, heads, legacy))
    rules.append(Rule(f"{src}.qkv.bias", (f"{q}.bias", f"{k}.bias", f"{v}.bias"), "qkv", 0, heads, legacy))
    _wb(rules, f"{src}.proj_out", f"{dst}.to_out.0", "unconv", 1)


def _spatial_transformer(rules: list[Rule], src: str, dst: str, depth: int) -> None:
    for n in ("norm", "proj_in", "proj_out"):
        _wb(rules, f"{src}.{n}", f"{dst}.{n}")
    for d in range(depth):
        s, t = f"{src}.transformer_blocks.{d}", f"{dst}.transformer_blocks.{d}"
        for a in ("attn1", "attn2"):
            for n in ("to_q", "to_k", "to_v"):
                rules.append(Rule(f"{s}.{a}.{n}.weight", (f"{t}.{a}.{n}.weight",)))
            _wb(rules, f"{s}.{a}.to_out.0", f"{t}.{a}.to_out.0")
        for n in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"):
            _wb(rules, f"{s}.{n}", f"{t}.{n}")


@dataclass
class UNetPlan:
    """The diffusers class + config for a CompVis UNet, its rules, and the true heads per attention."""

    class_name: str
    config: dict[str, Any]
    rules: list[Rule]
    heads: dict[str, int] = field(default_factory=dict)          # diffusers module path → CompVis heads
    heads_override: dict[str, int] = field(default_factory=dict)  # those the config cannot express


def unet_plan(p: dict[str, Any]) -> UNetPlan:
    """Rules and a diffusers `UNet2DModel` / `UNet2DConditionModel` config for `unet_config.params`."""
    if p.get("dims", 2) != 2 or not p.get("conv_resample", True) or p.get("n_embed") is not None:
        raise NotImplementedError("only 2-D UNets with conv_resample=True and no codebook-id head are supported")
    spatial, updown = p.get("use_spatial_transformer", False), p.get("resblock_updown", False)
    if spatial and updown:
        raise NotImplementedError("spatial transformer + resblock_updown has no diffusers block (CrossAttn*Block2D "
                                  "only resamples with convolutions)")
    mc, mult, nrb = p["model_channels"], list(p.get("channel_mult", (1, 2, 4, 8))), p["num_res_blocks"]
    attn_res, depth = list(p["attention_resolutions"]), p.get("transformer_depth", 1)
    new_order = p.get("use_new_attention_order", False)
    rules: list[Rule] = []
    heads: dict[str, int] = {}

    def attention(src: str, dst: str, ch: int, up: bool = False) -> None:
        h, _ = attention_heads_compvis(p, ch, up=up)
        heads[dst] = h
        if spatial:
            _spatial_transformer(rules, src, dst, depth)
        else:
            _attention_block(rules, src, dst, h, not new_order)

    _wb(rules, "time_embed.0", "time_embedding.linear_1")
    _wb(rules, "time_embed.2", "time_embedding.linear_2")
    if p.get("num_classes") is not None:
        rules.append(Rule("label_emb.weight", ("class_embedding.weight",)))
    _wb(rules, "input_blocks.0.0", "conv_in")
    chans, ch, ds, idx = [mc], mc, 1, 1
    down_types, level_attn = [], []
    for level, m in enumerate(mult):
        has_attn = ds in attn_res
        level_attn.append(has_attn)
        for j in range(nrb):
            _resblock(rules, f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", ch, m * mc)
            ch = m * mc
            if has_attn:
                attention(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", ch)
            chans.append(ch)
            idx += 1
        if level != len(mult) - 1:
            if updown:
                _resblock(rules, f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0", ch, ch)
            else:
                _wb(rules, f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            chans.append(ch)
            ds *= 2
            idx += 1
        down_types.append(("CrossAttnDownBlock2D" if spatial else "AttnDownBlock2D") if has_attn
                          else ("ResnetDownsampleBlock2D" if updown else "DownBlock2D"))
    _resblock(rules, "middle_block.0", "mid_block.resnets.0", ch, ch)
    attention("middle_block.1", "mid_block.attentions.0", ch)
    _resblock(rules, "middle_block.2", "mid_block.resnets.1", ch, ch)
    idx, up_types = 0, []
    for level, m in list(enumerate(mult))[::-1]:
        u = len(mult) - 1 - level
        for i in range(nrb + 1):
            _resblock(rules, f"output_blocks.{idx}.0", f"up_blocks.{u}.resnets.{i}", ch + chans.pop(), mc * m)
            ch, k = mc * m, 1
            if level_attn[level]:
                attention(f"output_blocks.{idx}.1", f"up_blocks.{u}.attentions.{i}", ch, up=True)
                k = 2
            if level and i == nrb:
                if updown:
                    _resblock(rules, f"output_blocks.{idx}.{k}", f"up_blocks.{u}.upsamplers.0", ch, ch)
                else:
                    _wb(rules, f"output_blocks.{idx}.{k}.conv", f"up_blocks.{u}.upsamplers.0.conv")
            idx += 1
        up_types.append(("CrossAttnUpBlock2D" if spatial else "AttnUpBlock2D") if level_attn[level]
                        else ("ResnetUpsampleBlock2D" if updown else "UpBlock2D"))
    _wb(rules, "out.0", "conv_norm_out")
    _wb(rules, "out.2", "conv_out")

    g = p.get("_norm_groups", 32)
    cfg: dict[str, Any] = dict(
        sample_size=p.get("image_size"), in_channels=p["in_channels"], out_channels=p["out_channels"],
        down_block_types=down_types, up_block_types=up_types, block_out_channels=[mc * m for m in mult],
        layers_per_block=nrb, norm_num_groups=g, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True,
        freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
        resnet_time_scale_shift="scale_shift" if p.get("use_scale_shift_norm", False) else "default",
        num_class_embeds=p.get("num_classes"))
    heads_override: dict[str, int] = {}
    if spatial:
        cfg.update(cross_attention_dim=p["context_dim"], transformer_layers_per_block=depth,
                   mid_block_type="UNetMidBlock2DCrossAttn", use_linear_projection=False,
                   # diffusers' historic naming: for UNet2DConditionModel `attention_head_dim` is the number of heads
                   attention_head_dim=[attention_heads_compvis(p, mc * m)[0] for m in mult])
        return UNetPlan("UNet2DConditionModel", cfg, rules, heads, heads_override)
    # UNet2DModel: one head width for every block (heads = channels // attention_head_dim)
    widths = {dst: _attn_channels(dst, mc, mult) for dst in heads}
    dims = sorted({widths[d] // h for d, h in heads.items()})
    head_dim = dims[0] if all(w % dims[0] == 0 for w in widths.values()) else math.gcd(*widths.values())
    heads_override = {d: h for d, h in heads.items() if widths[d] // head_dim != h}
    cfg.update(attention_head_dim=head_dim, attn_norm_num_groups=g,
               downsample_type="resnet" if updown else "conv", upsample_type="resnet" if updown else "conv")
    return UNetPlan("UNet2DModel", cfg, rules, heads, heads_override)


def _attn_channels(dst: str, mc: int, mult: list[int]) -> int:
    parts = dst.split(".")
    if parts[0] == "mid_block":
        return mc * mult[-1]
    level = int(parts[1]) if parts[0] == "down_blocks" else len(mult) - 1 - int(parts[1])
    return mc * mult[level]


def _ae_resblock(rules: list[Rule], src: str, dst: str, cin: int, cout: int) -> None:
    for n in ("norm1", "conv1", "norm2", "conv2"):
        _wb(rules, f"{src}.{n}", f"{dst}.{n}")
    if cin != cout:
        _wb(rules, f"{src}.nin_shortcut", f"{dst}.conv_shortcut")


def _ae_mid(rules: list[Rule], src: str, dst: str, ch: int) -> None:
    _ae_resblock(rules, f"{src}.block_1", f"{dst}.resnets.0", ch, ch)
    _ae_resblock(rules, f"{src}.block_2", f"{dst}.resnets.1", ch, ch)
    a, b = f"{src}.attn_1", f"{dst}.attentions.0"
    _wb(rules, f"{a}.norm", f"{b}.group_norm")
    for s, t in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        _wb(rules, f"{a}.{s}", f"{b}.{t}", "unconv", 2)


def autoencoder_plan(fs: dict[str, Any], kind: str, scaling_factor: float) -> tuple[str, dict[str, Any], list[Rule]]:
    """(diffusers class, config, rules) for a CompVis first stage (`first_stage_config.params`)."""
    dd = fs["ddconfig"]
    if dd.get("attn_resolutions"):
        raise NotImplementedError("first stages with attention inside the down/up levels are not supported")
    if kind == "kl" and (not dd.get("double_z", True) or fs["embed_dim"] != dd["z_channels"]):
        raise NotImplementedError("AutoencoderKL needs double_z=True and embed_dim == z_channels")
    ch, mult, nrb, n = dd["ch"], list(dd["ch_mult"]), dd["num_res_blocks"], len(dd["ch_mult"])
    rules: list[Rule] = []
    _wb(rules, "encoder.conv_in", "encoder.conv_in")
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            _ae_resblock(rules, f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", cin, ch * m)
            cin = ch * m
        if i != n - 1:
            _wb(rules, f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    _ae_mid(rules, "encoder.mid", "encoder.mid_block", cin)
    _wb(rules, "encoder.norm_out", "encoder.conv_norm_out")
    _wb(rules, "encoder.conv_out", "encoder.conv_out")
    _wb(rules, "decoder.conv_in", "decoder.conv_in")
    _ae_mid(rules, "decoder.mid", "decoder.mid_block", ch * mult[-1])
    cin = ch * mult[-1]
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            _ae_resblock(rules, f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{n - 1 - i}.resnets.{j}",
                         cin, ch * mult[i])
            cin = ch * mult[i]
        if i != 0:
            _wb(rules, f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{n - 1 - i}.upsamplers.0.conv")
    _wb(rules, "decoder.norm_out", "decoder.conv_norm_out")
    _wb(rules, "decoder.conv_out", "decoder.conv_out")
    _wb(rules, "quant_conv", "quant_conv")
    _wb(rules, "post_quant_conv", "post_quant_conv")
    cfg: dict[str, Any] = dict(
        in_channels=dd["in_channels"], out_channels=dd["out_ch"], block_out_channels=[ch * m for m in mult],
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=nrb, act_fn="silu", latent_channels=dd["z_channels"],
        norm_num_groups=dd.get("_norm_groups", 32), sample_size=dd["resolution"], scaling_factor=scaling_factor)
    if kind == "vq":
        rules.append(Rule("quantize.embedding.weight", ("quantize.embedding.weight",)))
        cfg.update(num_vq_embeddings=fs["n_embed"], vq_embed_dim=fs["embed_dim"])
        return "VQModel", cfg, rules
    return "AutoencoderKL", cfg, rules


def apply_rules(rules: list[Rule], src: dict[str, Tensor]) -> dict[str, Tensor]:
    """CompVis state dict (unprefixed) → diffusers state dict; every rule must find its tensor."""
    missing = [r.src for r in rules if r.src not in src]
    if missing:
        raise KeyError(f"{len(missing)} expected CompVis keys are missing, e.g. {missing[:5]} "
                       f"(wrong --config for this checkpoint?)")
    out: dict[str, Tensor] = {}
    for r in rules:
        for name, t in zip(r.dst, r.forward(src[r.src]), strict=True):
            if name in out:
                raise RuntimeError(f"two rules write {name}")
            out[name] = t
    return out


def invert_rules(rules: list[Rule], dst: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers state dict → CompVis state dict (the inverse of `apply_rules`)."""
    return {r.src: r.inverse([dst[d] for d in r.dst]) for r in rules}
