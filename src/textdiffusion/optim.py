"""The one learning-rate schedule, used by the trainer and by the evaluation classifier."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, lr: float, min_lr: float = 0.0, warmup: int = 0) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr`` at ``steps``
    (Loshchilov & Hutter 2017, SGDR, without restarts; nanoGPT's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
