"""TextDiffusion: diffusion models on text (and images), side by side with an autoregressive baseline.

The Python API (:mod:`textdiffusion.api`, guide in ``docs/python-api.md``)::

    import textdiffusion

    model = textdiffusion.load("runs/masked")        # or textdiffusion.train(method="masked", preset="tiny")
    print(model.generate(prompt="ROMEO:", n=2))

The names are imported on first use, so ``import textdiffusion`` (and ``textdiffusion --help``) does not
import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from textdiffusion.api import (
        Frame,
        ImageFrame,
        ImageModel,
        ImageSamples,
        ImageStream,
        SamplingPlan,
        Score,
        TextModel,
        TextSamples,
        TextStream,
        load,
        train,
    )
    from textdiffusion.config import ConfigError
    from textdiffusion.errors import CheckpointError, DataError

# exported name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("Frame", "ImageFrame", "ImageModel", "ImageSamples", "ImageStream", "SamplingPlan", "Score",
                     "TextModel", "TextSamples", "TextStream", "load"), "textdiffusion.api"),
    "ConfigError": "textdiffusion.config",
    "CheckpointError": "textdiffusion.errors",
    "DataError": "textdiffusion.errors",
}

__all__ = ["CheckpointError", "ConfigError", "DataError", "Frame", "ImageFrame", "ImageModel", "ImageSamples",
           "ImageStream", "SamplingPlan", "Score", "TextModel", "TextSamples", "TextStream", "__version__", "load",
           "train"]


class _TrainModule(types.ModuleType):
    """:mod:`textdiffusion.train`, the training loop, callable as the API's :func:`textdiffusion.api.train`.

    ``textdiffusion.train`` names both the submodule and the API function, and Python makes the attribute of a
    package the submodule once it is imported (``from textdiffusion.train import Trainer`` anywhere would
    otherwise turn ``textdiffusion.train(method=...)`` into "module is not callable"). So the module itself is
    made callable: ``textdiffusion.train(...)`` trains a run, ``import textdiffusion.train as m`` still gives
    the module, whatever was imported first."""

    def __call__(self, method: str, preset: str = "cpu", **kwargs: Any) -> Any:
        from textdiffusion.api import train

        return train(method, preset, **kwargs)


class _Package(types.ModuleType):
    """This package's module type: it makes the ``train`` submodule callable as it is attached (the import
    system sets a package's attribute for every submodule it loads, by whatever import)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and type(value) is types.ModuleType:
            value.__class__ = _TrainModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """Import an exported name on first use (PEP 562), so ``import textdiffusion`` stays light."""
    if name == "train":
        return importlib.import_module("textdiffusion.train")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textdiffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
