"""A minimal re-implementation of the CompVis latent-diffusion modules, used as the *reference* side of
the converter: its module tree has the attribute names of the originals, so `state_dict()` yields the
original key layout, and its forward passes follow the original code line by line.

Mirrors `ldm/modules/diffusionmodules/openaimodel.py` (UNetModel, ResBlock, AttentionBlock,
QKVAttention[Legacy], Downsample, Upsample) and `ldm/modules/attention.py` (SpatialTransformer,
BasicTransformerBlock, CrossAttention, FeedForward/GEGLU); the first stages are in `compvis_ae.py`.
Not used to run real checkpoints; only to generate synthetic ones and to check conversions.
GroupNorm groups are a parameter (`groups`, CompVis: 32) so that narrow test models stay valid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNetModel", "timestep_embedding", "attention_heads_compvis"]


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """openaimodel/util.py: [cos, sin] of t·exp(-log(P)·i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# ---------------------------------------------------------------- openaimodel.py
class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False,
                 groups: int = 32) -> None:
        super().__init__()
        out = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _qkv_attention(qkv: Tensor, n_heads: int, new_order: bool) -> Tensor:
    """QKVAttentionLegacy (split heads, then q/k/v) or QKVAttention (split q/k/v, then heads)."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    if new_order:
        q, k, v = (t.reshape(bs * n_heads, ch, length) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, *,
                 use_new_attention_order: bool = False, groups: int = 32) -> None:
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = use_new_attention_order
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(_qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.new_order))
        return (x + h).reshape(b, c, *spatial)


# ---------------------------------------------------------------- attention.py
class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        inner = dim_head * heads
        context_dim = context_dim or query_dim
        self.scale, self.heads = dim_head ** -0.5, heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        h = self.heads
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1,
                 context_dim: int | None = None, groups: int = 32) -> None:
        super().__init__()
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, n_heads, d_head, context_dim=context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, in_channels, 1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.reshape(b, y.shape[1], h * w).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context=context)
        return self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w)) + x


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def attention_heads_compvis(p: dict[str, Any], ch: int, *, up: bool = False) -> tuple[int, int]:
    """(heads, dim_head) that CompVis UNetModel gives an attention layer of width `ch` (legacy logic)."""
    nh, nhc = p.get("num_heads", -1), p.get("num_head_channels", -1)
    legacy, spatial = p.get("legacy", True), p.get("use_spatial_transformer", False)
    if nhc != -1:
        nh = ch // nhc
        dim_head = nhc
    else:
        dim_head = ch // nh
    if legacy:
        dim_head = ch // nh if spatial else nhc
    if spatial:
        return nh, dim_head
    # AttentionBlock(num_heads=nh or num_heads_upsample, num_head_channels=dim_head)
    if dim_head != -1:
        return ch // dim_head, dim_head
    nhu = p.get("num_heads_upsample", -1)
    heads = (nhu if nhu != -1 else p.get("num_heads", -1)) if up else nh
    return heads, ch // heads


class UNetModel(nn.Module):
    """openaimodel.UNetModel (2-D, conv_resample=True); `params` are the YAML `unet_config.params`."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        p = params
        mc, mult, nrb = p["model_channels"], list(p.get("channel_mult", (1, 2, 4, 8))), p["num_res_blocks"]
        attn_res, g = list(p["attention_resolutions"]), p.get("_norm_groups", 32)
        ssn, updown = p.get("use_scale_shift_norm", False), p.get("resblock_updown", False)
        spatial, ctx = p.get("use_spatial_transformer", False), p.get("context_dim")
        depth = p.get("transformer_depth", 1)
        self.model_channels, self.num_classes = mc, p.get("num_classes")
        ted = mc * 4
        res = lambda i, o=None, **kw: ResBlock(i, ted, o, use_scale_shift_norm=ssn, groups=g, **kw)  # noqa: E731

        def attn(ch: int, up: bool = False) -> nn.Module:
            heads, dim_head = attention_heads_compvis(p, ch, up=up)
            if spatial:
                return SpatialTransformer(ch, heads, dim_head, depth=depth, context_dim=ctx, groups=g)
            return AttentionBlock(ch, heads, use_new_attention_order=p.get("use_new_attention_order", False), groups=g)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, ted)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(p["in_channels"], mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers: list[nn.Module] = [res(ch, m * mc)]
                ch = m * mc
                if ds in attn_res:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                down = res(ch, ch, down=True) if updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch), res(ch))
        self.output_blocks = nn.ModuleList([])
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                layers = [res(ch + chans.pop(), mc * m)]
                ch = mc * m
                if ds in attn_res:
                    layers.append(attn(ch, up=True))
                if level and i == nrb:
                    layers.append(res(ch, ch, up=True) if updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(mc, p["out_channels"], 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
