"""Tokenizers: text <-> integer ids, with reserved special tokens.

Every tokenizer reserves ``mask`` (the absorbing state of masked diffusion), ``pad`` and ``bos`` (the start
symbol an autoregressive model conditions on) *after* the corpus symbols, so a special id can never be
produced by encoding text. A tokenizer serialises to a small JSON dict saved in each run directory, so
sampling needs no corpus. A later issue adds BPE and pretrained WordPiece behind the same interface.
"""

from __future__ import annotations

import json
import unicodedata
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from textdiffusion.data.corpus import DataError

SPECIALS = ("mask", "pad", "bos")


class Tokenizer(ABC):
    """The interface methods and the CLI rely on."""

    kind: str

    @property
    @abstractmethod
    def n_symbols(self) -> int:
        """Number of ordinary (corpus) symbols; ids ``0 .. n_symbols-1``."""

    @property
    def vocab_size(self) -> int:
        """Ordinary symbols plus the specials: the size of the model's input and output layers."""
        return self.n_symbols + len(SPECIALS)

    @property
    def mask_id(self) -> int:
        return self.n_symbols + SPECIALS.index("mask")

    @property
    def pad_id(self) -> int:
        return self.n_symbols + SPECIALS.index("pad")

    @property
    def bos_id(self) -> int:
        return self.n_symbols + SPECIALS.index("bos")

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for a whole corpus."""

    @abstractmethod
    def decode(self, ids: list[int] | np.ndarray, mask_char: str = "_") -> str: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"{ch!r} (U+{ord(ch):04X}{' ' + name if name else ''})"


class CharTokenizer(Tokenizer):
    """One id per distinct character of the corpus, sorted by code point (nanoGPT's convention)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise DataError("tokenizer characters must be distinct")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        # dense lookup for code points that fit, used by encode_array
        top = max((ord(c) for c in self.chars), default=0) + 1
        self._lut = np.full(top, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            self._lut[ord(c)] = i

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise DataError("cannot build a tokenizer from an empty corpus")
        return cls(sorted(set(text)))

    @property
    def n_symbols(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def encode(self, text: str) -> list[int]:
        unknown = self.unknown_chars(text)
        if unknown:
            shown = ", ".join(_describe(c) for c in unknown[:5])
            raise DataError(f"text contains characters the tokenizer has never seen: {shown}; remove them "
                            f"or train on a corpus that contains them")
        return [self.stoi[c] for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if codes.size and codes.max() >= self._lut.size:
            return np.asarray(self.encode(text), dtype=np.int64)  # raises with a clear message
        ids = self._lut[codes]
        if (ids < 0).any():
            self.encode(text)  # raises with a clear message
        return ids

    def decode(self, ids: list[int] | np.ndarray, mask_char: str = "_") -> str:
        out = []
        n = self.n_symbols
        for i in (int(x) for x in ids):
            if 0 <= i < n:
                out.append(self.chars[i])
            elif i == self.mask_id:
                out.append(mask_char)
            # pad / bos decode to nothing
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars, "specials": list(SPECIALS)}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(list(d["chars"]))
    raise DataError(f"unknown tokenizer kind {kind!r} in tokenizer.json; was the run made by a newer version?")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; is this a run directory made by `textdiffusion train`?") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path} is corrupt ({e}); retrain or restore the file") from None
