"""What a method is: a corruption process, its loss, its likelihood (exact or a bound) and its samplers.

A method never owns a training loop or a network class. It builds its network (:meth:`Method.build_model`),
turns a batch of clean data into a scalar loss (:meth:`Method.loss`), scores held-out data
(:meth:`Method.nll`) and generates (:meth:`Method.sample`). It also owns its defaults: which sampler and
how many steps, which samplers the live page offers, which extra numbers ``eval`` shows. Nothing outside
``methods/`` asks a method for its name to decide what to do.

Two families share this interface: :class:`TextMethod` (a tokenizer, token windows, ``SampleRequest``) and
``ImageMethod`` in :mod:`textdiffusion.methods.image` (an image spec, labelled image batches,
``ImageRequest``). Adding a method is one file with a ``@register``-ed subclass and its config class.

A text method writes its draw loop, not the preamble: :meth:`TextMethod.sample` is the one sampling template
(check the request, prepare the initial state, settle the steps, wrap the network in the request's guidance,
then the method's :meth:`~TextMethod.draw`). What it delegates lives beside it: request preparation in
:mod:`~textdiffusion.methods.requests`, token draws in :mod:`~textdiffusion.diffusion.tokens`, guidance in
:mod:`textdiffusion.guidance`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeVar

import torch

from textdiffusion.config import (
    TEMPERATURE,
    TOP_K,
    TOP_P,
    Config,
    ConfigError,
    MethodConfig,
    ModelConfig,
    option,
)
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.diffusion.tokens import TokenDraw
from textdiffusion.errors import did_you_mean
from textdiffusion.guidance import classifier_steer
from textdiffusion.guidance import labels as label_rules
from textdiffusion.guidance.free import FreeGuidance, LabelledNetwork
from textdiffusion.guidance.steer import Steer
from textdiffusion.methods import requests
from textdiffusion.methods.requests import SampleRequest, SampleResult, StepCallback
from textdiffusion.methods.spans import SpanNLL
from textdiffusion.nn.transformer import Transformer
from textdiffusion.precision import transformer_flops_per_token

# progress(done, total) of a method's nll: batches scored so far and in all, before the first and after each
NLLProgress = Callable[[int, int], None]
T = TypeVar("T")

LN2 = 0.6931471805599453


@dataclass
class NLLResult:
    """A validation negative log-likelihood, per unit of data: per character for text, per pixel dimension
    for images. ``unit`` says which, so bits per character can never be confused with bits per dimension.

    ``kind`` is "exact" when it is the model's true likelihood, "bound" when it is an upper bound on it
    (the number can only overstate the true bits per unit)."""

    nats_per_unit: float
    kind: str
    windows: int  # held-out examples scored: text windows, or images
    units: int  # the denominator: characters, or pixel dimensions
    unit: str = "char"  # "char" | "dim"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_unit(self) -> float:
        return self.nats_per_unit / LN2

    @property
    def metric(self) -> str:
        """Its name in ``metrics.jsonl`` and ``final.json``: ``val_bpc`` or ``val_bpd``."""
        return bits_key(self.unit)


def bits_key(unit: str) -> str:
    """Metric name of a validation number: ``val_bpc`` (bits per character) or ``val_bpd`` (per dimension)."""
    return "val_bpc" if unit == "char" else "val_bpd"


def report_batches(batches: Sequence[T], progress: NLLProgress | None) -> Iterator[T]:
    """``batches`` one by one, telling ``progress`` (done, total) before the first and after each is used.

    This is how a method's :meth:`~Method.nll` reports progress: the scoring draws its Monte-Carlo noise from
    one generator across all batches, so it cannot be split into pieces scored separately (the numbers would
    change); counting the batches inside the loop changes nothing."""
    if progress is not None:
        progress(0, len(batches))
    for done, batch in enumerate(batches, start=1):
        yield batch
        if progress is not None:
            progress(done, len(batches))


def score(method: Method, model: Any, windows: Any, batch_size: int = 64, progress: bool = False,
          desc: str = "", exact: bool = False) -> NLLResult:
    """``method.nll`` (with ``exact``: ``method.exact_nll``, the chain rule of its ``exact_sampler``) with a
    progress bar over its batches on stderr when ``progress`` (throttled off a terminal, see
    :mod:`textdiffusion.progress`). A method whose ``nll`` predates the ``progress`` argument is scored as
    before, silently, rather than refused."""
    nll = method.exact_nll if exact else method.nll
    if not progress or "progress" not in inspect.signature(nll).parameters:
        return nll(model, windows, batch_size=batch_size)
    from textdiffusion.progress import progress_bar

    bar = None

    def tick(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # opened once the total is known, so even its first line in a log says it
            bar = progress_bar(total=total, desc=desc or f"scoring {len(windows):,} windows", unit="batch")
        bar.update(done - bar.n)

    try:
        return nll(model, windows, batch_size=batch_size, progress=tick)
    finally:
        if bar is not None:
            bar.close()


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make a method available by name (``--method NAME``), with its config class. The config class learns the
    method's samplers here, so the config can check ``method.sampler`` without knowing the method; its default
    ``name`` must be the method's, which is how a recorded config finds its class again (see
    :mod:`textdiffusion.methods.configs`)."""
    declared = next(f.default for f in fields(cls.config_class) if f.name == "name")
    if declared != cls.name:
        raise TypeError(f"{cls.__name__}.config_class, {cls.config_class.__name__}, names the method {declared!r}; "
                        f"give its name field the default {cls.name!r}")
    cls.config_class.samplers = tuple(cls.samplers)
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))}"
                          f"{did_you_mean(name, REGISTRY)}")
    return REGISTRY[name]


Request = TypeVar("Request")
Result = TypeVar("Result")


class Method(ABC, Generic[Request, Result]):
    """The interface every method implements, text or image. ``Request``/``Result`` are what its sampler
    takes and returns."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    samplers: ClassVar[tuple[str, ...]]  # the first is the default
    likelihood_kind: ClassVar[str]  # "exact" | "bound"
    unit: ClassVar[str]  # what likelihoods are divided by: "char" | "dim"
    # whether ``loss`` is the negative log-likelihood or its bound, in nats per token (the progress bar then shows
    # it in bits beside the validation bits); False for a surrogate objective such as a noise-prediction MSE
    loss_is_likelihood: ClassVar[bool] = False
    family: ClassVar[str]  # "text" | "image": which commands, API model and live page take its runs
    command: ClassVar[str] = "textdiffusion"  # the command that trains, samples and evaluates its runs
    # whether the loss reads the network's parameters only through its forward pass: DistributedDataParallel
    # then averages gradients during backward; a method that also reads them directly (an embedding table for
    # rounding) sets False, and the trainer averages its gradients after backward instead
    parameters_in_forward_only: ClassVar[bool] = True
    # whether some training steps leave parameters without a gradient (a branch taken at random): DDP must then
    # search the autograd graph for them every step (``find_unused_parameters``), a cost and a warning per
    # process that methods using every parameter on every step avoid (tests/test_distributed.py checks which)
    leaves_parameters_unused: ClassVar[bool] = False
    # positions the network processes per unit of training data (for model FLOPs): 1, or 2 for a method that
    # trains on a noisy and a clean copy side by side
    forward_tokens_per_unit: ClassVar[int] = 1
    # per-sample numbers a sampler reports in ``info`` that ``eval`` averages, as key: (label, explanation)
    sample_stats: ClassVar[dict[str, tuple[str, str]]] = {}
    # validation ``details`` keys ``eval`` shows as rows, with their labels (training terms, not likelihoods), or
    # with (label, note) where the note says what the number is (a term of the bound)
    eval_terms: ClassVar[dict[str, str | tuple[str, str]]] = {}

    cfg: Any  # the method's own config class

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Config, vocab: Any) -> Method:
        """Build from a whole run config and what the data defines (a tokenizer, an image spec)."""

    @property
    @abstractmethod
    def window(self) -> int:
        """Size of one training example: tokens per window, or the image side."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module: ...

    @abstractmethod
    def loss(self, model: Any, x: Any, generator: torch.Generator) -> torch.Tensor:
        """Scalar training loss for a batch of clean data."""

    def at_training_step(self, step: int) -> None:
        """Told the optimizer step whose loss comes next, before it, by the trainer (a resumed run from where it
        resumes): a method whose training changes over the steps (annealed attention) reads it; others ignore it."""

    @abstractmethod
    def nll(self, model: Any, windows: Any, batch_size: int = 64, progress: NLLProgress | None = None) -> NLLResult:
        """Validation likelihood on fixed data (deterministic given the config). ``progress(done, total)``, if
        given, hears of each batch (:func:`report_batches`); it must not change a number, so it only counts."""

    @abstractmethod
    def sample(self, model: Any, req: Request, generator: torch.Generator, on_step: Any = None) -> Result: ...

    # ---- the method's own defaults ---------------------------------------------------------------------
    @property
    def default_sampler(self) -> str:
        return self.cfg.sampler or self.samplers[0]

    def check_sampler(self, sampler: str = "") -> str:
        """The sampler a request gets: the one asked for, else the run's, else the method's first."""
        sampler = sampler or self.default_sampler
        if sampler not in self.samplers:
            raise ConfigError(f"method {self.name} has no sampler {sampler!r}; choose one of "
                              f"{', '.join(self.samplers)}{did_you_mean(sampler, self.samplers)}")
        return sampler

    def default_steps(self, length: int, sampler: str = "") -> int | None:
        """Network evaluations a sampling takes when no ``--steps`` is given, for ``length`` tokens; None when
        the step count is not a choice (``ar`` writes one token per evaluation)."""
        return None

    @property
    def max_steps(self) -> int | None:
        """The most sampling steps the trained model allows (the training grid of a discrete process)."""
        return None

    def interactive_samplers(self) -> tuple[str, ...]:
        """The samplers a request from the live page may pick (those that need nothing but the request)."""
        return self.samplers

    # ---- what the trainer and the run reader ask of every method ---------------------------------------
    def flops_per_unit(self, n_parameters: int) -> float | None:
        """Model FLOPs per unit of training data (for the utilisation of a GPU), None where not counted."""
        return None

    def take_label_names(self, names: Any) -> None:
        """Receive the label names a run recorded (config.json's ``corpus.labels``); ignored by default."""

    def companion_runs(self) -> dict[str, str]:
        """Other run directories this method's sampling reads, keyed by the option that names each; the caller
        checks and opens them on the same device and hands them to :meth:`attach_companions`. None by default."""
        return {}

    def attach_companions(self, runs: dict[str, Any]) -> None:
        """Receive the :meth:`companion_runs` opened (loaded runs, under the same keys)."""
        if runs:
            raise ConfigError(f"the {self.name} method reads no other run")


@dataclass
class TextMethodConfig(MethodConfig):
    """Options every text method has: the defaults of the token draw (temperature, top-k, nucleus)."""

    temperature: float = option(1.0, TEMPERATURE, "default temperature of the token draw (below 1 sharpens, above 1 "
                                                  "flattens)", sampling=True)
    top_k: int = option(0, TOP_K, "default: draw from the k likeliest tokens only (0 = all)", sampling=True)
    top_p: float = option(1.0, TOP_P, "default nucleus: draw from the likeliest tokens holding this much probability "
                                      "(1 = all)", sampling=True)


class TextMethod(Method[SampleRequest, SampleResult]):
    """A method on token windows: built from a tokenizer, sampled with a :class:`SampleRequest`."""

    unit = "char"
    family = "text"
    attention: ClassVar[str]  # the backbone's attention mode
    supports_infill: ClassVar[bool] = True  # fills blanks anywhere (False: continues a prompt only)
    infill_hint: ClassVar[str] = ""  # how a run of this method could fill blanks, ending a refusal of --infill
    extends_past_context: ClassVar[bool] = False  # can write more than one context window
    # writes past its context by chaining windows in the template (:meth:`draw_chained`): each window after the
    # first starts with the tail of the text so far fixed, as a prompt; for methods whose draw loop respects
    # fixed positions and that cannot slide a cache
    chains_windows: ClassVar[bool] = False
    # trains on labelled text (data.labels) with a label-conditioned backbone, and samples with --label and
    # classifier-free guidance (textdiffusion.guidance.free)
    supports_labels: ClassVar[bool] = False
    # the rule by which a noisy classifier (textdiffusion.guidance.classifier) steers this method's sampler, named
    # for docs and results ("" = the method cannot be steered by a classifier); see classifier_network
    classifier_rule: ClassVar[str] = ""
    # the sampler whose exact likelihood ``exact_nll`` scores beside the bound ``nll`` reports ("" = none: ar's
    # ``nll`` is exact itself); eval, final.json, compare and score show it labelled with this name
    exact_sampler: ClassVar[str] = ""

    def __init__(self, cfg: Any, model_cfg: ModelConfig, tokenizer: Tokenizer):
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.tok = tokenizer
        self.num_labels = 0  # labels of a labelled run (the backbone's "no label" row is this index)
        self.label_dropout = 0.0  # train.label_dropout, read by the loss of a labelled run
        self.label_names: tuple[str, ...] = ()  # label i's name (a speaker), from the data or the run's record
        self.classifier: Any = None  # the run's NoisyClassifier, handed over for rule=classifier (see use_classifier)

    @classmethod
    def from_config(cls, cfg: Config, vocab: Any) -> TextMethod:
        if not isinstance(vocab, Tokenizer):
            raise ConfigError(f"the {cls.name} method trains on text; its data must be a text corpus")
        method = cls(cfg.method, cfg.model, vocab)
        if cfg.data.labels and cls.supports_labels:
            method.num_labels, method.label_dropout = cfg.data.label_top, cfg.train.label_dropout
        return method

    # ---- labels and classifier-free guidance ------------------------------------------------------
    def network_labels(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """The labels a forward pass gives the backbone: None for an unlabelled model; for a labelled one
        ``labels``, or the "no label" row for all ``n`` rows when there are none (plain windows, an
        unconditional sample: the p(x) that label dropout trained)."""
        if not self.num_labels:
            return None
        if labels is None:
            return torch.full((n,), self.num_labels, dtype=torch.long, device=device)
        return labels

    def drop_labels(self, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor | None:
        """Training labels with a ``label_dropout`` fraction replaced by "no label" (Ho & Salimans 2022), so one
        network learns p(x | label) and p(x). No draw is made for unlabelled batches."""
        if labels is None or not self.label_dropout:
            return labels
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.num_labels), labels)

    def request_label(self, req: SampleRequest) -> tuple[int | None, float]:
        """The label index and scale of a request's classifier-free guidance, checked
        (:func:`textdiffusion.guidance.labels.free_label`)."""
        return label_rules.free_label(self, req)

    def classifier_request(self, req: SampleRequest) -> tuple[int, float] | None:
        """The label index and scale of a request steered by the run's noisy classifier, checked; None for any
        other request and for scale 0 (:func:`textdiffusion.guidance.labels.classifier_label`)."""
        return label_rules.classifier_label(self, req)

    def check_classifier_request(self, req: SampleRequest) -> float:
        """What can be checked of a request before its classifier exists
        (:func:`textdiffusion.guidance.labels.check_classifier_request`)."""
        return label_rules.check_classifier_request(self, req)

    def classifier_info(self, req: SampleRequest) -> dict[str, Any]:
        """What a classifier-guided sampling adds to its result's ``info`` (nothing for any other)."""
        return label_rules.classifier_info(self, req)

    def use_classifier(self, classifier: Any) -> None:
        """Receive the run's :class:`~textdiffusion.guidance.classifier.NoisyClassifier` (rule=classifier)."""
        self.classifier = classifier

    # ---- classifier guidance: what a noisy classifier of this method's states looks like ---------------------
    def classifier_network(self, shape: dict[str, int], num_labels: int, model: Any) -> torch.nn.Module:
        """A fresh classifier network over this method's noisy states (a
        :class:`~textdiffusion.nn.text_classifier.ConvTextClassifier` of ``shape``), ``num_labels`` outputs.
        ``model`` is the run's trained network, for a method whose states are built from it (embeddings)."""
        raise ConfigError(f"the {self.name} method has no classifier-guidance rule")

    def classifier_inputs(self, model: Any, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clean windows ``x`` -> (states of this method's sampler, their noise levels or None): what the
        classifier is trained on, drawn from the method's own forward process."""
        raise ConfigError(f"the {self.name} method has no classifier-guidance rule")

    def classifier_logits(self, net: torch.nn.Module, inputs: torch.Tensor,
                          t: torch.Tensor | None) -> torch.Tensor:
        """The classifier's label logits: (n, K) for whole states, or (n, L, K) for every prefix (ar)."""
        return net(inputs, t)

    def call_network(self, model: Any, labels: torch.Tensor | None, x: torch.Tensor, *args: Any,
                     **kwargs: Any) -> torch.Tensor:
        """``model(x, *args, **kwargs)`` with :meth:`network_labels` for ``x``'s rows: an unlabelled backbone is
        called without a ``labels`` argument at all (so a method's network needs none unless it is labelled)."""
        labels = self.network_labels(labels, x.shape[0], x.device)
        if labels is None:
            return model(x, *args, **kwargs)
        return model(x, *args, labels=labels, **kwargs)

    def label_info(self, label: int | None, w: float) -> dict[str, Any]:
        """What a classifier-free-guided sampling adds to its result's ``info`` (nothing for an unlabelled one)."""
        return label_rules.label_info(self, label, w)

    # ---- shape of the problem -------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Length of the clean training crops."""
        return self.model_cfg.context

    @property
    def time_conditioning(self) -> bool:
        return False

    def build_model(self) -> Transformer:
        # Inputs include the special tokens; outputs are ordinary symbols only, so a method can never
        # predict a mask/pad/bos (for masked diffusion this *is* SUBS's "zero masking probabilities").
        return Transformer(self.model_cfg, self.tok.vocab_size, out_dim=self.tok.n_symbols,
                           attention=self.attention, time_conditioning=self.time_conditioning,
                           num_labels=self.num_labels)

    # ---- training and likelihood -----------------------------------------------------------------
    def chars_in(self, windows: torch.Tensor) -> int:
        """Characters the windows stand for: the per-character denominator of every likelihood. One per
        token for the char tokenizer; the decoded length for BPE or WordPiece tokens."""
        if self.tok.kind == "char":
            return windows.numel()
        return sum(len(self.tok.decode(row.tolist())) for row in windows.cpu())

    @abstractmethod
    def loss(self, model: Any, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar training loss for clean windows ``x`` (B, window)."""

    @abstractmethod
    def nll(self, model: Any, windows: torch.Tensor, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        """Validation nats per character on fixed windows (deterministic given the config)."""

    def span_nll(self, model: Any, windows: torch.Tensor, span: torch.Tensor, batch_size: int = 64) -> SpanNLL:
        """-log p(x on ``span`` | x elsewhere) per window (``span``: (n, L) bool), exact or a bound as the result
        says (:mod:`textdiffusion.methods.spans`): what infilling scores. A method without such a likelihood
        refuses."""
        raise ConfigError(f"the {self.name} method has no likelihood of a span given the text on both sides")

    def check_score_window(self, length: int) -> None:
        """Refuse a window of ``length`` tokens, shorter than the context, that :meth:`nll` cannot score (the
        Python API's ``score`` scores a text's rest as one); any length can be scored by default."""

    # ---- generation: one template, the method's draw loop inside ----------------------------------------
    @torch.no_grad()
    def sample(self, model: Any, req: SampleRequest, generator: torch.Generator,
               on_step: StepCallback | None = None) -> SampleResult:
        """The one sampling template: check the request -> prepare the initial state (prompt or infill) -> check
        its length -> settle the steps -> the network wrapped by the request's classifier-free guidance, and the
        noisy classifier's steer -> the method's :meth:`draw` -> the result with what was asked."""
        sampler = self.check_sampler(req.sampler)
        self.check_decoding(req, sampler)
        self.refuse_sampler(sampler)
        label, w = self.request_label(req)
        steer = self.steer_for(req)
        state, fixed = self.prepare(req, next(model.parameters()).device)
        self.check_length(state.shape[1])
        overlap = self.check_overlap(req.overlap)
        starts = self.window_starts(state.shape[1], overlap)
        steps = self.sample_steps(req, self.drawn_length(state.shape[1]))
        check_draw(req.temperature, req.top_k, req.top_p)
        forward = FreeGuidance(label, w, self.num_labels).wrap(self.labelled_network(model, state.shape[0]))
        plan = DrawPlan(sampler, steps, TokenDraw(req.temperature, req.top_k, req.top_p), steer)
        if len(starts) == 1:
            ids, nfe = self.draw(model, forward, state, fixed, plan, generator, on_step)
            chained = {}
        else:
            ids, nfe = self.draw_chained(model, forward, state, fixed, plan, generator, on_step, starts)
            chained = {"windows": len(starts), "overlap": overlap}
        return SampleResult(ids, nfe, fixed, {"sampler": sampler, **self.sample_info(plan), **chained,
                                              **self.label_info(label, w), **self.classifier_info(req),
                                              **plan.notes})

    def window_starts(self, length: int, overlap: int) -> list[int]:
        """Where each window of a sample of ``length`` tokens starts: just 0, unless the method chains windows
        past its context (:func:`textdiffusion.methods.requests.window_starts`)."""
        return requests.window_starts(length, self.window, overlap) if self.chains_windows else [0]

    def drawn_length(self, length: int) -> int:
        """Tokens one draw loop fills for a sample of ``length``: one window when the method chains them."""
        return min(length, self.window) if self.chains_windows else length

    def check_overlap(self, overlap: int) -> int:
        """The overlap of chained windows a request gets (:func:`textdiffusion.methods.requests.check_overlap`)."""
        return requests.check_overlap(overlap, self.window, self.name, self.chains_windows)

    def draw_chained(self, model: Any, forward: Callable[..., torch.Tensor], state: torch.Tensor,
                     fixed: torch.Tensor, plan: DrawPlan, generator: torch.Generator,
                     on_step: StepCallback | None, starts: list[int]) -> tuple[torch.Tensor, float]:
        """Text longer than the window, drawn window after window (tiny-diffusion's chained canvases): the window
        at each of ``starts`` is one ordinary :meth:`draw` in which every position written so far (the previous
        window's tail, the overlap, and the prompt or template's known text) is fixed, exactly as a prompt is.
        So the network always sees a window of the length it was trained on, and each window continues the text
        before it. ``on_step`` sees the whole text at every step, the steps and network evaluations counted on
        across the windows (a window's own initial state, already shown as the last frame, is not repeated).
        A window with nothing left to write (a long stretch of known template) is skipped.
        -> (ids, network evaluations per sequence, summed over the windows)."""
        ids, known = state.clone(), fixed.clone()
        nfe, steps = 0.0, 0
        for start in starts:
            span = slice(start, start + self.window)
            if bool(known[:, span].all()):
                continue
            watch = None if on_step is None else WindowWatch(on_step, ids, span, steps, nfe)
            part, part_nfe = self.draw(model, forward, ids[:, span].clone(), known[:, span].clone(), plan, generator,
                                       watch)
            ids[:, span] = part
            known[:, span] = True
            nfe += part_nfe
            steps = watch.last if watch is not None else steps
        return ids, nfe

    def refuse_sampler(self, sampler: str) -> None:
        """Refuse a sampler this run cannot use exactly (masked: the cached one with time conditioning)."""

    def sample_steps(self, req: SampleRequest, length: int) -> int | None:
        """The steps a request takes: its own, else the method's default; None when the method takes no choice."""
        default = self.default_steps(length)
        if default is None:
            return None
        steps = req.steps or default
        if steps < 1:
            raise ConfigError("--steps must be >= 1")
        return steps

    def steer_for(self, req: SampleRequest) -> Steer:
        """The draw loop's :class:`~textdiffusion.guidance.steer.Steer`: the method's classifier rule toward the
        request's label, or the unsteered one."""
        steer = self.classifier_request(req)
        if steer is None:
            return Steer()
        return classifier_steer(self.classifier_rule, self.classifier, *steer, self.tok.vocab_size)

    def labelled_network(self, model: Any, n: int) -> LabelledNetwork:
        """The network as the draw loop calls it, with the labels explicit (see
        :class:`~textdiffusion.guidance.free.LabelledNetwork`), for a batch of ``n`` sequences; the template wraps
        it in the request's guidance. By default ``model(x, *args)`` under the labels."""
        return LabelledNetwork(lambda labels, x, *args: self.call_network(model, labels, x, *args))

    def draw(self, model: Any, forward: Callable[..., torch.Tensor], state: torch.Tensor, fixed: torch.Tensor,
             plan: DrawPlan, generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """The method's own draw loop: fill ``state``'s unknown positions (``~fixed``, the mask id there) with
        ``forward`` (:meth:`labelled_network`, guided), reporting each step to ``on_step``; -> (ids, network
        evaluations per sequence). A method that overrides :meth:`sample` whole need not write one."""
        raise NotImplementedError(f"the {self.name} method has no draw loop")

    def sample_info(self, plan: DrawPlan) -> dict[str, Any]:
        """What a sampling's result says of how it was drawn, after the sampler's name."""
        return {}

    def ignored_decoding(self, sampler: str) -> tuple[str, ...]:
        """The token-draw options (``temperature``, ``top_k``, ``top_p``) ``sampler`` never reads. Giving one
        of them is refused by :meth:`check_decoding` rather than accepted and silently ignored."""
        return ()

    def check_decoding(self, req: SampleRequest, sampler: str) -> None:
        """Refuse a temperature, top-k or top-p that ``sampler`` would ignore (its neutral value passes)."""
        neutral = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        given = [k for k in self.ignored_decoding(sampler) if getattr(req, k) != neutral[k]]
        if given:
            raise ConfigError(f"{', '.join(given)} has no effect on {self.name}'s {sampler} sampler, which does "
                              f"not draw tokens from a distribution; leave it out (or --set method.{given[0]}="
                              f"{neutral[given[0]]})")

    def decoding(self, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None) -> dict[str, Any]:
        """The token draw a request gets: each value given, else the run's own ``method.temperature``,
        ``top_k``, ``top_p`` (as trained, or changed with ``sample``/``eval --set``). The callers pass what the
        user asked for, None when unasked, so an unset flag can never override the run's setting."""
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        neutral = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # a method config without these draws plainly
        return {k: getattr(self.cfg, k, neutral[k]) if v is None else v for k, v in given.items()}

    def training_samples(self) -> SampleRequest:
        """What the trainer draws at each evaluation, into ``samples/step_N.txt``: the run's own token draw."""
        return SampleRequest(n=2, **self.decoding())

    def flops_per_unit(self, n_parameters: int) -> float | None:
        """The transformer's forward and backward FLOPs per token, times the positions per character."""
        m = self.model_cfg
        return self.forward_tokens_per_unit * transformer_flops_per_token(n_parameters, m.n_layer, m.n_embd,
                                                                          self.window)

    def take_label_names(self, names: Any) -> None:
        """The names ``--label`` takes, as training recorded them, when they fit the run's labels."""
        if (self.num_labels and isinstance(names, list) and len(names) == self.num_labels
                and all(isinstance(x, str) for x in names)):
            self.label_names = tuple(names)

    def prepare(self, req: SampleRequest, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial state from prompt / infill (:func:`textdiffusion.methods.requests.initial_state`): (n,
        length) ids with masks at unknown positions, and a bool tensor of the positions fixed by the user."""
        return requests.initial_state(req, self.tok, self.model_cfg.context, device, self.name, self.supports_infill,
                                      self.infill_hint)

    @property
    def writes_past_context(self) -> bool:
        """Whether ``--length`` may exceed the context: a sliding cache, or windows chained in the template."""
        return self.extends_past_context or self.chains_windows

    def check_length(self, length: int) -> None:
        """One window at a time, unless the method can slide past its context or chains windows."""
        requests.check_length(length, self.tok, self.model_cfg.context, self.name, self.writes_past_context)

    # ---- repair: corrupted text back to clean (textdiffusion.methods.repairs) ---------------------------------
    # the RepairRequest fields this method's repair reads (None: it cannot repair)
    repair_options: ClassVar[tuple[str, ...] | None] = None

    def check_repair(self) -> None:
        """Refuse a repair this method cannot make."""
        if self.repair_options is None:
            raise ConfigError(f"the {self.name} method cannot repair text; use a run of ar, masked, block or uniform")

    def repair(self, model: Any, state: torch.Tensor, fixed: torch.Tensor, channel: Any, req: Any,
               generator: torch.Generator) -> torch.Tensor:
        """The (1, L) noisy window ``state`` repaired, ``fixed`` positions (what earlier windows repaired) kept,
        knowing the ``channel`` (:class:`~textdiffusion.corruption.Channel`) that corrupted it and the
        :class:`~textdiffusion.methods.repairs.RepairRequest`; -> (1, L) ids."""
        self.check_repair()
        raise NotImplementedError(f"the {self.name} method names repair options but has no repair")


class WindowWatch:
    """The ``on_step`` of one window of a chained draw (:meth:`TextMethod.draw_chained`): hands the watcher the
    whole text (``ids``: what the windows before wrote, masks beyond) with this window's state in ``span``, the
    step and network evaluations counted on from ``steps``/``nfe`` before it. A later window's initial state
    is the frame before it already, so only the first window reports step 0."""

    def __init__(self, on_step: StepCallback, ids: torch.Tensor, span: slice, steps: int, nfe: float):
        self.on_step, self.ids, self.span, self.steps, self.nfe = on_step, ids, span, steps, nfe
        self.last = steps  # the last step number reported, where the next window counts on from

    def __call__(self, step: int, part: torch.Tensor, info: dict[str, Any]) -> None:
        if step == 0 and self.steps:
            return
        whole = self.ids.clone()
        whole[:, self.span] = part
        seen = {**info, "nfe": info["nfe"] + self.nfe} if "nfe" in info else info
        self.last = self.steps + step
        self.on_step(self.last, whole, seen)


@dataclass(frozen=True)
class DrawPlan:
    """What the sampling template settled for a draw loop: the sampler, its steps (None where the method takes no
    choice), the token draw and the noisy classifier's steer (unsteered unless asked)."""

    sampler: str
    steps: int | None
    tokens: TokenDraw
    steer: Steer
    # what the draw loop found out that the result reports last (embedding: how the rounding went)
    notes: dict[str, Any] = field(default_factory=dict)


def check_draw(temperature: float, top_k: int, top_p: float) -> None:
    """Refuse a token draw that would sample silently wrong: a nan temperature (all of one token), a top-p of 2
    (silently off)."""
    if not TEMPERATURE.allows(temperature):
        raise ConfigError(f"--temperature must be {TEMPERATURE.describe()}, got {temperature}")
    if not TOP_K.allows(top_k):
        raise ConfigError(f"--top-k must be {TOP_K.describe(True)} (0 keeps every character), got {top_k}")
    if not TOP_P.allows(top_p):
        raise ConfigError(f"--top-p must be {TOP_P.describe()} (1 keeps every character), got {top_p}")
