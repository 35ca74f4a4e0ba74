"""A text run loaded for sampling: :class:`TextModel` (generate, infill, sample, plan, stream, score, evaluate,
repair).

Every sampling call goes the same way: :meth:`TextModel.plan` checks the request (the prompt or infill
template and the :class:`~textdiffusion.api.options.TextOptions`) against the run and the limits of one call,
without drawing or training anything; :meth:`TextModel.sample` then draws the plan batch by batch, and
:meth:`TextModel.stream` draws its one batch frame by frame. ``generate`` and ``infill`` are ``sample``'s
texts.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any, cast

import torch

from textdiffusion import limits, precision
from textdiffusion.api.model import IMAGE_OPTIONS, Model, refuse_other_kind
from textdiffusion.api.options import LENGTH, POSITIVE_COUNT, TextOptions, merged
from textdiffusion.api.results import Frame, SampledBatch, SamplingPlan, Score, TextSamples, fixed_positions
from textdiffusion.api.streaming import Feed, Stream, cpu_copy, number
from textdiffusion.config import (
    GUIDANCE,
    SAMPLE_STEPS,
    SEED,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    ConfigError,
    Range,
    check_value,
)
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.methods.base import SampleRequest, SampleResult, StepCallback, TextMethod
from textdiffusion.methods.repairs import Repaired
from textdiffusion.records import TextEval
from textdiffusion.viz.trajectory import decode_masked

CPU = torch.device("cpu")  # where a request's initial state is built to be checked and shown


class TextModel(Model):
    """A text run loaded for sampling (:func:`~textdiffusion.api.loading.load`): generate, infill, stream the
    denoising, score text and evaluate, each in one call. ``tokenizer``, ``context`` and the properties of
    every model (``method``, ``step``, ``config``, ``device``, ``path``, ``samplers``) say what it is.

    The sampling calls take the options of a request (:class:`~textdiffusion.api.options.TextOptions`: ``n``,
    ``length``, ``sampler``, ``steps``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``label``,
    ``guidance``, ``rule``) as keywords, or as one object ``options=`` that keywords change."""

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
        return cast(TextMethod, self.run.method)

    def classifier(self, *, steps: int | None = None, retrain: bool = False, progress: bool = True) -> Any:
        """The run's speaker classifier for ``rule="classifier"`` (a
        :class:`~textdiffusion.guidance.classifier.NoisyClassifier`): read from ``RUN/speaker-classifier`` when it
        was trained for this checkpoint (with ``steps``, when given), else trained now on the method's noisy
        states (default 1500 steps: a minute or two on a CPU) and cached there. Its ``meta`` holds its held-out
        accuracy."""
        from textdiffusion.guidance.classifier import ClassifierRecipe, classifier_for

        recipe = None if steps is None else ClassifierRecipe(steps=check_value("steps", steps, int, POSITIVE_COUNT))
        clf = classifier_for(self.run, recipe, progress=progress, retrain=retrain)
        self.text_method.use_classifier(clf)
        return clf

    def cached_classifier(self) -> Any:
        """The speaker classifier :meth:`classifier` would read without training (cached for this checkpoint),
        now in use for ``rule="classifier"``; None when there is none."""
        from textdiffusion.guidance.classifier import cached_classifier

        clf = cached_classifier(self.run)
        if clf is not None:
            self.text_method.use_classifier(clf)
        return clf

    # -- sampling ---------------------------------------------------------------------------------------------
    def _options(self, call: str, options: TextOptions | None, chosen: Mapping[str, Any]) -> TextOptions:
        """A call's options: ``options`` with the keywords ``chosen`` on top; an image run's option is refused by
        name, any other unknown keyword as Python refuses one."""
        refuse_other_kind({k: v for k, v in chosen.items() if k not in TextOptions.names()}, call, self,
                          IMAGE_OPTIONS, "give a prompt, n, length, sampler, steps")
        return merged(options, chosen)

    def generate(self, prompt: str = "", *, options: TextOptions | None = None, progress: bool = True,
                 **chosen: Any) -> list[str]:
        """``n`` texts that start with ``prompt``, each ``length`` tokens long (characters for the char
        tokenizer), prompt included; 0 = the model's context. ``ar`` and ``block`` go past it with a sliding
        cache; ``masked``, ``embedding`` and ``bits`` chain windows, each starting with the last ``overlap``
        tokens written (0 = half the context).

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
        opts = self._options("generate", options, chosen)
        return self.sample(prompt, options=opts, progress=progress).texts

    def infill(self, template: str, placeholder: str = "_", *, options: TextOptions | None = None,
               progress: bool = True, **chosen: Any) -> list[str]:
        """``n`` copies of ``template`` with every ``placeholder`` character filled in (one token per
        placeholder; the known text is never changed): ``model.infill("ROMEO:\\nO ____ art thou")``. A
        ``length`` longer than the template adds blanks at the end. Only methods that fill blanks anywhere
        can (``ar`` only when trained with ``method.fim_rate``, and one blank; else it is refused). Other
        options as in :meth:`generate`; returns the filled texts."""
        opts = self._options("infill", options, chosen)
        if not self.supports_infill:
            raise ConfigError(f"{self.path} is a {self.method} run, which only continues a prompt and cannot fill "
                              f"blanks; use generate(prompt=...), or a run of a method such as masked"
                              f"{self.text_method.infill_hint}")
        return self.sample(infill=template, placeholder=placeholder, options=opts, progress=progress).texts

    def sample(self, prompt: str = "", *, infill: str | None = None, placeholder: str = "_",
               options: TextOptions | None = None, on_step: StepCallback | None = None, progress: bool = True,
               on_batch: Callable[[SampledBatch], None] | None = None, **chosen: Any) -> TextSamples:
        """What :meth:`generate` and :meth:`infill` draw, with how it was drawn: the sampler that ran, its
        steps, the network evaluations per sample and the seconds taken (a :class:`TextSamples`).

        ``on_step(step, ids, info)``, if given, watches every step of the first batch (``ids``: the (batch,
        length) token ids, the tokenizer's mask id where still unknown): the command line's ``--show`` and
        ``--trajectory`` are such callbacks. :meth:`stream` is the friendlier way to watch.

        ``on_batch(batch)``, if given, receives each finished batch (a :class:`SampledBatch`) as soon as it is
        drawn: a long request drawn in many batches can write its texts as it goes, so an interrupt
        (KeyboardInterrupt, raised through this call) loses only the batch being drawn."""
        opts = self._options("sample", options, chosen)
        plan = self._ready_plan(prompt, infill, placeholder, opts, progress)
        seed = check_value("seed", opts.seed, int, SEED)
        run = self.run
        gen = torch.Generator(device=run.device).manual_seed(seed)
        tic = time.perf_counter()
        with torch.no_grad(), precision.autocast(run.cfg.train.amp, run.device)():  # as trained: bf16 on GPUs
            texts, first, nfe = self._draw(plan, gen, on_step, progress, on_batch)
        seconds = time.perf_counter() - tic
        return TextSamples(texts, first.info.get("sampler"), first.info.get("steps"), nfe, seconds,
                           int(first.ids.shape[1]), fixed_positions(first), seed, first.info.get("windows", 1),
                           first.info.get("overlap", 0), first.info.get("log_prob"))

    def _ready_plan(self, prompt: str, infill: str | None, placeholder: str, opts: TextOptions,
                    progress: bool) -> SamplingPlan:
        """The plan of a request about to be drawn: a classifier the plan says must be trained is trained (and
        cached) now, and the request checked again with it (its label against the classifier's speakers)."""
        plan = self.plan(prompt, infill=infill, placeholder=placeholder, options=opts)
        if plan.classifier == "train":
            self.classifier(progress=progress)
            plan = self.plan(prompt, infill=infill, placeholder=placeholder, options=opts)
        return plan

    def _draw(self, plan: SamplingPlan, gen: torch.Generator, on_step: StepCallback | None, progress: bool,
              on_batch: Callable[[SampledBatch], None] | None = None) -> tuple[list[str], SampleResult, float]:
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
            step_bar = progress_bar(total=(plan.steps or plan.length) * plan.windows, unit="step", desc="sampling",
                                    leave=False)

            def on_step(step: int, state: torch.Tensor, info: Mapping[str, Any]) -> None:
                step_bar.update(max(0, min(step, step_bar.total) - step_bar.n))

            return self._draw_batches(plan, parts, gen, on_step, False, step_bar, on_batch)
        return self._draw_batches(plan, parts, gen, on_step, progress, None, on_batch)

    def _draw_batches(self, plan: SamplingPlan, parts: list[tuple[int, int]], gen: torch.Generator,
                      on_step: StepCallback | None, progress: bool, step_bar: Any,
                      on_batch: Callable[[SampledBatch], None] | None) -> tuple[list[str], SampleResult, float]:
        """:meth:`_draw`'s loop over the batches, handing each finished one to ``on_batch`` (with any bar
        cleared off the terminal while it writes); closes ``step_bar`` (the one-batch step bar) when done."""
        from textdiffusion.progress import progress_bar

        run, req = self.run, plan.request
        texts: list[str] = []
        first: SampleResult | None = None
        bar, nfe_total = None, 0.0
        log_prob: list[float] = []  # what the draws had, per sample (samplers that keep it: left_to_right)
        tic = time.perf_counter()
        try:
            for i, (start, count) in enumerate(parts):
                if bar is None and progress and len(parts) > 1 and not (on_step is not None and i == 0):
                    bar = progress_bar(total=req.n, initial=len(texts), unit="sample", leave=False)
                res = run.method.sample(run.model, replace(req, n=count), gen, on_step if i == 0 else None)
                batch = [self.tokenizer.decode(row.tolist()) for row in res.ids.cpu()]
                texts += batch
                nfe_total += res.nfe * count
                log_prob += res.info.get("log_prob", [])
                if first is None:
                    first = res
                if on_batch is not None:
                    done = SampledBatch(batch, start, req.n, i, len(parts), time.perf_counter() - tic)
                    with _cleared(bar, step_bar):
                        on_batch(done)
                if bar is not None:
                    bar.update(count)
        finally:
            for b in (bar, step_bar):
                if b is not None:
                    b.close()
        assert first is not None  # n >= 1
        if log_prob:  # the first batch's result speaks for all: it carries every batch's log-probabilities
            first.info["log_prob"] = log_prob
        return texts, first, first.nfe if len(parts) == 1 else nfe_total / req.n

    def plan(self, prompt: str = "", *, infill: str | None = None, placeholder: str = "_",
             options: TextOptions | None = None, **chosen: Any) -> SamplingPlan:
        """Check a request against the run and the limits of one call, without drawing or training anything:
        the :class:`SamplingPlan` says the length in tokens, the sampler and steps it gets, the batches it is
        drawn in and, for ``rule="classifier"``, whether the run's speaker classifier is ready (in use, or read
        from its cache now) or would be trained by the sampling. Every sampling call makes one; a bad request
        is a one-line ConfigError here (a classifier request's label is checked once its classifier exists).
        Options as in :meth:`generate` (``seed`` is the draw's, not the plan's)."""
        opts = self._options("plan", options, chosen)
        if not isinstance(prompt, str) or not isinstance(placeholder, str):
            raise ConfigError("prompt and placeholder must be strings")
        if infill is not None and not isinstance(infill, str):
            raise ConfigError(f"the infill template must be a string, got {type(infill).__name__}")
        n = check_value("n", opts.n, int, POSITIVE_COUNT)
        limits.check_count(n, limits.MAX_TEXT_SAMPLES, "n", "the most one call draws",
                           "draw more in several calls with different seeds")
        length = check_value("length", opts.length, int, LENGTH)
        steps = check_value("steps", opts.steps, int, SAMPLE_STEPS)
        overlap = check_value("overlap", opts.overlap, int, LENGTH)
        sampler, label, rule = opts.sampler, opts.label, opts.rule
        if not isinstance(sampler, str):
            raise ConfigError(f"sampler must be a name (one of {', '.join(self.samplers)}), got {sampler!r}")
        bounds = {"temperature": (float, TEMPERATURE), "top_k": (int, TOP_K), "top_p": (float, TOP_P)}
        decoding = {name: None if value is None else check_value(name, value, *bounds[name])
                    for name, value in opts.decoding().items()}
        if infill is not None and not self.supports_infill:
            raise ConfigError(f"{self.path} is a {self.method} run, which only continues a prompt and cannot fill "
                              f"blanks; give a prompt instead{self.text_method.infill_hint}")
        method = self.text_method
        if not isinstance(label, str):
            raise ConfigError(f"label must be a name (a string), got {label!r}")
        guidance = check_value("guidance", opts.guidance, float, GUIDANCE)
        req = SampleRequest(n=n, length=length, prompt=prompt, infill=infill, placeholder=placeholder,
                            sampler=sampler, steps=steps, **method.decoding(**decoding), label=label,
                            guidance=guidance, rule=rule, overlap=overlap)
        if not isinstance(rule, str):
            raise ConfigError(f"rule must be a name (free or classifier), got {rule!r}")
        method.check_classifier_request(req)  # what can be checked before a classifier exists
        classifier = self._classifier_state(req)
        if classifier != "train":
            method.request_label(req)  # a label this run (or its classifier) knows, guidance only with one
        if req.length:
            method.check_length(req.length)
            limits.check_text_length(req.length, method.writes_past_context)
        # one sample's initial state: the length an infill template gives, and the prompt's checks, up front
        tokens = int(method.prepare(replace(req, n=1), CPU)[0].shape[1])
        method.check_length(tokens)  # an infill template's own length, too
        windows = len(method.window_starts(tokens, method.check_overlap(req.overlap)))
        chosen_sampler = method.check_sampler(req.sampler)
        drawn = method.drawn_length(tokens)  # tokens one draw loop fills: one window of a chained sampling
        if req.steps and method.default_steps(drawn, chosen_sampler) is None:
            raise ConfigError(f"--steps does not apply to {method.name}'s {chosen_sampler} sampler: it takes one "
                              f"network evaluation per token; leave --steps out")
        total = req.steps or method.default_steps(drawn, chosen_sampler)
        limits.check_text_steps(total, bool(req.steps), method.max_steps)
        batch = limits.text_batch_size(tokens, method.window, self.tokenizer.vocab_size)
        return SamplingPlan(req, tokens, chosen_sampler, total, batch, len(limits.batches(n, batch)), classifier,
                            windows)

    def _classifier_state(self, req: SampleRequest) -> str:
        """Whether the speaker classifier a ``rule="classifier"`` request needs is ready: "ready" when one is in
        use or cached for this checkpoint (read now, which trains nothing), "train" when the sampling would
        have to train one; "" for a request that needs none."""
        if req.rule != "classifier":
            return ""
        if self.text_method.classifier is None and self.cached_classifier() is None:
            return "train"
        return "ready"

    def stream(self, prompt: str = "", *, infill: str | None = None, placeholder: str = "_",
               options: TextOptions | None = None, mask_char: str | None = None, **chosen: Any) -> TextStream:
        """The denoising of one sampling, frame by frame: iterate the returned :class:`TextStream` for a
        :class:`Frame` per sampler step (frame 0 is the initial state), each with the decoded texts (positions
        still unknown shown as ``mask_char``, default the placeholder ``_``), the step, the diffusion time
        ``t``, the network evaluations so far and how many tokens changed. After the last frame the stream's
        ``result`` holds the finished :class:`TextSamples` (the same texts :meth:`sample` gives for the seed).

        The sampler runs in a thread and waits for the reader, so a slow reader (a web page pacing the
        frames) slows it down rather than piling frames up; stopping the reading stops the sampler at its
        next step. Options as in :meth:`sample`, ``infill`` a template as in :meth:`infill`; at most one
        batch of samples (``n`` up to the plan's batch size)."""
        opts = self._options("stream", options, chosen)
        plan = self._ready_plan(prompt, infill, placeholder, opts, True)
        if plan.batches > 1:
            raise ConfigError(f"a stream shows one batch: at most {plan.batch_size} samples of {plan.length} tokens "
                              f"at once, n is {opts.n}; use n <= {plan.batch_size}")
        mask_char = placeholder if mask_char is None else mask_char
        if not isinstance(mask_char, str) or len(mask_char) != 1:
            raise ConfigError(f"mask_char must be one character, got {mask_char!r}")
        return TextStream(self, plan, check_value("seed", opts.seed, int, SEED), mask_char)

    # -- likelihood -------------------------------------------------------------------------------------------
    def score(self, text: str, exact: bool = False) -> Score:
        """Bits per character of ``text`` under the model, labelled exact (``ar``) or an upper bound (the
        diffusion methods), measured as the validation number is: the text cut into windows of the model's
        context, each scored on its own (a shorter rest is one more, shorter window), with the method's fixed
        evaluation seed, so the same text always gets the same number.

        ``exact=True`` (masked, block) scores the exact NLL instead, the chain rule of the sampler that writes
        one token per step, left to right, which the result names (``sampler``): a network pass per token
        (block: per position of a block). ``ar``'s number is exact either way; a method with neither is
        refused."""
        if not isinstance(text, str) or not text:
            raise ConfigError("score() needs a non-empty text")
        method, run = self.text_method, self.run
        sampler = method.exact_sampler if exact else ""
        if exact and not sampler and method.likelihood_kind != "exact":
            raise ConfigError(f"score(exact=True): the {method.name} method has no exact likelihood, only its bound; "
                              f"leave exact out (exact likelihoods: ar, masked, block)")
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
                res = method.exact_nll(run.model, part.to(run.device)) if sampler else \
                    method.nll(run.model, part.to(run.device))
                nats += res.nats_per_unit * res.units
                chars += res.units
                windows += res.windows
                kind = res.kind
        return Score(nats / chars / 0.6931471805599453, kind, int(chars), int(windows), sampler or None)

    def repair(self, text: str, *, rate: float = 0.1, channel: str = "uniform", progress: bool = True,
               **settings: Any) -> Repaired:
        """``text`` with the characters a channel corrupted put back (:mod:`textdiffusion.methods.repairs`):
        ``rate`` is the fraction believed changed, ``channel`` ``uniform`` or ``keyboard``; ``settings`` are the
        method's own (:class:`~textdiffusion.methods.repairs.RepairRequest`: ``beam``, ``candidates`` for ar,
        ``groups``, ``threshold`` for masked and block, ``steps`` for uniform; ``seed``). Any length: past the
        context, window after window."""
        from textdiffusion.methods.repairs import RepairRequest, check_settings, repair_text

        if not isinstance(text, str):
            raise ConfigError("repair() needs a text (a str)")
        check_settings(self.text_method, settings)
        req = RepairRequest(rate=rate, channel=channel, **settings)
        run = self.run
        with precision.autocast(run.cfg.train.amp, run.device)():
            return repair_text(self.text_method, run.model, self.tokenizer, text, req, progress, str(self.path))

    def evaluate(self, samples: int = 64, *, length: int = 0, sampler: str = "", steps: int = 0,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, val_windows: int | None = None, progress: bool = True,
                 exact_windows: int | None = None) -> TextEval:
        """Score the run as ``textdiffusion eval`` does and return the same result, a
        :class:`~textdiffusion.records.TextEval` (validation bits/char,
        exact or a bound; the quality of ``samples`` samples against the judge, with real text beside it for
        scale; speed). Like the command it writes the result to ``RUN/eval.json``, which ``compare`` reads
        (where it cannot, a read-only run or a full disk, ``result.not_written`` says why).
        ``val_windows`` limits the validation windows (0 = the whole split; None: the score final.json
        recorded for these weights and settings, reused, else the whole split); the other options are
        :meth:`generate`'s. Needs the run's corpus, as training did; scores the EMA weights. ``progress``:
        bars on stderr over the scoring and the sampling (they change no number). ``exact_windows`` (masked,
        block): the windows the exact NLL of the left_to_right sampler takes, beside the bound (0 = the whole
        split; None: final.json's, reused, else ``train.final_exact_windows``); ``result.exact`` holds it."""
        from textdiffusion.evaluate import evaluate_text

        self._refuse_raw_weights()
        samples = check_value("samples", samples, int, POSITIVE_COUNT)
        limits.check_count(samples, limits.MAX_IMAGE_EVAL, "samples", "the most one evaluation scores",
                           "score fewer: the standard error shrinks only as 1/sqrt(n)")
        length = check_value("length", length, int, LENGTH)
        limits.check_text_length(length, True)
        steps = check_value("steps", steps, int, SAMPLE_STEPS)
        limits.check_text_steps(steps or None, True, None)
        return evaluate_text(self.run, samples=samples, length=length, sampler=sampler, steps=steps,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=check_value("seed", seed, int, SEED),
                            val_windows=None if val_windows is None
                            else check_value("val_windows", val_windows, int, Range(0, 10**9)),
                            overrides=self._overrides, progress=bool(progress),
                            exact_windows=None if exact_windows is None
                            else check_value("exact_windows", exact_windows, int, Range(0, 10**9)))


@contextlib.contextmanager
def _cleared(*bars: Any) -> Iterator[None]:
    """Bars that are open (not None) cleared off the terminal while the caller writes, then redrawn."""
    open_bars = [b for b in bars if b is not None]
    if not open_bars:
        yield
        return
    with open_bars[0].external_write_mode():
        yield


class TextStream(Stream):
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
                report((step, cpu_copy(state), {k: number(info.get(k)) for k in ("t", "nfe")}))

            return run.method.sample(run.model, plan.request, gen, on_step)

        self._feed = Feed(work, precision.autocast(run.cfg.train.amp, run.device))

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
                                  int(res.ids.shape[1]), fixed_positions(res), self.seed,
                                  res.info.get("windows", 1), res.info.get("overlap", 0))

    def _frame(self, step: int, ids: torch.Tensor, info: Mapping[str, Any], prev: torch.Tensor | None) -> Frame:
        self.frames += 1
        decoded = [decode_masked(self.model.tokenizer, row.tolist(), self.mask_char) for row in ids]
        same_shape = prev is not None and prev.shape == ids.shape
        changed = (ids != prev).sum(1).tolist() if same_shape else [0] * ids.shape[0]
        return Frame(step, info.get("t"), info.get("nfe"), [text for text, _ in decoded],
                     [masked for _, masked in decoded], changed)
