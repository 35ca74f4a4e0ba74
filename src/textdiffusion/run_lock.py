"""One writer per run: an advisory lock on ``RUN/.lock`` held by the process that trains the run.

Two trainers on one directory would interleave their checkpoints and metrics (config from one seed, weights
from the other) and both exit 0. ``flock`` makes the second one fail at once with the holder's PID. The
kernel releases the lock when its holder dies in any way (exit, Ctrl-C, SIGKILL, OOM), so a crashed run is
never left locked and no stale-lock clean-up is needed. Readers (``sample``, ``eval``, ``compare``) do not
lock: every file they read is replaced atomically. They only ask :func:`training_pid` whether a trainer holds
the lock, to say that the checkpoint they read is one of a run still in training.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from textdiffusion.checkpoint import CheckpointError

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock becomes a no-op there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
# a reader's probe holds the lock for microseconds: a trainer starting at that moment retries this long
PROBE_GRACE_S = 0.5


def _holder_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"


def training_pid(run_dir: Path) -> int | None:
    """The PID of the live process training ``run_dir``, or None when no process holds its lock (finished,
    crashed or never trained, or a system without ``flock``). A shared lock taken and dropped at once tells,
    without writing anything: the kernel refuses it exactly while a trainer holds the exclusive one."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_pid(fd)
        return int(holder) if holder.isdigit() else -1
    except OSError:  # a file system without locks: nothing can be said
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a run directory for as long as it is held (``acquire`` ... ``release``)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise a one-line :class:`CheckpointError` naming the process that holds it."""
        if self._fd is not None or fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(fd)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            raise CheckpointError(f"{self.path.parent} is being trained by another process (PID {holder}); wait "
                                  f"for it to finish or stop it, or train into another --run-dir") from None
        except OSError as e:  # a file system without locks (some network mounts)
            os.close(fd)
            raise CheckpointError(f"cannot lock {self.path} ({e.strerror}); put the run on a local disk") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @staticmethod
    def _lock(fd: int) -> None:
        """Take the exclusive lock, waiting out a reader's momentary probe (:func:`training_pid`); another
        trainer's lock outlasts the wait and raises BlockingIOError."""
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
