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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from textdiffusion.config import EVAL_TIME_SAMPLES, SAMPLE_STEPS, SEED, Choice, ConfigError, Range, option
from textdiffusion.data.speakers import LabelledText, split_labels
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
from textdiffusion.diffusion.stratified import per_row
from textdiffusion.methods.base import (
    NLLProgress,
    NLLResult,
    SampleRequest,
    SampleResult,
    StepCallback,
    TextMethod,
    TextMethodConfig,
    cross_entropy_per_token,
    filter_logits,
    gumbel_sample,
    register,
    report_batches,
)
from textdiffusion.nn.text_classifier import ConvTextClassifier
from textdiffusion.nn.transformer import Transformer

# forward(z, t, rows) -> logits: the network on a state, for the sequences ``rows`` of the batch (None = all)
Denoiser = Callable[..., torch.Tensor]


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

    def check(self) -> None:
        if self.estimator == "count" and make_schedule(self.schedule, self.sigma_max).alpha_one() > 0:
            raise ConfigError("method.estimator=count integrates t out in closed form, which needs alpha(1) = 0; "
                              "use method.schedule=loglinear or method.estimator=time")


@register
class MaskedDiffusion(TextMethod):
    name = "masked"
    config_class = MaskedConfig
    attention = "bidirectional"
    samplers = ("ancestral", "cached", "confidence", "topk")
    likelihood_kind = "bound"
    supports_labels = True
    classifier_rule = "taylor"  # Nisonoff et al. 2024's first-order discrete guidance (see classifier_tilt)

    def __init__(self, cfg: MaskedConfig, model_cfg, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        cfg.check()
        self.schedule = make_schedule(cfg.schedule, cfg.sigma_max)

    def default_steps(self, length: int, sampler: str = "") -> int | None:
        """One step per token: every position can be revealed on its own step."""
        return self.cfg.sample_steps or length

    def interactive_samplers(self) -> tuple[str, ...]:
        # cached reuses the network's output when nothing changed: exact only without time conditioning
        return tuple(s for s in self.samplers if not (s == "cached" and self.time_conditioning))

    @property
    def time_conditioning(self) -> bool:
        return self.cfg.time_conditioning

    def _forward(self, model: Transformer, z: torch.Tensor, t: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.call_network(model, labels, z, t if self.time_conditioning else None)

    def _nelbo_terms(self, model: Transformer, x: torch.Tensor, t: torch.Tensor,
                     generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-window w(t) * sum of masked cross-entropies (nats), one time per row of ``x``."""
        z, masked = corrupt(x, self.schedule.alpha(t), self.tok.mask_id, generator)
        ce = cross_entropy_per_token(self._forward(model, z, t, labels), x)
        return self.schedule.weight(t) * (ce * masked).sum(-1)

    def _count_terms(self, model: Transformer, x: torch.Tensor, k: torch.Tensor,
                     generator: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-window L * (1/k) * sum of cross-entropies over exactly k masked positions (nats): the NELBO
        with t integrated out (see :mod:`textdiffusion.diffusion.masking`). The network is given the t
        whose alpha matches the mask fraction, for the time-conditioned variant."""
        z, masked = corrupt_exactly(x, k, self.tok.mask_id, generator)
        t = k.float() / x.shape[1]
        ce = cross_entropy_per_token(self._forward(model, z, t, labels), x)
        return x.shape[1] * (ce * masked).sum(-1) / k

    def loss(self, model: Transformer, x: torch.Tensor | LabelledText, generator: torch.Generator) -> torch.Tensor:
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        n, L = x.shape
        if self.cfg.estimator == "count":
            k = sample_counts(n, L, self.cfg.antithetic, generator, x.device)
            return self._count_terms(model, x, k, generator, labels).mean() / L
        t = sample_times(n, self.cfg.antithetic, generator, x.device)
        return self._nelbo_terms(model, x, t, generator, labels).mean() / L

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
                                  "bound on NLL)")

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

    # ---- classifier guidance: a classifier of partly masked windows ------------------------------------------
    def classifier_network(self, shape: dict[str, int], num_labels: int, model: Transformer) -> ConvTextClassifier:
        """A classifier of token states, [MASK] included (no time input: the masks say how noisy a state is, as
        for the denoiser)."""
        return ConvTextClassifier(num_labels, vocab_size=self.tok.vocab_size, **shape)

    def classifier_inputs(self, model: Transformer, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """MDLM's corruption at t ~ U(0, 1): the states the ancestral sampler passes through."""
        t = sample_times(x.shape[0], False, generator, x.device)
        return corrupt(x, self.schedule.alpha(t), self.tok.mask_id, generator)[0], None

    def classifier_tilt(self, logits: torch.Tensor, state: torch.Tensor, label: int, w: float,
                        span: slice = slice(None)) -> torch.Tensor:
        r"""Token logits at ``state``'s positions ``span`` steered toward ``label`` by the noisy classifier.

        Exact guidance multiplies the rate of unmasking position l to token v by p(c | z^{l <- v})^w / p(c | z)^w
        (Nisonoff et al. 2024, "Unlocking Guidance for Discrete State-Space Diffusion and Flow Models", Eq. 10),
        which needs one classifier call per (position, token): L x V of them per step. Their Taylor-approximated
        guidance (TAG) replaces the log-ratio by its first-order expansion in the one-hot encoding z of the state,

            log p(c | z^{l <- v}) - log p(c | z)  ~  (e_v - e_{z_l}) . grad_{z_l} log p(c | z),

        so one backward pass gives every ratio. For a masked position the e_{z_l} term is the same for every v
        and cancels in the softmax, leaving

            log p_w(x_l = v | z)  =  log p_theta(x_l = v | z) + w * d log p(c | z) / d z_{l,v}      (renormalised).

        The reveal schedule (which positions unmask at a step) is the unguided one; only what they become is
        steered, as in Schiff et al. 2024's discrete classifier guidance. w = 0 never calls the classifier."""
        onehot = F.one_hot(state, self.tok.vocab_size).float()
        grad = self.classifier.gradient(onehot, label)[:, span, : logits.shape[-1]]
        return logits.float().log_softmax(-1) + w * grad

    # ---- samplers ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: Transformer, req: SampleRequest, generator: torch.Generator,
               on_step: StepCallback | None = None) -> SampleResult:
        label, w = self.request_label(req)
        steer = self.classifier_request(req)
        sampler, state, fixed, steps = self._start(model, req)
        state = self._from_prior(state, fixed, generator)
        if on_step:
            on_step(0, state.clone(), {"t": 1.0, "nfe": 0})

        def forward(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            labels, doubled = self.guidance_labels(label, w, z.shape[0], z.device)
            if not doubled:
                logits = self._forward(model, z, t, labels)
            else:
                t2 = torch.cat((t, t)) if torch.is_tensor(t) and t.dim() > 0 else t
                logits = self.combine_guided(self._forward(model, torch.cat((z, z)), t2, labels), w)
            return logits if steer is None else self.classifier_tilt(logits, z, *steer)

        state, nfe = self.denoise(forward, state, steps, sampler, req, generator, on_step)
        return SampleResult(state, nfe, fixed, {"sampler": sampler, "steps": steps, **self.label_info(label, w),
                                                **self.classifier_info(req)})

    def _start(self, model: Transformer, req: SampleRequest) -> tuple[str, torch.Tensor, torch.Tensor, int]:
        """The checked request: its sampler, the initial state and fixed positions, and the steps to take."""
        sampler = self.check_sampler(req.sampler)
        if sampler == "cached" and self.time_conditioning:
            raise ConfigError("the cached sampler reuses the network's output when nothing changed, which is "
                              "only exact without time conditioning; use --sampler ancestral")
        state, fixed = self.prepare(req, next(model.parameters()).device)
        self.check_length(state.shape[1])
        steps = req.steps or self.default_steps(state.shape[1])
        if steps < 1:
            raise ConfigError("--steps must be >= 1")
        return sampler, state, fixed, steps

    def _from_prior(self, state: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Start from the prior: a tiny alpha(1) > 0 means a few positions start as uniform symbols."""
        a1 = self.schedule.alpha_one()
        if a1 <= 0:
            return state
        lucky = (torch.rand(state.shape, generator=generator, device=state.device) < a1) & ~fixed
        noise = torch.randint(0, self.tok.n_symbols, state.shape, generator=generator, device=state.device)
        return torch.where(lucky, noise, state)

    def denoise(self, forward: Denoiser, state: torch.Tensor, steps: int, sampler: str, req: SampleRequest,
                generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """Fill every mask of ``state`` with the named sampler in at most ``steps`` network evaluations;
        ``forward(z, t, rows)`` gives the logits for z (``rows``: which of the batch's sequences z holds, for
        the cached sampler). Block diffusion runs the same samplers inside each block."""
        if sampler in ("ancestral", "cached"):
            return self._ancestral(forward, state, steps, req, generator, on_step, cached=sampler == "cached")
        return self._by_confidence(forward, state, steps, req, generator, on_step,
                                   threshold=self.cfg.confidence if sampler == "confidence" else None)

    def _ancestral(self, forward: Denoiser, state, steps, req, generator, on_step, cached: bool):
        """Reverse process of MDLM (their Eq. 7) on a uniform time grid 1 = t_0 > ... > t_S = 0.

        From t to s < t every still-masked position is revealed with probability
        (alpha(s) - alpha(t)) / (1 - alpha(t)), its token drawn from p_theta(x | z_t). With no time
        input the network output depends on z_t alone, so a sequence whose last step revealed nothing can
        reuse it: the ``cached`` sampler re-runs the network only on the rows that changed, draws the same
        random numbers, and returns identical samples with fewer network evaluations (MDLM Sec. 4.2).
        Returns the state and the network evaluations per sequence."""
        grid = torch.linspace(1.0, 0.0, steps + 1, device=state.device)
        mask_id = self.tok.mask_id
        n = state.shape[0]
        logits: torch.Tensor | None = None
        stale = torch.ones(n, dtype=torch.bool, device=state.device)  # rows whose cached output is outdated
        row_evals = 0
        for i in range(steps):
            masked = state == mask_id
            if not masked.any():
                break
            t, s = grid[i], grid[i + 1]
            if logits is None or not cached:
                logits = forward(state, t.expand(n))
                row_evals += n
            elif stale.any():
                rows = stale.nonzero().flatten()
                logits[rows] = forward(state[rows], t.expand(len(rows)), rows).to(logits.dtype)
                row_evals += len(rows)
            a_t, a_s = self.schedule.alpha(t), self.schedule.alpha(s)
            # the last step goes to t = 0 where alpha = 1: every remaining mask is revealed
            p_reveal = ((a_s - a_t) / (1.0 - a_t)).clamp(0.0, 1.0) if i < steps - 1 else torch.ones_like(a_t)
            tokens = gumbel_sample(filter_logits(logits, req.temperature, req.top_k, req.top_p), generator)
            reveal = masked & (torch.rand(state.shape, generator=generator, device=state.device) < p_reveal)
            state = torch.where(reveal, tokens, state)
            stale = reveal.any(dim=1)
            if on_step:
                on_step(i + 1, state.clone(), {"t": float(s), "nfe": row_evals / n})
        return state, row_evals / n

    def _by_confidence(self, forward: Denoiser, state, steps, req, generator, on_step, threshold: float | None):
        """Confidence-ordered parallel decoding (MaskGIT, Chang et al. 2022; Fast-dLLM's threshold rule).

        Each step predicts every masked position and keeps the most confident predictions: ``topk``
        reveals ceil(remaining / steps_left) per sequence; ``confidence`` additionally reveals every
        prediction whose probability is >= the threshold, so easy text finishes in fewer steps."""
        mask_id = self.tok.mask_id
        L = state.shape[1]
        nfe = 0
        for i in range(steps):
            masked = state == mask_id
            remaining = masked.sum(1)
            if int(remaining.max()) == 0:
                break
            t = remaining.float() / L
            filtered = filter_logits(forward(state, t), req.temperature, req.top_k, req.top_p)
            nfe += 1
            tokens = gumbel_sample(filtered, generator)
            conf = filtered.softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
            conf = conf.masked_fill(~masked, -1.0)
            k = torch.ceil(remaining / (steps - i)).long()
            rank = conf.argsort(dim=1, descending=True).argsort(dim=1)
            reveal = masked & (rank < k[:, None])
            if threshold is not None:
                reveal |= masked & (conf >= threshold)
            state = torch.where(reveal, tokens, state)
            if on_step:
                on_step(i + 1, state.clone(), {"t": float(1 - (i + 1) / steps), "nfe": nfe})
        return state, nfe
