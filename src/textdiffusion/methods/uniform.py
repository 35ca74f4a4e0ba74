r"""Uniform-state discrete diffusion: UDLM (Schiff et al., ICLR 2025), on the shared backbone.

Corruption: each character is redrawn, with probability 1 - alpha(t), as a uniformly random character (see
:mod:`textdiffusion.diffusion.uniform`, where the maths lives). There is no [MASK]: a noisy window is ordinary
text, and every position may still change until the last step, which is what lets a sampler correct itself
and what Duo (Sahoo et al., ICML 2025) ties to Gaussian diffusion by an argmax.

Read it beside :mod:`textdiffusion.methods.masked`. What differs is four pieces:

* inputs: the window with each character redrawn uniformly with          <- ``_terms`` (``corrupt``)
  probability 1 - alpha(t) (masked: replaced by [MASK])
* time: the network is told t (masked: not, the masks say how noisy the  <- ``UniformConfig.time_conditioning``
  input is; here noise looks like text, and the optimal denoiser
  p(x^l | z_t^{-l}) depends on alpha_t)
* loss: UDLM's continuous-time NELBO on *every* position, each weighted  <- ``loss``, ``nll``
  by how the model's reverse rates miss the true ones (masked: a
  w(t)-weighted cross-entropy on the masked positions)
* draw loop: from uniform noise, every free position redrawn from the    <- ``draw``
  exact posterior q(z_s | z_t, x_theta) at every step (masked: masks
  revealed, never changed again)

``method.objective=heuristic`` is tiny-diffusion's ``uniform.py``: cross-entropy on every position with no
weighting, and a sampler that redraws every position from x_theta each step (``redraw``). Neither is a
likelihood; its validation number is still the NELBO of its network, an honest bound for the ``ancestral``
sampler on that network, and the results say that its own sampler has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from textdiffusion.config import (
    EVAL_TIME_SAMPLES,
    SAMPLE_STEPS,
    SEED,
    Choice,
    ConfigError,
    Range,
    TrainConfig,
    option,
)
from textdiffusion.data.speakers import LabelledText, split_labels
from textdiffusion.diffusion.consistency import KL_DIRECTIONS, consistency_kl, teacher_time
from textdiffusion.diffusion.discrete import DiscreteSampler, Forward
from textdiffusion.diffusion.gaussian_view import curriculum_state, curriculum_temperature, trajectory
from textdiffusion.diffusion.masking import SCHEDULES, make_schedule, sample_times, times_from
from textdiffusion.diffusion.self_distillation import grid_times
from textdiffusion.diffusion.stratified import per_row
from textdiffusion.diffusion.tokens import TokenDraw, cross_entropy_per_token
from textdiffusion.diffusion.uniform import (
    REDRAW,
    UniformSampler,
    corrupt,
    jump_rate,
    nelbo_integrand,
    nelbo_terms,
    prior_kl,
    time_before,
    time_for_rate,
)
from textdiffusion.guidance.free import FreeGuidance, LabelledNetwork
from textdiffusion.methods.base import (
    DrawPlan,
    NLLProgress,
    NLLResult,
    StepCallback,
    TextMethod,
    TextMethodConfig,
    register,
    report_batches,
)
from textdiffusion.methods.spans import SpanNLL, check_span
from textdiffusion.nn.text_classifier import ConvTextClassifier
from textdiffusion.nn.transformer import Transformer

if TYPE_CHECKING:
    from textdiffusion.corruption import Channel
    from textdiffusion.methods.repairs import RepairRequest

OBJECTIVES = ("nelbo", "heuristic")
BY_CONFIDENCE = ("confidence", "topk")  # the shared discrete sampler's rules that fix positions one by one
HEURISTIC_NOTE = ("the NELBO of this network, a bound for its ancestral sampler; the heuristic objective's own "
                  "redraw sampler has no likelihood")


@dataclass
class UniformConfig(TextMethodConfig):
    """Options of uniform-state diffusion; those marked ``sampling`` may change on a trained run."""

    name: str = "uniform"
    objective: str = option("nelbo", Choice(OBJECTIVES), "nelbo (UDLM's continuous-time bound) or heuristic "
                                                         "(tiny-diffusion's cross-entropy on every position: no bound)")
    schedule: str = option("loglinear", Choice(SCHEDULES), "noise schedule: loglinear (alpha = 1 - t) or linear in "
                                                           "sigma")
    sigma_max: float = option(10.0, Range(0.0, 1000.0, lo_open=True), "sigma at t = 1 of the linear schedule")
    antithetic: bool = option(True, None, "stratify a batch's times from one random offset: a lower-variance loss")
    time_conditioning: bool = option(True, None, "give the network the time t (uniform noise looks like text, so "
                                                 "the input alone says less about how noisy it is)")
    eval_time_samples: int = option(16, EVAL_TIME_SAMPLES, "stratified time draws per validation window: more = a "
                                    "tighter estimate of the bound", sampling=True)
    eval_seed: int = option(1234, SEED, "seed of the validation bound's Monte-Carlo draws (fixed, so scores "
                                        "compare)", sampling=True)
    confidence: float = option(0.9, Range(0.0, 1.0, lo_open=True), "probability above which the confidence sampler "
                               "fixes a character early", sampling=True)
    sample_steps: int = option(0, SAMPLE_STEPS, "default denoising steps (0 = one per token of the output)",
                               sampling=True)
    # Duo's Gaussian view (diffusion/gaussian_view.py): the curriculum, and the few-step student's divergence
    curriculum_steps: int = option(0, Range(0, 10**9), "feed the network a tempered softmax of the Gaussian view's "
                                   "latent instead of its argmax for the first N training steps (Duo's curriculum: "
                                   "a lower-variance start); 0 = off")
    curriculum_tau: float = option(0.1, Range(0.0, 100.0, lo_open=True), "the curriculum's softmax temperature "
                                   "at its first step")
    curriculum_tau_end: float = option(0.01, Range(0.0, 100.0, lo_open=True), "the curriculum's temperature at its "
                                       "last step (annealed log-linearly; the argmax after it)")
    distill_kl: str = option("reverse", Choice(KL_DIRECTIONS), "with train.distill_from: the consistency "
                             "distillation's divergence, reverse KL(student || teacher) (Duo's) or forward")

    def check(self) -> None:
        if self.curriculum_steps and self.objective != "nelbo":
            raise ConfigError("method.curriculum_steps trains the NELBO on the Gaussian view; the heuristic objective "
                              "has none: set method.objective=nelbo or method.curriculum_steps=0")


@register
class UniformDiffusion(TextMethod):
    name = "uniform"
    config_class = UniformConfig
    attention = "bidirectional"
    samplers = ("ancestral", "confidence", "topk", REDRAW)
    likelihood_kind = "bound"
    loss_is_likelihood = True  # the NELBO per token; the heuristic objective says otherwise (instance attribute)
    supports_labels = True
    chains_windows = True  # fixed positions stay fixed in every draw loop, so windows chain as for masked
    tau = 0.0  # the curriculum's temperature at this training step (at_training_step); 0 = the argmax, no curriculum
    classifier_rule = "taylor"  # Nisonoff et al. 2024's first-order guidance holds for any discrete states

    def __init__(self, cfg: UniformConfig, model_cfg, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        self.schedule = make_schedule(cfg.schedule, cfg.sigma_max)
        self.loss_is_likelihood = cfg.objective == "nelbo"

    @property
    def time_conditioning(self) -> bool:
        return self.cfg.time_conditioning

    @property
    def default_sampler(self) -> str:
        """The run's sampler, else the objective's own: ancestral for the NELBO, redraw for the heuristic."""
        return self.cfg.sampler or (REDRAW if self.cfg.objective == "heuristic" else "ancestral")

    def default_steps(self, length: int, sampler: str = "") -> int | None:
        return self.cfg.sample_steps or length

    def _forward(self, model: Transformer, z: torch.Tensor, t: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.call_network(model, labels, z, t if self.time_conditioning else None)

    # ---- training and the bound ------------------------------------------------------------------
    def _terms(self, model: Transformer, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per window, one sample of the NELBO's time integral summed over positions (nats), at each row's t."""
        t = time_before(self.schedule, t)
        z, _ = corrupt(x, self.schedule.alpha(t), self.tok.n_symbols, generator)
        return nelbo_terms(self._forward(model, z, t, labels), x, z, t, self.schedule)

    def loss(self, model: Transformer, x: torch.Tensor | LabelledText, generator: torch.Generator) -> torch.Tensor:
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        n, L = x.shape
        t = sample_times(n, self.cfg.antithetic, generator, x.device)
        if self.cfg.objective == "heuristic":
            # tiny-diffusion's: a noise level per window, cross-entropy against the clean text at every position
            t = time_before(self.schedule, t)
            z, _ = corrupt(x, self.schedule.alpha(t), self.tok.n_symbols, generator)
            return cross_entropy_per_token(self._forward(model, z, t, labels), x).mean()
        if self.tau > 0:
            return (self._curriculum_terms(model, x, t, generator, labels).mean() / L).float()
        return (self._terms(model, x, t, generator, labels).mean() / L).float()

    @torch.no_grad()
    def nll(self, model: Transformer, windows: torch.Tensor | LabelledText, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        """The NELBO of ``windows`` (whatever the objective trained): K stratified times per window from a fixed
        seed; of labelled windows, the conditional one."""
        windows, labels = split_labels(windows)
        K = max(1, self.cfg.eval_time_samples)
        gen = torch.Generator(device=windows.device).manual_seed(self.cfg.eval_seed)
        n, L = windows.shape
        times = times_from(per_row(n, K, gen, windows.device).flatten())
        rows = windows.repeat_interleave(K, dim=0)
        row_labels = [None] * len(rows.split(batch_size)) if labels is None else \
            labels.repeat_interleave(K).split(batch_size)
        batches = list(zip(rows.split(batch_size), times.split(batch_size), row_labels, strict=True))
        terms = torch.cat([self._terms(model, xb, tb, gen, lb) for xb, tb, lb in report_batches(batches, progress)])
        per_window = terms.view(n, K).mean(1).cpu() / L
        prior = prior_kl(self.schedule.alpha_one(), self.tok.n_symbols)
        stderr = float(per_window.std() / math.sqrt(n)) if n > 1 else float("nan")
        chars = self.chars_in(windows)
        heuristic = {"sampler_note": HEURISTIC_NOTE} if self.cfg.objective == "heuristic" else {}
        return NLLResult(
            nats_per_unit=(float(per_window.mean()) + prior) * (n * L) / chars, kind="bound", windows=n, units=chars,
            details={"time_samples_per_window": K, "seed": self.cfg.eval_seed, "schedule": self.schedule.name,
                     "objective": self.cfg.objective, **heuristic, "prior_kl_per_char": prior,
                     "stderr_nats": stderr, "note": "Monte-Carlo estimate of UDLM's continuous-time NELBO (an "
                                                    "upper bound on NLL)"},
        )

    # ---- the states a noisy classifier judges: windows with uniform noise (the rule: guidance/taylor.py) -----
    def classifier_network(self, shape: dict[str, int], num_labels: int, model: Transformer) -> ConvTextClassifier:
        """A classifier of token states, as masked's; no time input (the denoiser's own is not shared with it)."""
        return ConvTextClassifier(num_labels, vocab_size=self.tok.vocab_size, **shape)

    def classifier_inputs(self, model: Transformer, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """The corruption at t ~ U(0, 1): the states the ancestral sampler passes through. The Taylor rule then
        tilts x_theta before the posterior step, so it steers what a position becomes, as it does for masked."""
        t = time_before(self.schedule, sample_times(x.shape[0], False, generator, x.device))
        return corrupt(x, self.schedule.alpha(t), self.tok.n_symbols, generator)[0], None

    # ---- the draw loop: every free position redrawn, from uniform noise ----------------------------------
    def labelled_network(self, model: Transformer, n: int) -> LabelledNetwork:
        """The denoiser ``(z, t, rows=None)`` -> logits at every position; a doubled batch repeats a per-row time."""

        def double(t: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
            return (torch.cat((t, t)) if torch.is_tensor(t) and t.dim() > 0 else t), rows

        return LabelledNetwork(lambda labels, z, t, rows=None: self._forward(model, z, t, labels), double)

    def draw(self, model: Transformer, forward: Forward, state: torch.Tensor, fixed: torch.Tensor, plan: DrawPlan,
             generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """From the prior (a uniform character at every free position), the named sampler; fixed positions (a
        prompt, an infill template's known characters, a chained window's overlap) are never changed."""
        noise = torch.randint(0, self.tok.n_symbols, state.shape, generator=generator, device=state.device)
        state = torch.where(fixed, state, noise)
        if on_step:
            on_step(0, state.clone(), {"t": 1.0, "nfe": 0})
        assert plan.steps is not None

        def steered(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            return plan.steer.tilt(forward(z, t, rows), z)

        if plan.sampler in BY_CONFIDENCE:
            # the shared rule passes 1 - (the fraction fixed) as t: the loglinear time of a state that clean
            def timed(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
                return steered(z, self.schedule.time_at(1.0 - t), rows)

            sampler = DiscreteSampler(plan.sampler, plan.steps, plan.tokens, threshold=self.cfg.confidence)
            return sampler.run(timed, state, ~fixed, generator, on_step)
        sampler = UniformSampler(plan.sampler, plan.steps, plan.tokens, self.schedule.alpha)
        return sampler.run(steered, state, fixed, generator, on_step)

    def sample_info(self, plan: DrawPlan) -> dict[str, object]:
        return {"steps": plan.steps}

    # ---- repair: the noisy text is z_t at the time its rate matches; the reverse process from there ----------
    repair_options = ("steps",)

    def repair(self, model: Transformer, state: torch.Tensor, fixed: torch.Tensor, channel: Channel,
               req: RepairRequest, generator: torch.Generator) -> torch.Tensor:
        """The ancestral sampler from t* (:func:`~textdiffusion.diffusion.uniform.time_for_rate`: the time whose
        changed fraction is the rate) to 0, the noisy text as z_{t*}, ``fixed`` positions kept, its last step the
        posterior's likeliest symbol. By default in one step: argmax_y q(z_{t*} | y) x_theta(y), the channel's
        Bayes rule with the network's prediction as the prior; more ``steps`` draw between t* and 0 first, which
        adds the network's own errors when it is unsure (benchmarks/repair.py measures both)."""
        try:
            t = time_for_rate(self.schedule, channel.rate, self.tok.n_symbols)
        except ValueError as e:
            raise ConfigError(f"--rate {channel.rate}: {e}; uniform repair needs a smaller rate") from None
        steps = req.steps or 1
        draw = TokenDraw(**self.decoding())
        sampler = UniformSampler("ancestral", steps, draw, self.schedule.alpha, start=t, greedy_end=True)
        forward = FreeGuidance(None, 1.0, self.num_labels).wrap(self.labelled_network(model, state.shape[0]))
        return sampler.run(forward, state, fixed, generator)[0]

    # ---- Duo: the Gaussian view's curriculum and a few-step student (diffusion/gaussian_view.py, consistency.py) --
    def at_training_step(self, step: int) -> None:
        self.tau = curriculum_temperature(step, self.cfg.curriculum_steps, self.cfg.curriculum_tau,
                                          self.cfg.curriculum_tau_end)

    def _curriculum_terms(self, model: Transformer, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
        """``_terms`` with z_t the argmax of the Gaussian view's latent (distributed as q(z_t | x)), the network
        reading the latent's softmax at temperature ``tau`` instead of z_t: Duo's curriculum. The loss is not a
        bound while it runs (the input says more than z_t); validation scores the discrete process throughout."""
        t = time_before(self.schedule, t)
        z, soft = curriculum_state(x, self.schedule.alpha(t), self.tok.n_symbols, self.tau, generator)
        return nelbo_terms(self._forward(model, soft, t, labels), x, z, t, self.schedule)


    @torch.no_grad()
    def span_nll(self, model: Transformer, windows: torch.Tensor | LabelledText, span: torch.Tensor,
                 batch_size: int = 64) -> SpanNLL:
        r"""UDLM's NELBO restricted to the span, an upper bound on -log p(span | rest) for the ancestral sampler
        that fills it (the rest held fixed, as an infill holds it): the forward process redraws only the span's
        characters, so z_t is the window with the span noised, and

            -log p(span | rest) <= E_t [ sum_{l in span} integrand_l(z_t, t) ] + m * KL(q(z_1 | x) || Uniform),

        the integrand of :func:`~textdiffusion.diffusion.uniform.nelbo_integrand` at the span's positions. The
        same K stratified times per window from ``method.eval_seed`` as :meth:`nll`, so a span of the whole window
        gives :meth:`nll`'s per-window bound."""
        windows, labels = split_labels(windows)
        units = check_span(windows, span)
        K = max(1, self.cfg.eval_time_samples)
        gen = torch.Generator(device=windows.device).manual_seed(self.cfg.eval_seed)
        n = windows.shape[0]
        times = times_from(per_row(n, K, gen, windows.device).flatten())
        rows = torch.arange(n, device=windows.device).repeat_interleave(K)
        terms = []
        for part, tb in zip(rows.split(batch_size), times.split(batch_size), strict=True):
            x, inside = windows[part], span[part]
            t = time_before(self.schedule, tb)
            z, _ = corrupt(x, self.schedule.alpha(t), self.tok.n_symbols, gen)
            z = torch.where(inside, z, x)
            log_x = self._forward(model, z, t, None if labels is None else labels[part])
            a, rate = self.schedule.alpha(t.double()), jump_rate(self.schedule, t.double())
            terms.append((nelbo_integrand(log_x, x, z, a[:, None], rate[:, None]) * inside).sum(-1))
        prior = prior_kl(self.schedule.alpha_one(), self.tok.n_symbols)
        nats = torch.cat(terms).view(n, K).mean(1).cpu() + prior * span.sum(1).cpu()
        return SpanNLL(nats.double(), "bound", units, "UDLM's NELBO restricted to the span (Monte-Carlo, "
                       f"{K} times per window): an upper bound for the ancestral sampler filling it")
    @classmethod
    def check_distillation(cls, train: TrainConfig) -> None:
        """Refuse what consistency distillation cannot use: its teacher reads one deterministic state per draw."""
        if train.distill_draws > 1:
            raise ConfigError(f"train.distill_draws={train.distill_draws} averages runs of a teacher's random steps; "
                              f"a uniform student's teacher reads one state of a deterministic trajectory: leave "
                              f"train.distill_draws=1")

    def distillation_loss(self, student: Transformer, teacher: Transformer, x: torch.Tensor | LabelledText,
                          generator: torch.Generator, steps: int, substeps: int, draws: int = 1) -> torch.Tensor:
        """Discrete Consistency Distillation (:mod:`textdiffusion.diffusion.consistency`): the mean KL, over every
        position, between the student at z_t and the teacher at z_u, further along the same Gaussian trajectory
        (u: the last time the teacher's ``substeps`` steps over the student's one from t read)."""
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        t = grid_times((x.shape[0],), steps, generator, x.device)
        u = teacher_time(t, (t - 1.0 / steps).clamp(min=0.0), substeps)
        z_t, z_u = trajectory(x, self.schedule.alpha(t), self.schedule.alpha(u), self.tok.n_symbols, generator)
        with torch.no_grad():
            target = self._forward(teacher, z_u, u, labels)
        return consistency_kl(self._forward(student, z_t, t, labels), target, self.cfg.distill_kl)
