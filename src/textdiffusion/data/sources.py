"""What the one trainer needs from a dataset, for text and for images alike.

The trainer (:mod:`textdiffusion.train`) never asks whether it is training on characters or pixels. It
asks a *source* for a random training batch, a fixed validation set, a description for ``config.json``,
the file that lets a run be reopened without its data (``tokenizer.json`` or ``image.json``), how many
units (characters, images) a batch holds, and a picture or text of the current samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from textdiffusion.checkpoint import CheckpointError, read_json, write_json
from textdiffusion.config import Config
from textdiffusion.data.batches import TextData
from textdiffusion.data.corpus import sha256_of
from textdiffusion.data.images import ImageBatch, ImageSpec, load_images
from textdiffusion.data.tokenizer import load_tokenizer
from textdiffusion.files import write_text


class Source(Protocol):
    unit: str  # "chars" or "images": names the throughput ("chars_per_s") and the counts
    data: Any  # the loaded TextData or ImageData
    vocab: Any  # what the method is built from: a Tokenizer, or an ImageSpec

    def check(self, method: Any) -> None: ...
    def record(self) -> dict[str, Any]: ...
    def save_vocab(self, run_dir: Path) -> None: ...
    def train_batch(self, batch: int, window: int, generator: torch.Generator) -> Any: ...
    def val_set(self, window: int, limit: int) -> Any: ...
    def units(self, batch: int, window: int) -> int: ...
    def write_samples(self, method: Any, model: torch.nn.Module, generator: torch.Generator, run_dir: Path,
                      step: int) -> None: ...


class TextSource:
    """A tokenised corpus: random crops for training, evenly spread tiles for validation."""

    unit = "chars"

    def __init__(self, data: TextData):
        self.data = data
        self.vocab = data.tokenizer

    def check(self, method: Any) -> None:
        self.data.check_window(method.window)

    def record(self) -> dict[str, Any]:
        d = self.data
        out: dict[str, Any] = {"source": d.source, "train_chars": int(d.train_ids.numel()),
                               "val_chars": int(d.val_ids.numel())}
        if d.path is not None and d.path.is_file():
            out["sha256"] = sha256_of(d.path)
        return out

    def save_vocab(self, run_dir: Path) -> None:
        self.vocab.save(run_dir / "tokenizer.json")

    def train_batch(self, batch: int, window: int, generator: torch.Generator) -> torch.Tensor:
        return TextData.random_windows(self.data.train_ids, batch, window, generator)

    def val_set(self, window: int, limit: int) -> torch.Tensor:
        return TextData.tiled_windows(self.data.val_ids, window, limit)

    def units(self, batch: int, window: int) -> int:
        return batch * window

    def write_samples(self, method: Any, model: torch.nn.Module, generator: torch.Generator, run_dir: Path,
                      step: int) -> None:
        res = method.sample(model, method.training_samples(), generator)
        texts = [self.vocab.decode(row.tolist()) for row in res.ids.cpu()]
        body = f"# step {step}, EMA weights, default sampler, {res.nfe:g} network evaluations per sample\n\n"
        body += "\n\n----\n\n".join(texts) + "\n"
        write_text(run_dir / "samples" / f"step_{step:06d}.txt", body)


class ImageSource:
    """Labelled images: uniformly drawn training batches, the first ``limit`` test images for validation."""

    unit = "images"

    def __init__(self, data: Any):  # textdiffusion.data.images.ImageData
        self.data = data
        self.vocab = ImageSpec(size=data.image_size, channels=1, num_classes=data.num_classes)

    def check(self, method: Any) -> None:
        return None  # the loader has validated shapes; the U-Net checks the size against its levels

    def record(self) -> dict[str, Any]:
        return self.data.record()

    def save_vocab(self, run_dir: Path) -> None:
        write_json(run_dir / "image.json", {**self.vocab.to_dict(), "data": self.record()})

    def train_batch(self, batch: int, window: int, generator: torch.Generator) -> Any:
        idx = torch.randint(0, self.data.x_train.shape[0], (batch,), generator=generator)
        return ImageBatch(self.data.x_train[idx], self.data.y_train[idx])

    def val_set(self, window: int, limit: int) -> Any:
        n = self.data.x_test.shape[0] if limit <= 0 else min(limit, self.data.x_test.shape[0])
        return ImageBatch(self.data.x_test[:n], self.data.y_test[:n])

    def units(self, batch: int, window: int) -> int:
        return batch

    def write_samples(self, method: Any, model: torch.nn.Module, generator: torch.Generator, run_dir: Path,
                      step: int) -> None:
        from textdiffusion.viz.images import save_grid

        res = method.sample(model, method.training_samples(), generator)
        save_grid(res.images, run_dir / "samples" / f"step_{step:06d}.png", nrow=self.vocab.num_classes)


def load_source(cfg: Config, run_dir: Path | None = None) -> Source:
    """The data a run trains on. ``run_dir`` (when resuming) supplies the saved tokenizer, so a resumed run
    tokenises exactly as before."""
    if cfg.method.network == "unet":  # an image method
        return ImageSource(load_images(cfg.data.corpus))
    tokenizer = load_tokenizer(run_dir / "tokenizer.json") if run_dir is not None else None
    return TextSource(TextData.load(cfg.data.corpus, tokenizer, cfg.data.val_fraction, cfg.data.tokenizer,
                                    cfg.data.vocab_size))


def as_source(data: Any, run_dir: Path | None = None) -> Source:
    """Wrap what a caller handed the trainer (TextData, ImageData or a ready source)."""
    if isinstance(data, TextData):
        if run_dir is not None:
            saved = load_tokenizer(run_dir / "tokenizer.json")
            if saved.to_dict() != data.tokenizer.to_dict():
                raise CheckpointError("the corpus tokenises differently from the run's tokenizer.json")
        return TextSource(data)
    if hasattr(data, "x_train"):
        return ImageSource(data)
    return data


def load_vocab(run_dir: Path) -> Any:
    """What a run's method is built from, read back from its directory."""
    if (run_dir / "tokenizer.json").exists():
        return load_tokenizer(run_dir / "tokenizer.json")
    if (run_dir / "image.json").exists():
        return ImageSpec.from_dict(read_json(run_dir / "image.json"))
    raise CheckpointError(f"{run_dir} has neither tokenizer.json nor image.json; it is not a complete run "
                          f"directory (copy the whole folder)")
