"""The errors a user can fix, in a module that imports nothing heavy.

The command line catches these and prints their one-line message; keeping them free of torch lets
``textdiffusion --help`` answer without importing it. They are re-exported where they are raised
(``ConfigError`` by :mod:`textdiffusion.config`), and this module is where a layer that must not import the
configs (``diffusion/``) would find them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it as one line."""


class DataError(ValueError):
    """Bad or missing input data; the message names the problem and the fix."""


class CheckpointError(ValueError):
    """A run directory that cannot be used; the message says what is wrong and what to do."""
