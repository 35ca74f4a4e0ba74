r"""Classifier guidance of an autoregressive sampler: FUDGE (Yang & Klein 2021, "FUDGE: Controlled Text Generation
With Future Discriminators"). The next token is drawn from

    p(x_i = v | x_<i, c)  ∝  p_theta(x_i = v | x_<i) * p(c | x_<i, v)^w

over the ``FUDGE_CANDIDATES`` likeliest tokens v of the language model (the others get probability 0), with the
causal noisy classifier as the "future discriminator" p(c | prefix). w = 1 is Bayes' rule (FUDGE's paper uses
it); larger w steers harder.
"""

from __future__ import annotations

from typing import Any

import torch

from textdiffusion.guidance.steer import Steer

FUDGE_CANDIDATES = 32  # next tokens the classifier judges per step (FUDGE's top-k; a char LM's mass is in far fewer)


class FudgeSteer(Steer):
    """The rule above. The classifier pools the features of the written prefix as a running sum, so judging a
    candidate only computes the features of its last ``receptive_field`` tokens: exactly the classifier's output
    on the whole prefix, at any length. The sum starts from the first prefix it is shown (the prompt)."""

    active = True

    def __init__(self, classifier: Any, label: int, w: float):
        self.net, self.label, self.w = classifier.net, label, w
        self.total: torch.Tensor | None = None

    def _start(self, prompt: torch.Tensor) -> torch.Tensor:
        if prompt.shape[1]:
            return self.net.features(prompt).sum(1)
        return torch.zeros(prompt.shape[0], self.net.head.in_features, device=prompt.device)

    def tilt(self, logits: torch.Tensor, state: torch.Tensor, span: slice = slice(None)) -> torch.Tensor:
        """The language model's next-token logits (n, V) after the prefix ``state`` -> FUDGE's guided
        log-probabilities."""
        prefix = state
        if self.total is None:
            self.total = self._start(prefix)
        n, k = logits.shape[0], min(FUDGE_CANDIDATES, logits.shape[-1])
        logp = logits.float().log_softmax(-1)
        top, cand = logp.topk(k, dim=-1)
        tail = prefix[:, -(self.net.receptive_field - 1):] if self.net.receptive_field > 1 else prefix[:, :0]
        recent = torch.cat((tail.repeat_interleave(k, 0), cand.reshape(n * k, 1)), dim=1)
        judged = self.net.extend(recent, self.total.repeat_interleave(k, 0), prefix.shape[1])
        judged = judged.float().log_softmax(-1)[:, self.label].view(n, k)
        guided = torch.full_like(logp, float("-inf"))
        return guided.scatter(-1, cand, top + self.w * judged)

    def advance(self, state: torch.Tensor) -> None:
        """The drawn token's features join the running sum."""
        assert self.total is not None
        self.total = self.total + self.net.features(state[:, -self.net.receptive_field:])[:, -1]
