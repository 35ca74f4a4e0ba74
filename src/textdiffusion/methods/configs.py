"""A run's config with its method found by name: the name-taking doors of :mod:`textdiffusion.config`.

The config package knows no method: its functions receive the method's config class, or a lookup of it.
These find the class in the registry (:func:`~textdiffusion.methods.base.get_method`) and hand it on, so a
caller can say ``make_config("masked", "tiny")``. Importing this module imports the package
:mod:`textdiffusion.methods` first, which registers every built-in method, so the lookups always see them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textdiffusion import config
from textdiffusion.config import Config, MethodConfig
from textdiffusion.methods.base import get_method


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of the method registered as ``name`` (a one-line ConfigError for an unknown name)."""
    return get_method(name).config_class


def make_config(method: str, preset: str, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset <- the method's own adjustments to that preset <- ``--set`` overrides, for the method
    registered as ``method`` (:func:`textdiffusion.config.build_config`)."""
    return config.build_config(method_config_class(method), preset, overrides)


def config_from_dict(d: Any, source: str = "config.json", fix: str = "edit the file back or retrain") -> Config:
    """A recorded config (a run's ``config.json``, also 0.1.0's), checked as a ``--set`` would be
    (:func:`textdiffusion.config.config_from_dict`)."""
    return config.config_from_dict(d, method_config_class, source, fix)


def method_config_from_dict(d: Any) -> MethodConfig:
    """A recorded method section: its own fields kept, 0.1.0's others dropped, anything else refused
    (:func:`textdiffusion.config.method_config_from_dict`)."""
    return config.method_config_from_dict(d, method_config_class)


def read_config_file(path: str | Path) -> Config:
    """The config a ``train --config FILE`` starts from (:func:`textdiffusion.config.read_config_file`)."""
    return config.read_config_file(path, method_config_class)
