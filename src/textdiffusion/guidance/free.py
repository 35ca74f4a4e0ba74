r"""Classifier-free guidance as a wrapper of the network's forward.

Classifier-free guidance on token log-probabilities (Schiff et al. 2024, "Simple Guidance Mechanisms for
Discrete Diffusion Models"; for AR, Sanchez et al. 2023, "Stay on Topic with Classifier-Free Guidance"):

    log p_w(x | c) = log p(x) + w (log p(x | c) - log p(x)),                       <- :func:`combine`

renormalised by the sampler. One network learns both p(x | c) and p(x) by label dropout (Ho & Salimans 2022):
the "no label" row of its label embedding is p(x). w = 0 (or no label) is the unconditional model alone and
w = 1 the conditional one alone: one pass of n rows, exactly the draws of that model. Any other w runs both in
one forward of 2n rows (conditional first, then "no label"), which :func:`combine` turns back into n.

A sampler never sees any of this: :meth:`FreeGuidance.wrap` turns the method's labelled network (a
:class:`LabelledNetwork`) into the plain ``forward(x, *args)`` its draw loop calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def combine(logits: torch.Tensor, w: float) -> torch.Tensor:
    """(2n, ..., V) logits of a doubled forward -> (n, ..., V) guided log-probabilities."""
    cond, uncond = logits.float().log_softmax(-1).chunk(2)
    return uncond + w * (cond - uncond)


def _same(*args: Any) -> tuple[Any, ...]:
    return args


@dataclass(frozen=True)
class LabelledNetwork:
    """A method's network with the labels explicit: ``call(labels, x, *args)`` -> logits for ``x``'s rows.
    ``double(*args)`` gives the arguments of a doubled batch (a per-row time repeated, a cache's rows offset):
    the identity when the arguments do not depend on the rows."""

    call: Callable[..., torch.Tensor]
    double: Callable[..., tuple[Any, ...]] = _same


@dataclass(frozen=True)
class FreeGuidance:
    """A request's classifier-free guidance: toward ``label`` (None: unconditional) with scale ``w``, on a model
    trained with ``num_labels`` labels (0: an unlabelled model, whose network takes none)."""

    label: int | None = None
    w: float = 1.0
    num_labels: int = 0

    def labels(self, n: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """The labels of one forward over ``n`` rows, and whether the batch is doubled."""
        if self.label is None or self.w == 0.0:
            if not self.num_labels:
                return None, False
            return torch.full((n,), self.num_labels, dtype=torch.long, device=device), False
        cond = torch.full((n,), self.label, dtype=torch.long, device=device)
        if self.w == 1.0:
            return cond, False
        return torch.cat((cond, torch.full_like(cond, self.num_labels))), True

    def wrap(self, network: LabelledNetwork) -> Callable[..., torch.Tensor]:
        """``forward(x, *args)``: the network on ``x`` under this guidance, n rows in, n rows out."""

        def forward(x: torch.Tensor, *args: Any) -> torch.Tensor:
            labels, doubled = self.labels(x.shape[0], x.device)
            if not doubled:
                return network.call(labels, x, *args)
            return combine(network.call(labels, torch.cat((x, x)), *network.double(*args)), self.w)

        return forward
