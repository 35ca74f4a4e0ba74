r"""Classifier guidance of a discrete diffusion sampler by a first-order (Taylor) expansion: ``masked``, ``block``.

Exact guidance multiplies the rate of unmasking position l to token v by p(c | z^{l <- v})^w / p(c | z)^w
(Nisonoff et al. 2024, "Unlocking Guidance for Discrete State-Space Diffusion and Flow Models", Eq. 10), which
needs one classifier call per (position, token): L x V of them per step. Their Taylor-approximated guidance (TAG)
replaces the log-ratio by its first-order expansion in the one-hot encoding z of the state,

    log p(c | z^{l <- v}) - log p(c | z)  ~  (e_v - e_{z_l}) . grad_{z_l} log p(c | z),

so one backward pass gives every ratio. For a masked position the e_{z_l} term is the same for every v and
cancels in the softmax, leaving

    log p_w(x_l = v | z)  =  log p_theta(x_l = v | z) + w * d log p(c | z) / d z_{l,v}      (renormalised).

The reveal schedule (which positions unmask at a step) is the unguided one; only what they become is steered, as
in Schiff et al. 2024's discrete classifier guidance. w = 0 never calls the classifier.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from textdiffusion.guidance.steer import Steer


class TaylorSteer(Steer):
    """The rule above, with the run's noisy classifier of token states (one-hot rows over ``vocab_size``)."""

    active = True

    def __init__(self, classifier: Any, label: int, w: float, vocab_size: int):
        self.classifier, self.label, self.w, self.vocab_size = classifier, label, w, vocab_size

    def tilt(self, logits: torch.Tensor, state: torch.Tensor, span: slice = slice(None)) -> torch.Tensor:
        """Token logits at ``state``'s positions ``span`` steered toward the label."""
        onehot = F.one_hot(state, self.vocab_size).float()
        grad = self.classifier.gradient(onehot, self.label)[:, span, : logits.shape[-1]]
        return logits.float().log_softmax(-1) + self.w * grad
