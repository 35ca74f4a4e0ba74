r"""Masked (absorbing-state) discrete diffusion in continuous time: MDLM (Sahoo et al. 2024).

Corruption: each character is replaced by [MASK] with probability 1 - alpha(t) (see
:mod:`textdiffusion.diffusion.masking`, where the schedules live). The denoiser is the shared backbone with
bidirectional attention, by default *without* time input: with an absorbing process the number of masks
already tells the network how noisy its input is (MDLM, Sec. 3.5; tiny-diffusion does the same).

SUBS parameterisation (MDLM Sec. 3.2): (1) zero masking probabilities: the output layer has no [MASK]
entry at all; (2) carry-over unmasking: a position that is not masked keeps its token, so only masked
positions enter the loss and only masked positions are ever resampled.

Loss = the Rao-Blackwellised continuous-time NELBO (MDLM Eq. 10), per character:

    L(x) = E_t [ w(t) * sum_{l masked in z_t} -log p_theta(x^l | z_t) ] / L  +  KL_prior,
    w(t) = -alpha'(t) / (1 - alpha(t))                                   <- ``schedule.weight(t)``

Validation reports the same NELBO on the validation windows, estimated with a fixed number of stratified
time samples per window and a fixed seed: an unbiased estimate of an upper bound on nats per char.
(A mean masked cross-entropy, as tiny-diffusion prints, is *not* a bound; we never report it as bpc.)

Read it beside :mod:`textdiffusion.methods.ar`: the backbone, tokenizer, trainer, token draw and sampling template
(:meth:`~textdiffusion.methods.base.TextMethod.sample`: request checks, prompt or infill, steps, guidance) are
the same. What differs from ``ar`` is four pieces:

* attention: ``bidirectional`` (ar: ``causal``)                          <- ``MaskedDiffusion.attention``
* inputs: the corrupted window z_t, each token [MASK] with probability   <- ``_nelbo_terms`` (``corrupt``)
  1 - alpha(t) (ar: the clean window, shifted right behind BOS)
* loss: w(t)-weighted cross-entropy on the masked positions, a bound     <- ``loss``, ``nll``
  (ar: cross-entropy on every position, the exact -log p)
* draw loop: from all [MASK], many positions revealed per forward by     <- ``draw``
  the shared discrete sampler (ar: one token per forward, left to
  right, against a KV cache)

Past one context there is no cache to slide: the template chains windows (``chains_windows``,
:meth:`~textdiffusion.methods.base.TextMethod.draw_chained`), each new window's first ``overlap`` positions
fixed to the tail written so far, the way a prompt is fixed (tiny-diffusion's chained canvases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from textdiffusion.config import EVAL_TIME_SAMPLES, PROBABILITY, SAMPLE_STEPS, SEED, Choice, ConfigError, Range, option
from textdiffusion.corruption import ChannelSteer
from textdiffusion.data.speakers import LabelledText, split_labels
from textdiffusion.diffusion.adaptation import anneal_fraction, annealed_mask, causal_mask
from textdiffusion.diffusion.chain_rule import ChainNetwork, chain_rule_nll, left_to_right, order_nll
from textdiffusion.diffusion.discrete import LEFT_TO_RIGHT, DiscreteSampler, Forward
from textdiffusion.diffusion.masking import (
    SCHEDULES,
    corrupt,
    corrupt_exactly,
    counts_from,
    make_schedule,
    sample_counts,
    sample_times,
    times_from,
)
from textdiffusion.diffusion.remasking import SCHEDULES as REMASK_SCHEDULES
from textdiffusion.diffusion.remasking import Remasking
from textdiffusion.diffusion.self_distillation import Denoiser, grid_times, kl_to_targets, teacher_targets
from textdiffusion.diffusion.stratified import per_row
from textdiffusion.diffusion.tokens import TokenDraw, cross_entropy_per_token
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
from textdiffusion.methods.requests import SampleRequest
from textdiffusion.methods.spans import SpanNLL, check_span, equal_counts
from textdiffusion.nn.text_classifier import ConvTextClassifier
from textdiffusion.nn.transformer import Transformer, attention_bias
from textdiffusion.suspicion import clean_probability, suspects

if TYPE_CHECKING:
    from textdiffusion.corruption import Channel
    from textdiffusion.methods.repairs import RepairRequest


@dataclass
class MaskedConfig(TextMethodConfig):
    """Options of masked diffusion; those marked ``sampling`` may change on a trained run."""

    name: str = "masked"
    schedule: str = option("loglinear", Choice(SCHEDULES), "mask schedule: loglinear (MDLM's) or linear in sigma")
    # alpha(1) = exp(-sigma_max) is already 0 in float32 from about 104, long before the top
    sigma_max: float = option(10.0, Range(0.0, 1000.0, lo_open=True), "sigma at t = 1 of the linear schedule")
    antithetic: bool = option(True, None, "stratify a batch's times (or mask counts) from one random offset: a "
                                          "lower-variance loss")
    estimator: str = option("time", Choice(("time", "count")), "time (draw t, weight the loss by w(t)) or count (t "
                                                               "integrated out: a uniform mask count)")
    time_conditioning: bool = option(False, None, "give the network the time t (off: the masks alone say how noisy "
                                                  "the input is)")
    eval_time_samples: int = option(16, EVAL_TIME_SAMPLES, "stratified time draws per validation window: more = a "
                                    "tighter estimate of the bound", sampling=True)
    eval_seed: int = option(1234, SEED, "seed of the validation bound's Monte-Carlo draws (fixed, so scores "
                                        "compare)", sampling=True)
    # a probability threshold; 0 would reveal everything at once
    confidence: float = option(0.9, Range(0.0, 1.0, lo_open=True), "probability above which the confidence sampler "
                               "reveals a token early", sampling=True)
    sample_steps: int = option(0, SAMPLE_STEPS, "default denoising steps (0 = one per token of the output)",
                               sampling=True)
    # the recipes for a start from an ar run (train.init_from): diffusion/adaptation.py
    shift: bool = option(False, None, "the logit at i predicts token i + 1, as ar's does: the input moved one place "
                                      "right behind BOS (keeps what an ar start learned)")
    anneal_steps: int = option(0, Range(0, 10**9), "relax the attention from causal to the method's over the first N "
                                                   "training steps (DiffuLLaMA); 0 = the method's from the start")
    ar_weight: float = option(0.0, Range(0.0, 100.0), "the joint objective: add this times the ar loss of the same "
                                                      "network (causal attention, clean input; needs method.shift)")
    # the remdm sampler (diffusion/remasking.py); defaults: the paper's loop settings
    remdm_schedule: str = option("loop", Choice(REMASK_SCHEDULES), "remdm sampler: how often a written token is "
                                 "remasked: cap, rescale or loop", sampling=True)
    remdm_eta: float = option(0.02, PROBABILITY, "remdm sampler: sigma = min(eta, sigma_max) (cap, and loop inside "
                              "[t_off, t_on]) or eta * sigma_max (rescale); 0 = ancestral", sampling=True)
    remdm_t_on: float = option(0.55, Range(0.0, 1.0, lo_open=True, hi_open=True), "remdm loop: the time the loop "
                               "phase starts (alpha held, tokens remasked)", sampling=True)
    remdm_t_off: float = option(0.05, Range(0.0, 1.0, hi_open=True), "remdm loop: the time the loop phase ends",
                                sampling=True)
    remdm_alpha_on: float = option(0.9, Range(0.0, 1.0, lo_open=True, hi_open=True), "remdm loop: the fraction "
                                   "of tokens written during the loop phase", sampling=True)

    def check(self) -> None:
        if self.ar_weight > 0 and not self.shift:
            raise ConfigError("method.ar_weight trains the network as ar too, which it reads in ar's layout only "
                              "with the shift; set method.shift=true")
        if self.estimator == "count" and make_schedule(self.schedule, self.sigma_max).alpha_one() > 0:
            raise ConfigError("method.estimator=count integrates t out in closed form, which needs alpha(1) = 0; "
                              "use method.schedule=loglinear or method.estimator=time")
        if self.remdm_t_off >= self.remdm_t_on:
            raise ConfigError(f"method.remdm_t_off={self.remdm_t_off} must be below method.remdm_t_on="
                              f"{self.remdm_t_on}: the loop phase runs from t_on down to t_off")
        # on the CPU by name: a config is also checked while a network is built on the meta device, unsized
        start = float(make_schedule(self.schedule, self.sigma_max).alpha(torch.ones(1, device="cpu"))[0])
        if self.remdm_alpha_on <= start:
            raise ConfigError(f"method.remdm_alpha_on={self.remdm_alpha_on} must be above alpha(1) = {start:.3g}, the "
                              f"fraction written at the start: the loop phase is reached by writing more")

    def remasking(self) -> Remasking:
        """The remdm sampler's schedule, as these options set it."""
        return Remasking(self.remdm_schedule, self.remdm_eta, self.remdm_t_on, self.remdm_t_off, self.remdm_alpha_on)


@register
class MaskedDiffusion(TextMethod):
    name = "masked"
    config_class = MaskedConfig
    attention = "bidirectional"
    samplers = ("ancestral", "cached", "confidence", "topk", LEFT_TO_RIGHT, "remdm")
    likelihood_kind = "bound"
    loss_is_likelihood = True  # the NELBO per token (block's too)
    supports_labels = True
    chains_windows = True  # past one context: window after window, each starting from the tail before it
    classifier_rule = "taylor"  # Nisonoff et al. 2024's first-order discrete guidance (guidance/taylor.py)
    exact_sampler = LEFT_TO_RIGHT  # exact_nll is the likelihood of this sampler (block's: inside each block)

    def __init__(self, cfg: MaskedConfig, model_cfg, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        cfg.check()
        self.schedule = make_schedule(cfg.schedule, cfg.sigma_max)
        self.anneal = 1.0  # the share of the method's non-causal attention training uses now (at_training_step)

    def default_steps(self, length: int, sampler: str = "") -> int | None:
        """One step per token: every position can be revealed on its own step. The left_to_right sampler's
        steps are not a choice (one per token), so it has no default (None)."""
        if sampler == LEFT_TO_RIGHT:
            return None
        return self.cfg.sample_steps or length

    def reveals_per_draw(self, length: int) -> int:
        """Positions one draw loop of ``length`` tokens reveals in turn: the left_to_right sampler's steps."""
        return length

    def sample_steps(self, req: SampleRequest, length: int) -> int | None:
        """The left_to_right sampler takes one step per token and no ``--steps``; the others as the template says."""
        if self.check_sampler(req.sampler) != LEFT_TO_RIGHT:
            return super().sample_steps(req, length)
        if req.steps:
            raise ConfigError(f"--steps does not apply to the {LEFT_TO_RIGHT} sampler: it reveals one token per step, "
                              f"left to right; leave --steps out")
        return self.reveals_per_draw(length)

    def interactive_samplers(self) -> tuple[str, ...]:
        # cached reuses the network's output when nothing changed: exact only without time conditioning
        return tuple(s for s in self.samplers if not (s == "cached" and self.time_conditioning))

    @property
    def time_conditioning(self) -> bool:
        return self.cfg.time_conditioning

    def _forward(self, model: Transformer, z: torch.Tensor, t: torch.Tensor,
                 labels: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's logits for ``z``; with ``method.shift`` it reads [BOS, z] and the logit at i comes from
        the position reading token i-1 (:mod:`textdiffusion.diffusion.adaptation`); the last position's output,
        which would predict a token after the window, is dropped."""
        mask = {} if attn_mask is None else {"attn_mask": attn_mask}
        if self.cfg.shift:
            z = torch.cat((torch.full_like(z[:, :1], self.tok.bos_id), z), dim=1)
            return self.call_network(model, labels, z, t if self.time_conditioning else None, **mask)[:, :-1]
        return self.call_network(model, labels, z, t if self.time_conditioning else None, **mask)

    def at_training_step(self, step: int) -> None:
        self.anneal = anneal_fraction(step, self.cfg.anneal_steps)

    def training_mask(self, n: int, length: int, generator: torch.Generator, device: torch.device,
                      paired: bool = False) -> torch.Tensor | None:
        """The annealed attention mask of the next training forward over ``n`` windows of ``length`` (``paired``:
        block's noisy-then-clean layout), or None once annealing is over (the method's own mask, nothing drawn)."""
        if self.anneal >= 1.0:
            return None
        return annealed_mask(*self._target_mask(length, device, paired), self.anneal, n, generator)

    def _target_mask(self, length: int, device: torch.device,
                     paired: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The method's own attention mask over the network's input for a window of ``length`` (None: every key)
        and the token positions of its rows (with the shift, masked diffusion reads BOS too: one more)."""
        if self.cfg.shift and not paired:
            length += 1
        positions = torch.arange(length, device=device).repeat(2 if paired else 1)
        q = positions.shape[0]
        return attention_bias(self.attention, q, q, device, getattr(self, "B", 1), paired)[0], positions

    def ar_logits(self, model: Transformer, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network read as ar (the joint objective's): the clean window, shifted, under the causal mask, so
        the logit at i is p(x_i | x_{<i})."""
        n, L = x.shape
        t = torch.zeros(n, device=x.device)
        return self._forward(model, x, t, labels, causal_mask(*self._target_mask(L, x.device, False)))

    def _joint(self, model: Transformer, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | float:
        """ar_weight times the ar cross-entropy per token of the network read as ar (0 without the joint)."""
        if self.cfg.ar_weight <= 0:
            return 0.0
        return self.cfg.ar_weight * cross_entropy_per_token(self.ar_logits(model, x, labels), x).mean()

    def joint_details(self, model: Transformer, windows: torch.Tensor, labels: torch.Tensor | None,
                      batch_size: int) -> dict[str, float]:
        """With the joint objective, the exact NLL per character of the network read as ar, for the bound's
        details; nothing otherwise."""
        if self.cfg.ar_weight <= 0:
            return {}
        total = 0.0
        for i in range(0, windows.shape[0], batch_size):
            xb = windows[i:i + batch_size]
            lb = None if labels is None else labels[i:i + batch_size]
            total += float(cross_entropy_per_token(self.ar_logits(model, xb, lb), xb).double().sum())
        return {"ar_nats_per_char": total / self.chars_in(windows)}

    def _nelbo_terms(self, model: Transformer, x: torch.Tensor, t: torch.Tensor,
                     generator: torch.Generator, labels: torch.Tensor | None = None,
                     attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-window w(t) * sum of masked cross-entropies (nats), one time per row of ``x``."""
        z, masked = corrupt(x, self.schedule.alpha(t), self.tok.mask_id, generator)
        ce = cross_entropy_per_token(self._forward(model, z, t, labels, attn_mask), x)
        return self.schedule.weight(t) * (ce * masked).sum(-1)

    def _count_terms(self, model: Transformer, x: torch.Tensor, k: torch.Tensor,
                     generator: torch.Generator, labels: torch.Tensor | None = None,
                     attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-window L * (1/k) * sum of cross-entropies over exactly k masked positions (nats): the NELBO
        with t integrated out (see :mod:`textdiffusion.diffusion.masking`). The network is given the t
        whose alpha matches the mask fraction, for the time-conditioned variant."""
        z, masked = corrupt_exactly(x, k, self.tok.mask_id, generator)
        t = k.float() / x.shape[1]
        ce = cross_entropy_per_token(self._forward(model, z, t, labels, attn_mask), x)
        return x.shape[1] * (ce * masked).sum(-1) / k

    def loss(self, model: Transformer, x: torch.Tensor | LabelledText, generator: torch.Generator) -> torch.Tensor:
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        n, L = x.shape
        if self.cfg.estimator == "count":
            k = sample_counts(n, L, self.cfg.antithetic, generator, x.device)
            mask = self.training_mask(n, L, generator, x.device)
            return self._count_terms(model, x, k, generator, labels, mask).mean() / L + self._joint(model, x, labels)
        t = sample_times(n, self.cfg.antithetic, generator, x.device)
        mask = self.training_mask(n, L, generator, x.device)
        return self._nelbo_terms(model, x, t, generator, labels, mask).mean() / L + self._joint(model, x, labels)

    @torch.no_grad()
    def nll(self, model: Transformer, windows: torch.Tensor | LabelledText, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        """The NELBO of ``windows``; of labelled windows, the conditional one, -log p(x | label) bounded."""
        windows, labels = split_labels(windows)
        K = max(1, self.cfg.eval_time_samples)
        device = windows.device
        gen = torch.Generator(device=device).manual_seed(self.cfg.eval_seed)
        n, L = windows.shape
        # K stratified draws per window, from an offset drawn per window
        strata = per_row(n, K, gen, device).flatten()
        rows = windows.repeat_interleave(K, dim=0)
        if self.cfg.estimator == "count":
            draws, term = counts_from(strata, L), self._count_terms
        else:
            draws, term = times_from(strata), self._nelbo_terms
        row_labels = [None] * len(rows.split(batch_size)) if labels is None else \
            labels.repeat_interleave(K).split(batch_size)
        batches = list(zip(rows.split(batch_size), draws.split(batch_size), row_labels, strict=True))
        terms = torch.cat([term(model, xb, db, gen, lb) for xb, db, lb in report_batches(batches, progress)])
        return self._bound_result(windows, terms, K, "Monte-Carlo estimate of the continuous-time NELBO (an upper "
                                  "bound on NLL)", **self.joint_details(model, windows, labels, batch_size))

    @torch.no_grad()
    def exact_nll(self, model: Transformer, windows: torch.Tensor | LabelledText, batch_size: int = 64,
                  progress: NLLProgress | None = None, order: torch.Tensor | None = None) -> NLLResult:
        """The exact NLL of ``windows`` under the sampler that reveals one token per step in ``order`` (default:
        left to right, the sampler a user can run as one step per token): the chain rule of
        :mod:`textdiffusion.diffusion.chain_rule`, L forwards per window in chunks of ``batch_size`` copies.
        Unlike :meth:`nll`'s bound it names one sampler, so its number belongs to something that writes text."""
        windows, labels = split_labels(windows)
        n, L = windows.shape
        given = order is not None
        order = left_to_right(n, L, windows.device) if order is None else order

        def network(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self._forward(model, z, t, None if labels is None else labels[rows])

        per_window = order_nll(network, windows, order, self.tok.mask_id, self.schedule, batch_size,
                               progress).cpu()
        sampler = "one token per step in the given order" if given else "one token per step, left to right"
        return self._exact_result(windows, per_window, given,
                                  f"exact NLL of the sampler that starts from all masks and reveals {sampler}")

    @torch.no_grad()
    def span_nll(self, model: Transformer, windows: torch.Tensor | LabelledText, span: torch.Tensor,
                 batch_size: int = 64) -> SpanNLL:
        r"""Exact -log p(x on the span | x elsewhere) under the left_to_right sampler asked to fill the span: the
        chain rule of :mod:`textdiffusion.diffusion.chain_rule` over the span's m positions only, every other
        position given (revealed "before step 0"), the span's j-th position from the left revealed at step j:

            -log p(span | rest) = sum_j -log p_theta(x^{s_j} | rest, x^{s_0..s_{j-1}}, masks on s_j..s_{m-1}),

        the time of step j the one whose clean fraction is (L - m + j) / L. m forwards per window, ``batch_size``
        at a time; every window's span must hold the same m (the steps share their times)."""
        windows, labels = split_labels(windows)
        units = check_span(windows, span)
        L = windows.shape[1]
        m = equal_counts(span)
        steps = torch.where(span, span.long().cumsum(1) - 1, -1)
        times = self.schedule.time_at(torch.arange(L - m, L, dtype=torch.float64) / L).float()
        nats = chain_rule_nll(self._span_network(model, windows, labels), windows, steps, self.tok.mask_id, times,
                              batch_size).cpu()
        return SpanNLL(nats, "exact", units, f"exact -log p(span | both sides) of the {LEFT_TO_RIGHT} sampler "
                                             f"filling the span")

    def _span_network(self, model: Transformer, windows: torch.Tensor, labels: torch.Tensor | None) -> ChainNetwork:
        """The denoiser as :meth:`span_nll`'s chain rule calls it: every position sees every other."""
        return lambda z, t, rows: self._forward(model, z, t, None if labels is None else labels[rows])

    def _exact_result(self, windows: torch.Tensor, per_window: torch.Tensor, given: bool, note: str,
                      **details: object) -> NLLResult:
        """An exact NLL from each window's chain-rule sum (``per_window``: (n,) nats): the total per character,
        the standard error of the per-token means, and which order was scored."""
        n, L = windows.shape
        stderr = float((per_window / L).std() / math.sqrt(n)) if n > 1 else float("nan")
        chars = self.chars_in(windows)
        return NLLResult(
            nats_per_unit=float(per_window.sum()) / chars, kind="exact", windows=n, units=chars,
            details={"order": "given" if given else "left-to-right", **details, "stderr_nats": stderr,
                     "note": note},
        )

    def _bound_result(self, windows: torch.Tensor, terms: torch.Tensor, K: int, note: str,
                      **details: object) -> NLLResult:
        """The bound from K NELBO samples per window (``terms``: (n * K,) nats, window-major): the mean per
        window, the prior KL, the standard error, all per character."""
        n, L = windows.shape
        per_window = terms.double().view(n, K).mean(1).cpu() / L
        prior = self.schedule.prior_kl_per_token(self.tok.n_symbols)
        stderr = float(per_window.std() / math.sqrt(n)) if n > 1 else float("nan")
        chars = self.chars_in(windows)
        per_char = (n * L) / chars  # tokens per character: 1 for the char tokenizer
        return NLLResult(
            nats_per_unit=(float(per_window.mean()) + prior) * per_char, kind="bound", windows=n, units=chars,
            details={"time_samples_per_window": K, "seed": self.cfg.eval_seed, "schedule": self.schedule.name,
                     "estimator": self.cfg.estimator, **details,
                     "prior_kl_per_char": prior, "stderr_nats": stderr, "note": note},
        )

    # ---- a student of fewer steps: self-distillation through time (diffusion/self_distillation.py) ------------
    def distillation_loss(self, student: Transformer, teacher: Transformer, x: torch.Tensor | LabelledText,
                          generator: torch.Generator, steps: int, substeps: int, draws: int = 1) -> torch.Tensor:
        """SDTT's loss on a batch: the mean KL, over the positions masked in z_t, from what ``teacher`` writes in
        ``substeps`` steps from t to t - 1/``steps`` (averaged over ``draws`` runs) to what ``student`` predicts
        at z_t in one."""
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        z, masked, t = self._distillation_state(x, steps, generator)
        s = (t - 1.0 / steps).clamp(min=0.0)
        target = teacher_targets(self._denoiser(teacher, x, labels), z, t, s, substeps, self.schedule.alpha,
                                 self.tok.mask_id, generator, draws)
        return kl_to_targets(self._denoiser(student, x, labels)(z, t), target, masked)

    def _distillation_state(self, x: torch.Tensor, steps: int,
                            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_t at one grid time per window: (z, masked, the time of every position)."""
        t = grid_times((x.shape[0],), steps, generator, x.device)
        z, masked = corrupt(x, self.schedule.alpha(t), self.tok.mask_id, generator)
        return z, masked, t[:, None].expand(x.shape)

    def _denoiser(self, model: Transformer, x: torch.Tensor, labels: torch.Tensor | None) -> Denoiser:
        """The network on a state of ``x``'s windows, every position of a row at the row's time."""
        return lambda z, t: self._forward(model, z, t[:, 0], labels)

    # ---- the states a noisy classifier judges: partly masked windows (the rule: guidance/taylor.py) ----------
    def classifier_network(self, shape: dict[str, int], num_labels: int, model: Transformer) -> ConvTextClassifier:
        """A classifier of token states, [MASK] included (no time input: the masks say how noisy a state is, as
        for the denoiser)."""
        return ConvTextClassifier(num_labels, vocab_size=self.tok.vocab_size, **shape)

    def classifier_inputs(self, model: Transformer, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """MDLM's corruption at t ~ U(0, 1): the states the ancestral sampler passes through."""
        t = sample_times(x.shape[0], False, generator, x.device)
        return corrupt(x, self.schedule.alpha(t), self.tok.mask_id, generator)[0], None

    # ---- the draw loop: reveal masked positions, many per forward ------------------------------------------
    def refuse_sampler(self, sampler: str) -> None:
        if sampler == "cached" and self.time_conditioning:
            raise ConfigError("the cached sampler reuses the network's output when nothing changed, which is "
                              "only exact without time conditioning; use --sampler ancestral")

    def labelled_network(self, model: Transformer, n: int) -> LabelledNetwork:
        """The denoiser ``(z, t, rows=None)`` -> logits at every position (``rows`` is the cached sampler's, which
        this network does not need); a doubled batch repeats a per-row time."""

        def double(t: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
            return (torch.cat((t, t)) if torch.is_tensor(t) and t.dim() > 0 else t), rows

        return LabelledNetwork(lambda labels, z, t, rows=None: self._forward(model, z, t, labels), double)

    def draw(self, model: Transformer, forward: Forward, state: torch.Tensor, fixed: torch.Tensor, plan: DrawPlan,
             generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """From the prior (all masks), the discrete sampler reveals the masked positions. The left_to_right
        sampler starts from all masks whatever alpha(1), the state its chain rule starts from; its draws'
        log-probabilities are reported per sample (``log_prob``)."""
        if plan.sampler != LEFT_TO_RIGHT:
            state = self._from_prior(state, fixed, generator)
        if on_step:
            on_step(0, state.clone(), {"t": 1.0, "nfe": 0})
        assert plan.steps is not None

        def steered(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            return plan.steer.tilt(forward(z, t, rows), z)

        sampler = self.discrete_sampler(plan.sampler, plan.steps, plan.tokens)
        ids, nfe = sampler.run(steered, state, state == self.tok.mask_id, generator, on_step)
        note_log_prob(plan, sampler.log_prob)
        return ids, nfe

    def sample_info(self, plan: DrawPlan) -> dict[str, object]:
        return {"steps": plan.steps, **self.remasking_info(plan.sampler)}

    # ---- repair: mask the characters least likely clean, then fill them with the rest fixed -----------------
    repair_options = ("groups", "threshold")
    repair_sampler = "topk"  # the fill: the most confident masked position first, one per step

    def leave_out_logits(self, model: Transformer, z: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The prediction at every position of ``z`` (``state`` with some positions masked), as training saw
        such a state: the time is the one whose alpha is the fraction left unmasked."""
        kept = (z != self.tok.mask_id).float().mean(1)
        return self._forward(model, z, self.schedule.time_at(kept))

    def fill(self, model: Transformer, forward: Forward, state: torch.Tensor, fixed: torch.Tensor, plan: DrawPlan,
             generator: torch.Generator) -> torch.Tensor:
        """Fill ``state``'s masked positions, the others fixed: the method's draw loop."""
        return self.draw(model, forward, state, fixed, plan, generator, None)[0]

    def repair(self, model: Transformer, state: torch.Tensor, fixed: torch.Tensor, channel: Channel,
               req: RepairRequest, generator: torch.Generator) -> torch.Tensor:
        """Score every free character by the probability it is clean (:func:`~textdiffusion.suspicion.
        clean_probability`, ``req.groups`` forwards), mask the rate's share of the free positions least likely
        clean (with ``req.threshold``: every one less likely clean than that), and fill them most-confident first,
        each draw from the network's prediction times the channel's q(x_i | y)
        (:class:`~textdiffusion.corruption.ChannelSteer`): a masked character may come back unchanged."""
        log_q = channel.log_likelihood(state)
        clean = clean_probability(lambda z: self.leave_out_logits(model, z, state), state, log_q, self.tok.mask_id,
                                  req.groups)
        free = ~fixed
        if req.threshold > 0:
            masked = free & (clean < req.threshold)
        else:
            masked = suspects(clean, free, round(channel.rate * int(free.sum())))
        if not masked.any():
            return state
        z = state.masked_fill(masked, self.tok.mask_id)
        plan = DrawPlan(self.repair_sampler, z.shape[1], TokenDraw(top_k=1), ChannelSteer(log_q))
        forward = FreeGuidance(None, 1.0, self.num_labels).wrap(self.labelled_network(model, z.shape[0]))
        return self.fill(model, forward, z, ~masked, plan, generator)

    def remasking_info(self, sampler: str) -> dict[str, object]:
        """The remdm sampler's settings, which a result must name to be reproduced; nothing for another sampler."""
        if sampler != "remdm":
            return {}
        r = self.cfg.remasking()
        loop = {"remdm_t_on": r.t_on, "remdm_t_off": r.t_off, "remdm_alpha_on": r.alpha_on} if r.schedule == "loop" \
            else {}
        return {"remdm_schedule": r.schedule, "remdm_eta": r.eta, **loop}

    def _from_prior(self, state: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Start from the prior: a tiny alpha(1) > 0 means a few positions start as uniform symbols."""
        a1 = self.schedule.alpha_one()
        if a1 <= 0:
            return state
        lucky = (torch.rand(state.shape, generator=generator, device=state.device) < a1) & ~fixed
        noise = torch.randint(0, self.tok.n_symbols, state.shape, generator=generator, device=state.device)
        return torch.where(lucky, noise, state)

    def discrete_sampler(self, sampler: str, steps: int, tokens: TokenDraw) -> DiscreteSampler:
        """The named sampler on this run's mask schedule (:mod:`textdiffusion.diffusion.discrete`)."""
        return DiscreteSampler(sampler, steps, tokens, alpha=self.schedule.alpha, threshold=self.cfg.confidence,
                               remasking=self.cfg.remasking(), time_at=self.schedule.time_at)


def note_log_prob(plan: DrawPlan, log_prob: torch.Tensor | None) -> None:
    """Add a draw loop's per-sample log-probabilities (the left_to_right sampler's) to the result's ``log_prob``,
    summed over the windows of a chained sampling; nothing for a sampler that keeps none."""
    if log_prob is None:
        return
    before = plan.notes.get("log_prob")
    values = log_prob.cpu().tolist()
    plan.notes["log_prob"] = values if before is None else [a + b for a, b in zip(before, values, strict=True)]
