"""A run directory's life on the write side: claimed by one trainer, its records started, released.

:mod:`textdiffusion.runs` opens a finished or running run for reading; :mod:`textdiffusion.checkpoint` stores
the training state inside it. This module decides whether a directory may be trained into at all. Nothing
that is not a run is ever written into or overwritten: a new run needs a new or empty directory, a resumed
one needs its config.json, its checkpoint (or no sign that it ever had one) and the files its weights
need. The checks run twice for a new run, the second time with the lock held, so two runs racing for one
directory cannot both pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textdiffusion.checkpoint import (
    CHECKPOINT,
    LEGACY_FILES,
    CheckpointError,
    has_checkpoint,
    has_weights,
    is_export,
    read_json,
    write_json,
)
from textdiffusion.files import (
    is_symlink_loop,
    non_utf8_message,
    stale_temporaries,
    symlink_loop_message,
)
from textdiffusion.records import FINAL, METRICS
from textdiffusion.run_lock import LOCK_NAME, RunLock, training_pid

# what the trainer writes into a run directory: its leftover temporaries are the trainer's to clean up
TRAINER_FILES = (CHECKPOINT, "config.json", "tokenizer.json", "image.json", METRICS, FINAL, *LEGACY_FILES)


def trained_records(rd: Path) -> bool:
    """Whether a run's records show training past step 0 (an evaluation row, a sample file, a final result):
    the step-0 checkpoint precedes all of them, so such a run without a checkpoint has lost it."""
    metrics, samples = rd / METRICS, rd / "samples"
    return ((rd / FINAL).exists() or (metrics.is_file() and metrics.stat().st_size > 0)
            or (samples.is_dir() and any(samples.iterdir())))


def lost_checkpoint_message(rd: Path, fix: str) -> str:
    """The one-line error for a run whose records show training but whose checkpoint is gone: resuming it
    cannot help (it refuses the same run), so the fix is the checkpoint's copy, or ``fix``."""
    return (f"{rd} has no {CHECKPOINT}, but its records show training beyond step 0: the checkpoint was deleted "
            f"or moved; restore it, or {fix}")


def finish_first_config(rd: Path) -> bool:
    """Finish the config.json write a new run was killed in (``train --resume`` of a directory that holds the
    trainer's temporary config.json and no config.json), or say in one line why it cannot be finished.

    The temporary file is the whole record when the kill came after its bytes were written and before the
    rename: renaming it is the step the trainer did not get to, and the run then starts from step 0 with the
    settings it was given. A cut temporary file holds no settings to resume with, so the directory is left
    for ``train --run-dir`` (which ignores the trainer's own temporaries). Nothing is touched while a live
    trainer holds the directory. Returns whether config.json was written."""
    if not rd.is_dir() or (rd / "config.json").exists() or training_pid(rd) is not None:
        return False
    temps = stale_temporaries(rd, ("config.json",))
    if not temps:
        return False
    for tmp in sorted(temps, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            meta = read_json(tmp)
        except CheckpointError:
            continue
        if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
            tmp.replace(rd / "config.json")
            return True
    raise CheckpointError(f"{rd} has no config.json, only a cut copy left by a trainer stopped while starting the "
                          f"run (nothing was trained): start it again with `train --run-dir {rd}` and its "
                          f"settings, which accepts the directory")


class RunDirectory:
    """The directory one trainer writes, and its lock. ``command`` is the one that trains the method's runs
    (``textdiffusion`` or ``textdiffusion mnist``), for the messages that say how to resume."""

    def __init__(self, path: Path, command: str, log: Callable[[str], None]):
        self.path, self.command, self.log = Path(path), command, log
        self.lock = RunLock(self.path)
        self.created = False  # whether claiming made the directory
        self._lock_existed = True

    @property
    def resume_command(self) -> str:
        return f"{self.command} train --resume {self.path}"

    def claim(self, resume: bool, vocab_file: str | None) -> None:
        """Check that the directory may be written, create it if needed and take its lock. ``vocab_file``:
        the file a resumed run's weights cannot go on without (``tokenizer.json``), None when the data
        writes it again."""
        rd = self.path
        if is_symlink_loop(rd):
            raise CheckpointError(f"--run-dir {symlink_loop_message(rd)}")
        if (problem := non_utf8_message(rd, "--run-dir")) is not None:
            raise CheckpointError(problem)
        if rd.exists() and not rd.is_dir():
            raise CheckpointError(f"--run-dir {rd} is a file, not a directory; pick another --run-dir")
        if is_export(rd):
            raise CheckpointError(f"{rd} is an export (weights only, without the optimizer and random-generator "
                                  f"state training needs): it samples and evaluates but cannot be trained; resume "
                                  f"the run it was exported from, or train a new one")
        if resume and not (rd / "config.json").is_file():
            raise CheckpointError(f"{rd} is not a run directory (no config.json); pass the directory "
                                  f"`textdiffusion train` printed")
        if resume and has_weights(rd) and not has_checkpoint(rd):
            raise CheckpointError(f"{rd} holds weights but no trainer state (trainer.safetensors, trainer.json): "
                                  f"it samples and evaluates, but cannot be resumed; train a new run")
        if resume and not has_weights(rd) and trained_records(rd):
            raise CheckpointError(lost_checkpoint_message(rd, "train a new run"))
        if resume and has_weights(rd) and vocab_file is not None and not (rd / vocab_file).is_file():
            raise CheckpointError(f"{rd} has no {vocab_file}, which its weights need; restore it from a copy of "
                                  f"the run")
        if resume and not os.access(rd, os.W_OK | os.X_OK):  # refused before training, not at its first save
            raise CheckpointError(f"cannot write in {rd} (permission denied), where resuming saves its checkpoint "
                                  f"and records; make it writable (chmod u+w {rd}), or resume a copy of the run")
        if not resume and rd.is_dir():
            self._refuse_occupied()  # before anything is written into it
        self.created = not rd.exists()
        try:
            rd.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create the run directory {rd} ({e.strerror}); pick another "
                                  f"--run-dir") from None
        self._lock_existed = (rd / LOCK_NAME).exists()
        try:
            self.lock.acquire()
        except PermissionError:
            self.abandon()
            raise CheckpointError(f"cannot write into {rd} (permission denied); pick another --run-dir") from None
        except CheckpointError:
            self.abandon()
            raise
        if not resume:  # again with the lock held, so two new runs racing for one directory cannot both pass
            try:
                self._refuse_occupied()
            except CheckpointError:
                self.abandon()
                raise
        removed = stale_temporaries(rd, TRAINER_FILES)
        if removed:
            size = sum(p.stat().st_size for p in removed)
            for p in removed:
                p.unlink(missing_ok=True)
            self.log(f"removed {len(removed)} temporary file(s) ({size / 1e6:.1f} MB) left by an interrupted save")

    def _refuse_occupied(self) -> None:
        rd, resume = self.path, self.resume_command
        if (rd / "config.json").exists():
            if has_weights(rd):
                raise CheckpointError(f"{rd} already holds a run; resume it with `{resume}` or pick another "
                                      f"--run-dir")
            if trained_records(rd):  # records of training, but the checkpoint is gone
                raise CheckpointError(f"{rd} holds a run whose {CHECKPOINT} is missing; restore it, or pick "
                                      f"another --run-dir")
            raise CheckpointError(f"{rd} holds a run that stopped before its first checkpoint; `{resume}` starts "
                                  f"it again from step 0 with its saved config, or pick another --run-dir")
        own = {p.name for p in stale_temporaries(rd, TRAINER_FILES)}  # a killed trainer's: claiming removes them
        others = sorted(p.name for p in rd.iterdir() if p.name != LOCK_NAME and p.name not in own)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise CheckpointError(f"{rd} is not empty ({shown}) and is not a run directory; pick a new or empty "
                                  f"--run-dir (nothing was written)")

    def abandon(self) -> None:
        """Undo what claiming did when the trainer could not be set up: drop the lock, and leave no empty
        directory (or lock file in someone else's folder) behind. Only a holder of the lock cleans up: a
        trainer that lost the race for it must not remove the winner's lock file or directory."""
        held = self.lock.held
        self.lock.release()
        if not held:
            return
        if self.created or not self._lock_existed:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def start_records(self, meta: dict[str, Any] | None, save_vocab: Callable[[Path], None],
                      vocab_files: tuple[str, ...]) -> None:
        """The records a run starts with: config.json (``meta``), the file that reopens it without its data
        (``save_vocab``) and the samples folder. ``meta`` None: a run that died before its first checkpoint
        starts again from step 0, keeping its config.json (and its vocabulary, one of ``vocab_files``)."""
        rd = self.path
        if meta is not None:
            write_json(rd / "config.json", meta)
        else:
            self.log(f"{rd} has no checkpoint yet (it stopped before its first save): starting it again from step 0")
            (rd / METRICS).unlink(missing_ok=True)
        if meta is not None or not any((rd / name).exists() for name in vocab_files):
            save_vocab(rd)
        (rd / "samples").mkdir(exist_ok=True)
