"""Number formats and the arithmetic a run does: what ``train.amp`` resolves to, TF32, and model FLOPs.

One resolution for training, sampling and ``eval``, so a model is always run in the precision it was trained
in. ``auto`` means bf16 autocast on a GPU that supports it (its range is fp32's, so no loss scaling is
needed) and fp32 everywhere else: on a GPU without bf16 we choose fp32 over fp16 with a gradient scaler,
trading speed for a path with no overflow to manage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

# dense bf16 tensor-core peak per GPU, FLOP/s, from the vendors' data sheets (SXM parts); a GPU not listed
# gets no MFU rather than a guessed one
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def resolve(mode: str, device: torch.device) -> str:
    """``train.amp`` ("auto" | "bf16" | "off") on ``device`` as the format it means: "bf16" or "fp32"."""
    if mode == "bf16":
        return "bf16"
    if mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(mode: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context every forward pass runs in (one autocast context cannot be entered twice at
    once, so each pass gets a fresh one)."""
    if resolve(mode, device) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def enable_tf32(device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions use TF32 tensor cores on a GPU (10-bit mantissa inputs, fp32
    accumulation): the fp32 parts of a bf16 run, and all of an fp32 one, several times faster."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def transformer_flops_per_token(n_params: int, n_layer: int, n_embd: int, context: int) -> float:
    """Training FLOPs per token of a decoder-style transformer, forward and backward: 6N for the weights plus
    12 * layers * width * context for attention's scores and weighted sums (Chowdhery et al. 2022, PaLM,
    Appendix B)."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * context


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak, or None when it is not a GPU in :data:`PEAK_BF16_FLOPS`."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def mfu(flops_per_unit: float, units_per_s: float, peak: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: the share of ``devices`` GPUs' peak the training arithmetic uses."""
    if peak is None or units_per_s <= 0:
        return None
    return flops_per_unit * units_per_s / (peak * devices)
