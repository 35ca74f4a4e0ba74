"""The errors a user can fix, in a module that imports nothing heavy.

The command line catches these and prints their one-line message; keeping them free of torch lets
``textdiffusion --help`` answer without importing it. They are re-exported where they are raised
(``ConfigError`` by :mod:`textdiffusion.config`), and this module is where a layer that must not import the
configs (``diffusion/``) would find them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
