"""The optional packages a feature needs, and the one-line error that names the extra installing them.

The base install holds what training, sampling, evaluation and the demo need; a feature that needs more (the
report's templates, the live page's server, the offline digits) asks for its packages here when it starts,
before any work, so a missing one is a message naming ``pip install "textdiffusion[EXTRA]"`` instead of an
ImportError traceback minutes in. Torch-free, like :mod:`textdiffusion.errors`, and importing nothing until
asked, so that ``import textdiffusion`` never pulls an optional package in.
"""

from __future__ import annotations

import importlib

from textdiffusion.errors import ConfigError


class MissingExtraError(ConfigError, ImportError):
    """An optional package is not installed. A :class:`ConfigError`, so the command line prints it as one
    line, and an :class:`ImportError`, which is what Python code would expect to catch."""


def install_hint(extra: str) -> str:
    """How to add ``extra``: from PyPI, or into an editable checkout."""
    return f'pip install "textdiffusion[{extra}]" (in a checkout: pip install -e ".[{extra}]")'


def require(modules: tuple[str, ...], extra: str, feature: str) -> None:
    """Import each of ``modules`` or raise :class:`MissingExtraError` naming ``feature`` and ``extra``.

    Importing (rather than looking for the files) also catches an install too broken to import."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(f"{feature} needs {' and '.join(missing)}, which the base install leaves out; "
                                f"{install_hint(extra)}")
