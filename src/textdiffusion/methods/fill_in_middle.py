r"""Fill-in-the-middle (Bavarian et al. 2022): how a left-to-right model is taught to fill a blank.

A window x is cut at two points a <= b drawn uniformly over it into prefix x[:a], middle x[a:b] and suffix
x[b:], and rearranged in one of the paper's two orders (``method.fim_mode``)

    PSM  [PRE] prefix [SUF] suffix [MID] middle
    SPM  [PRE] [SUF] suffix [MID] prefix middle

so that an autoregressive model reading it left to right has seen both sides of the middle before it writes the
middle. Trained on such sequences (a fraction ``method.fim_rate`` of the windows), the same model infills: it is
given the sequence up to where the middle starts and continues with the blank.

The orders differ in where the middle's first character sits. In SPM it directly follows the prefix's last
character, as in any left-to-right text, so the next-character skill the plain windows teach carries over. In
PSM it follows [MID], and the prefix's last character lies a whole suffix back, just before [SUF]: the network
must learn a lookup "find [SUF], read the character before it" (two attention steps with RoPE's relative
positions, since that distance varies) from one example per rearranged window. A small network trained briefly
does not learn it, and writes the middle's first character as if it began a new text (docs/where-diffusion-wins.md
measures this). SPM is the paper's recommended order at inference; training on both orders is its joint mode.

The three sentinels are ids the tokenizer does not have: they follow its specials (``vocab_size``,
``vocab_size + 1``, ``vocab_size + 2``), and only a run with ``fim_rate > 0`` grows its input table by them. The
network's outputs stay the ordinary symbols, so a sentinel is read, never predicted (see :mod:`..ar`'s loss).

Either order holds three sentinels more than the characters it carries, and the network reads at most
``model.context`` positions. So the characters it carries are at most ``room = context - 2`` (inputs are the
sequence less its last token): the middle first (cut at its end if longer than ``room``), then as much of the
prefix and suffix as still fits, the characters nearest the middle kept (:func:`kept_lengths`). A training
window of ``context`` characters thus always loses two of them, from the far ends of its context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textdiffusion.data.tokenizer import Tokenizer

SENTINELS = ("pre", "suf", "mid")
MODES = ("psm", "spm", "both")  # both: each rearranged window draws one of the two orders


@dataclass(frozen=True)
class Sentinels:
    """The ids of [PRE], [SUF] and [MID]: the three after a tokenizer's own vocabulary."""

    pre: int
    suf: int
    mid: int

    @classmethod
    def after(cls, tok: Tokenizer) -> Sentinels:
        return cls(*(tok.vocab_size + i for i in range(len(SENTINELS))))


def room(context: int) -> int:
    """Characters a PSM or SPM sequence can carry when the network reads ``context`` positions: the sequence's inputs
    are all its tokens but the last, three of them sentinels."""
    return context - len(SENTINELS) + 1


def draw_splits(n: int, length: int, generator: torch.Generator,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two cut points per window, uniform over 0..length and sorted: (a, b), each (n,)."""
    cuts = torch.randint(0, length + 1, (n, 2), generator=generator, device=device).sort(dim=1).values
    return cuts[:, 0], cuts[:, 1]


def kept_lengths(a: torch.Tensor, b: torch.Tensor, length: int,
                 carry: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How much of the prefix (a chars), middle (b - a) and suffix (length - b) a sequence carrying at most
    ``carry`` characters keeps: the middle first, up to ``carry``; the rest of the room to the two sides, each
    side at least half of it when it has that much, the characters nearest the middle kept.
    -> (prefix kept, middle kept, suffix kept), each (n,)."""
    middle = (b - a).clamp(max=carry)
    left, right = a, length - b
    spare = carry - middle
    keep_left = torch.minimum(left, torch.maximum(spare - right, (spare + 1) // 2))
    keep_right = torch.minimum(right, spare - keep_left)
    return keep_left, middle, keep_right


def psm(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sentinels: Sentinels,
        carry: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``x`` (n, L) cut at ``a <= b`` -> their PSM sequences [PRE] prefix [SUF] suffix [MID] middle
    (n, T) and where each holds its middle (n, T) bool. Sequences carry ``min(L, carry)`` characters
    (:func:`kept_lengths`), so all have the same length T = that + 3."""
    n, L = x.shape
    kl, km, kr = kept_lengths(a, b, L, carry)
    T = min(L, carry) + len(SENTINELS)
    j = torch.arange(T, device=x.device).expand(n, T)
    kl, km, kr, a, b = (v[:, None] for v in (kl, km, kr, a, b))
    # position j of the sequence: [PRE] at 0, the prefix's last kl chars, [SUF], the suffix's first kr chars,
    # [MID], the middle's first km chars
    suf_at, mid_at = kl + 1, kl + kr + 2
    source = torch.where(j <= kl, a - kl + j - 1, torch.where(j < mid_at, b + j - suf_at - 1, a + j - mid_at - 1))
    tokens = x.gather(1, source.clamp(0, L - 1))
    tokens = torch.where(j == 0, sentinels.pre, tokens)
    tokens = torch.where(j == suf_at, sentinels.suf, tokens)
    tokens = torch.where(j == mid_at, sentinels.mid, tokens)
    middle = (j > mid_at) & (j <= mid_at + km)
    return tokens, middle


def spm(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sentinels: Sentinels,
        carry: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``x`` (n, L) cut at ``a <= b`` -> their SPM sequences [PRE] [SUF] suffix [MID] prefix middle (n, T)
    and where each holds its middle (n, T) bool; the same characters kept as :func:`psm` keeps, so T is the same.
    The prefix and the middle are one run of the window, x[a - kept prefix : a + kept middle], in its own order."""
    n, L = x.shape
    kl, km, kr = kept_lengths(a, b, L, carry)
    T = min(L, carry) + len(SENTINELS)
    j = torch.arange(T, device=x.device).expand(n, T)
    kl, km, kr, a, b = (v[:, None] for v in (kl, km, kr, a, b))
    # position j: [PRE] at 0, [SUF] at 1, the suffix's first kr chars, [MID], the prefix's last kl chars and the
    # middle's first km chars straight after them
    mid_at = kr + 2
    source = torch.where(j < mid_at, b + j - 2, a - kl + j - mid_at - 1)
    tokens = x.gather(1, source.clamp(0, L - 1))
    tokens = torch.where(j == 0, sentinels.pre, tokens)
    tokens = torch.where(j == 1, sentinels.suf, tokens)
    tokens = torch.where(j == mid_at, sentinels.mid, tokens)
    middle = (j > mid_at + kl) & (j <= mid_at + kl + km)
    return tokens, middle


def rearrange(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sentinels: Sentinels, carry: int,
              in_spm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """PSM sequences, except the rows ``in_spm`` (n,) bool marks, which are SPM; None = all PSM. Both orders have
    the same length, so one batch can mix them (the paper's joint training)."""
    seq, middle = psm(x, a, b, sentinels, carry)
    if in_spm is None:
        return seq, middle
    s_seq, s_middle = spm(x, a, b, sentinels, carry)
    return torch.where(in_spm[:, None], s_seq, seq), torch.where(in_spm[:, None], s_middle, middle)
