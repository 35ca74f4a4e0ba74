"""What the trainer draws at each evaluation: a few samples of the EMA weights, kept in ``RUN/samples/``.

The method says what to draw (:meth:`~textdiffusion.methods.base.Method.training_samples`: its default
sampler, its own token draw, two of each class for a class-conditional image model); this module draws it
and keeps it in the form its data reads best: text as ``step_NNNNNN.txt``, images as a ``step_NNNNNN.png``
grid. The data loaders only read data; drawing from a model happens here, beside the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from textdiffusion.files import write_text


def _text(result: Any, vocab: Any, folder: Path, step: int) -> None:
    texts = [vocab.decode(row.tolist()) for row in result.ids.cpu()]
    body = f"# step {step}, EMA weights, default sampler, {result.nfe:g} network evaluations per sample\n\n"
    body += "\n\n----\n\n".join(texts) + "\n"
    write_text(folder / f"step_{step:06d}.txt", body)


def _images(result: Any, vocab: Any, folder: Path, step: int) -> None:
    from textdiffusion.viz.images import save_grid

    save_grid(result.images, folder / f"step_{step:06d}.png", nrow=vocab.num_classes)  # a row per class


# how each kind of data (a method's ``family``) keeps its samples: (result, vocab, folder, step)
WRITERS: dict[str, Callable[[Any, Any, Path, int], None]] = {"text": _text, "image": _images}


def write_training_samples(method: Any, model: torch.nn.Module, vocab: Any, generator: torch.Generator,
                           run_dir: Path, step: int) -> None:
    """Draw the method's training samples from ``model`` and write them under ``run_dir/samples``; ``vocab``
    is what the data defines (the tokenizer that decodes text, the image spec that lays out the grid)."""
    result = method.sample(model, method.training_samples(), generator)
    WRITERS[method.family](result, vocab, Path(run_dir) / "samples", step)
