"""What a method is: a corruption process, its loss, its likelihood (exact or a bound) and its samplers.

A method never owns a training loop or a network class. It builds its network (:meth:`Method.build_model`),
turns a batch of clean data into a scalar loss (:meth:`Method.loss`), scores held-out data
(:meth:`Method.nll`) and generates (:meth:`Method.sample`). It also owns its defaults: which sampler and
how many steps, which samplers the live page offers, which extra numbers ``eval`` shows. Nothing outside
``methods/`` asks a method for its name to decide what to do.

Two families share this interface: :class:`TextMethod` (a tokenizer, token windows, ``SampleRequest``) and
``ImageMethod`` in :mod:`textdiffusion.methods.image` (an image spec, labelled image batches,
``ImageRequest``). Adding a method is one file with a ``@register``-ed subclass and its config class.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F

from textdiffusion.catalogue import GUIDANCE_RULES
from textdiffusion.config import (
    METHOD_CONFIGS,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    Bound,
    Config,
    ConfigError,
    MethodConfig,
    ModelConfig,
    sampling,
)
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.nn.transformer import Transformer

# on_step(step, state, info): state is (n, length) ids with tokenizer.mask_id where still unknown
StepCallback = Callable[[int, torch.Tensor, dict[str, Any]], None]
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
          desc: str = "") -> NLLResult:
    """``method.nll`` with a progress bar over its batches on stderr when ``progress`` (throttled off a
    terminal, see :mod:`textdiffusion.progress`). A method whose ``nll`` predates the ``progress`` argument
    is scored as before, silently, rather than refused."""
    if not progress or "progress" not in inspect.signature(method.nll).parameters:
        return method.nll(model, windows, batch_size=batch_size)
    from textdiffusion.progress import progress_bar

    bar = None

    def tick(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # opened once the total is known, so even its first line in a log says it
            bar = progress_bar(total=total, desc=desc or f"scoring {len(windows):,} windows", unit="batch")
        bar.update(done - bar.n)

    try:
        return method.nll(model, windows, batch_size=batch_size, progress=tick)
    finally:
        if bar is not None:
            bar.close()


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make a method available by name (``--method NAME``), with its config class."""
    REGISTRY[cls.name] = cls
    METHOD_CONFIGS[cls.name] = cls.config_class
    return cls


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
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
    family: ClassVar[str]  # "text" | "image": which commands, API model and live page take its runs
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
    # validation ``details`` keys ``eval`` shows as rows, with their labels (training terms, not likelihoods)
    eval_terms: ClassVar[dict[str, str]] = {}

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
                              f"{', '.join(self.samplers)}")
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


@dataclass
class SampleRequest:
    """What the user asked for. ``length`` counts every token of the output (characters for the char
    tokenizer), prompt included."""

    n: int = 1
    length: int = 0  # 0 = the model's context
    prompt: str = ""
    infill: str | None = None
    placeholder: str = "_"
    sampler: str = ""
    steps: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    label: str = ""  # a labelled run's label (a speaker's name) to write as; "" = none (unconditional)
    guidance: float = 1.0  # guidance scale: 0 unconditional, 1 plain conditional (Bayes' rule), above 1 sharper
    rule: str = ""  # how to steer toward ``label``: "free" (classifier-free, a labelled run), "classifier" (a noisy
    # classifier beside any run; see textdiffusion.noisy_classifier); "" = free


@dataclass
class SampleResult:
    ids: torch.Tensor  # (n, length)
    nfe: float  # network evaluations per sequence (a forward of the whole batch counts 1)
    fixed: torch.Tensor | None = None  # (n, length) bool: positions the user gave (prompt/infill)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextMethodConfig(MethodConfig):
    """Options every text method has: the defaults of the token draw (temperature, top-k, nucleus)."""

    temperature: float = sampling(1.0)
    top_k: int = sampling(0)
    top_p: float = sampling(1.0)

    bounds: ClassVar[dict[str, Bound]] = {"temperature": TEMPERATURE, "top_k": TOP_K, "top_p": TOP_P}
    docs: ClassVar[dict[str, str]] = {
        "temperature": "default temperature of the token draw (below 1 sharpens, above 1 flattens)",
        "top_k": "default: draw from the k likeliest tokens only (0 = all)",
        "top_p": "default nucleus: draw from the likeliest tokens holding this much probability (1 = all)",
    }


def _check_guidance(req: SampleRequest) -> float:
    """A request's guidance scale and rule, checked (guidance needs a label)."""
    from textdiffusion.config import GUIDANCE

    if req.rule not in ("", *GUIDANCE_RULES):
        raise ConfigError(f"unknown guidance rule {req.rule!r}; choose one of {', '.join(GUIDANCE_RULES)}")
    w = req.guidance
    if not GUIDANCE.allows(w):
        raise ConfigError(f"guidance must be {GUIDANCE.describe()}, got {w}")
    if not req.label and (w != 1.0 or req.rule):
        raise ConfigError("guidance steers toward a label; give --label NAME with --guidance or --guidance-rule "
                          "(or leave them out)")
    return w


class TextMethod(Method[SampleRequest, SampleResult]):
    """A method on token windows: built from a tokenizer, sampled with a :class:`SampleRequest`."""

    unit = "char"
    family = "text"
    attention: ClassVar[str]  # the backbone's attention mode
    supports_infill: ClassVar[bool] = True  # fills blanks anywhere (False: continues a prompt only)
    extends_past_context: ClassVar[bool] = False  # can write more than one context window
    # trains on labelled text (data.labels) with a label-conditioned backbone, and samples with --label and
    # classifier-free guidance (see :meth:`guided`)
    supports_labels: ClassVar[bool] = False
    # the rule by which a noisy classifier (textdiffusion.noisy_classifier) steers this method's sampler, named
    # for docs and results ("" = the method cannot be steered by a classifier); see classifier_network
    classifier_rule: ClassVar[str] = ""

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
        """The label index and scale of a request's *classifier-free* guidance, checked: a label needs a labelled
        run and one of its names; guidance needs a label. A request steered by a classifier (``rule=classifier``)
        asks the network for nothing conditional: (None, 0.0), after :meth:`classifier_request`'s checks."""
        if req.rule == "classifier":
            self.classifier_request(req)  # checks the scale and the rule too
            return None, 0.0
        w = _check_guidance(req)
        if not req.label:
            return None, w
        if not self.num_labels:
            how = (" or steer it with a speaker classifier instead: --guidance-rule classifier"
                   if self.classifier_rule else "")
            raise ConfigError(f"this {self.name} run was trained without labels, so --label {req.label!r} has nothing "
                              f"to steer; train with --set data.labels=speaker{how}")
        from textdiffusion.data.speakers import label_index

        names = self.label_names or tuple(str(i) for i in range(self.num_labels))
        i = label_index(names, req.label)
        if i is not None:
            return i, w
        raise ConfigError(f"label {req.label!r} is not one of this run's {len(names)} labels; choose one of "
                          f"{', '.join(names)}")

    def classifier_request(self, req: SampleRequest) -> tuple[int, float] | None:
        """The label index and scale of a request steered by the run's noisy classifier, checked; None for any
        other request, and for scale 0, which is the unconditional sampler exactly (the classifier is not run)."""
        if req.rule != "classifier":
            return None
        w = self.check_classifier_request(req)
        if self.classifier is None:
            raise ConfigError("classifier guidance needs the run's speaker classifier; sample through "
                              "textdiffusion.load(...) or the CLI, which train it on first use")
        from textdiffusion.data.speakers import label_index

        names = self.classifier.names
        i = label_index(names, req.label)
        if i is None:
            raise ConfigError(f"label {req.label!r} is not one of the speaker classifier's {len(names)} speakers; "
                              f"choose one of {', '.join(names)}")
        return (i, w) if w > 0 else None

    def check_classifier_request(self, req: SampleRequest) -> float:
        """What can be checked of a request before its classifier exists (so none is trained for a request that
        would fail anyway): the scale, and for rule=classifier a method with a rule and a label."""
        w = _check_guidance(req)
        if req.rule == "classifier":
            if not self.classifier_rule:
                raise ConfigError(f"the {self.name} method has no classifier-guidance rule; use --guidance-rule free "
                                  f"on a run trained with --set data.labels=speaker")
            if not req.label:
                raise ConfigError("--guidance-rule classifier steers toward a speaker; give --label NAME")
        return w

    def classifier_info(self, req: SampleRequest) -> dict[str, Any]:
        """What a classifier-guided sampling adds to its result's ``info`` (nothing for any other)."""
        if req.rule != "classifier":
            return {}
        return {"label": req.label, "guidance": req.guidance, "rule": f"classifier ({self.classifier_rule})"}

    def use_classifier(self, classifier: Any) -> None:
        """Receive the run's :class:`~textdiffusion.noisy_classifier.NoisyClassifier` (rule=classifier)."""
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

    def guidance_labels(self, label: int | None, w: float, n: int,
                        device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """The labels of one guided forward over ``n`` rows, and whether the batch is doubled.

        Classifier-free guidance on token log-probabilities (Schiff et al. 2024, "Simple Guidance Mechanisms
        for Discrete Diffusion Models"; for AR, Sanchez et al. 2023, "Stay on Topic with Classifier-Free
        Guidance"):  log p_w(x | c) = log p(x) + w (log p(x | c) - log p(x)), renormalised by the sampler.
        w = 0 (or no label) is the unconditional model alone and w = 1 the conditional one alone: one pass of
        ``n`` rows, exactly the draws of that model. Any other w runs both in one forward of ``2n`` rows
        (conditional first, then "no label"), which :meth:`combine_guided` turns back into ``n``."""
        if label is None or w == 0.0:
            return self.network_labels(None, n, device), False
        cond = torch.full((n,), label, dtype=torch.long, device=device)
        if w == 1.0:
            return cond, False
        return torch.cat((cond, torch.full_like(cond, self.num_labels))), True

    def call_network(self, model: Any, labels: torch.Tensor | None, x: torch.Tensor, *args: Any,
                     **kwargs: Any) -> torch.Tensor:
        """``model(x, *args, **kwargs)`` with :meth:`network_labels` for ``x``'s rows: an unlabelled backbone is
        called without a ``labels`` argument at all (so a method's network needs none unless it is labelled)."""
        labels = self.network_labels(labels, x.shape[0], x.device)
        if labels is None:
            return model(x, *args, **kwargs)
        return model(x, *args, labels=labels, **kwargs)

    def label_info(self, label: int | None, w: float) -> dict[str, Any]:
        """What a guided sampling adds to its result's ``info``: the label's name and the scale (nothing
        for an unlabelled one)."""
        if label is None:
            return {}
        return {"label": self.label_names[label] if self.label_names else label, "guidance": w}

    @staticmethod
    def combine_guided(logits: torch.Tensor, w: float) -> torch.Tensor:
        """(2n, ..., V) logits of a doubled forward -> (n, ..., V) guided log-probabilities."""
        cond, uncond = logits.float().log_softmax(-1).chunk(2)
        return uncond + w * (cond - uncond)

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

    def check_score_window(self, length: int) -> None:
        """Refuse a window of ``length`` tokens, shorter than the context, that :meth:`nll` cannot score (the
        Python API's ``score`` scores a text's rest as one); any length can be scored by default."""

    # ---- generation ----------------------------------------------------------------------------------
    @abstractmethod
    def sample(self, model: Any, req: SampleRequest, generator: torch.Generator,
               on_step: StepCallback | None = None) -> SampleResult: ...

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

    def guide_run(self) -> str:
        """A second run this method's sampler reads (``embedding``'s guided sampler: an ``ar`` run), or ""."""
        return ""

    def set_guide(self, guide: Any) -> None:
        """Receive the opened :meth:`guide_run` (a loaded run); methods without one never get called."""
        raise ConfigError(f"the {self.name} method takes no guide run")

    def prepare(self, req: SampleRequest, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the initial state from prompt / infill: (n, length) ids with masks at unknown positions,
        and a bool tensor of the positions that are fixed by the user.

        Lengths count tokens (characters for a char tokenizer). In an infill template every placeholder
        character is one masked token, and each run of known text between placeholders is encoded as a
        whole: a multi-character tokenizer (BPE, WordPiece) can only tokenise text, not single characters.
        """
        ids = self._infill_ids(req) if req.infill is not None else self._prompt_ids(req)
        state = torch.tensor(ids, dtype=torch.long, device=device).repeat(req.n, 1)
        return state, state != self.tok.mask_id

    def _unit(self) -> str:
        return "characters" if self.tok.kind == "char" else "tokens"

    def _prompt_ids(self, req: SampleRequest) -> list[int]:
        """The prompt's ids, then masks up to the length (the context by default)."""
        length = req.length or self.model_cfg.context
        prompt_ids = self.tok.encode(req.prompt) if req.prompt else []
        if len(prompt_ids) >= length:
            raise ConfigError(f"the prompt has {len(prompt_ids)} {self._unit()}, so nothing is left to generate "
                              f"in --length {length}; use a shorter prompt or a larger --length")
        return prompt_ids + [self.tok.mask_id] * (length - len(prompt_ids))

    def _infill_ids(self, req: SampleRequest) -> list[int]:
        """The template's ids with a mask per placeholder, then masks up to ``req.length`` if that is longer."""
        assert req.infill is not None
        if not self.supports_infill:
            raise ConfigError(f"the {self.name} method only continues a prefix; --infill needs a bidirectional "
                              f"method such as --method masked (use --prompt here)")
        if req.prompt:
            raise ConfigError("use either --prompt or --infill, not both (a prompt is an infill template "
                              "whose blanks are all at the end)")
        if not req.placeholder or len(req.placeholder) != 1:
            raise ConfigError("--placeholder must be exactly one character")
        template = req.infill
        if req.placeholder not in template:
            raise ConfigError(f"the --infill text has no {req.placeholder!r} placeholders to fill; mark the "
                              f"characters to generate with {req.placeholder!r} (or pick --placeholder)")
        self.tok.encode(template.replace(req.placeholder, ""))  # one clear error for unseen characters
        ids = self._encode_template(template, req.placeholder)
        length = req.length or len(ids)  # an infill's output is the filled template
        if len(ids) > length:
            raise ConfigError(f"the infill template has {len(ids)} {self._unit()} but --length is {length}")
        return ids + [self.tok.mask_id] * (length - len(ids))

    def check_length(self, length: int) -> None:
        """One window at a time, unless the method can slide past its context."""
        ctx = self.model_cfg.context
        if not self.extends_past_context and length > ctx:
            raise ConfigError(f"--length {length} exceeds the model's context of {ctx} {self._unit()}; the {self.name} "
                              f"method denoises one window at a time, use --length <= {ctx}")

    def _encode_template(self, template: str, placeholder: str) -> list[int]:
        """Ids of an infill template: each known run encoded whole, each placeholder one mask id."""
        ids: list[int] = []
        start = 0
        while start < len(template):
            if template[start] == placeholder:
                ids.append(self.tok.mask_id)
                start += 1
                continue
            end = template.find(placeholder, start)
            end = len(template) if end < 0 else end
            ids += self.tok.encode(template[start:end])
            start = end
        return ids


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p, Holtzman et al. 2020) filtering on the last dim.

    The values are checked here too, where they are used, so no caller can draw with a nan temperature (all
    of one token) or a top-p of 2 (silently off)."""
    if not TEMPERATURE.allows(temperature):
        raise ConfigError(f"--temperature must be {TEMPERATURE.describe()}, got {temperature}")
    if not TOP_K.allows(top_k):
        raise ConfigError(f"--top-k must be {TOP_K.describe(True)} (0 keeps every character), got {top_k}")
    if not TOP_P.allows(top_p):
        raise ConfigError(f"--top-p must be {TOP_P.describe()} (1 keeps every character), got {top_p}")
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps at least one)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Categorical sample by the Gumbel-max trick: argmax(logits + Gumbel noise), in float64.

    float32 uniforms cannot come closer to 1 than 2^-24, which caps the Gumbel noise -log(-log u) at about
    16.6 and so truncates its right tail: rare tokens are drawn less often than their probability, as if the
    temperature were lowered, and sample-quality metrics look better than the model is (Zheng et al. 2024,
    "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical
    Sampling", Sec. 4). float64 pushes the cap to about 36.7. It consumes a fixed amount of randomness per call
    whatever the logits are, which keeps two samplers that share a generator (e.g. cached and uncached) in
    lock-step. (Apple's MPS has no float64; there it stays float32.)"""
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=dtype)
    u = u.clamp_(torch.finfo(dtype).tiny, 1.0)
    return (logits.to(dtype) - torch.log(-torch.log(u))).argmax(-1)


def cross_entropy_per_token(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), reduction="none").view(target.shape)
