"""What the one trainer needs from a dataset, for text and for images alike.

The trainer (:mod:`textdiffusion.trainer`) never asks whether it is training on characters or pixels. It
asks a *source* for a random training batch, a fixed validation set, a description for ``config.json``,
the file that lets a run be reopened without its data (``tokenizer.json`` or ``image.json``) and how many
units (characters, images) a batch holds. A source only reads, verifies, splits and batches: it runs no
method (the trainer's samples are drawn by :mod:`textdiffusion.training_samples`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from textdiffusion.checkpoint import CheckpointError, read_json, write_json
from textdiffusion.config import Config
from textdiffusion.data.batches import TextData
from textdiffusion.data.corpus import DataError, corpus_fingerprint, read_corpus, resolve_corpus
from textdiffusion.data.images import ImageBatch, ImageSpec, load_images
from textdiffusion.data.tokenizer import load_tokenizer
from textdiffusion.sharing import resolve_recorded, run_corpus_record


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


class TextSource:
    """A tokenised corpus: random crops for training, evenly spread tiles for validation."""

    unit = "chars"
    vocab_file = "tokenizer.json"
    resume_needs_vocab = True  # the weights' rows are its symbols: a run without it cannot go on

    def __init__(self, data: TextData):
        self.data = data
        self.vocab = data.tokenizer

    def check(self, method: Any) -> None:
        self.data.check_window(method.window)

    def record(self) -> dict[str, Any]:
        """config.json's "corpus": the split's sizes and, for a corpus read from disk, its identity
        (:func:`~textdiffusion.data.corpus.corpus_fingerprint`: kind, absolute path, sha256 of the file or of
        the directory's .txt files), which resume and eval check (:func:`check_identity`). The trainer
        records the path in a form that travels (:func:`~textdiffusion.sharing.run_corpus_record`)."""
        d = self.data
        out: dict[str, Any] = {"source": d.source, "train_chars": int(d.train_ids.numel()),
                               "val_chars": int(d.val_ids.numel())}
        if d.path is not None:
            fingerprint = corpus_fingerprint(d.path)
            out["sha256"] = fingerprint.pop("sha256")
            out |= fingerprint
        return out

    def save_vocab(self, run_dir: Path) -> None:
        self.vocab.save(run_dir / "tokenizer.json")

    def train_batch(self, batch: int, window: int, generator: torch.Generator) -> torch.Tensor:
        return TextData.random_windows(self.data.train_ids, batch, window, generator)

    def val_set(self, window: int, limit: int) -> torch.Tensor:
        return TextData.tiled_windows(self.data.val_ids, window, limit)

    def units(self, batch: int, window: int) -> int:
        return batch * window


class SpeakerSource(TextSource):
    """A play script labelled by speaker (``data.labels=speaker``): training crops from the ``data.label_top``
    most-spoken speakers' speech bodies, each with its speaker's label; validation tiles from their held-out
    speeches (:mod:`textdiffusion.data.speakers` has the split). The tokenizer is the plain corpus's."""

    def __init__(self, data: TextData, top: int):
        from textdiffusion.data.speakers import SpeakerStreams, split_speakers

        super().__init__(data)
        self.split = split_speakers(data.train_text, top)
        self.label_names = self.split.speakers
        encode = data.tokenizer.encode_array
        self.train_streams = SpeakerStreams(self.split.train, encode)
        held: list[list[str]] = [[] for _ in self.label_names]
        for label, body in self.split.held_out:
            held[label].append(body)
        self.val_streams = SpeakerStreams(held, encode)

    def check(self, method: Any) -> None:
        """The windows fit every speaker's speech (the trainer has checked that the method takes labels)."""
        self.train_streams.check_window(method.window, "training", self.label_names)
        self.val_streams.check_window(method.window, "held-out", self.label_names)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "labels": list(self.label_names),
                "label_train_chars": self.split.train_chars(), "label_held_out_speeches": len(self.split.held_out)}

    def train_batch(self, batch: int, window: int, generator: torch.Generator) -> Any:
        return self.train_streams.random_windows(batch, window, generator)

    def val_set(self, window: int, limit: int) -> Any:
        return self.val_streams.tiled_windows(window, limit)


class ImageSource:
    """Labelled images: uniformly drawn training batches, the first ``limit`` test images for validation."""

    unit = "images"
    vocab_file = "image.json"
    resume_needs_vocab = False  # written again from the data

    def __init__(self, data: Any):  # textdiffusion.data.images.ImageData
        self.data = data
        self.vocab = ImageSpec(size=data.image_size, channels=1, num_classes=data.num_classes)

    def check(self, method: Any) -> None:
        return None  # the loader has validated shapes; the U-Net checks the size against its levels

    def record(self) -> dict[str, Any]:
        return self.data.record()

    def save_vocab(self, run_dir: Path) -> None:
        write_json(run_dir / "image.json", {**self.vocab.to_dict(), "data": run_corpus_record(self.record(), run_dir)})

    def train_batch(self, batch: int, window: int, generator: torch.Generator) -> Any:
        idx = torch.randint(0, self.data.x_train.shape[0], (batch,), generator=generator)
        return ImageBatch(self.data.x_train[idx], self.data.y_train[idx])

    def val_set(self, window: int, limit: int) -> Any:
        n = self.data.x_test.shape[0] if limit <= 0 else min(limit, self.data.x_test.shape[0])
        return ImageBatch(self.data.x_test[:n], self.data.y_test[:n])

    def units(self, batch: int, window: int) -> int:
        return batch


SOURCES: dict[str, type[TextSource] | type[ImageSource]] = {"text": TextSource, "image": ImageSource}  # by family


def load_source(cfg: Config, run_dir: Path | None = None, kind: str = "text") -> Source:
    """The data a run trains on, of ``kind`` (the method's ``family``: "text" or "image"). ``run_dir``
    (when resuming) supplies the saved tokenizer, so a resumed run tokenises exactly as before, and the
    corpus record of its config.json: the data is read from the recorded absolute path when it is still
    there (:func:`corpus_location`), and must still have the recorded fingerprint (:func:`check_identity`)."""
    recorded = recorded_corpus(run_dir) if run_dir is not None else None
    corpus = corpus_location(cfg.data.corpus, recorded, run_dir)
    if kind == "image":
        source: Source = ImageSource(load_images(corpus))
        if run_dir is not None:
            check_identity(recorded, source.record(), run_dir)
        return source
    path = resolve_corpus(corpus)
    if run_dir is not None:  # before tokenising: a changed corpus may hold characters the tokenizer never saw
        check_identity(recorded, corpus_fingerprint(path), run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer.json") if run_dir is not None else None
    text, where = read_corpus(path)
    data = TextData.from_text(text, tokenizer, cfg.data.val_fraction, where, cfg.data.tokenizer, cfg.data.vocab_size,
                              cfg.data.train_chars)
    data.path = path
    return text_source(data, cfg)


def text_source(data: TextData, cfg: Config | None = None) -> TextSource:
    """The source of a text corpus: labelled by speaker when ``data.labels=speaker``, else plain."""
    if cfg is not None and cfg.data.labels == "speaker":
        return SpeakerSource(data, cfg.data.label_top)
    return TextSource(data)


# ---- data identity: a resumed or evaluated run must see the data it was trained on ----------------------
def recorded_corpus(run_dir: Path) -> dict[str, Any] | None:
    """The "corpus" record of ``run_dir``'s config.json (None when there is none to go by)."""
    meta = read_json(Path(run_dir) / "config.json")
    corpus = meta.get("corpus") if isinstance(meta, dict) else None
    return corpus if isinstance(corpus, dict) else None


def corpus_location(configured: str, recorded: dict[str, Any] | None, run_dir: Path | str | None = None) -> str:
    """Where a run's data is read from: the place recorded at training when it still exists (a path relative
    to ``run_dir``, the data folder's symbol, or the absolute path earlier versions wrote; see
    :mod:`textdiffusion.sharing`), so a run trained with a relative ``--data`` is evaluated from any working
    directory; else the configured ``data.corpus`` (a named corpus, or a path the data was moved to: the
    fingerprint then tells whether it is the same data)."""
    path = recorded.get("path") if recorded else None
    place = resolve_recorded(path, run_dir) if isinstance(path, str) and path else None
    if place is None:
        return configured
    try:
        return str(place) if place.exists() else configured
    except OSError:  # a folder on the way may not be searched: the configured corpus says it plainly
        return configured


def check_identity(recorded: dict[str, Any] | None, current: dict[str, Any], run_dir: Path | str) -> None:
    """Refuse data whose fingerprint differs from the one ``run_dir`` recorded when it was trained.

    ``current`` is the data's record now (a :class:`Source`'s ``record()`` or a
    :func:`~textdiffusion.data.corpus.corpus_fingerprint`). Images compare the digest of their decoded arrays
    (``arrays_sha256``: the same pictures in another container are the same data); text, and images recorded
    before that digest existed, compare ``sha256`` (a file's, or a directory's over its .txt files). A
    fingerprint missing on either side (runs of textdiffusion 0.1.0 trained on a directory, the digits
    recorded without one) is not checked."""
    if not recorded:
        return
    for key in ("arrays_sha256", "sha256"):
        old, new = recorded.get(key), current.get(key)
        if old and new:
            if old != new:
                where = current.get("path") or current.get("source") or recorded.get("source") or "the data"
                was = recorded.get("path") or recorded.get("source")
                moved = f" (recorded at {was})" if was and was != where else ""
                raise DataError(f"the data of run {run_dir} has changed since it was trained: {where}{moved} has "
                                f"{key} {str(new)[:12]}… but the run recorded {str(old)[:12]}…; restore the "
                                f"original data, or train a new run on this data")
            return


def as_source(data: Any, run_dir: Path | None = None, cfg: Config | None = None) -> Source:
    """Wrap what a caller handed the trainer (TextData, ImageData or a ready source); ``cfg`` says whether
    text is labelled."""
    if isinstance(data, TextData):
        if run_dir is not None:
            saved = load_tokenizer(run_dir / "tokenizer.json")
            if saved.to_dict() != data.tokenizer.to_dict():
                raise CheckpointError("the corpus tokenises differently from the run's tokenizer.json")
        return text_source(data, cfg)
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
