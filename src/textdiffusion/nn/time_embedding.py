"""The one time embedding: sinusoids of a noise level, shared by the transformer and the U-Net."""

from __future__ import annotations

import math

import torch


def sinusoidal(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) features [cos, sin]: Vaswani et al. 2017's positional encoding with
    time in place of position, t scaled to [0, 1000] (the range of DDPM's integer steps, Ho et al. 2020) so
    the fastest sinusoid still turns over between neighbouring steps."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
