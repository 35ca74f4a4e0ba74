"""Named sizes: partial configs merged over the defaults (see :func:`textdiffusion.config.build_config`).

``cpu`` is the shape nanoGPT suggests for a CPU run of shakespeare_char, ``base`` is the shape of nanoGPT's
shakespeare_char (and tiny-diffusion), so numbers compare one to one. A method adjusts a preset in its config
class's ``presets`` (each adjustment measured); a ``method`` entry here applies to the methods that have the
field and is skipped by the others.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32},
        "train": {"steps": 60, "batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "eval_every": 30,
                  "eval_windows": 32, "final_eval_windows": 64, "ema_decay": 0.9, "log_every": 10},
        "method": {"eval_time_samples": 4},
    },
    "cpu": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "context": 64},
        "train": {"steps": 2000, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup": 100,
                  "eval_every": 250, "eval_windows": 128, "ema_decay": 0.99},
    },
    "base": {
        "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "context": 256, "dropout": 0.2},
        "train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-4, "warmup": 100,
                  "eval_every": 500, "ema_decay": 0.999},
    },
}
