"""Who says what in a play script: the speeches of Tiny Shakespeare by speaker, for speaker-conditioned
generation and for the judge that tells whether a generated speech sounds like the speaker asked for.

A play script opens every speech with a header line naming the speaker and a colon (``ROMEO:``, ``First
Citizen:``, ``KING RICHARD III:``) and separates speeches by a blank line. Conditioning trains on the speech
*bodies* only: the header is the label, so a model cannot satisfy the label by copying the name.

The split, fixed so every run and the judge agree on it:

* only the corpus's training split is read (the first ``1 - data.val_fraction`` of it, as for every method);
  Tiny Shakespeare's validation tenth is other plays, in which none of the most frequent speakers speaks;
* the ``top`` speakers with the most characters of speech are the labels, most frequent first (ties by name);
* every ``holdout_every``-th speech of each of them (the 10th, 20th, ... in script order) is held out from
  both the language model and the judge: those real speeches measure how often the judge recognises a real
  speaker, the scale every guided-generation number is read against.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from textdiffusion.errors import DataError

# a speaker header: a capitalised name of letters, spaces and a few punctuation marks, ending in a colon
HEADER = re.compile(r"[A-Z][A-Za-z' .,-]{0,60}:")
SPEECH_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Speech:
    speaker: str  # the header without its colon
    body: str  # the lines after the header, newlines kept, no trailing blank line


def parse_speeches(text: str) -> list[Speech]:
    """The speeches of a play script in order: blocks separated by blank lines whose first line is a speaker
    header and which have at least one line after it. Other blocks (stage directions, prose) are skipped."""
    out = []
    for block in text.split(SPEECH_SEPARATOR):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and HEADER.fullmatch(lines[0]):
            body = "\n".join(lines[1:]).rstrip("\n")
            if body.strip():
                out.append(Speech(lines[0][:-1], body))
    return out


@dataclass(frozen=True)
class SpeakerSplit:
    """The labels and the speeches each side of the held-out line (see the module docstring)."""

    speakers: tuple[str, ...]  # label i is speakers[i]; most characters of speech first
    train: tuple[tuple[str, ...], ...]  # train[i]: the training speech bodies of speakers[i], in script order
    held_out: tuple[tuple[int, str], ...]  # (label, body) of the held-out speeches

    def label_of(self, name: str) -> int:
        """The label of speaker ``name`` (as in the header, case-insensitive); a one-line error listing the
        trained speakers otherwise."""
        for i, speaker in enumerate(self.speakers):
            if speaker.casefold() == name.strip().casefold():
                return i
        raise DataError(f"speaker {name!r} is not one of the {len(self.speakers)} trained speakers; choose one of "
                        f"{', '.join(self.speakers)}")

    def train_chars(self) -> list[int]:
        """Characters of training speech per speaker (what a label's share of the training windows follows)."""
        return [sum(len(b) for b in bodies) for bodies in self.train]


def split_speakers(train_text: str, top: int = 8, holdout_every: int = 10) -> SpeakerSplit:
    """Label the ``top`` most-spoken speakers of ``train_text`` and hold out every ``holdout_every``-th speech
    of each. A text without speaker headers, or with fewer than ``top`` speakers, is a one-line error."""
    if top < 2:
        raise DataError(f"data.label_top must be at least 2 (a label needs an alternative), got {top}")
    if holdout_every < 2:
        raise DataError(f"holdout_every must be at least 2, got {holdout_every}")
    speeches = parse_speeches(train_text)
    if not speeches:
        raise DataError("the corpus has no speeches with speaker headers (a line like 'ROMEO:' opening each "
                        "speech, speeches separated by blank lines); data.labels=speaker needs a play script "
                        "such as tinyshakespeare")
    chars: Counter[str] = Counter()
    for s in speeches:
        chars[s.speaker] += len(s.body)
    if len(chars) < top:
        raise DataError(f"the corpus has {len(chars)} speakers, fewer than data.label_top={top}; lower "
                        f"data.label_top to at most {len(chars)}")
    speakers = tuple(sorted(chars, key=lambda name: (-chars[name], name))[:top])
    label = {name: i for i, name in enumerate(speakers)}
    train: list[list[str]] = [[] for _ in speakers]
    held_out: list[tuple[int, str]] = []
    seen = Counter()
    for s in speeches:
        i = label.get(s.speaker)
        if i is None:
            continue
        seen[i] += 1
        if seen[i] % holdout_every == 0:
            held_out.append((i, s.body))
        else:
            train[i].append(s.body)
    return SpeakerSplit(speakers, tuple(tuple(b) for b in train), tuple(held_out))


class SpeakerJudge:
    """Which of the trained speakers most likely said a text: one character n-gram model per speaker (the
    evaluation's Witten-Bell :class:`~textdiffusion.evaluate.CharNgramJudge`, fitted on that speaker's training
    speeches, all over one alphabet) and Bayes' rule with equal priors, since guided generation asks for every
    speaker equally often (a naive-Bayes n-gram classifier, as in authorship attribution; Peng et al. 2003,
    "Language Independent Authorship Attribution using Character Level Language Models").

    Deterministic (counts, no training seed), fitted in about a second on Tiny Shakespeare, so it is rebuilt
    rather than cached. Its accuracy on the held-out real speeches (:meth:`held_out_accuracy`) is the scale
    for the accuracy of generated ones: a sample the judge recognises as often as real speech is as
    recognisable as real speech.
    """

    def __init__(self, split: SpeakerSplit, order: int = 4):
        from textdiffusion.evaluate import CharNgramJudge

        self.split = split
        alphabet = sorted({c for bodies in split.train for body in bodies for c in body} | {"\n"})
        self.models = [CharNgramJudge(SPEECH_SEPARATOR.join(bodies), order, alphabet) for bodies in split.train]

    @property
    def speakers(self) -> tuple[str, ...]:
        return self.split.speakers

    def log_likelihoods(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), speakers) log p(text | speaker) in nats."""
        return np.array([[-m.char_nll(t).sum() for m in self.models] for t in texts]).reshape(len(texts), -1)

    def posteriors(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), speakers) p(speaker | text) under equal priors."""
        ll = self.log_likelihoods(texts)
        ll -= ll.max(axis=1, keepdims=True)
        p = np.exp(ll)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The most likely speaker's label for each text."""
        return self.log_likelihoods(texts).argmax(axis=1)

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        """How often the judge names the speaker in ``labels`` (nan for no texts)."""
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if not texts:
            return float("nan")
        return float((self.predict(texts) == np.asarray(labels)).mean())

    def held_out_accuracy(self, length: int = 0) -> float:
        """Accuracy on the held-out real speeches, each cut to its first ``length`` characters (0 = whole), so
        it can be read beside samples of that length (the judge is surer of longer texts)."""
        held = self.split.held_out
        return self.accuracy([body[:length] if length else body for _, body in held], [i for i, _ in held])


@dataclass
class LabelledText:
    """Token windows with one label each: what a labelled source hands the trainer and the validation loop.
    ``ids`` (B, L) int64, ``labels`` (B,) int64 in [0, number of labels)."""

    ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelledText:
        return LabelledText(self.ids.to(device, non_blocking=non_blocking),
                            self.labels.to(device, non_blocking=non_blocking))

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def __len__(self) -> int:
        return self.ids.shape[0]


def split_labels(x: torch.Tensor | LabelledText) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(ids, labels)`` of a batch: labels None for plain windows."""
    if isinstance(x, LabelledText):
        return x.ids, x.labels
    return x, None


class SpeakerStreams:
    """Each speaker's speeches as one token stream (speeches joined by a blank line, as in the script), for
    random training crops labelled by speaker and evenly spread validation tiles."""

    def __init__(self, bodies: Sequence[Sequence[str]], encode: Callable[[str], np.ndarray]):
        streams = [torch.from_numpy(encode(SPEECH_SEPARATOR.join(b) + SPEECH_SEPARATOR)) for b in bodies]
        self.lengths = torch.tensor([len(s) for s in streams], dtype=torch.int64)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.ids = torch.cat(streams)

    def check_window(self, window: int, split: str, names: Sequence[str]) -> None:
        short = [(names[i], int(n)) for i, n in enumerate(self.lengths) if n < window]
        if short:
            name, n = short[0]
            raise DataError(f"{name} has only {n} tokens of {split} speech, less than one window of {window}; use "
                            f"fewer labels (--set data.label_top=N) or a smaller context (--set model.context=N)")

    def random_windows(self, batch: int, window: int, generator: torch.Generator) -> LabelledText:
        """``batch`` crops: a speaker drawn in proportion to how much they speak, then a uniform start in their
        stream (so every training window of every speaker is equally likely, as for plain text)."""
        labels = torch.multinomial(self.lengths.double(), batch, replacement=True, generator=generator)
        room = (self.lengths[labels] - window + 1).double()
        starts = self.offsets[labels] + (torch.rand(batch, generator=generator, dtype=torch.float64) * room).long()
        return LabelledText(self.ids[starts[:, None] + torch.arange(window)], labels)

    def tiled_windows(self, window: int, limit: int = 0) -> LabelledText:
        """Non-overlapping windows of every stream in turn; ``limit`` > 0 keeps that many, evenly spread."""
        tiles, labels = [], []
        for i, (start, n) in enumerate(zip(self.offsets.tolist(), self.lengths.tolist(), strict=True)):
            k = n // window
            tiles.append(self.ids[start:start + k * window].view(k, window))
            labels.append(torch.full((k,), i, dtype=torch.int64))
        ids, lab = torch.cat(tiles), torch.cat(labels)
        if 0 < limit < len(ids):
            keep = torch.from_numpy(np.linspace(0, len(ids) - 1, limit).round().astype(np.int64))
            ids, lab = ids[keep], lab[keep]
        return LabelledText(ids, lab)
