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
        TextOptions,
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
                     "TextModel", "TextOptions", "TextSamples", "TextStream", "load", "train"), "textdiffusion.api"),
    "ConfigError": "textdiffusion.config",
    "CheckpointError": "textdiffusion.errors",
    "DataError": "textdiffusion.errors",
}

__all__ = ["CheckpointError", "ConfigError", "DataError", "Frame", "ImageFrame", "ImageModel", "ImageSamples",
           "ImageStream", "SamplingPlan", "Score", "TextModel", "TextOptions", "TextSamples", "TextStream",
           "__version__", "load", "train"]


def __getattr__(name: str) -> Any:
    """Import an exported name on first use (PEP 562), so ``import textdiffusion`` stays light."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textdiffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
