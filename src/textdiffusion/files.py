"""Writing files so that a crash never leaves half of one: the one atomic-write helper.

Everything the package writes that someone will read back (checkpoints, JSON records, downloads, reports,
pictures) goes through :func:`atomic_write`: the bytes go to a temporary file in the same folder, are
flushed to disk, and the file is renamed over the target. A rename within one file system is atomic, so a
reader (or a resume after Ctrl-C, a kill or a full disk) sees either the old file or the new one.

The rename replaces whatever the name is, so every write first asks where the bytes go. A name that is not a
regular file (a folder, a device such as ``/dev/full``, a named pipe) is refused rather than turned into one;
run as root, nothing else would stop it. A symbolic link is treated by who chose the name:
- a file the user named (``--trajectory``, ``--gif``, ``compare --out``, ``mnist sample --out``) is written
  through the link (:func:`write_target`: the temporary file sits beside the file it leads to, which the
  rename replaces, and the link stays a link), as the user pointed the name there;
- a file the package keeps inside a run or a data folder (checkpoints, ``config.json``, ``eval.json``) replaces
  the link with a file of its own, so a run copied as links (``cp -rs``) never writes into the run it came from.

Beside it, the one-line errors for paths that cannot be used whatever their contents: a symbolic link loop
(:func:`is_symlink_loop`) and a name that is not UTF-8 (:func:`non_utf8_message`), worded the same wherever
a command took the path.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from textdiffusion.errors import ConfigError


def not_regular_message(path: str | Path) -> str | None:
    """The one-line error for a name a write would destroy (it exists and is not a regular file, after
    following symbolic links), or None when a file may be written there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing (or a dangling link, whose target the write creates): nothing to destroy
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    return f"{path} is {kind}, which writing a file there would replace; pick a file name"


def write_target(path: str | Path) -> Path:
    """Where a write of ``path`` puts its bytes: the file a symbolic link leads to (however many links deep),
    else ``path`` itself. Raises ConfigError (:func:`not_regular_message`) for a name that is not a regular
    file, and OSError ELOOP for a link that leads back to itself."""
    path = Path(path)
    if (problem := not_regular_message(path)) is not None:
        raise ConfigError(problem)
    if not path.is_symlink():
        return path
    if is_symlink_loop(path):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    return Path(os.path.realpath(path))


def atomic_write(path: str | Path, write: Callable[[str], object], *, through_links: bool = False) -> None:
    """Create or replace ``path`` with what ``write(tmp_path)`` writes to a temporary path beside it. A name that
    is not a regular file is refused; a symbolic link is written through (``through_links``, for a name the user
    gave: :func:`write_target`) or replaced by the file (a name the package keeps)."""
    path = write_target(path) if through_links else _own_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; a run directory should be shareable
        os.replace(tmp, path)
        _sync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _own_target(path: str | Path) -> Path:
    """``path`` itself, for a file the package keeps: the rename replaces a symbolic link there (never what it
    leads to), and a name that is not a regular file or a link is refused."""
    path = Path(path)
    if not path.is_symlink() and (problem := not_regular_message(path)) is not None:
        raise ConfigError(problem)
    return path


def _sync_dir(folder: Path) -> None:
    """Flush a rename to disk, so a power cut cannot undo it (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Temporary files :func:`atomic_write` left in ``folder`` for targets named ``names``: a process killed
    mid-write (SIGKILL, OOM, power cut) cannot remove its own. Only the one writer of those targets may delete
    them, as another process's write in progress looks the same."""
    folder = Path(folder)
    return sorted(p for name in names for p in folder.glob(f".{name}.*.tmp") if p.is_file())


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log (``metrics.jsonl``) and flush it to disk. A kill mid-append can leave a cut
    last line; readers skip a line that does not parse, and a resume drops it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str, *, through_links: bool = False) -> None:
    """Atomically write UTF-8 text. A lone surrogate (a file name that is not UTF-8, as Python decodes it) is
    written as its escape ``\\udcff``: UTF-8 has no bytes for it, and a report must not fail over a name."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace"),
                 through_links=through_links)


def write_bytes(path: str | Path, payload: bytes, *, through_links: bool = False) -> None:
    """Atomically write bytes."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload), through_links=through_links)


def is_symlink_loop(path: str | Path) -> bool:
    """Whether following ``path`` goes round in circles. ``Path.exists`` calls such a path missing and
    ``Path.resolve`` raises RuntimeError on it, so a reader asks this to say what is really wrong."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def symlink_loop_message(path: str | Path) -> str:
    """The one-line error for a path that is a symbolic link loop, the same wherever the path was given."""
    return f"{path} is a symbolic link loop (a link that leads back to itself); fix or remove the link"


def non_utf8_message(path: str | Path, what: str) -> str | None:
    """The one-line error for a path whose name is not UTF-8 (``what``: "--run-dir", "run directory"), showing
    its undecodable bytes as ``\\xff``; None for a UTF-8 path. Linux allows any bytes in a name and Python holds
    them as lone surrogates, but the checkpoint library (safetensors) opens only UTF-8 paths, so such a run
    could be written and never read back: it is refused by name instead."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        return (f"{what} {shown} has a name that is not valid UTF-8, which the checkpoint library cannot open; "
                f"rename it (or pick a name) in UTF-8")
    return None


def file_as_run_message(path: str | Path) -> str | None:
    """The one-line error for a run directory given as a file (``runs/masked/config.json`` for ``runs/masked``),
    or None when ``path`` is not a file. Said before anything reads ``PATH/config.json``, whose "not a directory"
    would otherwise read as a problem with the disk, and before "does not exist", which it is not."""
    p = Path(path)
    if not os.path.exists(p) or os.path.isdir(p):
        return None
    if os.path.isfile(p.parent / "config.json"):
        return f"{p} is a file, not a run directory; pass the folder that holds it: {p.parent}"
    return (f"{p} is a file, not a run directory; pass the folder `textdiffusion train` or `textdiffusion mnist "
            f"train` printed (it holds config.json)")
