"""The options of one text request, declared once.

``generate``, ``infill``, ``sample``, ``plan`` and ``stream`` all take the same options: how many texts, how
long, which sampler and how many steps, how each token is drawn, which label to write as and how hard to steer
toward it, and the seed. They are the fields of :class:`TextOptions`; each call takes them as keywords
(``model.generate("ROMEO:", n=4, temperature=0.8)``) or as one object, which keywords then change::

    fast = TextOptions(sampler="confidence", steps=16, temperature=0.8)
    model.generate("ROMEO:", options=fast)
    model.infill("O ____ art thou", options=fast, seed=3)

The object is plain data: :meth:`TextModel.plan <textdiffusion.api.text.TextModel.plan>` checks it against
the run (types, ranges, the run's samplers and labels, the limits of one call) and says what it will draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from textdiffusion.config import ConfigError, Range

POSITIVE_COUNT = Range(1, 2**31 - 1)
LENGTH = Range(0, 2**31 - 1)  # 0 = the method's default (the context, or an infill template's own length)


@dataclass(frozen=True)
class TextOptions:
    """How a text request is drawn. A zero, an empty name or None means the run's own setting."""

    n: int = 1  # texts to draw (a large n is drawn in batches that bound memory)
    length: int = 0  # tokens per text, prompt or template included; 0 = the context (or the template's length)
    sampler: str = ""  # one of the run's samplers; "" = the run's default
    steps: int = 0  # denoising steps; 0 = the method's default (not a choice for a one-token-per-step sampler)
    temperature: float | None = None  # sharpen (< 1) or flatten (> 1) each token draw
    top_k: int | None = None  # draw from the k likeliest tokens only; 0 = all
    top_p: float | None = None  # draw from the likeliest tokens holding this much probability; 1 = all
    seed: int = 0  # the same seed, run and options draw the same texts
    label: str = ""  # a labelled run's label (a speaker) to write as; "" = unconditional
    guidance: float = 1.0  # 0 unconditional, 1 plain conditional, above 1 sharper (the classifier's exponent
    #                        under rule="classifier")
    rule: str = ""  # "free" (classifier-free guidance, a labelled run; the default) or "classifier" (a small
    #                 classifier of the method's noisy states steers any run)
    overlap: int = 0  # a method that chains windows past its context: tokens each window shares with the text
    #                   before it (0 = half the window)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names, as the calls take them as keywords."""
        return frozenset(f.name for f in fields(cls))

    def decoding(self) -> dict[str, Any]:
        """The token-draw options that were given (None = the run's own), by name."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


def merged(options: TextOptions | None, chosen: Mapping[str, Any]) -> TextOptions:
    """``options`` (default: every option at the run's own setting) with the keywords ``chosen`` on top; the
    keywords must be option names (the caller refuses any other first)."""
    if options is None:
        options = TextOptions()
    elif not isinstance(options, TextOptions):
        raise ConfigError(f"options must be a TextOptions, got {type(options).__name__}")
    return replace(options, **chosen) if chosen else options
