"""Autoregressive next-character prediction: the baseline every diffusion method is measured against.

Each training window x_1..x_L is fed as [BOS, x_1, .., x_{L-1}] under a causal mask and trained to predict
x_1..x_L, so the loss is exactly -log p(x_1..x_L) / L, the same per-window quantity the diffusion methods
bound. (nanoGPT scores L predictions that all have at least one character of context; we report that
variant too, as ``nats_per_char_nanogpt``, for the one-to-one comparison.)

This file holds what makes ``ar`` itself: the causal attention, the shifted inputs, the loss and likelihood, and
the draw loop. The sampling preamble (request checks, prompt, steps) is :meth:`TextMethod.sample`'s, and guidance
wraps the network from outside (:mod:`textdiffusion.guidance`). :mod:`textdiffusion.methods.masked` lists what
differs on its side.

With ``method.fim_rate > 0`` the same model also fills blanks: a fraction of the training windows is rearranged
by the fill-in-the-middle transformation (:mod:`textdiffusion.methods.fill_in_middle`; ``method.fim_mode`` picks
the order), and an infill request is answered by generating the middle after [PRE] left [SUF] right [MID] (PSM) or
[PRE] [SUF] right [MID] left (SPM). The validation number stays the plain
left-to-right NLL of untransformed windows, so it compares with every other ``ar`` run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from textdiffusion.config import PROBABILITY, Choice, ConfigError, option
from textdiffusion.data.speakers import LabelledText, split_labels
from textdiffusion.diffusion.tokens import cross_entropy_per_token
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
from textdiffusion.methods.fill_in_middle import MODES, SENTINELS, Sentinels, draw_splits, rearrange, room
from textdiffusion.methods.requests import SampleRequest, unit_name
from textdiffusion.methods.spans import SpanNLL, check_span, contiguous_bounds
from textdiffusion.nn.text_classifier import ConvTextClassifier
from textdiffusion.nn.transformer import KVCache, Transformer
from textdiffusion.noisy_channel import beam_decode

if TYPE_CHECKING:
    from textdiffusion.corruption import Channel
    from textdiffusion.methods.repairs import RepairRequest


@dataclass
class ARConfig(TextMethodConfig):
    """``ar``'s options of its own say whether it learns to fill in the middle, and in which order; the backbone
    and the token draw say the rest."""

    name: str = "ar"
    fim_rate: float = option(0.0, PROBABILITY, "fraction of training windows rearranged as [PRE] prefix [SUF] "
                                               "suffix [MID] middle (fill-in-the-middle), so the run can infill; "
                                               "0 = left to right only")
    fim_mode: str = option("psm", Choice(MODES), "order of a fill-in-the-middle window: psm ([PRE] prefix [SUF] "
                                                 "suffix [MID] middle), spm ([PRE] [SUF] suffix [MID] prefix "
                                                 "middle: the middle continues the prefix) or both (each window "
                                                 "draws one; infills as spm)")


@register
class AutoRegressive(TextMethod):
    name = "ar"
    config_class = ARConfig
    attention = "causal"
    samplers = ("ancestral",)
    likelihood_kind = "exact"
    loss_is_likelihood = True  # the cross-entropy of the next token
    supports_infill = False  # a run trained with method.fim_rate > 0 can (set per run in __init__)
    infill_hint = ("; an ar run fills a blank only when trained with fill-in-the-middle: "
                   "--set method.fim_rate=0.5")
    extends_past_context = True  # the KV cache slides: any --length
    supports_labels = True
    classifier_rule = "fudge"  # a prefix classifier reweights the next token's candidates (guidance/fudge.py)

    def __init__(self, cfg: ARConfig, model_cfg, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        self.fim = Sentinels.after(tokenizer) if cfg.fim_rate > 0 else None
        self.supports_infill = self.fim is not None
        if self.fim is not None and model_cfg.context < len(SENTINELS):
            raise ConfigError(f"method.fim_rate needs model.context >= {len(SENTINELS)} (its sequences carry three "
                              f"sentinels), got {model_cfg.context}; raise model.context or set method.fim_rate=0")
        if self.fim is None and cfg.fim_mode != "psm":
            raise ConfigError(f"method.fim_mode={cfg.fim_mode} orders fill-in-the-middle windows, but method.fim_rate "
                              f"is 0 (none are trained); set method.fim_rate=0.5 too, or leave method.fim_mode out")

    def build_model(self) -> Transformer:
        """The backbone; a fill-in-the-middle run reads the three sentinels too (inputs only: never predicted)."""
        if self.fim is None:
            return super().build_model()
        return Transformer(self.model_cfg, self.tok.vocab_size + len(SENTINELS), out_dim=self.tok.n_symbols,
                           attention=self.attention, num_labels=self.num_labels)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        bos = torch.full_like(x[:, :1], self.tok.bos_id)
        return torch.cat((bos, x[:, :-1]), dim=1)

    def _forward(self, model: Transformer, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                 cache: KVCache | None = None) -> torch.Tensor:
        return self.call_network(model, labels, inputs, cache=cache)

    def loss(self, model: Transformer, x: torch.Tensor | LabelledText, generator: torch.Generator) -> torch.Tensor:
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        if self.fim is None:
            return cross_entropy_per_token(self._forward(model, self._inputs(x), labels), x).mean()
        inputs, targets, scored = self._fim_batch(x, generator)
        ce = cross_entropy_per_token(self._forward(model, inputs, labels), targets)
        return (ce * scored).sum() / scored.sum()

    def _fim_batch(self, x: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training inputs, targets and the targets scored, with a ``fim_rate`` fraction of the windows in
        ``fim_mode``'s order (cut at two uniform points, :func:`~textdiffusion.methods.fill_in_middle.rearrange`, two
        far characters of context dropped so the sequence's inputs are as long as the window) and the rest as always.
        ``both`` draws each window's order after the cuts, so ``psm`` draws exactly what it always did.

        The loss is the next-token cross-entropy on the rearranged sequence at every ordinary character, prefix
        and suffix included, as in the paper; unlike the paper the sentinels themselves are never targets (the
        network outputs ordinary symbols only): an infill places them and then writes exactly the blank's length,
        so no sentinel is ever drawn."""
        n, L = x.shape
        fim = torch.rand(n, generator=generator, device=x.device) < self.cfg.fim_rate
        a, b = draw_splits(n, L, generator, x.device)
        in_spm = None  # psm
        if self.cfg.fim_mode == "both":
            in_spm = torch.rand(n, generator=generator, device=x.device) < 0.5
        elif self.cfg.fim_mode == "spm":
            in_spm = torch.ones(n, dtype=torch.bool, device=x.device)
        seq, _ = rearrange(x, a, b, self.fim, room(L), in_spm)
        ordinary = seq[:, 1:] < self.tok.n_symbols
        inputs = torch.where(fim[:, None], seq[:, :-1], self._inputs(x))
        targets = torch.where(fim[:, None], torch.where(ordinary, seq[:, 1:], 0), x)
        return inputs, targets, (ordinary | ~fim[:, None]).float()

    @torch.no_grad()
    def nll(self, model: Transformer, windows: torch.Tensor | LabelledText, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        """Exact -log p(windows); of labelled windows, -log p(x | label)."""
        windows, labels = split_labels(windows)
        total = torch.zeros((), dtype=torch.float64)
        tail = torch.zeros((), dtype=torch.float64)
        chunks = windows.split(batch_size)
        chunk_labels = [None] * len(chunks) if labels is None else labels.split(batch_size)
        for chunk, lab in report_batches(list(zip(chunks, chunk_labels, strict=True)), progress):
            ce = cross_entropy_per_token(self._forward(model, self._inputs(chunk), lab), chunk).double().cpu()
            total += ce.sum()
            tail += ce[:, 1:].sum()
        n, L = windows.shape
        chars = self.chars_in(windows)
        return NLLResult(
            nats_per_unit=float(total) / chars, kind="exact", windows=n, units=chars,
            details={"nats_per_char_nanogpt": float(tail) / (n * (L - 1)) * (n * L) / chars if L > 1 else float("nan"),
                     "note": "exact -log p(window) / chars; the nanogpt figure drops each window's first char"},
        )

    # ---- the states a noisy classifier judges (FUDGE's, in guidance/fudge.py) -------------------------------
    def classifier_network(self, shape: dict[str, int], num_labels: int, model: Transformer) -> ConvTextClassifier:
        """A causal classifier: its output at position i is p(c | x_1..x_i), every prefix at once."""
        return ConvTextClassifier(num_labels, vocab_size=self.tok.vocab_size, causal=True, **shape)

    def classifier_inputs(self, model: Transformer, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """The states ``ar`` passes through are clean prefixes: the windows themselves, judged at every prefix."""
        return x, None

    # ---- the draw loop: left to right, one token per forward ------------------------------------------------
    def labelled_network(self, model: Transformer, n: int) -> LabelledNetwork:
        """The next token's logits after ``inputs``, against the KV cache (a doubled batch shares it: the cache
        holds both halves)."""
        return LabelledNetwork(lambda labels, inputs, cache: self._forward(model, inputs, labels, cache)[:, -1])

    def draw(self, model: Transformer, forward: Callable[..., torch.Tensor], state: torch.Tensor,
             fixed: torch.Tensor, plan: DrawPlan, generator: torch.Generator,
             on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """BOS and the prompt in one forward (prefill), then one token per forward with the KV cache; a blank with
        known text after it is a middle, filled by :meth:`draw_middle`."""
        if self.fim is not None and self.middle_between(fixed):
            return self.draw_middle(model, forward, state, fixed, plan, generator, on_step)
        n, length = state.shape
        start = int(fixed[0].sum())  # prompt length
        ctx = self.model_cfg.context
        cache = KVCache.empty(len(model.blocks), ctx)
        bos = torch.full((n, 1), self.tok.bos_id, dtype=torch.long, device=state.device)
        logits = forward(torch.cat((bos, state[:, :start]), dim=1)[:, -ctx:], cache)
        nfe = 1
        if on_step:
            on_step(0, state.clone(), {"nfe": nfe})
        for pos in range(start, length):
            logits = plan.steer.tilt(logits, state[:, :pos])
            state[:, pos] = plan.tokens(logits, generator)
            plan.steer.advance(state[:, :pos + 1])
            if on_step:
                on_step(pos - start + 1, state.clone(), {"nfe": nfe})
            if pos + 1 < length:
                if cache.full:
                    # past the context: re-encode the latest half window (so every prediction still sees
                    # between context/2 and context characters), then go on incrementally
                    cache = KVCache.empty(len(model.blocks), ctx)
                    logits = forward(state[:, pos + 1 - ctx // 2:pos + 1], cache)
                else:
                    logits = forward(state[:, pos:pos + 1], cache)
                nfe += 1
        return state, nfe

    def sample_info(self, plan: DrawPlan) -> dict[str, Any]:
        return {"kv_cache": True}

    # ---- fill in the middle: a blank between known text -------------------------------------------------------
    def prepare(self, req: SampleRequest, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The template's state, as for any method; a fill-in-the-middle run takes one blank that fits the context
        (one middle per sequence), and no classifier steer (FUDGE's classifier judges prefixes, and a middle is
        not one)."""
        state, fixed = super().prepare(req, device)
        if req.infill is None:
            return state, fixed
        blank = ~fixed[0]
        runs = int((blank[1:] & ~blank[:-1]).sum()) + int(blank[0])
        if runs > 1:
            raise ConfigError(f"an ar run fills one blank (fill-in-the-middle writes one middle), but the --infill "
                              f"text has {runs} separate runs of {req.placeholder!r}; leave one, or use a run of "
                              f"--method masked")
        if not self.middle_between(fixed):
            return state, fixed  # blanks at the end only: a prompt to continue, left to right as always
        most = room(self.model_cfg.context)
        if int(blank.sum()) > most:
            raise ConfigError(f"the blank has {int(blank.sum())} {unit_name(self.tok)} but this ar run writes a "
                              f"middle of at most {most} (its context less two); use a shorter blank")
        if req.rule == "classifier":
            raise ConfigError("classifier guidance steers ar left to right from a prefix; a blank with text after "
                              "it is written by fill-in-the-middle, which it cannot steer; use --guidance-rule free")
        return state, fixed

    @property
    def infill_order(self) -> str:
        """What an infill reads before the middle: SPM's order for a run trained with it (``both`` too, as the
        paper recommends: there the middle continues the prefix), else PSM's."""
        return "[PRE] [SUF] right [MID] left" if self.cfg.fim_mode != "psm" else "[PRE] left [SUF] right [MID]"

    def _arranged(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  carry: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows cut at ``a <= b`` in the order this run infills in (:attr:`infill_order`)."""
        assert self.fim is not None
        in_spm = None if self.cfg.fim_mode == "psm" else torch.ones(len(x), dtype=torch.bool, device=x.device)
        return rearrange(x, a, b, self.fim, carry, in_spm)

    @staticmethod
    def middle_between(fixed: torch.Tensor) -> bool:
        """Whether known text follows the first blank: a middle to fill, not a prompt to continue."""
        blank = (~fixed[0]).nonzero().flatten()
        return bool(len(blank)) and bool(fixed[0, int(blank[0]):].any())

    def draw_middle(self, model: Transformer, forward: Callable[..., torch.Tensor], state: torch.Tensor,
                    fixed: torch.Tensor, plan: DrawPlan, generator: torch.Generator,
                    on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """The sequence up to the middle ([PRE] left [SUF] right [MID], or [PRE] [SUF] right [MID] left in SPM) in
        one forward (prefill), then the middle one token per forward with the KV cache, exactly the blank's length;
        context beyond what fits is dropped from the far ends."""
        assert self.fim is not None
        n = state.shape[0]
        blank = (~fixed[0]).nonzero().flatten()
        a, b = int(blank[0]), int(blank[-1]) + 1
        cut = torch.tensor([a], device=state.device), torch.tensor([b], device=state.device)
        seq, middle = self._arranged(state[:1], *cut, room(self.model_cfg.context))
        prompt = seq[:, :int(middle[0].nonzero()[0])].expand(n, -1)
        cache = KVCache.empty(len(model.blocks), self.model_cfg.context)
        logits = forward(prompt, cache)
        nfe = 1
        if on_step:
            on_step(0, state.clone(), {"nfe": nfe})
        for pos in range(a, b):
            state[:, pos] = plan.tokens(logits, generator)
            if on_step:
                on_step(pos - a + 1, state.clone(), {"nfe": nfe})
            if pos + 1 < b:
                logits = forward(state[:, pos:pos + 1], cache)
                nfe += 1
        return state, nfe

    # ---- the likelihood of a span given both sides ------------------------------------------------------------
    @torch.no_grad()
    def span_nll(self, model: Transformer, windows: torch.Tensor | LabelledText, span: torch.Tensor,
                 batch_size: int = 64) -> SpanNLL:
        """Exact -log p(middle | left, right) of a fill-in-the-middle run: the sum of the middle's next-token
        cross-entropies after the sequence up to the middle (in the run's :attr:`infill_order`), one forward per
        window (the middle's own tokens teacher-forced), which is exactly the probability that :meth:`draw_middle`
        writes it at temperature 1. A span that ends the window has nothing after it, and is what the plain
        left-to-right draw would write after the text before it: its NLL is that one's, as :meth:`draw` continues
        such a blank. Each span must be one run of positions; context beyond the network's reach is dropped from the
        far ends, as when infilling."""
        if self.fim is None:
            raise ConfigError("this ar run was trained left to right only and has no likelihood of a blank given the "
                              "text after it; train with --set method.fim_rate=0.5 (fill-in-the-middle)")
        windows, labels = split_labels(windows)
        units = check_span(windows, span)
        a, b = contiguous_bounds(span)
        most = room(self.model_cfg.context)
        if int((b - a).max()) > most:
            raise ValueError(f"a span of {int((b - a).max())} positions is longer than the {most} this run's middle "
                             f"can hold")
        seq, middle = self._arranged(windows, a, b, most)
        at_end = (b == windows.shape[1]).cpu()  # nothing after the blank: continued left to right, as draw does
        nats = []
        for rows in torch.arange(len(windows), device=windows.device).split(batch_size):
            lab = None if labels is None else labels[rows]
            ce = cross_entropy_per_token(self._forward(model, seq[rows, :-1], lab),
                                         seq[rows, 1:].clamp(max=self.tok.n_symbols - 1))
            plain = cross_entropy_per_token(self._forward(model, self._inputs(windows[rows]), lab), windows[rows])
            nats.append(torch.where(at_end[rows.cpu()], (plain.double() * span[rows]).sum(-1).cpu(),
                                    (ce.double() * middle[rows, 1:]).sum(-1).cpu()))
        return SpanNLL(torch.cat(nats), "exact", units,
                       f"exact -log p(middle | {self.infill_order}) of the fill-in-the-middle ar (a blank "
                       "at the end: -log p(end | text before it), left to right)")

    # ---- repair: the prior times the channel, decoded left to right with a beam (noisy_channel.py) -----------
    repair_options = ("beam", "candidates")

    def repair(self, model: Transformer, state: torch.Tensor, fixed: torch.Tensor, channel: Channel,
               req: RepairRequest, generator: torch.Generator) -> torch.Tensor:
        """argmax_y log p(y) + log q(x | y) by :func:`~textdiffusion.noisy_channel.beam_decode`, the fixed
        positions (a prefix: what earlier windows repaired) read as the prompt."""
        prefix = int(fixed[0].sum())
        forward = FreeGuidance(None, 1.0, self.num_labels).wrap(self.labelled_network(model, req.beam))
        ids = beam_decode(forward, channel.log_likelihood(state[0]), state[0], prefix, self.tok.bos_id,
                          len(model.blocks), self.model_cfg.context, req.beam, req.candidates)
        return ids[None]
