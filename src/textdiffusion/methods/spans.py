"""The likelihood of a span given both sides: what a method says of a blank's true text, labelled exact or bound.

Infilling asks a different question of a model than continuing a prompt: how likely is the true middle given the
text on its left and on its right. Each method answers with the best it has (:meth:`TextMethod.span_nll`): the
fill-in-the-middle ``ar`` exactly (the middle's log-probabilities after [PRE] left [SUF] right [MID]), masked
diffusion exactly for its left_to_right sampler (the chain rule over the span's positions only, the rest given),
uniform-state diffusion by its NELBO restricted to the span. This module holds the typed result and the checks of
a span that they share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SpanNLL:
    """-log p(span | the rest of the window), per window, in nats (``nats``: (n,) float64), and what it is:
    ``kind`` "exact" (the method's true likelihood of writing that span, for the sampler ``note`` names) or
    "bound" (an upper bound on it)."""

    nats: torch.Tensor
    kind: str
    units: int  # tokens in all the spans: the denominator of :attr:`nats_per_unit`
    note: str

    @property
    def nats_per_unit(self) -> float:
        """Nats per span token (per character for the char tokenizer)."""
        return float(self.nats.sum()) / max(1, self.units)


def span_mask(starts: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """(n, window) bool: ``length`` positions from each row's start, the span of a blank."""
    j = torch.arange(window, device=starts.device)[None]
    return (j >= starts[:, None]) & (j < starts[:, None] + length)


def check_span(windows: torch.Tensor, span: torch.Tensor) -> int:
    """Refuse a span mask that does not fit ``windows`` or leaves a row without a blank; -> tokens in all spans."""
    if span.shape != windows.shape or span.dtype != torch.bool:
        raise ValueError(f"span must be a bool mask of the windows' shape {tuple(windows.shape)}, got "
                         f"{span.dtype} {tuple(span.shape)}")
    if not bool(span.any(1).all()):
        raise ValueError("every window needs at least one span position to score")
    return int(span.sum())


def contiguous_bounds(span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) per row of a span mask holding one run of positions a..b-1; refuses any other (a middle is one piece)."""
    j = torch.arange(span.shape[1], device=span.device).expand_as(span)
    a = torch.where(span, j, span.shape[1]).min(1).values
    b = torch.where(span, j + 1, 0).max(1).values
    if not torch.equal(span.sum(1), b - a):
        raise ValueError("each span must be one run of consecutive positions: fill-in-the-middle writes one middle")
    return a, b


def equal_counts(span: torch.Tensor) -> int:
    """The one number of span positions every row holds (a chain rule over them shares its times across rows)."""
    counts = span.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("every window's span must hold the same number of positions; score spans of one length "
                         "together")
    return int(counts[0])
