"""What a draw loop asks of a classifier rule: tilt the logits of the positions it is about to draw, and hear of
each draw. The base is the unsteered sampler, which changes nothing."""

from __future__ import annotations

import torch


class Steer:
    """No classifier: the logits pass through unchanged."""

    active = False  # whether :meth:`tilt` changes anything (a draw loop may skip building its arguments)

    def tilt(self, logits: torch.Tensor, state: torch.Tensor, span: slice = slice(None)) -> torch.Tensor:
        """The logits of ``state``'s positions ``span`` (or of the next token after the prefix ``state``), steered."""
        return logits

    def advance(self, state: torch.Tensor) -> None:
        """A token was drawn: ``state`` is the prefix that ends with it."""
