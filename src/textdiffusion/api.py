"""The Python API: load a run (or train one) and generate, infill, stream, score and evaluate in a line each.

    import textdiffusion

    model = textdiffusion.load("runs/masked")                 # a TextModel (or an ImageModel for an image run)
    texts = model.generate(prompt="ROMEO:", n=4, seed=0)      # list[str]
    for frame in model.stream(prompt="ROMEO:"):               # the denoising, one frame per sampler step
        print(frame.step, frame.text)

This is the one place where a run is opened and sampled for a user: the command line (``sample``, ``eval``),
the live page and ``compare`` go through it, so a seed gives the same text from Python as from
``textdiffusion sample``. It is the top of the library (request limits: :mod:`textdiffusion.limits`; image
scores: :mod:`textdiffusion.image_evaluation`) and imports no app; the apps stand on it.
``docs/python-api.md`` is its guide.

Every sampling runs under ``torch.no_grad()`` and in the precision the run was trained in
(:func:`textdiffusion.precision.autocast`: bf16 on a GPU for a bf16 run, fp32 elsewhere). User errors are the
package's one-line :class:`~textdiffusion.config.ConfigError`, :class:`~textdiffusion.errors.DataError` and
:class:`~textdiffusion.errors.CheckpointError`.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from textdiffusion import limits, precision
from textdiffusion.checkpoint import read_json
from textdiffusion.config import (
    ETA,
    GUIDANCE,
    SAMPLE_STEPS,
    SEED,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    Config,
    ConfigError,
    Range,
    check_value,
)
from textdiffusion.data.images import to_pixels
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.methods.base import SampleRequest, SampleResult, StepCallback, TextMethod
from textdiffusion.methods.image import ImageDiffusion, ImageRequest, ImageResult
from textdiffusion.runs import LoadedRun, open_run
from textdiffusion.viz.trajectory import decode_masked

__all__ = ["Frame", "ImageFrame", "ImageModel", "ImageSamples", "ImageStream", "SamplingPlan", "Score",
           "TextModel", "TextSamples", "TextStream", "load", "train"]

CPU = torch.device("cpu")
POSITIVE_COUNT = Range(1, 2**31 - 1)
LENGTH = Range(0, 2**31 - 1)  # 0 = the method's default (the context, or an infill template's own length)
DEFAULT_UNCONDITIONAL_IMAGES = 16


# ---- loading and training ----------------------------------------------------------------------------------
def load(run_dir: str | Path, device: str | torch.device = "auto", weights: str = "ema", *,
         overrides: Sequence[str] = (), **sampling: Any) -> TextModel | ImageModel:
    """Open the run in ``run_dir`` for sampling: a :class:`TextModel` for a text run, an :class:`ImageModel`
    for an image run (the run's config.json decides).

    ``device``: ``"auto"`` (the GPU when there is one, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"``. ``weights``: ``"ema"`` (the averaged weights every number in the run was measured with) or
    ``"model"`` (the raw weights of the last step). ``sampling`` changes the run's sampling options for every
    call on the returned model, as ``--set method.FIELD=VALUE`` does on the command line: ``load(run,
    temperature=0.8)``, ``load(run, clamp=True, eta=0.5)``, ``load(run, guide_run="runs/ar")``. Only the
    fields marked as sampling options may change; anything the network was trained with is refused.
    ``overrides`` takes the same settings as ``--set`` strings (``["method.eta=0.5"]``).

    Raises a one-line :class:`~textdiffusion.errors.CheckpointError` for a missing or damaged run directory
    and :class:`~textdiffusion.config.ConfigError` for an unknown device or setting."""
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    sets = [*overrides, *(f"{_setting_key(k, 'method')}={_setting_value(k, v)}" for k, v in sampling.items())]
    run = open_run(run_dir, weights=weights, device=str(device), overrides=sets)
    if isinstance(run.method, TextMethod):
        return TextModel(run, weights, sets)
    if isinstance(run.method, ImageDiffusion):
        return ImageModel(run, weights, sets)
    raise ConfigError(f"{run_dir} holds a {run.cfg.method.name} run, which samples neither text nor images")


def train(method: str, preset: str = "cpu", *, steps: int | None = None, run_dir: str | Path | None = None,
          data: str | Path | None = None, seed: int | None = None, device: str | None = None, progress: bool = True,
          overrides: Sequence[str] = (), **settings: Any) -> TextModel | ImageModel:
    """Train a new run and return it loaded (EMA weights), ready to sample: what ``textdiffusion train`` does.

    ``method``: ``ar``, ``masked``, ``block``, ``embedding``, ``bits`` (text) or ``image``; ``preset``:
    ``tiny`` (seconds), ``cpu`` (minutes on a laptop) or ``base`` (a GPU run). ``steps``, ``data`` (a named
    corpus, a text file, a folder of .txt files; for images ``mnist`` or ``digits``), ``seed`` and ``device``
    override the preset as the command line's flags do. Any other config field is a keyword: a section with a
    dict of its fields (``model={"n_layer": 4}, train={"lr": 2e-3}``), or a dotted key, the form ``--set``
    takes (``**{"train.lr": 2e-3}``); ``overrides`` also takes ``--set`` strings. The run goes to ``run_dir``
    (default ``runs/METHOD-PRESET-TIME``); ``progress`` shows the training bar on stderr.

    The training summary (steps, validation bits, speed) is the returned model's ``summary``. Ctrl-C stops
    training at the next step with a checkpoint saved, then raises KeyboardInterrupt saying how to resume."""
    from textdiffusion.config import make_config
    from textdiffusion.trainer import default_run_dir, run_training

    sets = list(overrides)
    for key, value in settings.items():
        if isinstance(value, Mapping):
            sets += [f"{key}.{name}={_setting_value(f'{key}.{name}', v)}" for name, v in value.items()]
        elif "." in key:
            sets.append(f"{key}={_setting_value(key, value)}")
        else:
            raise ConfigError(f"train() got {key}={value!r}; config fields go by section, e.g. "
                              f"train={{'lr': 2e-3}} or model={{'n_layer': 4}} (or **{{'train.lr': 2e-3}})")
    for value, key in ((data, "data.corpus"), (steps, "train.steps"), (seed, "seed"), (device, "train.device")):
        if value is not None:
            sets.append(f"{key}={_setting_value(key, value)}")
    cfg = make_config(method, preset, sets)
    summary = run_training(cfg, Path(run_dir) if run_dir is not None else default_run_dir(cfg), progress=progress)
    if summary["interrupted"]:
        command = "mnist train" if summary.get("unit") == "images" else "train"
        raise KeyboardInterrupt(f"training stopped at step {summary['step']} of {summary['steps']} with a "
                                f"checkpoint in {summary['run_dir']}; `textdiffusion {command} --resume "
                                f"{summary['run_dir']}` continues it")
    model = load(summary["run_dir"], device=device or "auto")
    model._summary = summary
    return model


def _setting_key(key: str, section: str) -> str:
    """A keyword of :func:`load` as a config key: a bare field name belongs to ``section``."""
    return key if "." in key else f"{section}.{key}"


def _setting_value(key: str, value: Any) -> str:
    """A Python value as the text ``--set`` takes: true/false, numbers as written, a list as "1,2,2"."""
    if value is None:
        raise ConfigError(f"{key}=None: give a value (leave the setting out to keep the default)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _refuse_other_kind(options: Mapping[str, Any], call: str, model: _Model, other_kind: frozenset[str],
                       fix: str) -> None:
    """Unknown keyword arguments: the other kind of run's options get a one-line error that says which kind
    this run is; anything else is Python's usual TypeError."""
    for name in sorted(options):
        if name in other_kind:
            raise ConfigError(f"{name}= does not apply: {model.path} is {model.kind} run (method {model.method}); "
                              f"{fix}")
        raise TypeError(f"{call}() got an unexpected keyword argument {name!r}")


_TEXT_OPTIONS = frozenset({"prompt", "infill", "template", "placeholder", "length", "temperature", "top_k", "top_p"})
_IMAGE_OPTIONS = frozenset({"digits", "eta", "guidance"})


# ---- what the models return ---------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class SamplingPlan:
    """A checked text request, before anything is drawn (:meth:`TextModel.plan`)."""

    request: SampleRequest  # what the method's sampler receives for each batch (with n of that batch)
    length: int  # tokens per sample
    sampler: str
    steps: int | None  # sampler steps (None: one network evaluation per token, not a choice)
    batch_size: int  # samples drawn at once, as many as keep memory bounded
    batches: int


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

    @property
    def nats_per_char(self) -> float:
        """The same number in nats (natural log), the unit of the training losses."""
        return self.bits_per_char * 0.6931471805599453

    @property
    def label(self) -> str:
        """``exact`` or ``upper bound``: how to read :attr:`bits_per_char`."""
        return "exact" if self.kind == "exact" else "upper bound"

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


# ---- streaming: a sampler that reports through a callback, read as an iterator -------------------------------
class _Stopped(Exception):
    """Raised inside the sampler's step callback once the reader has stopped listening."""


class _Feed:
    """Runs ``work(report)`` in a thread and hands each ``report(item)`` to the reading thread, one at a time.

    A sampler reports its steps through a callback; a reader wants an iterator. The thread runs the sampler
    (under ``context``: grad mode and autocast are per thread) and waits at each step until the reader has
    taken the previous one, so the sampler never runs ahead of a slow reader by more than a frame. When the
    reader stops (:meth:`close`, a ``break``, an exception), the sampler is stopped at its next step.
    ``seconds`` is the time the sampler itself took, without the waits for the reader."""

    _POLL_S = 0.05

    def __init__(self, work: Callable[[Callable[[Any], None]], Any], context: Callable[[], Any]):
        self._work, self._context = work, context
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waited = 0.0
        self.result: Any = None
        self.seconds = 0.0

    def _put(self, kind: str, payload: Any) -> None:
        waited = time.perf_counter()
        while not self._stop.is_set():
            try:
                self._queue.put((kind, payload), timeout=self._POLL_S)
                break
            except queue.Full:
                continue
        self._waited += time.perf_counter() - waited
        if self._stop.is_set():
            raise _Stopped()

    def _report(self, item: Any) -> None:
        if self._stop.is_set():
            raise _Stopped()
        self._put("item", item)

    def _run(self) -> None:
        try:
            with torch.no_grad(), self._context():
                tic = time.perf_counter()
                result = self._work(self._report)
                seconds = time.perf_counter() - tic - self._waited
            self._put("done", (result, seconds))
        except _Stopped:
            pass
        except BaseException as e:  # handed to the reader, which raises it in its own thread
            with contextlib.suppress(_Stopped):  # unless the reader has gone
                self._put("error", e)

    def __iter__(self) -> Iterator[Any]:
        if self._thread is not None:
            raise ConfigError("a stream can be read once; call stream() again for another sampling")
        self._thread = threading.Thread(target=self._run, name="textdiffusion-stream", daemon=True)
        self._thread.start()
        try:
            while True:
                kind, payload = self._queue.get()
                if kind == "item":
                    yield payload
                elif kind == "done":
                    self.result, self.seconds = payload
                    return
                else:
                    raise payload
        finally:
            self.close()

    def close(self) -> None:
        """Stop the sampler at its next step and wait for it (a step is one network evaluation)."""
        self._stop.set()
        while True:  # a waiting sampler sees the stop at its next poll
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def _cpu_copy(x: torch.Tensor) -> torch.Tensor:
    """A copy the sampler cannot change afterwards (it may update its state in place)."""
    return x.detach().to(CPU, copy=True)


def _number(value: Any) -> float | None:
    """A step's ``t`` or ``nfe`` as a plain number (samplers report floats, ints or 0-d tensors)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_S = TypeVar("_S", bound="_Stream")


class _Stream:
    """What both streams share: a sampler running in a :class:`_Feed`, stopped by :meth:`close` or by leaving
    a ``with`` block."""

    _feed: _Feed

    def close(self) -> None:
        """Stop the sampling (at its next step) if it is still running."""
        self._feed.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextStream(_Stream):
    """The frames of one text sampling (:meth:`TextModel.stream`), read by iterating; :attr:`result` holds
    the finished samples once the last frame has been read. Sampling starts at the first read and stops at
    the next step when the reading stops early (a ``break``, :meth:`close`, leaving a ``with`` block)."""

    def __init__(self, model: TextModel, plan: SamplingPlan, seed: int, mask_char: str):
        self.model, self.plan, self.seed, self.mask_char = model, plan, seed, mask_char
        self.result: TextSamples | None = None
        self.frames = 0  # frames read so far
        run = model.run
        self._initial = run.method.prepare(plan.request, CPU)[0]
        gen = torch.Generator(device=run.device).manual_seed(seed)

        def work(report: Callable[[Any], None]) -> SampleResult:
            def on_step(step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
                report((step, _cpu_copy(state), {k: _number(info.get(k)) for k in ("t", "nfe")}))

            return run.method.sample(run.model, plan.request, gen, on_step)

        self._feed = _Feed(work, precision.autocast(run.cfg.train.amp, run.device))

    def __iter__(self) -> Iterator[Frame]:
        prev: torch.Tensor | None = None
        for step, ids, info in self._feed:
            if self.frames == 0 and step > 0:  # a sampler that reports no initial state (the continuous ones)
                yield self._frame(0, self._initial, {"t": 1.0, "nfe": 0}, None)
                prev = self._initial
            yield self._frame(step, ids, info, prev)
            prev = ids
        res: SampleResult = self._feed.result
        tok = self.model.tokenizer
        self.result = TextSamples([tok.decode(row.tolist(), self.mask_char) for row in res.ids.cpu()],
                                  res.info.get("sampler"), res.info.get("steps"), res.nfe, self._feed.seconds,
                                  int(res.ids.shape[1]), _fixed_positions(res), self.seed)

    def _frame(self, step: int, ids: torch.Tensor, info: Mapping[str, Any], prev: torch.Tensor | None) -> Frame:
        self.frames += 1
        decoded = [decode_masked(self.model.tokenizer, row.tolist(), self.mask_char) for row in ids]
        same_shape = prev is not None and prev.shape == ids.shape
        changed = (ids != prev).sum(1).tolist() if same_shape else [0] * ids.shape[0]
        return Frame(step, info.get("t"), info.get("nfe"), [text for text, _ in decoded],
                     [masked for _, masked in decoded], changed)



def _fixed_positions(res: SampleResult) -> list[int]:
    """The positions a request fixed: the same for every sample (one prompt or template for all of them)."""
    if res.fixed is None:
        return []
    return res.fixed[0].nonzero().flatten().tolist()


# ---- text ---------------------------------------------------------------------------------------------------
class _Model:
    """What a loaded run of either kind offers: where it is, what it is, how far it trained."""

    kind = "a"

    def __init__(self, run: LoadedRun, weights: str, overrides: list[str]):
        self.run = run  # the loaded run (network, method, tokenizer): for code that needs the internals
        self.weights = weights
        self._overrides = list(overrides)
        self._summary: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.run.path

    @property
    def method(self) -> str:
        """The method's name (``masked``, ``ar``, ``image``, ...)."""
        return self.run.cfg.method.name

    @property
    def step(self) -> int:
        """The training step of the loaded weights."""
        return self.run.step

    @property
    def config(self) -> Config:
        """The run's resolved config (config.json), with the sampling settings given to :func:`load`."""
        return self.run.cfg

    @property
    def device(self) -> torch.device:
        """Where the network lives and samples run."""
        return self.run.device

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers this method offers; ``default_sampler`` is the one used when none is asked for."""
        return self.run.method.samplers

    @property
    def default_sampler(self) -> str:
        """The sampler a call gets when it names none: the run's ``method.sampler``, else the method's first."""
        return self.run.method.default_sampler

    @property
    def likelihood_kind(self) -> str:
        """``exact`` when the method's likelihood is the true -log p, ``bound`` when it is an upper bound."""
        return self.run.method.likelihood_kind

    @property
    def parameters(self) -> int:
        """Number of network parameters."""
        return sum(p.numel() for p in self.run.model.parameters())

    @property
    def summary(self) -> dict[str, Any] | None:
        """The training summary: what :func:`train` returned for a model it trained, else the run's final.json
        (steps, validation bits, speed), or None for a run that has not finished training."""
        if self._summary is None and (self.path / "final.json").exists():
            found = read_json(self.path / "final.json")
            self._summary = found if isinstance(found, dict) else None
        return self._summary

    def _refuse_raw_weights(self) -> None:
        if self.weights != "ema":
            raise ConfigError(f"evaluate() scores the EMA weights, as the eval command does; load {self.path} "
                              f"with weights='ema' to evaluate it")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method}, step {self.step}, {str(self.path)!r}, {self.device})"


class TextModel(_Model):
    """A text run loaded for sampling (:func:`load`): generate, infill, stream the denoising, score text and
    evaluate, each in one call. ``tokenizer``, ``context`` and the properties of every model (``method``,
    ``step``, ``config``, ``device``, ``path``, ``samplers``) say what it is."""

    kind = "a text"

    @property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer (characters for the default ``char`` tokenizer)."""
        assert self.run.tokenizer is not None
        return self.run.tokenizer

    @property
    def context(self) -> int:
        """Tokens the network sees at once: the default sample length."""
        return self.text_method.model_cfg.context

    @property
    def supports_infill(self) -> bool:
        """Whether the method fills blanks anywhere (False: ``ar`` only continues a prompt)."""
        return self.text_method.supports_infill

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels ``generate(label=...)`` takes (speakers, most-spoken first) of a run trained on labelled
        text; empty for a plain run."""
        method = self.text_method
        return method.label_names or tuple(str(i) for i in range(method.num_labels))

    @property
    def text_method(self) -> TextMethod:
        """The method object (corruption, loss, samplers), for code that needs the internals."""
        assert isinstance(self.run.method, TextMethod)
        return self.run.method

    def classifier(self, *, steps: int | None = None, retrain: bool = False, progress: bool = True) -> Any:
        """The run's speaker classifier for ``rule="classifier"`` (a
        :class:`~textdiffusion.noisy_classifier.NoisyClassifier`): read from ``RUN/speaker-classifier`` when it
        was trained for this checkpoint (with ``steps``, when given), else trained now on the method's noisy
        states (default 1500 steps: a minute or two on a CPU) and cached there. Its ``meta`` holds its held-out
        accuracy."""
        from textdiffusion.noisy_classifier import ClassifierRecipe, classifier_for

        recipe = None if steps is None else ClassifierRecipe(steps=check_value("steps", steps, int, POSITIVE_COUNT))
        clf = classifier_for(self.run, recipe, progress=progress, retrain=retrain)
        self.text_method.use_classifier(clf)
        return clf

    def cached_classifier(self) -> Any:
        """The speaker classifier :meth:`classifier` would read without training (cached for this checkpoint),
        now in use for ``rule="classifier"``; None when there is none."""
        from textdiffusion.noisy_classifier import cached_classifier

        clf = cached_classifier(self.run)
        if clf is not None:
            self.text_method.use_classifier(clf)
        return clf

    # -- sampling ---------------------------------------------------------------------------------------------
    def generate(self, prompt: str = "", *, n: int = 1, length: int = 0, sampler: str = "", steps: int = 0,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, label: str = "", guidance: float = 1.0, rule: str = "", progress: bool = True,
                 **other: Any) -> list[str]:
        """``n`` texts that start with ``prompt``, each ``length`` tokens long (characters for the char
        tokenizer), prompt included; 0 = the model's context (``ar`` may go past it).

        ``sampler`` (one of :attr:`samplers`; default the run's) and ``steps`` (denoising steps; 0 = the
        method's default, not a choice for ``ar``) say how; ``temperature``, ``top_k`` and ``top_p`` shape
        each token draw (None = the run's own setting). The same ``seed`` gives the same texts, the texts
        ``textdiffusion sample --seed`` prints. A large ``n`` is drawn in batches that bound memory, with a
        progress bar on stderr unless ``progress`` is False. A run trained on labelled text
        (``data.labels=speaker``) writes as ``label`` (a speaker's name; :attr:`labels` lists them), steered
        by classifier-free guidance of scale ``guidance`` (0 = unconditional, 1 = plain conditional, above 1
        sharper). ``rule="classifier"`` steers any run (labelled or not) toward a speaker of its corpus with a
        small classifier of the method's noisy states instead, trained on first use (:meth:`classifier`); then
        ``guidance`` is the classifier's exponent. Returns the texts; :meth:`sample` also says how they were
        made."""
        _refuse_other_kind(other, "generate", self, _IMAGE_OPTIONS, "give a prompt, n, length, sampler, steps")
        return self.sample(prompt, n=n, length=length, sampler=sampler, steps=steps, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, label=label, guidance=guidance, rule=rule,
                           progress=progress).texts

    def infill(self, template: str, placeholder: str = "_", *, n: int = 1, length: int = 0, sampler: str = "",
               steps: int = 0, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, seed: int = 0, label: str = "", guidance: float = 1.0, rule: str = "",
               progress: bool = True) -> list[str]:
        """``n`` copies of ``template`` with every ``placeholder`` character filled in (one token per
        placeholder; the known text is never changed): ``model.infill("ROMEO:\\nO ____ art thou")``. A
        ``length`` longer than the template adds blanks at the end. Only methods that fill blanks anywhere
        can (``ar`` continues a prompt only, and is refused). Other options as in :meth:`generate`; returns
        the filled texts."""
        if not self.supports_infill:
            raise ConfigError(f"{self.path} is a {self.method} run, which only continues a prompt and cannot fill "
                              f"blanks; use generate(prompt=...), or a run of a method such as masked")
        return self.sample(infill=template, placeholder=placeholder, n=n, length=length, sampler=sampler,
                           steps=steps, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                           label=label, guidance=guidance, rule=rule, progress=progress).texts

    def sample(self, prompt: str = "", *, infill: str | None = None, placeholder: str = "_", n: int = 1,
               length: int = 0, sampler: str = "", steps: int = 0, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0, label: str = "",
               guidance: float = 1.0, rule: str = "", on_step: StepCallback | None = None,
               progress: bool = True) -> TextSamples:
        """What :meth:`generate` and :meth:`infill` draw, with how it was drawn: the sampler that ran, its
        steps, the network evaluations per sample and the seconds taken (a :class:`TextSamples`).

        ``on_step(step, ids, info)``, if given, watches every step of the first batch (``ids``: the (batch,
        length) token ids, the tokenizer's mask id where still unknown): the command line's ``--show`` and
        ``--trajectory`` are such callbacks. :meth:`stream` is the friendlier way to watch."""
        plan = self.plan(prompt, infill=infill, placeholder=placeholder, n=n, length=length, sampler=sampler,
                         steps=steps, temperature=temperature, top_k=top_k, top_p=top_p, label=label,
                         guidance=guidance, rule=rule)
        seed = check_value("seed", seed, int, SEED)
        run = self.run
        gen = torch.Generator(device=run.device).manual_seed(seed)
        tic = time.perf_counter()
        with torch.no_grad(), precision.autocast(run.cfg.train.amp, run.device)():  # as trained: bf16 on GPUs
            texts, first, nfe = self._draw(plan, gen, on_step, progress)
        seconds = time.perf_counter() - tic
        return TextSamples(texts, first.info.get("sampler"), first.info.get("steps"), nfe, seconds,
                           int(first.ids.shape[1]), _fixed_positions(first), seed)

    def _draw(self, plan: SamplingPlan, gen: torch.Generator, on_step: StepCallback | None,
              progress: bool) -> tuple[list[str], SampleResult, float]:
        """``plan``'s samples drawn a batch at a time: the decoded texts, the first batch's result and the
        network evaluations per sample over all batches.

        A request of one batch draws exactly what one sampling call draws; a larger one draws batch after
        batch from the one generator (:mod:`textdiffusion.limits`). ``on_step`` watches the first batch
        only: an animation of the others would repeat it. With more than one batch a progress bar counts
        samples on stderr, from the batch after the watched one (the two would draw over each other); one
        batch gets a bar over its steps on a terminal."""
        from textdiffusion.progress import progress_bar

        parts = limits.batches(plan.request.n, plan.batch_size)
        if progress and len(parts) == 1 and on_step is None and sys.stderr.isatty():
            # one batch: a bar over its steps, on a terminal only (watching a step costs a little, and a log
            # file gains nothing from a bar that lasts seconds); the draws are the same with or without it
            step_bar = progress_bar(total=plan.steps or plan.length, unit="step", desc="sampling", leave=False)

            def on_step(step: int, state: torch.Tensor, info: Mapping[str, Any]) -> None:
                step_bar.update(max(0, min(step, step_bar.total) - step_bar.n))

            return self._draw_batches(plan, parts, gen, on_step, False, step_bar)
        return self._draw_batches(plan, parts, gen, on_step, progress, None)

    def _draw_batches(self, plan: SamplingPlan, parts: list[tuple[int, int]], gen: torch.Generator,
                      on_step: StepCallback | None, progress: bool,
                      step_bar: Any) -> tuple[list[str], SampleResult, float]:
        """:meth:`_draw`'s loop over the batches; closes ``step_bar`` (the one-batch step bar) when done."""
        from textdiffusion.progress import progress_bar

        run, req = self.run, plan.request
        texts: list[str] = []
        first: SampleResult | None = None
        bar, nfe_total = None, 0.0
        try:
            for i, (_, count) in enumerate(parts):
                if bar is None and progress and len(parts) > 1 and not (on_step is not None and i == 0):
                    bar = progress_bar(total=req.n, initial=len(texts), unit="sample", leave=False)
                res = run.method.sample(run.model, replace(req, n=count), gen, on_step if i == 0 else None)
                texts += [self.tokenizer.decode(row.tolist()) for row in res.ids.cpu()]
                nfe_total += res.nfe * count
                if first is None:
                    first = res
                if bar is not None:
                    bar.update(count)
        finally:
            for b in (bar, step_bar):
                if b is not None:
                    b.close()
        assert first is not None  # n >= 1
        return texts, first, first.nfe if len(parts) == 1 else nfe_total / req.n

    def plan(self, prompt: str = "", *, infill: str | None = None, placeholder: str = "_", n: int = 1,
             length: int = 0, sampler: str = "", steps: int = 0, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, label: str = "",
             guidance: float = 1.0, rule: str = "") -> SamplingPlan:
        """Check a request against the run and the limits of one call, without drawing anything: the
        :class:`SamplingPlan` says the length in tokens, the sampler and steps it gets, and the batches it
        is drawn in. Every sampling call makes one; a bad request is a one-line ConfigError here."""
        if not isinstance(prompt, str) or not isinstance(placeholder, str):
            raise ConfigError("prompt and placeholder must be strings")
        if infill is not None and not isinstance(infill, str):
            raise ConfigError(f"the infill template must be a string, got {type(infill).__name__}")
        n = check_value("n", n, int, POSITIVE_COUNT)
        limits.check_count(n, limits.MAX_TEXT_SAMPLES, "n", "the most one call draws",
                           "draw more in several calls with different seeds")
        length = check_value("length", length, int, LENGTH)
        steps = check_value("steps", steps, int, SAMPLE_STEPS)
        if not isinstance(sampler, str):
            raise ConfigError(f"sampler must be a name (one of {', '.join(self.samplers)}), got {sampler!r}")
        decoding = {name: None if value is None else check_value(name, value, typ, bound)
                    for name, value, typ, bound in (("temperature", temperature, float, TEMPERATURE),
                                                    ("top_k", top_k, int, TOP_K), ("top_p", top_p, float, TOP_P))}
        if infill is not None and not self.supports_infill:
            raise ConfigError(f"{self.path} is a {self.method} run, which only continues a prompt and cannot fill "
                              f"blanks; give a prompt instead")
        method = self.text_method
        if not isinstance(label, str):
            raise ConfigError(f"label must be a name (a string), got {label!r}")
        guidance = check_value("guidance", guidance, float, GUIDANCE)
        req = SampleRequest(n=n, length=length, prompt=prompt, infill=infill, placeholder=placeholder,
                            sampler=sampler, steps=steps, **method.decoding(**decoding), label=label,
                            guidance=guidance, rule=rule)
        if not isinstance(rule, str):
            raise ConfigError(f"rule must be a name (free or classifier), got {rule!r}")
        method.check_classifier_request(req)  # before training a classifier for nothing
        if req.rule == "classifier" and method.classifier is None:
            self.classifier()
        method.request_label(req)  # a label this run knows, guidance only with one
        if req.length:
            method.check_length(req.length)
            limits.check_text_length(req.length, method.extends_past_context)
        # one sample's initial state: the length an infill template gives, and the prompt's checks, up front
        tokens = int(method.prepare(replace(req, n=1), CPU)[0].shape[1])
        chosen = method.check_sampler(req.sampler)
        if req.steps and method.default_steps(tokens, chosen) is None:
            raise ConfigError(f"--steps does not apply to {method.name}'s {chosen} sampler: it takes one network "
                              f"evaluation per token; leave --steps out")
        total = req.steps or method.default_steps(tokens, chosen)
        limits.check_text_steps(total, bool(req.steps), method.max_steps)
        batch = limits.text_batch_size(tokens, method.window, self.tokenizer.vocab_size)
        return SamplingPlan(req, tokens, chosen, total, batch, len(limits.batches(n, batch)))

    def stream(self, prompt: str = "", *, infill: str | None = None, placeholder: str = "_", n: int = 1,
               length: int = 0, sampler: str = "", steps: int = 0, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0, label: str = "",
               guidance: float = 1.0, rule: str = "", mask_char: str | None = None) -> TextStream:
        """The denoising of one sampling, frame by frame: iterate the returned :class:`TextStream` for a
        :class:`Frame` per sampler step (frame 0 is the initial state), each with the decoded texts (positions
        still unknown shown as ``mask_char``, default the placeholder ``_``), the step, the diffusion time
        ``t``, the network evaluations so far and how many tokens changed. After the last frame the stream's
        ``result`` holds the finished :class:`TextSamples` (the same texts :meth:`sample` gives for the seed).

        The sampler runs in a thread and waits for the reader, so a slow reader (a web page pacing the
        frames) slows it down rather than piling frames up; stopping the reading stops the sampler at its
        next step. Options as in :meth:`sample`, ``infill`` a template as in :meth:`infill`; at most one
        batch of samples (``n`` up to the plan's batch size)."""
        plan = self.plan(prompt, infill=infill, placeholder=placeholder, n=n, length=length, sampler=sampler,
                         steps=steps, temperature=temperature, top_k=top_k, top_p=top_p, label=label,
                         guidance=guidance, rule=rule)
        if plan.batches > 1:
            raise ConfigError(f"a stream shows one batch: at most {plan.batch_size} samples of {plan.length} tokens "
                              f"at once, n is {n}; use n <= {plan.batch_size}")
        mask_char = placeholder if mask_char is None else mask_char
        if not isinstance(mask_char, str) or len(mask_char) != 1:
            raise ConfigError(f"mask_char must be one character, got {mask_char!r}")
        return TextStream(self, plan, check_value("seed", seed, int, SEED), mask_char)

    # -- likelihood -------------------------------------------------------------------------------------------
    def score(self, text: str) -> Score:
        """Bits per character of ``text`` under the model, labelled exact (``ar``) or an upper bound (the
        diffusion methods), measured as the validation number is: the text cut into windows of the model's
        context, each scored on its own (a shorter rest is one more, shorter window), with the method's fixed
        evaluation seed, so the same text always gets the same number."""
        if not isinstance(text, str) or not text:
            raise ConfigError("score() needs a non-empty text")
        method, run = self.text_method, self.run
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        window = method.window
        full = len(ids) // window
        parts = [ids[: full * window].view(full, window)] if full else []
        if len(ids) % window:
            rest = ids[full * window:].view(1, -1)
            method.check_score_window(rest.shape[1])
            parts.append(rest)
        nats = chars = windows = 0.0
        kind = method.likelihood_kind
        with torch.no_grad(), precision.autocast(run.cfg.train.amp, run.device)():
            for part in parts:
                res = method.nll(run.model, part.to(run.device))
                nats += res.nats_per_unit * res.units
                chars += res.units
                windows += res.windows
                kind = res.kind
        return Score(nats / chars / 0.6931471805599453, kind, int(chars), int(windows))

    def evaluate(self, samples: int = 64, *, length: int = 0, sampler: str = "", steps: int = 0,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, val_windows: int = 0, progress: bool = True) -> dict[str, Any]:
        """Score the run as ``textdiffusion eval`` does and return the same result (validation bits/char,
        exact or a bound; the quality of ``samples`` samples against the judge, with real text beside it for
        scale; speed). Like the command it writes the result to ``RUN/eval.json``, which ``compare`` reads.
        ``val_windows`` limits the validation windows (0 = the whole split); the other options are
        :meth:`generate`'s. Needs the run's corpus, as training did; scores the EMA weights. ``progress``:
        bars on stderr over the scoring and the sampling (they change no number)."""
        from textdiffusion.evaluate import evaluate_run

        self._refuse_raw_weights()
        samples = check_value("samples", samples, int, POSITIVE_COUNT)
        limits.check_count(samples, limits.MAX_IMAGE_EVAL, "samples", "the most one evaluation scores",
                           "score fewer: the standard error shrinks only as 1/sqrt(n)")
        length = check_value("length", length, int, LENGTH)
        limits.check_text_length(length, True)
        steps = check_value("steps", steps, int, SAMPLE_STEPS)
        limits.check_text_steps(steps or None, True, None)
        return evaluate_run(self.run, samples=samples, length=length, sampler=sampler, steps=steps,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=check_value("seed", seed, int, SEED),
                            val_windows=check_value("val_windows", val_windows, int, Range(0, 10**9)),
                            overrides=self._overrides, progress=bool(progress))


# ---- images -------------------------------------------------------------------------------------------------
class ImageStream(_Stream):
    """The frames of one image sampling (:meth:`ImageModel.stream`); read it as :class:`TextStream`."""

    def __init__(self, model: ImageModel, request: ImageRequest, seed: int):
        self.model, self.request, self.seed = model, request, seed
        self.result: ImageSamples | None = None
        run = model.run
        gen = torch.Generator(device=run.device).manual_seed(seed)

        def work(report: Callable[[Any], None]) -> ImageResult:
            def on_step(step: int, x: torch.Tensor, x0_hat: torch.Tensor, info: dict[str, Any]) -> None:
                report((step, _cpu_copy(x), _cpu_copy(x0_hat), {k: _number(info.get(k)) for k in ("t", "nfe")}))

            return model.image_method.sample(run.model, request, gen, on_step)

        self._feed = _Feed(work, precision.autocast("off", run.device))  # images sample in fp32, as mnist does

    def __iter__(self) -> Iterator[ImageFrame]:
        for step, x, x0_hat, info in self._feed:
            yield ImageFrame(step, info.get("t"), info.get("nfe"), _pixels(x), _pixels(x0_hat))
        self.result = self.model._samples(self._feed.result, self.request.labels, self._feed.seconds, self.seed)



def _pixels(images: torch.Tensor) -> np.ndarray:
    """float images in [-1, 1] (n, C, H, W) as uint8 (n, H, W) for one channel, (n, H, W, C) for several."""
    arr = to_pixels(images.cpu()).numpy()
    return arr.transpose(0, 2, 3, 1) if arr.ndim == 4 else arr


class ImageModel(_Model):
    """An image run loaded for sampling (:func:`load`): ``generate`` digits as pixel arrays or Pillow images,
    ``stream`` the reverse process, ``evaluate`` FID and class accuracy. ``conditional`` says whether it
    draws a chosen digit; ``classes`` and ``image_size`` describe its images."""

    kind = "an image"

    @property
    def image_method(self) -> ImageDiffusion:
        """The method object, for code that needs the internals."""
        assert isinstance(self.run.method, ImageDiffusion)
        return self.run.method

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
        _refuse_other_kind(other, "generate", self, _TEXT_OPTIONS, "give digits=[...] or n")
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
        return ImageSamples(_pixels(res.images), labels, info["sampler"], info["steps"], info.get("eta"),
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
                 guidance: float | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """FID and class accuracy in the feature space of the project's MNIST classifier (trained once and
        cached), and the sampling time per image: the numbers ``textdiffusion mnist eval`` prints, and like
        it this writes ``RUN/eval.json`` (and appends to ``RUN/evals.jsonl``). ``samples`` defaults to the
        command's default; the other options are :meth:`generate`'s. Scores the EMA weights."""
        from textdiffusion.image_evaluation import evaluate_images

        self._refuse_raw_weights()
        req = self._request(None, 0, sampler, steps, eta, guidance)  # the options' types and ranges
        given = {} if samples is None else {"samples": check_value("samples", samples, int, POSITIVE_COUNT)}
        return evaluate_images(self.run, sampler=req.sampler, steps=req.steps, eta=req.eta, guidance=req.guidance,
                               seed=check_value("seed", seed, int, SEED), progress=progress,
                               overrides=self._overrides, **given)
