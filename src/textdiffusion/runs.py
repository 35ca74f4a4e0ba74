"""Opening a run directory for sampling and evaluation (the read side of :mod:`textdiffusion.checkpoint`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiffusion.checkpoint import CheckpointError, read_json, read_tensors
from textdiffusion.config import DEVICE, Config, ConfigError, apply_sampling_overrides
from textdiffusion.data.sources import load_vocab
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.methods import Method, TextMethod, get_method


def available_devices() -> list[str]:
    """The devices this machine can run on, as ``--device`` spells them."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def pick_device(name: str = "auto") -> torch.device:
    """The device named by ``--device`` / ``train.device``: ``auto`` is the GPU when there is one. A name this
    machine cannot run (a typo, ``meta``, ``mps`` or ``cuda:7`` where absent) is a one-line error listing the
    devices it has, before any tensor is made."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    have = available_devices()
    fix = f"this machine has {', '.join(have)}; use --device auto or one of those"
    if not isinstance(name, str) or not DEVICE.allows(name):
        raise ConfigError(f"unknown device {name!r} (it must be {DEVICE.describe()}); {fix}")
    if name not in have:
        raise ConfigError(f"device {name} is not available here; {fix}")
    return torch.device(name)


def build(cfg: Config, vocab: Any) -> tuple[Method, torch.nn.Module]:
    """The method and its untrained network. ``vocab`` is what the data defines: the tokenizer for text
    methods, the :class:`~textdiffusion.data.images.ImageSpec` for images."""
    method = get_method(cfg.method.name).from_config(cfg, vocab)
    return method, method.build_model()


@dataclass
class LoadedRun:
    path: Path
    cfg: Config
    meta: dict[str, Any]
    tokenizer: Tokenizer | None  # None for image runs (see ``vocab``)
    method: Method
    model: torch.nn.Module
    step: int
    device: torch.device
    vocab: Any = None


def open_run(path: str | Path, weights: str = "ema", device: str = "auto",
             overrides: list[str] | None = None) -> LoadedRun:
    """Load config, tokenizer and weights (EMA by default: what eval and sampling use). ``overrides`` are
    ``method.field=value`` sampling options (the fields marked ``sampling`` on the method's config class).
    A method that samples with a second run (``embedding``'s guided sampler) is handed that run, opened on
    the same device."""
    run = Path(path)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist; pass the directory `textdiffusion train` "
                              f"printed (it holds config.json)")
    meta = read_json(run / "config.json")
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{run / 'config.json'} has no 'config' section; it was not written by textdiffusion")
    cfg = Config.from_dict(meta["config"])
    if overrides:
        apply_sampling_overrides(cfg, overrides)
    vocab = load_vocab(run)
    method, model = build(cfg, vocab)
    tensors, step = read_tensors(run / f"{weights}.safetensors")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{run / (weights + '.safetensors')} does not match the model in config.json "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); the files are "
                              f"from different runs")
    dev = pick_device(device)
    model.to(dev).eval()
    if isinstance(method, TextMethod) and method.guide_run():
        method.set_guide(open_run(method.guide_run(), device=str(dev)))
    tok = vocab if isinstance(vocab, Tokenizer) else None
    return LoadedRun(run, cfg, meta, tok, method, model, step, dev, vocab)
