"""Tokenizers: text <-> integer ids, with reserved special tokens.

Every tokenizer reserves ``mask`` (the absorbing state of masked diffusion), ``pad`` and ``bos`` (the start
symbol an autoregressive model conditions on) *after* the corpus symbols, so a special id can never be
produced by encoding text. A tokenizer serialises to a small JSON dict saved in each run directory, so
sampling needs no corpus.

Three kinds exist: ``char`` (one id per character, lossless), ``bpe`` (a byte-level BPE trained on the
training split, lossless) and ``wordpiece`` (MiniLM's pretrained uncased WordPiece, lossy: it lowercases and
normalises whitespace, but its ids index a pretrained embedding table). The last two use the Hugging Face
``tokenizers`` library, imported only when one of them is built, so a char-level install does not need it.
"""

from __future__ import annotations

import json
import unicodedata
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textdiffusion.config import BPE_MIN_VOCAB, TOKENIZER_KINDS
from textdiffusion.data.corpus import DataError
from textdiffusion.json_reading import JSONProblem, parse_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

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
        from textdiffusion.files import write_text

        write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))


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


def _import_tokenizers(extra: str) -> Any:
    """The ``tokenizers`` module, or a one-line DataError naming the extra that installs it.

    Imported lazily so that a plain (char-level) install never needs the library."""
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"this tokenizer needs the `tokenizers` library; install it with: "
                        f'pip install "textdiffusion[{extra}]"') from None
    return tokenizers


class _HFTokenizer(Tokenizer):
    """Shared plumbing for tokenizers backed by a Hugging Face ``tokenizers.Tokenizer``.

    The wrapped tokenizer must add no special tokens of its own: our specials live after ``n_symbols``, and
    every id it produces must be an ordinary symbol below that bound."""

    def __init__(self, tk: HFTokenizer):
        self._tk = tk
        self._n = tk.get_vocab_size(with_added_tokens=True)

    @property
    def n_symbols(self) -> int:
        return self._n

    def encode(self, text: str) -> list[int]:
        return list(self._tk.encode(text, add_special_tokens=False).ids)

    def encode_array(self, text: str) -> np.ndarray:
        # encode_batch_fast skips the character offsets we never use (about 2x faster on a whole corpus);
        # it is newer than the oldest `tokenizers` we support, hence the fallback. Same ids either way.
        fast = getattr(self._tk, "encode_batch_fast", None)
        enc = fast([text], add_special_tokens=False)[0] if fast else self._tk.encode(text, add_special_tokens=False)
        return np.asarray(enc.ids, dtype=np.int64)


class BPETokenizer(_HFTokenizer):
    """A byte-level BPE (GPT-2's scheme) trained on the corpus's training split.

    Byte level means every string is encodable (the 256 bytes are the base symbols, so there is no unknown
    token) and decoding is exact: ``decode(encode(text)) == text`` for any text, newlines and runs of
    spaces included. That needs ``add_prefix_space=False`` (otherwise a space is invented before the text)
    and no normaliser; ``trim_offsets`` only affects offsets, and is off so nothing is ever trimmed.
    """

    kind = "bpe"

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text`` (fewer if the text runs out of pairs to merge)."""
        if not text:
            raise DataError("cannot train a BPE tokenizer on an empty text")
        if vocab_size < BPE_MIN_VOCAB:
            raise DataError(f"a byte-level BPE needs vocab_size >= {BPE_MIN_VOCAB} (the 256 bytes), got "
                            f"{vocab_size}; set --set data.vocab_size=N with N >= {BPE_MIN_VOCAB}")
        hf = _import_tokenizers("bpe")
        tk = hf.Tokenizer(hf.models.BPE())
        tk.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True, trim_offsets=False)
        tk.decoder = hf.decoders.ByteLevel(add_prefix_space=False, use_regex=True, trim_offsets=False)
        trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                         initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator([text], trainer=trainer)
        return cls(tk)

    @classmethod
    def from_json(cls, payload: str) -> BPETokenizer:
        """Rebuild from the string :meth:`to_dict` stored, so a run directory needs no corpus."""
        hf = _import_tokenizers("bpe")
        try:
            return cls(hf.Tokenizer.from_str(payload))
        except Exception as e:  # tokenizers raises plain Exception subclasses for malformed JSON
            raise DataError(f"the stored BPE tokenizer cannot be read ({e}); retrain or restore tokenizer.json") \
                from None

    def decode(self, ids: list[int] | np.ndarray, mask_char: str = "_") -> str:
        # Runs of ordinary ids are decoded together: one character can span several byte-level tokens,
        # so decoding token by token would break multi-byte characters.
        out: list[str] = []
        run: list[int] = []
        n = self.n_symbols
        for i in (int(x) for x in ids):
            if 0 <= i < n:
                run.append(i)
                continue
            if i == self.mask_id:
                if run:
                    out.append(self._tk.decode(run, skip_special_tokens=False))
                    run = []
                out.append(mask_char)
            # pad / bos decode to nothing (and do not split a run)
        if run:
            out.append(self._tk.decode(run, skip_special_tokens=False))
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer": self._tk.to_str(), "specials": list(SPECIALS)}


class WordPieceTokenizer(_HFTokenizer):
    """all-MiniLM-L6-v2's uncased WordPiece (BERT's 30,522 pieces), read from the installed package.

    Its point is that its ids index MiniLM's pretrained embedding table
    (:func:`textdiffusion.data.pretrained.load_minilm_embeddings`). It is lossy: text is lowercased,
    whitespace is normalised and punctuation is split off, so decode gives back a normalised text. The
    BERT vocabulary keeps its own [PAD]/[UNK]/[CLS]/[SEP]/[MASK] ids inside 0..30521; we never insert
    them ([CLS]/[SEP], truncation and padding are switched off) and our own specials come after.
    """

    kind = "wordpiece"

    def __init__(self) -> None:
        from textdiffusion.data.pretrained import MINILM_VOCAB, minilm_file

        hf = _import_tokenizers("pretrained")
        path = minilm_file("tokenizer.json")
        tk = hf.Tokenizer.from_file(str(path))
        tk.post_processor = None  # no [CLS] ... [SEP] around every text
        tk.no_truncation()  # the file truncates to 128 pieces and pads to 128; we encode whole corpora
        tk.no_padding()
        super().__init__(tk)
        if self.n_symbols != MINILM_VOCAB:
            raise DataError(f"{path} has {self.n_symbols} pieces, expected {MINILM_VOCAB}; reinstall the package")

    def decode(self, ids: list[int] | np.ndarray, mask_char: str = "_") -> str:
        # A mask stands for one piece, so it goes through the WordPiece decoder as a piece of its own
        # and is spaced like a word ("the _ of"), instead of gluing onto its neighbours.
        pieces: list[str] = []
        n = self.n_symbols
        for i in (int(x) for x in ids):
            if 0 <= i < n:
                pieces.append(self._tk.id_to_token(i))
            elif i == self.mask_id:
                pieces.append(mask_char)
        return self._tk.decoder.decode(pieces) if pieces else ""

    def to_dict(self) -> dict[str, Any]:
        from textdiffusion.data.pretrained import MINILM_DISTRIBUTION

        return {"kind": self.kind, "source": MINILM_DISTRIBUTION, "specials": list(SPECIALS)}


def make_tokenizer(kind: str, train_text: str, vocab_size: int = 512) -> Tokenizer:
    """Build the tokenizer ``data.tokenizer`` names. ``train_text`` is what a char or BPE tokenizer is
    fitted on (BPE must see the training split only, or its merges would leak validation statistics);
    ``vocab_size`` is read by BPE only; WordPiece is pretrained and ignores both."""
    if kind == "char":
        return CharTokenizer.from_text(train_text)
    if kind == "bpe":
        return BPETokenizer.train(train_text, vocab_size)
    if kind == "wordpiece":
        return WordPieceTokenizer()
    raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)} "
                    f"(--set data.tokenizer=KIND)")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(list(d["chars"]))
    if kind == "bpe":
        return BPETokenizer.from_json(d["tokenizer"])
    if kind == "wordpiece":
        from textdiffusion.data.pretrained import MINILM_DISTRIBUTION

        if d.get("source", MINILM_DISTRIBUTION) != MINILM_DISTRIBUTION:
            raise DataError(f"tokenizer.json names WordPiece source {d['source']!r}; only {MINILM_DISTRIBUTION} "
                            f"is known to this version")
        return WordPieceTokenizer()
    raise DataError(f"unknown tokenizer kind {kind!r} in tokenizer.json; was the run made by a newer version?")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        d = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; is this a run directory made by `textdiffusion train`?") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a tokenizer file; restore the run's tokenizer.json") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; restore the run's tokenizer.json") from None
    except JSONProblem as e:
        raise DataError(f"{path} is corrupt ({e}); restore the file or retrain") from None
    try:
        return tokenizer_from_dict(d)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise DataError(f"{path} is corrupt ({type(e).__name__}: {e}); restore the file or retrain") from None
