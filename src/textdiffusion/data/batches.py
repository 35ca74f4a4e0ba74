"""Train/validation split and random-crop batches, all as tensor ops (no Python loop per sample)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textdiffusion.data.corpus import DataError, read_corpus, resolve_corpus
from textdiffusion.data.tokenizer import Tokenizer, make_tokenizer


@dataclass
class TextData:
    """A tokenised corpus split nanoGPT-style: first (1 - val_fraction) train, the rest validation."""

    train_ids: torch.Tensor  # int64, 1-D
    val_ids: torch.Tensor
    tokenizer: Tokenizer
    source: str
    train_text: str
    path: Path | None = None  # the resolved corpus file or directory, when it came from disk
    #: the character of the whole text where validation begins: the held-out text is ``text[val_start:]``
    #: whether or not the training text is a prefix of the training split (``train_chars``); left out, the
    #: training text is taken to be the whole split, which ends there
    val_start: int = -1

    def __post_init__(self) -> None:
        if self.val_start < 0:
            self.val_start = len(self.train_text)

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer | None = None, val_fraction: float = 0.1,
                  source: str = "<text>", tokenizer_kind: str = "char", vocab_size: int = 512,
                  train_chars: int = 0) -> TextData:
        """Split ``text`` and tokenise each part. A given ``tokenizer`` is used as is (a resumed or
        evaluated run must reuse its own); otherwise one of ``tokenizer_kind`` is built.

        The split is made on the *text*, at the character ``int(len(text) * (1 - val_fraction))``, and the
        two parts are encoded separately: for a multi-character tokenizer a character index is not a
        token index, and a token must not straddle the boundary. Consequently the split is the same
        characters whatever the tokenizer, which keeps bits-per-character comparable across tokenizers.

        ``train_chars`` > 0 trains on the first ``train_chars`` characters of the training split only
        (``data.train_chars``). The split point is computed from the whole text first and does not move with it,
        so runs on prefixes of any size are scored on the same validation text; the char vocabulary is still the
        whole corpus's alphabet, so their tokenizers agree too.
        """
        split = int(len(text) * (1.0 - val_fraction))
        if train_chars > split:
            raise DataError(f"data.train_chars={train_chars:,} is more than the training split's {split:,} "
                            f"characters; pick at most {split:,} (0 = the whole split)")
        train_text, val_text = text[:train_chars or split], text[split:]
        tok = tokenizer
        if tok is None:
            # A char vocabulary is the corpus alphabet (nanoGPT's convention; an unseen validation
            # character would be unencodable), whereas BPE merges are statistics that must not see the
            # validation text, so BPE is trained on the training split only.
            tok = make_tokenizer(tokenizer_kind, text if tokenizer_kind == "char" else train_text, vocab_size)
        train_ids = torch.from_numpy(tok.encode_array(train_text))
        val_ids = torch.from_numpy(tok.encode_array(val_text))
        return cls(train_ids, val_ids, tok, source, train_text, val_start=split)

    @classmethod
    def load(cls, corpus: str, tokenizer: Tokenizer | None = None, val_fraction: float = 0.1,
             tokenizer_kind: str = "char", vocab_size: int = 512, train_chars: int = 0) -> TextData:
        """Resolve and read ``corpus`` (a path or a named corpus), then :meth:`from_text`."""
        path = resolve_corpus(corpus)
        text, source = read_corpus(path)
        data = cls.from_text(text, tokenizer, val_fraction, source, tokenizer_kind, vocab_size, train_chars)
        data.path = path
        return data

    def check_window(self, window: int) -> None:
        """Both splits must hold at least one full window of ``window`` tokens. The fix offered is one that
        works: a context no longer than the shorter split, or, when a split is empty, only a longer corpus."""
        unit = "characters" if self.tokenizer.kind == "char" else "tokens"
        fits = min(self.train_ids.numel(), self.val_ids.numel())
        for name, ids in (("training", self.train_ids), ("validation", self.val_ids)):
            if ids.numel() < window:
                fix = (f"use a longer corpus or a smaller context (--set model.context={fits} fits both splits)"
                       if fits else "use a longer corpus (no context fits an empty split)")
                raise DataError(f"the {name} split has {ids.numel()} {unit} but one training window needs {window}; "
                                f"{fix}")

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
