"""What the API's calls return: samples with how they were drawn, plans, frames of a stream, scores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from textdiffusion.config import ConfigError
from textdiffusion.data.images import to_pixels
from textdiffusion.methods.base import SampleRequest, SampleResult


@dataclass(frozen=True)
class TextSamples:
    """What :meth:`TextModel.sample` drew: the texts and how they were made."""

    texts: list[str]
    sampler: str | None  # the sampler that ran (the run's default when none was asked for)
    steps: int | None  # its step count, as the sampler reports it (None: one per token, as for ``ar``)
    nfe: float  # network evaluations per sample (a forward of a whole batch counts once)
    seconds: float  # wall time of the sampling
    length: int  # tokens per sample, prompt or template included
    fixed: list[int]  # token positions the request fixed (the prompt, an infill template's known text)
    seed: int
    windows: int = 1  # windows drawn one after another (past the context of a method that chains them)
    overlap: int = 0  # tokens each chained window shared with the text before it (0: one window)
    # per sample, the log-probability (nats) its draws had, for a sampler that keeps it (left_to_right: at
    # temperature 1 without top-k or top-p, the model's exact log p(text | prompt)); None for the others
    log_prob: list[float] | None = None

    def bits_per_token(self) -> float | None:
        """The mean -log p of the draws per generated token, in bits (None without ``log_prob``)."""
        drawn = self.length - len(self.fixed)
        if not self.log_prob or drawn <= 0:
            return None
        return -sum(self.log_prob) / len(self.log_prob) / drawn / 0.6931471805599453


@dataclass(frozen=True)
class SampledBatch:
    """One finished batch of a :meth:`TextModel.sample` call, handed to its ``on_batch`` as soon as it is drawn,
    so a long request can keep its work (write it out) before the rest is done."""

    texts: list[str]  # this batch's texts, in order
    start: int  # index of its first text among all the request's texts
    total: int  # texts the request asked for
    batch: int  # its index among the request's batches (0 = the first)
    batches: int  # batches in the request
    seconds: float  # wall time of the sampling so far, this batch included

    @property
    def done(self) -> int:
        """Texts finished so far, this batch's included."""
        return self.start + len(self.texts)


@dataclass(frozen=True)
class SamplingPlan:
    """A checked text request, before anything is drawn (:meth:`TextModel.plan`)."""

    request: SampleRequest  # what the method's sampler receives for each batch (with n of that batch)
    length: int  # tokens per sample
    sampler: str
    steps: int | None  # sampler steps (None: one network evaluation per token, not a choice)
    batch_size: int  # samples drawn at once, as many as keep memory bounded
    batches: int
    # rule="classifier": "ready" (the run's speaker classifier is in use: given, or read from its cache) or
    # "train" (none is cached for this checkpoint: the sampling trains one first and caches it, and checks
    # the label against its speakers then); "" for any other request
    classifier: str = ""
    windows: int = 1  # windows drawn one after another per sample (a method that chains them, past its context)


@dataclass(frozen=True)
class Frame:
    """One step of a text sampling as :meth:`TextModel.stream` yields it. ``texts`` show the positions still
    to be written as ``mask_char``; ``masked`` lists those positions (character positions of each text)."""

    step: int  # 0 = the initial state (prompt or template, everything else masked)
    t: float | None  # diffusion time, 1 = all noise (None for a sampler without one, like ``ar``)
    nfe: float | None  # network evaluations so far
    texts: list[str]
    masked: list[list[int]]
    changed: list[int]  # token positions that differ from the previous frame, per sample

    @property
    def text(self) -> str:
        """The first sample's text (the one the live page shows)."""
        return self.texts[0]


@dataclass(frozen=True)
class Score:
    """How likely a text is under the model, in bits per character: ``kind`` says whether the number is the
    model's exact -log p (``ar``) or an upper bound on it (the diffusion methods' variational bounds)."""

    bits_per_char: float
    kind: str  # "exact" | "bound"
    chars: int  # characters scored
    windows: int  # the model's context windows the text was cut into, each scored on its own
    # the sampler an exact number of a diffusion method is the likelihood of (score(exact=True): left_to_right);
    # None for a bound, and for ar, whose number is its own sampler's
    sampler: str | None = None

    @property
    def nats_per_char(self) -> float:
        """The same number in nats (natural log), the unit of the training losses."""
        return self.bits_per_char * 0.6931471805599453

    @property
    def label(self) -> str:
        """``exact``, ``exact, the likelihood of --sampler S`` or ``upper bound``: how to read
        :attr:`bits_per_char`."""
        if self.kind != "exact":
            return "upper bound"
        return f"exact, the likelihood of --sampler {self.sampler}" if self.sampler else "exact"

    def __str__(self) -> str:
        return f"{self.bits_per_char:.4f} bits/char ({self.label}, {self.chars} chars)"


@dataclass(frozen=True)
class ImageSamples:
    """Generated images as 8-bit pixels: ``pixels`` is (n, H, W) for grey images, (n, H, W, C) otherwise.
    Indexing and iterating give one image's array; :meth:`pil` and :meth:`grid` give Pillow images."""

    pixels: np.ndarray
    labels: list[int] | None  # the digit asked for per image, or None (unconditional)
    sampler: str
    steps: int
    eta: float | None
    guidance: float | None  # None when the images were drawn without labels
    nfe: float  # network evaluations per image (a guided step costs two)
    seconds: float
    seed: int

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.pixels[i]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.pixels)

    def pil(self) -> list[Any]:
        """Each image as a ``PIL.Image.Image`` (mode L for grey, RGB for colour)."""
        from PIL import Image

        return [Image.fromarray(a) for a in self.pixels]

    def grid(self, nrow: int = 0, scale: int = 1) -> Any:
        """All images tiled into one ``PIL.Image.Image``, ``nrow`` per row (default 10 for labelled images, so
        the default 0..9 set is one row, else 8), each pixel ``scale`` x ``scale``; ``.save("grid.png")``
        writes it."""
        from PIL import Image

        from textdiffusion.viz.images import mosaic

        if self.pixels.ndim != 3:
            raise ConfigError("grid() draws grey images; use pil() for colour ones")
        arr = mosaic(self.pixels, nrow or (10 if self.labels is not None else 8))
        img = Image.fromarray(arr)
        return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


@dataclass(frozen=True)
class ImageFrame:
    """One step of an image sampling (:meth:`ImageModel.stream`): the noisy images x_t and the network's
    current guess of the clean images, both as 8-bit pixels shaped like :attr:`ImageSamples.pixels`."""

    step: int
    t: float | None
    nfe: float | None
    images: np.ndarray
    predicted: np.ndarray


def pixels(images: torch.Tensor) -> np.ndarray:
    """float images in [-1, 1] (n, C, H, W) as uint8 (n, H, W) for one channel, (n, H, W, C) for several."""
    arr = to_pixels(images.cpu()).numpy()
    return arr.transpose(0, 2, 3, 1) if arr.ndim == 4 else arr


def fixed_positions(res: SampleResult) -> list[int]:
    """The positions a request fixed: the same for every sample (one prompt or template for all of them)."""
    if res.fixed is None:
        return []
    return res.fixed[0].nonzero().flatten().tolist()
