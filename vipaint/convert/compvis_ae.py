"""Reference re-implementation of the CompVis first stages and class embedder (see `compvis.py`):
`ldm/modules/diffusionmodules/model.py` Encoder/Decoder (ResnetBlock, AttnBlock, padded Downsample),
taming's VectorQuantizer2, `ldm.models.autoencoder.VQModelInterface` / `AutoencoderKL` and
`ldm.modules.encoders.modules.ClassEmbedder`, with the original attribute names (hence key layout)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vipaint.convert.compvis import Upsample

__all__ = ["Encoder", "Decoder", "VQModel", "AutoencoderKL", "ClassEmbedder", "VectorQuantizer"]


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels, groups), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(out_channels, groups), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = _norm(ch, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c ** -0.5
        out = torch.bmm(v.reshape(b, c, -1), w.softmax(dim=2).permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


def _mid(ch: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResnetBlock(ch, ch, groups), AttnBlock(ch, groups)
    mid.block_2 = ResnetBlock(ch, ch, groups)
    return mid


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: list[int], num_res_blocks: int, attn_resolutions: list[int],
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 _norm_groups: int = 32, **_: Any) -> None:
        super().__init__()
        g, res = _norm_groups, resolution
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        for lvl, m in enumerate(ch_mult):
            blk_in = ch * in_mult[lvl]
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            for _i in range(num_res_blocks):
                down.block.append(ResnetBlock(blk_in, ch * m, g))
                blk_in = ch * m
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(blk_in, g))
            if lvl != len(ch_mult) - 1:
                down.downsample = _Down(blk_in)
                res //= 2
            self.down.append(down)
        self.mid = _mid(blk_in, g)
        self.norm_out = _norm(blk_in, g)
        self.conv_out = nn.Conv2d(blk_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch: int, out_ch: int, ch_mult: list[int], num_res_blocks: int,
                 attn_resolutions: list[int], resolution: int, z_channels: int, _norm_groups: int = 32,
                 **_: Any) -> None:
        super().__init__()
        g = _norm_groups
        blk_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, blk_in, 3, padding=1)
        self.mid = _mid(blk_in, g)
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(ch_mult))):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _i in range(num_res_blocks + 1):
                up.block.append(ResnetBlock(blk_in, ch * ch_mult[lvl], g))
                blk_in = ch * ch_mult[lvl]
                if res in attn_resolutions:
                    up.attn.append(AttnBlock(blk_in, g))
            if lvl != 0:
                up.upsample = Upsample(blk_in, True)
                res *= 2
            self.up.insert(0, up)
        self.norm_out = _norm(blk_in, g)
        self.conv_out = nn.Conv2d(blk_in, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """taming VectorQuantizer2 (legacy, no remap): nearest codebook entry, straight-through."""

    def __init__(self, n_e: int, e_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z: Tensor) -> Tensor:
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        d = (zf ** 2).sum(1, keepdim=True) + (self.embedding.weight ** 2).sum(1) - 2 * zf @ self.embedding.weight.t()
        zq = self.embedding(d.argmin(1)).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return z + (zq - z).detach()


class VQModel(nn.Module):
    """ldm.models.autoencoder.VQModelInterface: encode → pre-quantisation latents; decode quantises."""

    def __init__(self, *, embed_dim: int, n_embed: int, ddconfig: dict[str, Any], **_: Any) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: Tensor, force_not_quantize: bool = False) -> Tensor:
        quant = h if force_not_quantize else self.quantize(h)
        return self.decoder(self.post_quant_conv(quant))


class AutoencoderKL(nn.Module):
    """ldm.models.autoencoder.AutoencoderKL: encode → posterior mean (mode); decode."""

    def __init__(self, *, embed_dim: int, ddconfig: dict[str, Any], **_: Any) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))[:, : self.embed_dim]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


class ClassEmbedder(nn.Module):
    def __init__(self, embed_dim: int, n_classes: int = 1000, **_: Any) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels[:, None])
