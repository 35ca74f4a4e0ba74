"""The speaker judge: which of a labelled run's speakers most likely said a text. It scores guided generation
the way the MNIST classifier scores the digits (docs/guidance.md)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textdiffusion.data.speakers import SPEECH_SEPARATOR, SpeakerSplit
from textdiffusion.evaluate import CharNgramJudge


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
