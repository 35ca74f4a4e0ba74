"""An image run loaded for sampling: :class:`ImageModel` (generate, stream, evaluate)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

import torch

from textdiffusion import limits, precision
from textdiffusion.api.model import TEXT_OPTIONS, Model, refuse_other_kind
from textdiffusion.api.options import POSITIVE_COUNT
from textdiffusion.api.results import ImageFrame, ImageSamples, pixels
from textdiffusion.api.streaming import Feed, Stream, cpu_copy, number
from textdiffusion.config import ETA, GUIDANCE, SAMPLE_STEPS, SEED, ConfigError, Range, check_value
from textdiffusion.methods.image import ImageDiffusion, ImageRequest, ImageResult
from textdiffusion.records import ImageEval

DEFAULT_UNCONDITIONAL_IMAGES = 16


class ImageModel(Model):
    """An image run loaded for sampling (:func:`load`): ``generate`` digits as pixel arrays or Pillow images,
    ``stream`` the reverse process, ``evaluate`` FID and class accuracy. ``conditional`` says whether it
    draws a chosen digit; ``classes`` and ``image_size`` describe its images."""

    kind = "an image"

    @property
    def image_method(self) -> ImageDiffusion:
        """The method object, for code that needs the internals."""
        return cast(ImageDiffusion, self.run.method)

    @property
    def conditional(self) -> bool:
        """Whether the run was trained with labels, so ``digits=`` picks what to draw."""
        return self.image_method.conditional

    @property
    def classes(self) -> int:
        """Label classes of the data (10 digits)."""
        return self.image_method.spec.num_classes

    @property
    def image_size(self) -> int:
        """Side of the square images, in pixels."""
        return self.image_method.spec.size

    def _request(self, digits: int | Sequence[int] | None, n: int, sampler: str, steps: int, eta: float | None,
                 guidance: float | None) -> ImageRequest:
        """A checked request: the labels ``digits`` and ``n`` ask for (see :meth:`generate`)."""
        n = check_value("n", n, int, Range(0, limits.MAX_IMAGE_EVAL))
        if isinstance(digits, int) and not isinstance(digits, bool):
            labels: list[int] | None = [digits] * (n or 1)
        elif digits is not None:
            if isinstance(digits, (str, bytes)) or not isinstance(digits, Sequence):
                raise ConfigError(f"digits must be a digit or a list of digits, got {digits!r}")
            labels = [check_value("digits", d, int, None) for d in digits]
            if not labels:
                raise ConfigError("digits is empty; give at least one digit, or n for a balanced set")
            if n and n != len(labels):
                raise ConfigError(f"{len(labels)} digits but n={n}; give one digit per image (or leave n out)")
        elif self.conditional:
            labels = [i % self.classes for i in range(n or self.classes)]  # 0, 1, ..., 9, 0, 1, ...
        else:
            labels = None
        count = len(labels) if labels is not None else (n or DEFAULT_UNCONDITIONAL_IMAGES)
        limits.check_count(count, limits.MAX_IMAGE_EVAL, "n", "the images are held in memory",
                           f"draw at most {limits.MAX_IMAGE_EVAL} at once")
        if not isinstance(sampler, str):
            raise ConfigError(f"sampler must be a name (one of {', '.join(self.samplers)}), got {sampler!r}")
        self.image_method.check_sampler(sampler)
        return ImageRequest(n=count, labels=labels, sampler=sampler,
                            steps=check_value("steps", steps, int, SAMPLE_STEPS),
                            eta=None if eta is None else check_value("eta", eta, float, ETA),
                            guidance=None if guidance is None else check_value("guidance", guidance, float, GUIDANCE))

    def generate(self, digits: int | Sequence[int] | None = None, *, n: int = 0, sampler: str = "", steps: int = 0,
                 eta: float | None = None, guidance: float | None = None, seed: int = 0, progress: bool = True,
                 **other: Any) -> ImageSamples:
        """Draw images: ``digits=[3, 1, 4]`` one of each digit asked for (``digits=7, n=8``: eight sevens);
        without digits ``n`` images (default: one of each digit 0..9 for a class-conditional run, 16
        unconditional ones otherwise).

        ``sampler`` is ``ddpm`` or ``ddim`` (default the run's), ``steps`` the network evaluations (0 = the
        sampler's default: DDPM walks all T training steps, DDIM takes at most 250), ``eta`` DDIM's noise (0
        deterministic), ``guidance`` the classifier-free guidance scale (1 = plain conditional, > 1 sharper
        digits, None = the run's). The same seed and digits draw the same images. Images are drawn in
        batches that bound memory (500 at 28x28), with a progress bar when there are several. Returns an
        :class:`ImageSamples`: ``.pixels`` uint8 arrays, ``.pil()`` Pillow images, ``.grid()`` one picture."""
        refuse_other_kind(other, "generate", self, TEXT_OPTIONS, "give digits=[...] or n")
        from textdiffusion.progress import progress_bar

        req = self._request(digits, n, sampler, steps, eta, guidance)
        seed = check_value("seed", seed, int, SEED)
        run, method = self.run, self.image_method
        parts = limits.batches(req.n, limits.image_batch_size(method.spec.size))
        gen = torch.Generator(device=run.device).manual_seed(seed)
        images, res = [], None
        tic = time.perf_counter()
        with progress_bar(total=req.n, unit="image", disable=not progress or len(parts) == 1, leave=False) as bar:
            for start, count in parts:
                labels = req.labels[start:start + count] if req.labels is not None else None
                res = method.sample(run.model, replace(req, n=count, labels=labels), gen)
                images.append(res.images.cpu())
                bar.update(count)
        assert res is not None
        joined = replace(res, images=torch.cat(images))
        return self._samples(joined, req.labels, time.perf_counter() - tic, seed)

    def _samples(self, res: ImageResult, labels: list[int] | None, seconds: float, seed: int) -> ImageSamples:
        info = res.info
        return ImageSamples(pixels(res.images), labels, info["sampler"], info["steps"], info.get("eta"),
                            info.get("guidance"), res.nfe, seconds, seed)

    def stream(self, digits: int | Sequence[int] | None = None, *, n: int = 0, sampler: str = "", steps: int = 0,
               eta: float | None = None, guidance: float | None = None, seed: int = 0) -> ImageStream:
        """The reverse process frame by frame: iterate the returned :class:`ImageStream` for an
        :class:`ImageFrame` per sampler step (the noisy images and the current guess of the clean ones);
        its ``result`` then holds the :class:`ImageSamples` (the images :meth:`generate` draws for the same
        arguments and seed). At most one batch of images; options as in :meth:`generate`."""
        req = self._request(digits, n, sampler, steps, eta, guidance)
        batch = limits.image_batch_size(self.image_size)
        if req.n > batch:
            raise ConfigError(f"a stream shows one batch: at most {batch} images at once, asked for {req.n}; "
                              f"draw fewer, or use generate() for many")
        return ImageStream(self, req, check_value("seed", seed, int, SEED))

    def evaluate(self, samples: int | None = None, *, sampler: str = "", steps: int = 0, eta: float | None = None,
                 guidance: float | None = None, seed: int = 0, progress: bool = True) -> ImageEval:
        """FID and class accuracy in the feature space of the project's MNIST classifier (trained once and
        cached), and the sampling time per image, as an :class:`~textdiffusion.records.ImageEval`: the numbers
        ``textdiffusion mnist eval`` prints, and like
        it this writes ``RUN/eval.json`` (and appends to ``RUN/evals.jsonl``). ``samples`` defaults to the
        command's default; the other options are :meth:`generate`'s. Scores the EMA weights."""
        from textdiffusion.image_evaluation import evaluate_images

        self._refuse_raw_weights()
        req = self._request(None, 0, sampler, steps, eta, guidance)  # the options' types and ranges
        given = {} if samples is None else {"samples": check_value("samples", samples, int, POSITIVE_COUNT)}
        return evaluate_images(self.run, sampler=req.sampler, steps=req.steps, eta=req.eta, guidance=req.guidance,
                               seed=check_value("seed", seed, int, SEED), progress=progress,
                               overrides=self._overrides, **given)


class ImageStream(Stream):
    """The frames of one image sampling (:meth:`ImageModel.stream`); read it as :class:`TextStream`."""

    def __init__(self, model: ImageModel, request: ImageRequest, seed: int):
        self.model, self.request, self.seed = model, request, seed
        self.result: ImageSamples | None = None
        run = model.run
        gen = torch.Generator(device=run.device).manual_seed(seed)

        def work(report: Callable[[Any], None]) -> ImageResult:
            def on_step(step: int, x: torch.Tensor, x0_hat: torch.Tensor, info: dict[str, Any]) -> None:
                report((step, cpu_copy(x), cpu_copy(x0_hat), {k: number(info.get(k)) for k in ("t", "nfe")}))

            return model.image_method.sample(run.model, request, gen, on_step)

        self._feed = Feed(work, precision.autocast("off", run.device))  # images sample in fp32, as mnist does

    def __iter__(self) -> Iterator[ImageFrame]:
        for step, x, x0_hat, info in self._feed:
            yield ImageFrame(step, info.get("t"), info.get("nfe"), pixels(x), pixels(x0_hat))
        self.result = self.model._samples(self._feed.result, self.request.labels, self._feed.seconds, self.seed)
