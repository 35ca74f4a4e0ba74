"""Run directories: safetensors + JSON only (loading a shared run never executes code), atomic writes.

Layout of a run directory::

    config.json               full resolved config, seed, versions, corpus fingerprint, parameter count
    tokenizer.json            the tokenizer, so sampling needs no corpus (image runs: image.json)
    checkpoint.safetensors    the whole training state in one file: raw weights (``model.*``), EMA weights
                              (``ema.*``, what sampling and eval use), optimizer moments and RNG states
                              (``trainer.*``); its metadata holds the step, the trainer's counters, the
                              config the weights were trained with and the digests that prove the file
                              whole (:mod:`textdiffusion.digests`)
    .lock                     held (``flock``) by the one process training the run
    metrics.jsonl             one line per evaluation
    samples/step_NNNNNN.txt   samples written at each evaluation
    final.json                the headline result, written when training finishes
    eval.json                 written by ``textdiffusion eval``
    sweep.json                ``textdiffusion compare``'s cache of its quality-vs-speed points

**Why one file.** A save must happen entirely or not at all. The checkpoint is written to a temporary name
beside the old one, flushed, and renamed over it: until the rename the previous checkpoint is whole and
usable, after it the new one is. A kill, an OOM, a full disk or a second Ctrl-C at any moment leaves one
complete checkpoint (0.1.0 wrote four files one after another, and a kill between them left a run that could
never resume). Readers that want only the EMA weights open the file lazily and read just those tensors.

**Exports.** ``textdiffusion export`` (:mod:`textdiffusion.export`) writes a folder that is read like a run:
config.json, the tokenizer, final.json and ``weights.safetensors``, one set of weights (the EMA ones) with the
step, counters and training config in its metadata, and no optimizer or RNG state. :func:`read_header` and
:func:`read_group` read it as a checkpoint holding only ``ema`` weights; :func:`is_export` tells it apart, so
that nothing trains into it or writes records into it.

Runs written by textdiffusion 0.1 (``model.safetensors``, ``ema.safetensors``, ``trainer.safetensors`` and
``trainer.json``) are still read; the next save of such a run writes the one-file form.

**What training keeps.** :func:`training_state` says what a checkpoint holds of a run in training and
:func:`restore_training_state` puts it back: the weights, the EMA, the optimizer moments and every random
generator (each data shard's data and noise streams, each process's global ones), so a resumed run draws
exactly what an uninterrupted one draws; the counters (:class:`TrainingCounters`) ride in the metadata.
"""

from __future__ import annotations

import errno
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textdiffusion import __version__
from textdiffusion.digests import Integrity, integrity_record, verify_tensors, verify_vocab
from textdiffusion.errors import CheckpointError, os_error_message
from textdiffusion.files import atomic_write, file_as_run_message
from textdiffusion.json_reading import JSONProblem, parse_json
from textdiffusion.json_writing import to_json


def write_json(path: Path, obj: Any, *, through_links: bool = False) -> None:
    """Atomically write ``obj`` as JSON (``through_links``: see :func:`textdiffusion.files.atomic_write`)."""

    def write(tmp: str) -> None:
        # a path whose name is not UTF-8 holds lone surrogates (Python's surrogateescape); backslashreplace
        # writes one as \udcff, which is JSON's own escape for it, so the file stays UTF-8 and reads back equal
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(to_json(obj, indent=2, ensure_ascii=False))
            f.write("\n")

    atomic_write(path, write, through_links=through_links)


def read_json(path: Path) -> Any:
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is {path.parent} a run directory made by "
                              f"`textdiffusion train`?") from None
    except JSONProblem as e:
        raise CheckpointError(f"{path} is {e}; restore it or retrain") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text; restore it or retrain") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a file; is {path.parent} a run directory?") from None


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.json`` as written by the trainer: an object with a ``config`` object in it. Anything else
    (an empty, edited or foreign file) is a one-line :class:`CheckpointError`."""
    if (problem := file_as_run_message(run_dir)) is not None:
        raise CheckpointError(problem)
    path = Path(run_dir) / "config.json"
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} has no 'config' object; it was not written by textdiffusion, or was edited: "
                              f"restore it")
    return meta


def recorded_method(run_dir: Path) -> str | None:
    """The method name config.json records, or None when there is no readable one (the caller that opens the
    run then says what is wrong with it)."""
    try:
        method = read_run_meta(run_dir)["config"].get("method")
    except CheckpointError:
        return None
    name = method.get("name") if isinstance(method, dict) else None
    return name if isinstance(name, str) else None


CHECKPOINT = "checkpoint.safetensors"
GROUPS = ("model", "ema", "trainer")  # the prefixes of the tensors in a checkpoint
LEGACY_FILES = ("model.safetensors", "ema.safetensors", "trainer.safetensors", "trainer.json")


WEIGHTS = "weights.safetensors"  # an export's one set of weights


def is_export(run_dir: Path | str) -> bool:
    """Whether ``run_dir`` is an export (weights only): opened like a run, never trained or written into."""
    rd = Path(run_dir)
    return (rd / WEIGHTS).is_file() and not (rd / CHECKPOINT).is_file()


def write_weights(path: Path, tensors: dict[str, torch.Tensor], weights: str, state: dict[str, Any],
                  config: dict[str, Any], run_id: str, vocab: dict[str, Any] | None = None) -> None:
    """An export's weights file: the ``tensors`` of one group (``weights``: which one they were in the run),
    with the trainer's counters (``state``, no optimizer), the training config and the run id, so that the
    checks a run's checkpoint gets (:func:`read_header`) apply to it unchanged; ``vocab`` is the tokenizer's
    record the weights belong to (see :func:`integrity_record`). One atomic write."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": "pt", "weights": weights, "step": str(state["step"]), "state": json.dumps(state),
            "config": json.dumps(config, sort_keys=True), "run_id": run_id, **integrity_record(clean, vocab)}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=meta))


def write_checkpoint(run_dir: Path, groups: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                     config: dict[str, Any], run_id: str = "", vocab: dict[str, Any] | None = None) -> None:
    """Replace the run's checkpoint with ``groups`` (``{"model": state_dict, "ema": ..., "trainer": ...}``),
    the trainer's ``state`` (step, counters, optimizer hyper-parameters), the ``config`` it trains with, the
    ``run_id`` config.json records (so a checkpoint copied in from another run is recognised) and the
    tokenizer's record ``vocab`` (None for image runs), whose digest ties tokenizer.json to these weights.

    One atomic write: see the module docstring. Files of the 0.1 layout are removed once the new file is in
    place, so a run never holds two checkpoints that disagree."""
    tensors = {f"{group}.{name}": t.detach().contiguous().cpu()
               for group, sd in groups.items() for name, t in sd.items()}
    meta = {"format": "pt", "step": str(state["step"]), "state": json.dumps(state),
            "config": json.dumps(config, sort_keys=True), "run_id": run_id, **integrity_record(tensors, vocab)}
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    for name in LEGACY_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)


@dataclass
class CheckpointHeader:
    """What a checkpoint says about itself without loading a tensor: enough to check it against config.json
    before any model is built."""

    path: Path
    step: int
    state: dict[str, Any]  # the trainer's counters and optimizer hyper-parameters
    config: dict[str, Any] | None  # the run config the weights were trained with (None: a 0.1 run)
    shapes: dict[str, dict[str, tuple[int, ...]]]  # group -> tensor name -> shape
    run_id: str = ""  # the run it belongs to ("" for runs of 0.1)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run has a complete checkpoint to resume from (either layout)."""
    run_dir = Path(run_dir)
    return (run_dir / CHECKPOINT).is_file() or all((run_dir / n).is_file() for n in LEGACY_FILES)


def has_weights(run_dir: Path) -> bool:
    """Whether the run has weights to sample from: a checkpoint, or a 0.1 run's weight files (which may have
    been shared without the optimizer state)."""
    run_dir = Path(run_dir)
    return (has_checkpoint(run_dir) or (run_dir / WEIGHTS).is_file()
            or any((run_dir / f"{g}.safetensors").is_file() for g in ("ema", "model")))


def _corrupt(path: Path, why: object) -> CheckpointError:
    if isinstance(why, OSError) and (denied := _denied(path)) is not None:
        return denied
    return CheckpointError(f"{path} is not a readable checkpoint ({why}); the file is damaged: restore it from a "
                           f"copy or retrain")


def _denied(path: Path) -> CheckpointError | None:
    """A file that failed to open because it may not be read, said so: safetensors reports one as missing
    (FileNotFoundError), and "damaged, restore it" would send its owner to replace a whole file."""
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return CheckpointError(os_error_message(PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))))
    return None


def read_header(run_dir: Path) -> CheckpointHeader:
    """The checkpoint's step, trainer state, training config and tensor shapes (nothing is loaded)."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file() and (run_dir / WEIGHTS).is_file():
        path = run_dir / WEIGHTS  # an export: its tensors are the EMA weights, unprefixed
    elif not path.is_file():
        return _legacy_header(run_dir)
    exported = path.name == WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes: dict[str, dict[str, tuple[int, ...]]] = {g: {} for g in GROUPS}
            names = f.keys()  # a safe_open handle is not iterable
            for key in names:
                group, _, name = ("ema", ".", key) if exported else key.partition(".")
                if group not in shapes:
                    raise ValueError(f"unexpected tensor {key!r}")
                shapes[group][name] = tuple(f.get_slice(key).get_shape())
        state = parse_json(meta["state"])
        config = parse_json(meta["config"])
        step = int(meta["step"])
        if not isinstance(state, dict) or state.get("step") != step or not isinstance(config, dict):
            raise ValueError("inconsistent metadata")
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise _corrupt(path, e) from None
    verify_vocab(path, Integrity.from_metadata(meta, path))
    return CheckpointHeader(path, step, state, config, shapes, str(meta.get("run_id", "")))


def _legacy_header(run_dir: Path) -> CheckpointHeader:
    """The header of a 0.1 run's files, which must all be from one step. A shared 0.1 run may hold only its
    weights (no trainer state): it samples, and cannot be resumed."""
    from safetensors import safe_open

    if not has_weights(run_dir):
        raise CheckpointError(f"{run_dir} has no checkpoint ({CHECKPOINT} is missing); is it a run directory made "
                              f"by `textdiffusion train`, copied whole?")
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    steps = []
    for group in GROUPS:
        path = run_dir / f"{group}.safetensors"
        if not path.is_file():
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                steps.append(int((f.metadata() or {}).get("step", -1)))
                names = f.keys()
                shapes[group] = {k: tuple(f.get_slice(k).get_shape()) for k in names}
        except (SafetensorError, OSError, ValueError) as e:
            raise _corrupt(path, e) from None
    state = read_json(run_dir / "trainer.json") if (run_dir / "trainer.json").is_file() else {"step": steps[0]}
    if not isinstance(state, dict) or len({*steps, state.get("step")}) != 1:
        raise CheckpointError(f"checkpoint files in {run_dir} are from different steps ({', '.join(map(str, steps))}"
                              f", {state.get('step') if isinstance(state, dict) else '?'}): a copy of a 0.1 run "
                              f"that was interrupted; restore a consistent set of the four files")
    return CheckpointHeader(run_dir / "trainer.json", steps[0], state, None, shapes)


def read_group(run_dir: Path, group: str) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of one group (``model``, ``ema`` or ``trainer``) and the checkpoint's step."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file() and (run_dir / WEIGHTS).is_file():
        return _read_exported(run_dir / WEIGHTS, group)
    if not path.is_file():
        if not (run_dir / f"{group}.safetensors").is_file():
            raise CheckpointError(f"{run_dir} has no checkpoint ({CHECKPOINT} is missing); is it a run directory "
                                  f"made by `textdiffusion train`, copied whole?")
        return read_tensors(run_dir / f"{group}.safetensors")
    prefix = group + "."
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            step = int(meta.get("step", -1))
            names = f.keys()
            stored = {k: f.get_tensor(k) for k in names if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from None
    if not stored:
        raise _corrupt(path, f"no {group} tensors")
    integrity = Integrity.from_metadata(meta, path)
    verify_vocab(path, integrity)
    verify_tensors(path, integrity, stored, prefix)
    return {k[len(prefix):]: t for k, t in stored.items()}, step


def _read_exported(path: Path, group: str) -> tuple[dict[str, torch.Tensor], int]:
    """An export's weights, which stand for the run's ``ema`` group (see :func:`read_header`)."""
    if group != "ema":
        raise CheckpointError(f"{path.parent} is an export: it holds only the weights the run was measured with, "
                              f"not its {group} weights; sample it with the default weights (ema)")
    tensors, step = read_tensors(path)
    if not tensors:
        raise _corrupt(path, "no tensors")
    return tensors, step


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights with NaN or inf sample nothing but one symbol and score as nonsense: refuse them by name."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"the weights in {path} contain NaN or inf ({name}): the run diverged before "
                                  f"this checkpoint; retrain with a lower train.lr")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={"step": str(step), "format": "pt"}))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Return ``(tensors, step)``, checked against the digests the file records (:mod:`textdiffusion.digests`);
    a missing, corrupt or damaged file is a one-line :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"{path} is missing; is {path.parent} a finished or checkpointed run?")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors, step = load_file(str(path)), int(meta.get("step", -1))
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, OSError) and (denied := _denied(path)) is not None:
            raise denied from None
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is corrupt, "
                              f"restore it or retrain") from None
    integrity = Integrity.from_metadata(meta, path)
    verify_vocab(path, integrity)
    verify_tensors(path, integrity, tensors, "")
    return tensors, step


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
    # the parameters that hold moments: a checkpoint that lost one of them entirely still says so
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars, "with_moments": sorted(sd["state"])}


# AdamW's running averages of each parameter's gradient and squared gradient (amsgrad adds their maximum)
MOMENTS = ("exp_avg", "exp_avg_sq")


def check_moments(state: dict[int, dict[str, Any]], meta: dict[str, Any], step: int, path: Path) -> None:
    """Refuse an optimizer state that lacks any moment of a parameter it holds (or, after step 0, all of them):
    loaded as it is, AdamW would restart those averages from zero, a different run that says nothing. Which
    parameters hold moments is recorded since they are checked; an older checkpoint is checked on the ones
    it holds."""
    if not isinstance(meta, dict):
        raise ValueError("the optimizer record is not an object")
    groups = meta.get("param_groups") or []
    want = MOMENTS + (("max_exp_avg_sq",) if any(g.get("amsgrad") for g in groups if isinstance(g, dict)) else ())
    holders = meta.get("with_moments")
    expected = ({int(i) for i in holders} if isinstance(holders, list) else set()) | set(state)
    missing = [f"{key} of parameter {i}" for i in sorted(expected) for key in want if key not in state.get(i, {})]
    if step > 0 and not expected:
        missing = ["every moment"]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"the optimizer state in {path} lacks {missing[0]}{more}: resuming would restart AdamW "
                              f"from zero; restore the checkpoint from a copy, or retrain (its weights still sample)")


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                        step: int = 0, path: Path = Path(CHECKPOINT)) -> None:
    """Load :func:`optimizer_to_flat`'s output into ``opt``, refusing one whose moments are not all there
    (:func:`check_moments`; ``step`` and ``path`` are the checkpoint's)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    check_moments(state, meta, step, path)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---- the training state: everything a resumed run needs to continue bit for bit -------------------------
def shard_suffix(index: int) -> str:
    """Shard 0 and rank 0 keep the names of a one-process run (``rng.data``); others are numbered."""
    return "" if index == 0 else f".{index}"


def rng_tensors(shards: list[int], gens: list[tuple[torch.Generator, torch.Generator]],
                rank: int) -> dict[str, torch.Tensor]:
    """The generator states one process holds: its shards' data and noise streams, its global streams."""
    out: dict[str, torch.Tensor] = {}
    for s, (data_gen, noise_gen) in zip(shards, gens, strict=True):
        out[f"rng.data{shard_suffix(s)}"], out[f"rng.noise{shard_suffix(s)}"] = (data_gen.get_state(),
                                                                                 noise_gen.get_state())
    out[f"rng.torch{shard_suffix(rank)}"] = torch.get_rng_state()
    if torch.cuda.is_available():
        out[f"rng.cuda{shard_suffix(rank)}"] = torch.cuda.get_rng_state()
    return out


@dataclass
class TrainingCounters:
    """The trainer's counters, kept in the checkpoint's metadata beside the optimizer's hyper-parameters."""

    step: int
    elapsed: float  # training seconds, summed over resumes
    chars_seen: int  # data units seen: characters or images
    world_size: int  # processes that trained the last session
    log_interval: dict[str, Any]  # the steps since the last train row (textdiffusion.loggers.Interval)
    # the moving average of the training loss that evaluation rows report as train_loss: a resumed run goes on
    # averaging where it stopped, so its rows read as an uninterrupted run's (None: no step taken yet)
    smoothed_loss: float | None = None


def training_state(model: torch.nn.Module, ema_model: torch.nn.Module, opt: torch.optim.Optimizer,
                   rng: dict[str, torch.Tensor], counters: TrainingCounters
                   ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """What :func:`write_checkpoint` saves of a training run: the tensor groups (raw weights, EMA weights,
    optimizer moments with every process's generator states ``rng``) and the state metadata."""
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    state = {"step": counters.step, "elapsed": counters.elapsed, "chars_seen": counters.chars_seen,
             "optimizer": opt_meta, "world_size": counters.world_size, "log_interval": counters.log_interval,
             "smoothed_loss": counters.smoothed_loss}
    groups = {"model": model.state_dict(), "ema": ema_model.state_dict(), "trainer": {**opt_tensors, **rng}}
    return groups, state


def restore_training_state(header: CheckpointHeader, model: torch.nn.Module, ema_model: torch.nn.Module,
                           opt: torch.optim.Optimizer, shards: list[int],
                           gens: list[tuple[torch.Generator, torch.Generator]], rank: int) -> None:
    """Load what :func:`training_state` saved into a freshly built run: weights, EMA, optimizer moments, the
    generators of this process's ``shards`` and its global streams (a process that did not exist when the
    run was saved keeps its fresh ones). The counters are in ``header.state``."""
    rd = header.path.parent
    model.load_state_dict(read_group(rd, "model")[0])
    ema_model.load_state_dict(read_group(rd, "ema")[0])
    tr_t, _ = read_group(rd, "trainer")
    try:
        optimizer_from_flat(opt, tr_t, header.state["optimizer"], header.step, header.path)
        for s, (data_gen, noise_gen) in zip(shards, gens, strict=True):
            data_gen.set_state(tr_t[f"rng.data{shard_suffix(s)}"])
            noise_gen.set_state(tr_t[f"rng.noise{shard_suffix(s)}"])
        own = f"rng.torch{shard_suffix(rank)}"
        if own in tr_t:
            torch.set_rng_state(tr_t[own])
    except CheckpointError:
        raise
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state in {header.path} does not fit this run ({e}); the "
                              f"checkpoint is damaged: restore it or retrain") from None
    if f"rng.cuda{shard_suffix(rank)}" in tr_t and torch.cuda.is_available():
        torch.cuda.set_rng_state(tr_t[f"rng.cuda{shard_suffix(rank)}"])
