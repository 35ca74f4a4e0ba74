"""Run directories: safetensors + JSON only (loading a shared run never executes code), atomic writes.

Layout of a run directory::

    config.json               full resolved config, seed, versions, corpus fingerprint, parameter count
    tokenizer.json            the tokenizer, so sampling needs no corpus
    model.safetensors         raw weights          } each stamped with the training step in its metadata;
    ema.safetensors           EMA weights          } resume refuses a set whose steps disagree
    trainer.safetensors       optimizer moments and RNG states, for exact resume
    trainer.json              step, elapsed time, optimizer hyper-parameters
    metrics.jsonl             one line per evaluation
    samples/step_NNNNNN.txt   samples written at each evaluation
    eval.json                 written by ``textdiffusion eval``
    sweep.json                ``textdiffusion compare``'s cache of its quality-vs-speed points

Every file is written to a temporary name in the same directory and renamed over the old one, so a
crash or Ctrl-C leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textdiffusion import __version__
from textdiffusion.files import atomic_write


class CheckpointError(ValueError):
    """A run directory that cannot be used; the message says what is wrong and what to do."""


def write_json(path: Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is {path.parent} a run directory made by "
                              f"`textdiffusion train`?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e.msg} at line {e.lineno}); restore it or retrain") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text, so not a file textdiffusion wrote; restore it or retrain") \
            from None


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={"step": str(step), "format": "pt"}))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Return ``(tensors, step)``; a missing or corrupt file is a one-line :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"{path} is missing; is {path.parent} a finished or checkpointed run?")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), int(meta.get("step", -1))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is corrupt, "
                              f"restore it or retrain") from None


def versions() -> dict[str, str]:
    import numpy

    return {"textdiffusion": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# ---- optimizer and RNG state <-> flat tensors + JSON (no pickles) ----------------------------------

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
