r"""Corrupted text with a known channel: each character of a clean text y kept with probability 1 - p, and
otherwise replaced by another character x drawn from the channel's confusion row C[y]:

    q(x | y) = (1 - p) [x = y] + p C[y, x],      C[y, y] = 0,  sum_x C[y, x] = 1       <- ``Channel.matrix``

Because q is known, a repairer can weigh what it reads against it: the noisy-channel decoder maximises
log p(y) + log q(x | y) (:mod:`textdiffusion.noisy_channel`), and the masked repairers rank each observed
character by how likely it is to be wrong, p(y != x | rest, x) (:mod:`textdiffusion.suspicion`).

Two channels:

* ``uniform``: C[y] uniform over the other N - 1 characters of the vocabulary. A changed character is then a
  uniform-state diffusion's noise at the time whose changed fraction (1 - alpha)(N - 1)/N is p.
* ``keyboard``: C[y] uniform over the characters a typist or an OCR engine confuses with y, those of
  :data:`CONFUSABLE` that are in the vocabulary; a character with none there falls back to uniform.

Only character tokenizers are corrupted: the channel acts on characters, and a multi-character token's
confusions would be a different table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textdiffusion.config import ConfigError
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.guidance.steer import Steer

CHANNELS = ("uniform", "keyboard")

# A US QWERTY keyboard's letter rows, each shifted right of the one above by about a quarter and a half key.
KEY_ROWS = (("qwertyuiop", 0.0), ("asdfghjkl", 0.25), ("zxcvbnm", 0.75))
# Characters an OCR engine reads for one another (a single character for a single character; "rn" for "m"
# changes the length and is left out): the lookalike classes of printed Latin text, and digit/letter pairs.
LOOKALIKES = ("mn", "nhr", "hb", "ceo", "O0Q", "o0", "l1I|i", "ij", "uv", "vy", "ft", "CG", "EF", "PR", "S5", "B8",
              "Z2", ",.", ";:", "'`\"", "!l", "-_")


def key_neighbours() -> dict[str, set[str]]:
    """Lower-case letters -> the keys a finger slips to: beside it on its row, and the nearest on the rows
    above and below (within a key's width, from the rows' stagger)."""
    where = {c: (r, i + shift) for r, (row, shift) in enumerate(KEY_ROWS) for i, c in enumerate(row)}
    return {a: {b for b, (rb, xb) in where.items() if b != a and abs(rb - ra) <= 1 and abs(xb - xa) <= 1.0}
            for a, (ra, xa) in where.items()}


def confusable_table() -> dict[str, frozenset[str]]:
    """Every character -> the characters it is confused with: keyboard neighbours (upper case with the Shift key
    held, so upper-case neighbours), case slips (a <-> A), and the OCR lookalikes, each symmetric."""
    table: dict[str, set[str]] = {}

    def link(a: str, b: str) -> None:
        if a != b:
            table.setdefault(a, set()).add(b)
            table.setdefault(b, set()).add(a)

    for a, near in key_neighbours().items():
        for b in near:
            link(a, b)
            link(a.upper(), b.upper())
        link(a, a.upper())
    for group in LOOKALIKES:
        for a in group:
            for b in group:
                link(a, b)
    return {c: frozenset(s) for c, s in table.items()}


CONFUSABLE = confusable_table()


@dataclass(frozen=True)
class Channel:
    """A substitution channel over a vocabulary's N ordinary symbols: the rate ``p`` and the confusion rows
    ``confusion`` (N, N), float64, zero on the diagonal, each row summing to 1."""

    name: str
    rate: float
    confusion: torch.Tensor

    def matrix(self) -> torch.Tensor:
        """q(x | y) as an (N, N) matrix, row y the clean symbol, column x the noisy one; each row sums to 1."""
        n = self.confusion.shape[0]
        return (1.0 - self.rate) * torch.eye(n, dtype=torch.float64) + self.rate * self.confusion

    def log_likelihood(self, noisy: torch.Tensor) -> torch.Tensor:
        """log q(x | y) for the observed symbols ``noisy`` (...) and every clean symbol y: (..., N), float32 on
        ``noisy``'s device; -inf where the channel never turns y into x."""
        table = self.matrix().T.log().to(torch.float32).to(noisy.device)
        return table[noisy]

    def corrupt(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x ~ q(. | y) at every position of the clean symbols ``ids``: -> (noisy ids, changed mask). A
        position changes with probability p, to a symbol drawn from its confusion row."""
        changed = torch.rand(ids.shape, generator=generator, device=ids.device) < self.rate
        rows = self.confusion.to(torch.float32).to(ids.device)[ids.reshape(-1)]
        drawn = torch.multinomial(rows, 1, generator=generator).view(ids.shape)
        return torch.where(changed, drawn, ids), changed


class ChannelSteer(Steer):
    """A masked sampler's draws weighted by the channel: the logits of position i get log q(x_i | y) added, so a
    masked position is drawn from p(y | rest) q(x_i | y), the posterior given what was observed there, not from
    the prior alone. ``table`` is (n, L, N) over the window the draw loop fills."""

    active = True

    def __init__(self, table: torch.Tensor):
        self.table = table

    def tilt(self, logits: torch.Tensor, state: torch.Tensor, span: slice = slice(None)) -> torch.Tensor:
        return logits + self.table[:, span].to(logits.dtype)


def make_channel(name: str, rate: float, tok: Tokenizer) -> Channel:
    """The named channel at ``rate`` over ``tok``'s characters, checked."""
    if name not in CHANNELS:
        raise ConfigError(f"unknown channel {name!r}; choose one of {', '.join(CHANNELS)}")
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"the corruption rate must be between 0 and 1 (a fraction of the characters), got {rate}")
    chars = getattr(tok, "chars", None)
    if tok.kind != "char" or chars is None:
        raise ConfigError(f"corruption and repair act on characters; this run's tokenizer is {tok.kind}, train one "
                          f"with data.tokenizer=char")
    n = len(chars)
    if n < 2:
        raise ConfigError("a vocabulary of one character cannot be corrupted")
    confusion = torch.zeros(n, n, dtype=torch.float64)
    index = {c: i for i, c in enumerate(chars)}
    for i, c in enumerate(chars):
        near = [index[b] for b in CONFUSABLE.get(c, ()) if b in index] if name == "keyboard" else []
        if near:
            confusion[i, near] = 1.0 / len(near)
        else:
            confusion[i] = 1.0 / (n - 1)
            confusion[i, i] = 0.0
    return Channel(name, float(rate), confusion)


def character_errors(text: str, reference: str) -> int:
    """Positions where ``text`` differs from ``reference``, of the same length: the character errors of a
    substitution channel, which never inserts or deletes (so no alignment is needed; the Levenshtein distance can
    only be smaller)."""
    if len(text) != len(reference):
        raise ValueError(f"texts of {len(text)} and {len(reference)} characters cannot be compared position by "
                         f"position")
    return sum(a != b for a, b in zip(text, reference, strict=True))
