"""The image denoiser: a small U-Net in the DDPM mould (Ho et al. 2020, App. B; Ronneberger et al. 2015).

Why a U-Net and not the text transformer: pixels have a 2-D neighbourhood structure that convolutions
exploit at every scale, and the skip connections hand fine detail straight to the output, so a
few-hundred-thousand-parameter model denoises 28x28 digits well on a CPU. The diffusion process around it
(:mod:`textdiffusion.diffusion.gaussian`) is the very one the text methods use.

Layout, for ``channel_mult = (1, 2, 2)`` at 28x28::

    conv 3x3 -> [res x n] 28x28 -> down -> [res x n] 14x14 -> down -> [res x n + attention] 7x7
             -> middle: res, attention, res (7x7)
             -> up path mirrors it, each res block taking the matching skip activation by concatenation
    -> group norm, SiLU, conv 3x3 (zero-initialised: the untrained model predicts 0)

Every residual block is told the time (sinusoidal embedding -> MLP) and, when the model is class-
conditional, the label: a learned embedding added to the time embedding. Label index ``num_classes``
is the "no label" token used for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textdiffusion.config import ConfigError, UNetConfig
from textdiffusion.nn.time_embedding import sinusoidal


def parse_channel_mult(text: str) -> tuple[int, ...]:
    try:
        mult = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"unet.channel_mult must be comma-separated integers like 1,2,2; got {text!r}") from None
    if not mult or min(mult) < 1:
        raise ConfigError(f"unet.channel_mult needs at least one positive integer; got {text!r}")
    return mult


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(groups, channels)  # group count must divide the channels
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, add the (time, label) embedding, norm -> SiLU -> dropout -> conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable deep training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (small) feature map, through SDPA."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps / x0 / v predictor for (B, C, H, W) images at time t in [0, 1], optionally class-conditional.

    ``forward(x_t, t, labels)``: ``labels`` (B,) ints in [0, num_classes], where num_classes means "no
    label"; None is the same as all "no label"."""

    def __init__(self, cfg: UNetConfig, image_size: int, channels: int = 1, num_classes: int = 0):
        super().__init__()
        mult = parse_channel_mult(cfg.channel_mult)
        if image_size % (2 ** (len(mult) - 1)):
            raise ConfigError(f"an image of {image_size}x{image_size} pixels cannot be halved {len(mult) - 1} times; "
                              f"use fewer levels in unet.channel_mult (e.g. 1,2 for 8x8 digits)")
        ch = cfg.base_channels
        if ch % cfg.heads:
            raise ConfigError(f"unet.base_channels={ch} must be divisible by unet.heads={cfg.heads}")
        self.image_size, self.in_channels, self.num_classes = image_size, channels, num_classes
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.base = ch
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        widths = [ch * m for m in mult]
        lowest = len(mult) - 1

        def block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, cfg.dropout, cfg.groups)

        def attn(c: int, level: int) -> nn.Module:
            return Attention(c, cfg.heads, cfg.groups) if cfg.attention and level == lowest else nn.Identity()

        self.down = nn.ModuleList()
        skips = [ch]
        c = ch
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList([block(c, width), attn(width, level)]))
                c = width
                skips.append(c)
            if level != lowest:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1, self.mid_attn, self.mid2 = block(c, c), Attention(c, cfg.heads, cfg.groups), block(c, c)
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(nn.ModuleList([block(c + skips.pop(), widths[level]), attn(widths[level], level)]))
                c = widths[level]
            if level != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out = _norm(c, cfg.groups)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"the U-Net takes (B, {self.in_channels}, {self.image_size}, {self.image_size}) "
                             f"images, got {tuple(x.shape)}")
        emb = self.time_mlp(sinusoidal(t, self.base).to(x.dtype))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(labels)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer[1](layer[0](h, emb)) if isinstance(layer, nn.ModuleList) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], dim=1), emb))
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
