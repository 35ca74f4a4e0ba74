"""Opening a run directory for sampling and evaluation (the read side of :mod:`textdiffusion.checkpoint`). An
export (:mod:`textdiffusion.export`) opens the same way."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiffusion.checkpoint import (
    CheckpointError,
    CheckpointHeader,
    check_finite,
    has_checkpoint,
    is_export,
    read_group,
    read_header,
    read_run_meta,
)
from textdiffusion.config import DEVICE, Config, ConfigError, apply_sampling_overrides
from textdiffusion.config.reading import warn_ignored_fields
from textdiffusion.data.sources import load_vocab
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.files import file_as_run_message, is_symlink_loop, non_utf8_message, symlink_loop_message
from textdiffusion.methods import Method, get_method
from textdiffusion.methods.configs import config_from_dict
from textdiffusion.run_lock import training_pid


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


# What a resume may change in config.json: where and how the run goes on, never what it learns. Everything else
# the checkpoint recorded must read the same, or the run would go on as another run than its record says.
RESUME_MAY_CHANGE = frozenset({
    "train.steps",  # --steps lengthens (or shortens) the schedule
    "train.time_budget_s",  # where a run stops, as train.steps
    "data.corpus",  # the data moved: its recorded fingerprint decides whether it is the same data
    "train.device", "train.threads",  # another machine
    "train.logger",  # the way on without the logger's package (see textdiffusion.loggers.require)
    "train.save_every_s",  # when checkpoints are written: a resume is exact from any of them
})


def _flat_fields(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict as ``section.field`` -> value (``seed`` and ``preset`` as they are)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _fixed_fields(d: dict[str, Any], sampling: tuple[str, ...], resume: bool = False) -> dict[str, Any]:
    """The parts of a config dict a run may not change. For sampling: what shaped the weights (the method's
    non-sampling fields, its network section and the tokenizer). For a resume: every field but the method's
    sampling options and :data:`RESUME_MAY_CHANGE`, since the schedule, the data split and the seed decide the
    steps still to come."""
    flat = _flat_fields(d)
    method = {f"method.{k}" for k in sampling}
    if resume:
        return {k: v for k, v in flat.items() if k not in method and k not in RESUME_MAY_CHANGE}
    network = ("method.", "model.", "unet.")
    return {k: v for k, v in flat.items()
            if (k.startswith(network) and k not in method) or k in ("data.tokenizer", "data.vocab_size")}


def check_checkpoint_config(header: CheckpointHeader, cfg: Config, run_id: str = "", resume: bool = False) -> None:
    """Refuse a config.json that no longer describes the weights (an edited method, shape or tokenizer): such a
    run would build a different network, or sample garbage from the right one. Checked before anything is
    built. ``resume``: refuse an edit of any field the checkpoint recorded but the few a resume may change
    (:data:`RESUME_MAY_CHANGE`, sampling options): an edited learning rate, batch, seed or data split would go
    on as another run under this one's record. Runs of 0.1, whose checkpoints do not record their config, are
    checked by shape instead. A checkpoint whose ``run_id`` differs from config.json's was copied in from
    another run (same shapes, other weights)."""
    if header.run_id and run_id and header.run_id != run_id:
        raise CheckpointError(f"{header.path} belongs to another run (run id {header.run_id[:8]}…, config.json says "
                              f"{run_id[:8]}…): files of two runs were mixed; restore this run's own checkpoint")
    if header.config is None:
        return
    sampling = cfg.method.sampling_fields()
    saved, now = _fixed_fields(header.config, sampling, resume), _fixed_fields(cfg.to_dict(), sampling, resume)
    # a field added after the checkpoint was written: the run was trained as its default behaves; a field this
    # version no longer has cannot differ
    default = _fixed_fields(Config(method=type(cfg.method)()).to_dict(), sampling, resume)
    changed = sorted((k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k) and k in now
                      and not (k not in saved and k in default and now.get(k) == default[k])),
                     key=lambda k: (k != "method.name", k))  # a changed method says most
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} in config.json"
                          for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        run = header.path.parent
        fix = (f"; to train with the new settings, start a new run with them: `textdiffusion train --config "
               f"{run / 'config.json'} --run-dir NEW_DIR`") if resume else ""
        raise CheckpointError(f"config.json of {run} does not match the config its checkpoint was "
                              f"trained with ({shown}{more}); undo the edit to config.json{fix}")


def check_checkpoint_shapes(header: CheckpointHeader, model: torch.nn.Module, run_dir: Path,
                            groups: tuple[str, ...] = ("model", "ema")) -> None:
    """Refuse weights whose names or shapes differ from ``model``'s (files from another run, an edited
    tokenizer.json). ``model`` may live on the meta device: only shapes are compared."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for group in groups:
        have = header.shapes.get(group, {})
        if have == want:
            continue
        missing, unexpected = want.keys() - have.keys(), have.keys() - want.keys()
        resized = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        detail = (f"{resized[0]} is {list(have[resized[0]])} in the file, {list(want[resized[0]])} in the model"
                  if resized else f"missing {len(missing)}, unexpected {len(unexpected)} tensors")
        raise CheckpointError(f"the {group} weights in {run_dir} do not fit the model config.json describes "
                              f"({detail}); the files are from different runs, or config.json or the tokenizer "
                              f"was edited")


def _shape_only_model(cfg: Config, vocab: Any) -> torch.nn.Module | None:
    """The run's network built on the meta device (no memory): its shapes, checked before the real build.
    None when a method cannot be built there; the check then happens after the build."""
    try:
        with torch.device("meta"):
            return build(cfg, vocab)[1]
    except Exception:  # any failure only means the cheap check is skipped
        return None


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


def read_run_config(path: str | Path) -> tuple[Path, dict[str, Any], Config]:
    """A run directory's path, its config.json record and the config in it, checked: a missing directory or a
    damaged config.json is a one-line error. What opening a run for sampling and resuming its training share."""
    run = Path(path)
    if not run.is_dir() and is_symlink_loop(run):
        raise CheckpointError(symlink_loop_message(run))
    if (problem := non_utf8_message(run, "run directory")) is not None:
        raise CheckpointError(problem)
    if (problem := file_as_run_message(run)) is not None:
        raise CheckpointError(problem)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist; pass the directory `textdiffusion train` or "
                              f"`textdiffusion mnist train` printed (it holds config.json)")
    meta = read_run_meta(run)
    cfg = config_from_dict(meta["config"])
    warn_ignored_fields(run / "config.json", meta)
    return run, meta, cfg


def _open_companion(option: str, path: str, device: torch.device) -> LoadedRun:
    """The run an option names (``method.guide_run``), opened for sampling; an error opening it names the option,
    since the path came from a setting rather than from the command line."""
    try:
        return open_run(path, device=str(device))
    except (CheckpointError, ConfigError) as e:
        raise type(e)(f"{option}={path}: {e}") from None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_training(run: Path, step: int | None, steps: int, warn: Callable[[str], None] = _warn) -> None:
    """Say so when ``run`` is being trained by a live process: its checkpoint is a snapshot, and a sample of
    it is one of an unfinished model. A run in training whose only checkpoint is the step-0 one (random
    weights: its samples are noise) is refused instead, with the wait that fixes it."""
    pid = training_pid(run)
    if pid is None:
        return
    who = f"pid {pid}" if pid > 0 else "another process"
    if not step:
        raise CheckpointError(f"{run} is being trained ({who}) and has no checkpoint past step 0 yet; wait for its "
                              f"first checkpoint (every train.save_every_s seconds and at each evaluation)")
    warn(f"{run} is being trained ({who}); reading its checkpoint at step {step} of {steps}")


def open_run(path: str | Path, weights: str = "ema", device: str = "auto",
             overrides: list[str] | None = None) -> LoadedRun:
    """Load config, tokenizer and weights (EMA by default: what eval and sampling use). ``overrides`` are
    ``method.field=value`` sampling options (the fields marked ``sampling`` on the method's config class).
    A method that samples with other runs (:meth:`~textdiffusion.methods.base.Method.companion_runs`) is
    handed them, opened on the same device."""
    if Path(path).is_dir() and not has_checkpoint(Path(path)):  # a trainer that has not written step 0 yet,
        check_training(Path(path), None, 0)  # (nor perhaps config.json) is said to be one
    run, meta, cfg = read_run_config(path)
    if overrides:
        apply_sampling_overrides(cfg, overrides)
    dev = pick_device(device)
    vocab = load_vocab(run)
    header = read_header(run)
    if weights != "ema" and is_export(run):
        read_group(run, weights)  # says that an export holds only the weights the run was measured with
    check_checkpoint_config(header, cfg, str(meta.get("run_id", "")))
    shell = _shape_only_model(cfg, vocab)
    if shell is not None:
        check_checkpoint_shapes(header, shell, run, (weights,))
    method, model = build(cfg, vocab)
    if shell is None:  # the shapes could not be checked without building
        check_checkpoint_shapes(header, model, run, (weights,))
    tensors, step = read_group(run, weights)
    check_training(run, step, cfg.train.steps)
    check_finite(tensors, header.path)
    model.load_state_dict(tensors)
    model.to(dev).eval()
    corpus = meta.get("corpus") if isinstance(meta.get("corpus"), dict) else {}
    method.take_label_names(corpus.get("labels"))
    companions = method.companion_runs()
    if companions:
        method.attach_companions({key: _open_companion(key, path, dev) for key, path in companions.items()})
    tok = vocab if isinstance(vocab, Tokenizer) else None
    return LoadedRun(run, cfg, meta, tok, method, model, step, dev, vocab)
