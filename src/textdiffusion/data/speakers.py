"""Who says what in a play script: the speeches of Tiny Shakespeare by speaker, for speaker-conditioned
generation (labelled training windows) and for the judge (:mod:`textdiffusion.speaker_judge`) that tells
whether a generated speech sounds like the speaker asked for.

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


def label_index(names: Sequence[str], name: str) -> int | None:
    """The index of ``name`` among ``names`` as a user types it (case and surrounding spaces ignored), or None."""
    wanted = name.strip().casefold()
    return next((i for i, known in enumerate(names) if known.casefold() == wanted), None)


@dataclass(frozen=True)
class SpeakerSplit:
    """The labels and the speeches each side of the held-out line (see the module docstring)."""

    speakers: tuple[str, ...]  # label i is speakers[i]; most characters of speech first
    train: tuple[tuple[str, ...], ...]  # train[i]: the training speech bodies of speakers[i], in script order
    held_out: tuple[tuple[int, str], ...]  # (label, body) of the held-out speeches

    def label_of(self, name: str) -> int:
        """The label of speaker ``name`` (as in the header, case-insensitive); a one-line error listing the
        trained speakers otherwise."""
        i = label_index(self.speakers, name)
        if i is not None:
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
