"""Experiment logging: the "train" rows of ``metrics.jsonl`` and the optional logger that mirrors every row.

``metrics.jsonl`` is the run's record and the source of truth. Besides one row per evaluation (validation
bits, written by the trainer since 0.1), every ``train.log_every`` steps it gets a row with ``"kind":
"train"``: the mean training loss of the steps since the previous one, the learning rate, the pre-clip
global gradient norm (mean and max), the throughput and the training clock. An evaluation row has no
``kind`` (so rows written by older versions read the same). The rows themselves are
:class:`~textdiffusion.records.EvalRow` and :class:`~textdiffusion.records.TrainRow`.

``train.logger`` (tensorboard, wandb or trackio) also sends every row, and the resolved config once at the
start, to that tool. It runs offline or locally unless the user's environment says otherwise, only rank 0
logs, and the backend's package is imported only when chosen: :func:`require` checks it before training
starts, so a missing package is a one-line error naming the extra to install, not a traceback minutes in.
A logger that fails mid-run is reported once and dropped; training goes on and ``metrics.jsonl`` keeps
every row. This module imports no torch: the trainer hands it plain numbers.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from textdiffusion.config import ConfigError
from textdiffusion.records import TrainRow, row_kind

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: the event files, beside the run's other records


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a row under the names a logger shows: ``kind/key`` (``train/train_loss``,
    ``eval/val_bpc``), so a train row's interval loss and an evaluation row's smoothed loss of the same step
    never share a curve. Text fields (``val_kind``) and flags are left to ``metrics.jsonl``."""
    kind = row_kind(row)
    return {f"{kind}/{key}": float(value) for key, value in row.items()
            if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool)}


# ---- the train rows ------------------------------------------------------------------------------------
@dataclass
class Interval:
    """What the steps since the last train row add up to. The trainer checkpoints it with the weights, so a
    run stopped between two rows and resumed writes the rows an uninterrupted run writes (timing aside)."""

    steps: int = 0
    loss_sum: float = 0.0
    norm_sum: float = 0.0
    norm_max: float = 0.0
    units: int = 0  # characters or images
    seconds: float = 0.0  # training time, evaluation excluded (as the trainer's clock)

    def add(self, loss: float, grad_norm: float, units: int, seconds: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.norm_sum += grad_norm
        self.norm_max = max(self.norm_max, grad_norm)
        self.units += units
        self.seconds += seconds

    def row(self, step: int, lr: float, elapsed: float, data_unit: str,
            tokens_per_unit: int | None = None) -> TrainRow:
        """The train row of ``step``: means over the interval, the learning rate of its last step, the
        throughput in data units (``data_unit``: chars or images) and, for text, in positions the network
        processes (``tokens_per_s``: twice the characters for a method that trains on two copies)."""
        n, rate = max(self.steps, 1), self.units / max(self.seconds, 1e-9)
        tokens = rate * tokens_per_unit if tokens_per_unit is not None else None
        return TrainRow(step, self.loss_sum / n, lr, self.norm_sum / n, self.norm_max, data_unit, rate, elapsed,
                        tokens)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Any) -> Interval:
        """Read back :meth:`to_state`; a checkpoint without it (older versions) starts an empty interval."""
        if not isinstance(state, dict):
            return cls()
        out = cls()
        for f in fields(cls):
            value = state.get(f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(out, f.name, type(getattr(out, f.name))(value))
        return out


# ---- the loggers ---------------------------------------------------------------------------------------
class Backend:
    """One logging tool. The constructor opens it (continuing the run's earlier record on a resume) and
    records the resolved config; :meth:`log` gets each row's step and numbers; :meth:`close` flushes."""

    name: ClassVar[str]
    module: ClassVar[str]  # what must import for the backend to work
    extra: ClassVar[str]  # the package extra that installs it

    def __init__(self, run_dir: Path, run_id: str, step: int, config: dict[str, Any]):
        raise NotImplementedError

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _run_name(run_dir: Path, run_id: str) -> str:
    """A name that is the same on every resume of a run and differs between runs in same-named folders."""
    return f"{run_dir.name}-{run_id[:8]}" if run_id else run_dir.name


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Tools that print banners print them to stderr with the trainer's messages, keeping stdout for results."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class TensorBoard(Backend):
    """Event files under ``RUN/tensorboard/`` (``tensorboard --logdir runs/`` shows every run). A resume
    writes a new event file in the same folder whose first event purges what the earlier session logged
    after the checkpoint, as ``metrics.jsonl`` drops those rows (``SummaryWriter(purge_step=...)``)."""

    name, module, extra = "tensorboard", "torch.utils.tensorboard", "tensorboard"

    def __init__(self, run_dir: Path, run_id: str, step: int, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        folder = run_dir / TENSORBOARD_DIR
        # keep steps <= the checkpoint's; a run started again from step 0 keeps nothing of its earlier attempt
        purge = (step + 1 if step > 0 else 0) if folder.exists() else None
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge, flush_secs=10)
        text = json.dumps(config, indent=2, sort_keys=True)
        # indented four spaces: a code block in TensorBoard's markdown, so the JSON is shown as written
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), global_step=step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class Wandb(Backend):
    """Weights & Biases, offline unless ``WANDB_MODE`` is set (``wandb sync RUN/wandb/offline-run-*`` uploads
    later). The run's id is the wandb id, so a resume continues the same wandb run; wandb keeps the rows it
    already had for steps after the checkpoint (it cannot rewind offline), ``metrics.jsonl`` does not."""

    name, module, extra = "wandb", "wandb", "wandb"

    def __init__(self, run_dir: Path, run_id: str, step: int, config: dict[str, Any]):
        import wandb

        mode = None if os.environ.get("WANDB_MODE") else "offline"  # None: wandb reads WANDB_MODE itself
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "textdiffusion",
                              name=_run_name(run_dir, run_id), id=run_id or None, dir=str(run_dir),
                              config=config, resume="allow", mode=mode)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio(Backend):
    """Hugging Face's trackio, local by default (its own database; ``trackio show --project textdiffusion``
    opens the dashboard). The run name is fixed per run, so a resume continues it (``resume="allow"``)."""

    name, module, extra = "trackio", "trackio", "trackio"

    def __init__(self, run_dir: Path, run_id: str, step: int, config: dict[str, Any]):
        import trackio

        self.trackio = trackio
        with _stdout_to_stderr():
            trackio.init(project=os.environ.get("TRACKIO_PROJECT") or "textdiffusion",
                         name=_run_name(run_dir, run_id), config=config, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        with _stdout_to_stderr():
            self.trackio.finish()


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TensorBoard, Wandb, Trackio)}


def require(kind: str, resumed_config: Path | None = None) -> None:
    """Import ``train.logger``'s package now, before anything is built or trained: a missing one is a
    one-line error naming the extra that installs it. ``""`` (no logger) needs nothing. A resumed run keeps
    its config, so the way out without the package is named in its ``config.json`` (``resumed_config``)."""
    if not kind:
        return
    backend = BACKENDS[kind]
    try:
        importlib.import_module(backend.module)
    except ImportError as e:
        missing = getattr(e, "name", None) or backend.module
        other = (f'set "logger": "" under "train" in {resumed_config} to resume without it' if resumed_config
                 else "leave train.logger empty")
        raise ConfigError(f"train.logger={kind} needs the {backend.extra} package, but {missing} cannot be imported; "
                          f'pip install "textdiffusion[{backend.extra}]", or {other}') from None


class RunLogger:
    """What the trainer holds: the chosen backend (or none) behind a guard. The first exception it raises
    is reported in one line and the backend is dropped, so a full disk or a network hiccup in a logger never
    costs a run; ``metrics.jsonl`` is written before any row reaches it."""

    def __init__(self, backend: Backend | None, name: str = "", warn: Callable[[str], None] | None = None):
        self.backend, self.name = backend, name
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr))

    def log(self, row: dict[str, Any]) -> None:
        if self.backend is None:
            return
        values = scalars(row)
        if not values:
            return
        try:
            self.backend.log(int(row["step"]), values)
        except Exception as e:
            self._drop("could not log a row", e)

    def close(self) -> None:
        if self.backend is None:
            return
        try:
            self.backend.close()
        except Exception as e:
            self._drop("could not close", e)
        self.backend = None

    def _drop(self, what: str, e: BaseException) -> None:
        self.backend = None
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        self.warn(f"warning: the {self.name} logger {what} ({type(e).__name__}: {detail}); training goes on "
                  f"without it, and metrics.jsonl keeps every row")


def open_logger(kind: str, run_dir: Path, run_id: str, step: int, config: dict[str, Any],
                warn: Callable[[str], None] | None = None) -> RunLogger:
    """Open ``train.logger``'s backend for a run at ``step`` (0, or the checkpoint a resume starts from) and
    record ``config``. No logger, or one that fails to open (reported in one line), logs nothing."""
    if not kind:
        return RunLogger(None)
    guard = RunLogger(None, kind, warn)
    try:
        guard.backend = BACKENDS[kind](Path(run_dir), run_id, step, config)
    except Exception as e:
        guard._drop("could not start", e)
    return guard

