"""The errors a user can fix, in a module that imports nothing heavy.

The command line catches these and prints their one-line message; keeping them free of torch lets
``textdiffusion --help`` answer without importing it. They are re-exported where they are raised
(``ConfigError`` by :mod:`textdiffusion.config`), and this module is where a layer that must not import the
configs (``diffusion/``) would find them.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it as one line."""


class DataError(ValueError):
    """Bad or missing input data; the message names the problem and the fix."""


class CheckpointError(ValueError):
    """A run directory that cannot be used; the message says what is wrong and what to do."""


class ConfigWarning(UserWarning):
    """Something read that this version ignores (a field of a run written by another version); the CLI prints
    it as one line, ``warning: ...``."""


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'masked'?"`` for a name close to one of ``choices`` (difflib's ratio), else ``""``:
    the tail of a message that refuses a mistyped name from a fixed set."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# what an errno means for the person who typed the command, and what they can do about it
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
_ATOMIC_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def os_error_message(e: OSError) -> str:
    """The one-line diagnosis of an OSError no layer turned into a user error: the cause its errno names, the
    path at fault (a folder that cannot be entered or written, not the temporary file a write was making in it)
    and a fix that addresses that cause. A generic "check the permissions and the free disk space" would send
    someone with a too-long name or an unreadable file to look at their disk."""
    where = Path(_shown(e.filename)) if e.filename else None
    if where is None:
        return f"{e.strerror or e}; check the paths the command was given"
    if e.errno in _NO_SPACE:
        return f"no space left on the disk that holds {where} ({e.strerror}); free some space and run it again"
    if e.errno == errno.EROFS:
        return f"{where} is on a read-only file system; pick a place on a writable disk"
    if e.errno == errno.ENAMETOOLONG:
        longest = max(where.parts, key=lambda part: len(os.fsencode(part)))
        return (f"a name in {where} is too long for the file system ({len(os.fsencode(longest))} bytes; most "
                f"allow 255); pick a shorter name")
    if e.errno == errno.ENOTDIR:
        blocker = next((p for p in reversed(where.parents) if os.path.isfile(p)), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder, so {where} cannot exist; fix the path"
    if e.errno == errno.ELOOP:  # worded as files.symlink_loop_message, which imports this module
        return f"{where} is a symbolic link loop (a link that leads back to itself); fix or remove the link"
    if e.errno == errno.ENOENT:
        return f"{where} does not exist; check the path"
    if e.errno in _DENIED:
        return _denied(where)
    return f"{e.strerror or e} ({where}); check the path and its permissions"


def _shown(filename: object) -> str:
    """The file a user knows: an atomic write's temporary ``.NAME.XXXXXXXX.tmp`` stands for ``NAME``."""
    path = Path(os.fsdecode(filename) if isinstance(filename, (bytes, str)) else str(filename))
    match = _ATOMIC_TEMPORARY.match(path.name)
    return str(path.with_name(match["name"])) if match else str(path)


def _denied(path: Path) -> str:
    """Permission denied on ``path``: the first folder above it that cannot be entered, else the file that
    cannot be read or written, else the folder that a new (or atomically replaced) file cannot be made in."""
    for folder in reversed(path.parents):
        if os.path.isdir(folder) and not os.access(folder, os.X_OK):
            return f"cannot open the folder {folder} (permission denied); give yourself access (chmod u+rx {folder})"
    if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        return f"cannot open the folder {path} (permission denied); give yourself access (chmod u+rx {path})"
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return f"cannot read {path} (permission denied); give yourself read access (chmod u+r {path})"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"cannot write {path} (permission denied); give yourself write access (chmod u+w {path})"
    folder = next((p for p in path.parents if os.path.exists(p)), path.parent)
    if not os.access(folder, os.W_OK):  # a new file, or one replaced by a rename, is written in its folder
        return (f"cannot write in {folder} (permission denied); make it writable (chmod u+w {folder}) or pick "
                f"another place")
    return f"permission denied on {path}; check its permissions and those of the folders above it"
