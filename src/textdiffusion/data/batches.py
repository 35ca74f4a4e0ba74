"""Train/validation split and random-crop batches, all as tensor ops (no Python loop per sample)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textdiffusion.data.corpus import DataError, read_corpus, resolve_corpus
from textdiffusion.data.tokenizer import CharTokenizer, Tokenizer


@dataclass
class TextData:
    """A tokenised corpus split nanoGPT-style: first (1 - val_fraction) train, the rest validation."""

    train_ids: torch.Tensor  # int64, 1-D
    val_ids: torch.Tensor
    tokenizer: Tokenizer
    source: str
    train_text: str
    path: Path | None = None  # the resolved corpus file or directory, when it came from disk

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer | None = None, val_fraction: float = 0.1,
                  source: str = "<text>") -> TextData:
        tok = tokenizer or CharTokenizer.from_text(text)
        n = len(text)
        split = int(n * (1.0 - val_fraction))
        ids = torch.from_numpy(tok.encode_array(text))
        return cls(ids[:split].clone(), ids[split:].clone(), tok, source, text[:split])

    @classmethod
    def load(cls, corpus: str, tokenizer: Tokenizer | None = None, val_fraction: float = 0.1) -> TextData:
        path = resolve_corpus(corpus)
        text, source = read_corpus(path)
        data = cls.from_text(text, tokenizer, val_fraction, source)
        data.path = path
        return data

    def check_window(self, window: int) -> None:
        """Both splits must hold at least one full window of ``window`` tokens."""
        for name, ids in (("training", self.train_ids), ("validation", self.val_ids)):
            if ids.numel() < window:
                raise DataError(
                    f"the {name} split has {ids.numel()} characters but one training window needs {window}; "
                    f"use a longer corpus or a smaller context (--set model.context=N)"
                )

    @staticmethod
    def random_windows(ids: torch.Tensor, batch: int, window: int, generator: torch.Generator) -> torch.Tensor:
        """``batch`` random crops of length ``window``: one randint and one gather."""
        starts = torch.randint(0, ids.numel() - window + 1, (batch,), generator=generator)
        return ids[starts[:, None] + torch.arange(window)]

    @staticmethod
    def tiled_windows(ids: torch.Tensor, window: int, limit: int = 0) -> torch.Tensor:
        """Non-overlapping windows covering the split (the tail shorter than a window is dropped).

        ``limit`` > 0 keeps that many windows spread evenly over the split, a cheaper but still
        deterministic estimate used for the periodic evals during training.
        """
        n = ids.numel() // window
        tiles = ids[: n * window].view(n, window)
        if 0 < limit < n:
            tiles = tiles[np.linspace(0, n - 1, limit).round().astype(np.int64)]
        return tiles
