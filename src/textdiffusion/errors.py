"""The errors a user can fix, in a module that imports nothing heavy.

The command line catches these and prints their one-line message; keeping them free of torch lets
``textdiffusion --help`` answer without importing it. ``ConfigError`` lives with the configs
(:mod:`textdiffusion.config`, also torch-free); these two are re-exported where they are raised.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing input data; the message names the problem and the fix."""


class CheckpointError(ValueError):
    """A run directory that cannot be used; the message says what is wrong and what to do."""
