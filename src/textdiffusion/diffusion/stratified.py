"""Stratified uniforms: the one low-discrepancy draw every estimator here uses.

Drawing n times (or mask counts) independently leaves some batches with all their draws at low noise and
others at high noise, so the batch loss jumps around. Drawing one offset and spreading n points evenly
from it, (offset + i / n) mod 1, covers [0, 1) at every step while each point is still marginally uniform,
so every estimate stays unbiased and its variance drops (MDLM's "low-discrepancy sampler"; Kingma et al.
2021, VDM, App. I.1). Masked diffusion draws its training times and mask counts with it, the Gaussian
methods their training times, and every validation bound its K time samples per example.
"""

from __future__ import annotations

import torch


def stratified(offset: torch.Tensor, n: int) -> torch.Tensor:
    """(offset + i / n) mod 1 for i < n along the last axis: n points covering [0, 1) evenly.
    ``offset`` broadcasts, e.g. (B, 1) for n draws per row."""
    return torch.remainder(offset + torch.arange(n, device=offset.device) / n, 1.0)


def uniforms(n: int, antithetic: bool, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """n draws from U[0, 1): stratified from one shared offset when ``antithetic``, else independent."""
    if antithetic:
        return stratified(torch.rand(1, generator=generator, device=device), n)
    return torch.rand(n, generator=generator, device=device)


def per_row(rows: int, k: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """(rows, k) uniforms: k stratified draws for each row, from an offset drawn per row (the validation
    bounds' K time samples per window or image)."""
    return stratified(torch.rand(rows, 1, generator=generator, device=device), k)
