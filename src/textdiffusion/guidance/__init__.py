"""Steering a sampler toward a label: classifier-free guidance as a wrapper of the network's forward
(:mod:`~textdiffusion.guidance.free`), and the rules by which a noisy classifier
(:mod:`~textdiffusion.guidance.classifier`) steers each family of sampler, each rule under its equation:
:mod:`~textdiffusion.guidance.taylor` for discrete diffusion, :mod:`~textdiffusion.guidance.fudge` for
autoregressive sampling. A draw loop sees only a :class:`~textdiffusion.guidance.steer.Steer`."""

from __future__ import annotations

from typing import Any

from textdiffusion.guidance.fudge import FudgeSteer
from textdiffusion.guidance.steer import Steer
from textdiffusion.guidance.taylor import TaylorSteer


def classifier_steer(rule: str, classifier: Any, label: int, w: float, vocab_size: int) -> Steer:
    """The draw loop's steer for a method's ``classifier_rule``, toward ``label`` with scale ``w``."""
    if rule == "taylor":
        return TaylorSteer(classifier, label, w, vocab_size)
    if rule == "fudge":
        return FudgeSteer(classifier, label, w)
    raise ValueError(f"no draw-loop steer for the classifier rule {rule!r}")
