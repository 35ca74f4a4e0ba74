r"""Block diffusion: autoregressive over blocks, masked diffusion inside each (Arriola et al. 2025, BD3-LM).

A window of L tokens is cut into L / B blocks x^1 .. x^{L/B} of B tokens, and the likelihood factorises
autoregressively over blocks,

    log p(x) = sum_b log p_theta(x^b | x^{<b}),

each factor modelled by masked diffusion (:mod:`textdiffusion.methods.masked`) conditioned on the *clean*
earlier blocks. B = 1 is an autoregressive model; B = L is MDLM. Everything masked diffusion has carries over
block by block: the schedules, SUBS, the samplers, the NELBO. The bound is the exact sum of per-block NELBOs
(BD3-LM's objective),

    -log p(x) <= sum_b E_{t_b} [ w(t_b) sum_{l in block b, masked in z_{t_b}} -log p_theta(x^l | z^b_{t_b}, x^{<b}) ],

with an independent noise level t_b per block, so validation reports a true upper bound, estimated like
``masked``'s (stratified times, a fixed seed).

Training is one forward over 2L positions (BD3-LM's efficient training algorithm): the noisy sequence and
its clean copy side by side with the same positions, under the ``block-causal`` paired mask of
:func:`textdiffusion.nn.transformer.attention_bias` (noisy block b sees its own noisy block and clean blocks
< b; clean block b sees clean blocks <= b). The clean half's keys and values are exactly what a KV cache holds
at sampling time, so the cache is exact: a finished block is forwarded once, clean, and never recomputed,
and every denoising step of the next block only reads it. Generation can therefore continue past the context
by sliding the cache, as ``ar`` does.

A labelled run (``data.labels=speaker``) adds one label per window at every one of the 2L training positions, so
the noisy half denoises under the label and the clean half's keys and values (the sampler's cache) carry it too.
Classifier-free guidance at sampling time (Schiff et al. 2024) runs the conditional and the unconditional rows
as one doubled batch whose KV cache holds both halves (:meth:`BlockDiffusion.labelled_network`).

``method.clip_low`` / ``clip_high`` draw training mask rates from U[beta, omega] instead of U[0, 1] (BD3-LM's
"clipped" schedules): the extreme noise levels contribute most of the gradient variance and little
signal. Validation always integrates over the whole [0, 1], so the reported number stays a bound;
:func:`clip_variance` measures the bound's variance on validation windows for a choice of (beta, omega).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from textdiffusion.config import PROBABILITY, SAMPLE_STEPS, ConfigError, Range, option
from textdiffusion.data.speakers import LabelledText, split_labels
from textdiffusion.diffusion.adaptation import causal_mask, shift_inputs, shift_segment
from textdiffusion.diffusion.chain_rule import ChainNetwork, chain_rule_nll, check_orders
from textdiffusion.diffusion.discrete import LEFT_TO_RIGHT
from textdiffusion.diffusion.masking import corrupt, corrupt_exactly, counts_from, sample_times, times_from
from textdiffusion.diffusion.self_distillation import Denoiser, grid_times
from textdiffusion.diffusion.stratified import stratified
from textdiffusion.diffusion.tokens import cross_entropy_per_token
from textdiffusion.guidance.free import LabelledNetwork
from textdiffusion.guidance.steer import Steer
from textdiffusion.methods.base import DrawPlan, NLLProgress, NLLResult, StepCallback, register, report_batches
from textdiffusion.methods.masked import MaskedConfig, MaskedDiffusion, note_log_prob
from textdiffusion.methods.spans import SpanNLL, check_span
from textdiffusion.nn.transformer import KVCache, Transformer

# net(x, cache, rows=None) -> logits: the network as block sampling calls it, on ``x`` (rows of the batch, or the
# sequences ``rows`` of it) against ``cache``, with the request's label and guidance applied
BlockNetwork = Callable[..., torch.Tensor]


@dataclass
class BlockConfig(MaskedConfig):
    """Masked diffusion's options, plus the block size and the clipped training times."""

    name: str = "block"
    # the block size must also divide model.context (checked when the method is built, which knows it)
    block_size: int = option(4, Range(1, 2**20), "tokens per block (must divide model.context): 1 is autoregressive, "
                                                 "the context is masked")
    # training mask rates are drawn from U[clip_low, clip_high] per block; validation integrates over [0, 1]
    clip_low: float = option(0.0, PROBABILITY, "lowest training mask rate per block (validation always integrates "
                                               "over all of [0, 1])")
    # low = high = 1 masks whole blocks, which at B = 1 is exactly autoregressive training
    clip_high: float = option(1.0, PROBABILITY, "highest training mask rate per block (low = high = 1 masks whole "
                                                "blocks)")
    sample_steps: int = option(0, SAMPLE_STEPS, "default denoising steps per block (0 = one per token of the "
                                                "block)", sampling=True)

    def check(self) -> None:
        super().check()
        if not (self.clip_low <= self.clip_high and self.clip_high > 0.0):
            raise ConfigError(f"method.clip_low and clip_high are mask rates with 0 <= low <= high <= 1 and high > 0, "
                              f"got {self.clip_low} and {self.clip_high}")
        if self.time_conditioning:
            raise ConfigError("block diffusion draws one noise level per block, which one time input cannot "
                              "describe; leave method.time_conditioning=false (the masks say how noisy a block is)")


@register
class BlockDiffusion(MaskedDiffusion):
    name = "block"
    config_class = BlockConfig
    attention = "block-causal"
    extends_past_context = True  # the clean prefix is a KV cache that slides
    chains_windows = False  # so it needs no chained windows
    forward_tokens_per_unit = 2  # training runs the noisy and the clean copy side by side
    supports_labels = True  # one label per window, added at all 2L positions of the paired layout

    def __init__(self, cfg: BlockConfig, model_cfg, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        if model_cfg.context % cfg.block_size:
            raise ConfigError(f"method.block_size={cfg.block_size} must divide model.context={model_cfg.context}; "
                              f"pick a divisor such as {_divisors(model_cfg.context)}")
        self.B = cfg.block_size

    def build_model(self) -> Transformer:
        return Transformer(self.model_cfg, self.tok.vocab_size, out_dim=self.tok.n_symbols,
                           attention=self.attention, block_size=self.B, num_labels=self.num_labels)

    def check_score_window(self, length: int) -> None:
        """The bound is a sum over whole blocks: a window must hold a whole number of them."""
        if length % self.B:
            raise ConfigError(f"the {self.name} method scores whole blocks of {self.B} tokens, and this text ends in "
                              f"{length % self.B} more; trim or extend it to a multiple of {self.B} tokens")

    def default_steps(self, length: int, sampler: str = "") -> int | None:
        """Denoising steps *per block*: one per token of the block (left_to_right's: not a choice, None)."""
        if sampler == LEFT_TO_RIGHT:
            return None
        return self.cfg.sample_steps or self.B

    def reveals_per_draw(self, length: int) -> int:
        """The left_to_right sampler's steps per block: one per token of the block."""
        return self.B

    # ---- training and the bound -------------------------------------------------------------------------
    def _paired_logits(self, model: Transformer, z: torch.Tensor, x: torch.Tensor,
                       labels: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Every block's denoising logits in one forward over [z | x] (the noisy half's outputs). A window's
        label is added at all 2L positions: the clean half is the prefix a labelled sampler caches. With
        ``method.shift`` both halves are moved one place right, each block's first position reading the clean
        token before it (:func:`~textdiffusion.diffusion.adaptation.shift_inputs`)."""
        if self.cfg.shift:
            z, x = shift_inputs(z, x, self.tok.bos_id, self.B), shift_inputs(x, x, self.tok.bos_id, self.B)
        mask = {} if attn_mask is None else {"attn_mask": attn_mask}
        return self.call_network(model, labels, torch.cat((z, x), dim=1), paired=True, **mask)[:, : x.shape[1]]

    def _block_terms(self, model: Transformer, x: torch.Tensor, draws: torch.Tensor,
                     generator: torch.Generator, labels: torch.Tensor | None = None,
                     attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-window NELBO (nats): the sum over blocks of masked diffusion's per-block term, with
        ``draws`` (n, L / B) the blocks' times (time estimator) or mask counts (count estimator) and
        ``labels`` (n,) the windows' labels (None: plain windows, the "no label" row of a labelled model)."""
        n, L = x.shape
        blocks = x.reshape(-1, self.B)  # one row per block, so each block gets its own draw
        draws = draws.reshape(-1)
        if self.cfg.estimator == "count":
            z, masked = corrupt_exactly(blocks, draws, self.tok.mask_id, generator)
        else:
            z, masked = corrupt(blocks, self.schedule.alpha(draws), self.tok.mask_id, generator)
        ce = cross_entropy_per_token(self._paired_logits(model, z.view(n, L), x, labels, attn_mask),
                                     x).view(-1, self.B)
        if self.cfg.estimator == "count":
            per_block = self.B * (ce * masked).sum(-1) / draws
        else:
            per_block = self.schedule.weight(draws) * (ce * masked).sum(-1)
        return per_block.view(n, -1).sum(-1)

    def _draws(self, u: torch.Tensor) -> torch.Tensor:
        """Uniforms -> the estimator's per-block draws (times in (0, 1], or mask counts in 1..B)."""
        return counts_from(u, self.B) if self.cfg.estimator == "count" else times_from(u)

    def clip(self, u: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
        """Uniforms on [0, 1) -> uniforms whose mask rate lands in [clip_low, clip_high]. With the time estimator
        t = 1 - u and the mask rate is 1 - alpha(t) (= t for the log-linear schedule); with the count estimator
        u itself is the mask rate."""
        low = self.cfg.clip_low if low is None else low
        high = self.cfg.clip_high if high is None else high
        if (low, high) == (0.0, 1.0):
            return u
        if self.cfg.estimator == "count":  # whole mask counts k with k / B in [low, high] (at least one)
            k_low = max(1, math.ceil(low * self.B - 1e-9))
            k_high = max(k_low, math.floor(high * self.B + 1e-9))
            return (k_low - 1 + u * (k_high - k_low + 1)) / self.B
        return (1.0 - high) + (high - low) * u

    def loss(self, model: Transformer, x: torch.Tensor | LabelledText, generator: torch.Generator) -> torch.Tensor:
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)  # draws nothing for plain windows: their loss is as before
        n, L = x.shape
        blocks = L // self.B
        # one draw per block, each block's draws stratified across the batch (antithetic)
        if self.cfg.antithetic:
            u = stratified(torch.rand(blocks, 1, generator=generator, device=x.device), n).T
        else:
            u = torch.rand(n, blocks, generator=generator, device=x.device)
        mask = self.training_mask(n, L, generator, x.device, paired=True)
        return self._block_terms(model, x, self._draws(self.clip(u)), generator, labels, mask).mean() / L + \
            self._joint(model, x, labels)

    def ar_logits(self, model: Transformer, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network read as ar: the paired forward of the clean window under the causal part of the
        block-causal mask (with the shift, the logit at i is p(x_i | x_{<i}))."""
        return self._paired_logits(model, x, x, labels, causal_mask(*self._target_mask(x.shape[1], x.device, True)))

    @torch.no_grad()
    def nll(self, model: Transformer, windows: torch.Tensor | LabelledText, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        """K stratified draws per window and block, fixed seed; masked diffusion's estimator, block by block.
        Of labelled windows, the conditional bound on -log p(x | label) (each window's label on all its draws)."""
        windows, labels = split_labels(windows)
        K = max(1, self.cfg.eval_time_samples)
        device = windows.device
        gen = torch.Generator(device=device).manual_seed(self.cfg.eval_seed)
        n, L = windows.shape
        u = stratified(torch.rand(n, L // self.B, 1, generator=gen, device=device), K)  # (n, blocks, K)
        draws = self._draws(u.permute(0, 2, 1).reshape(n * K, -1))
        rows = windows.repeat_interleave(K, dim=0)
        row_labels = [None] * len(rows.split(batch_size)) if labels is None else \
            labels.repeat_interleave(K).split(batch_size)
        batches = list(zip(rows.split(batch_size), draws.split(batch_size), row_labels, strict=True))
        terms = torch.cat([self._block_terms(model, xb, db, gen, lb)
                           for xb, db, lb in report_batches(batches, progress)])
        return self._bound_result(windows, terms, K, "Monte-Carlo estimate of the sum of per-block NELBOs (an upper "
                                  "bound on NLL)", block_size=self.B,
                                  **self.joint_details(model, windows, labels, batch_size))

    @torch.no_grad()
    def exact_nll(self, model: Transformer, windows: torch.Tensor | LabelledText, batch_size: int = 64,
                  progress: NLLProgress | None = None, order: torch.Tensor | None = None) -> NLLResult:
        """The exact NLL of ``windows`` under the sampler that writes block after block and, inside each block,
        reveals one token per step in ``order`` (a permutation of 0..B-1; default left to right): the chain
        rule inside every block given the clean blocks before it. Every block reveals its j-th token in the
        same paired forward, so a window costs B forwards (``batch_size`` of them at a time); for B = 1 this is
        the network's autoregressive NLL."""
        windows, labels = split_labels(windows)
        self.check_score_window(windows.shape[1])
        n, L = windows.shape
        given = order is not None
        inner = torch.arange(self.B) if order is None else order.reshape(-1).cpu()
        if inner.numel() != self.B:
            raise ValueError(f"order has {inner.numel()} entries; give one permutation of 0..{self.B - 1}, the "
                             f"reveal order inside each block of {self.B}")
        check_orders(inner[None], 1, self.B)
        steps = inner.argsort().repeat(L // self.B).to(windows.device).expand(n, L)

        def network(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self._paired_logits(model, z, windows[rows], None if labels is None else labels[rows])

        per_window = chain_rule_nll(network, windows, steps, self.tok.mask_id, torch.zeros(self.B), batch_size,
                                    progress).cpu()
        inside = "in the given order" if given else "left to right"
        return self._exact_result(windows, per_window, given,
                                  f"exact NLL of the sampler that writes block after block, revealing one token per "
                                  f"step {inside} inside each block", block_size=self.B)

    def _span_network(self, model: Transformer, windows: torch.Tensor, labels: torch.Tensor | None) -> ChainNetwork:
        """Every block given the clean blocks before it (the paired forward): a span's likelihood is then given the
        text before it and inside its own blocks only, which is what block sampling can fill; a span followed by
        known text in a later block is refused, as its infill is (the later text would be ignored)."""
        def network(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self._paired_logits(model, z, windows[rows], None if labels is None else labels[rows])
        return network

    @torch.no_grad()
    def span_nll(self, model: Transformer, windows: torch.Tensor | LabelledText, span: torch.Tensor,
                 batch_size: int = 64) -> SpanNLL:
        """Masked diffusion's exact left-to-right span likelihood, through the paired forward; only for spans that
        block sampling can fill (no known text after the span outside the span's last block)."""
        plain, _ = split_labels(windows)
        check_span(plain, span)
        block = torch.arange(plain.shape[1], device=span.device) // self.B
        last = torch.where(span, block, -1).max(1).values
        if bool(((~span) & (block[None] > last[:, None])).any()):
            raise ConfigError(f"block diffusion writes blocks left to right and a block never sees later ones, so it "
                              f"has no likelihood of a span given the text after it beyond its block of {self.B}; "
                              f"use --method masked")
        return super().span_nll(model, windows, span, batch_size)

    # ---- self-distillation: masked diffusion's loss, every block at its own grid time ------------------------
    def _distillation_state(self, x: torch.Tensor, steps: int,
                            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_t with one grid time per block, as the block sampler meets each block (``steps`` per block)."""
        n, L = x.shape
        t = grid_times((n * (L // self.B),), steps, generator, x.device)
        z, masked = corrupt(x.reshape(-1, self.B), self.schedule.alpha(t), self.tok.mask_id, generator)
        return z.view(n, L), masked.view(n, L), t.view(n, -1).repeat_interleave(self.B, dim=1)

    def _denoiser(self, model: Transformer, x: torch.Tensor, labels: torch.Tensor | None) -> Denoiser:
        """Every block denoised given the clean blocks before it (the paired forward): the sampler's view."""
        return lambda z, t: self._paired_logits(model, z, x, labels)

    # ---- sampling: block by block, the clean prefix in a KV cache ----------------------------------------
    def draw(self, model: Transformer, forward: BlockNetwork, state: torch.Tensor, fixed: torch.Tensor,
             plan: DrawPlan, generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """Block after block, each filled by masked diffusion's discrete sampler against the cached prefix. The
        left_to_right sampler's blocks start from all masks, and its log-probabilities add up over the blocks."""
        self._check_infill(fixed[0])
        return self._write_blocks(model, forward, state, fixed, plan, generator, on_step)

    def fill(self, model: Transformer, forward: BlockNetwork, state: torch.Tensor, fixed: torch.Tensor,
             plan: DrawPlan, generator: torch.Generator) -> torch.Tensor:
        """Repair's fill: the blocks written in turn, as sampling writes them, with known text anywhere; a blank's
        block reads the blocks before it and its own known characters, never a later block."""
        return self._write_blocks(model, forward, state, fixed, plan, generator, None)[0]

    def leave_out_logits(self, model: Transformer, z: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Every block's prediction of its masked positions from its own visible ones and the blocks before it as
        ``state`` holds them (the paired forward, ``state`` as the clean half)."""
        return self._paired_logits(model, z, state.expand_as(z))

    def _write_blocks(self, model: Transformer, forward: BlockNetwork, state: torch.Tensor, fixed: torch.Tensor,
                      plan: DrawPlan, generator: torch.Generator,
                      on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """Block after block from the first with a blank (:class:`_BlockWriter`)."""
        assert plan.steps is not None
        sampler = self.discrete_sampler(plan.sampler, plan.steps, plan.tokens)
        writer = _BlockWriter(self, model, forward, state, fixed, on_step, plan.steer,
                              from_prior=plan.sampler != LEFT_TO_RIGHT)

        def denoise(f: BlockNetwork, block: torch.Tensor, report: Any) -> tuple[torch.Tensor, float]:
            out = sampler.run(f, block, block == self.tok.mask_id, generator, report)
            note_log_prob(plan, sampler.log_prob)
            return out

        for start in range(writer.first_block(), state.shape[1], self.B):
            writer.write_block(start, denoise, generator)
        return writer.state, writer.nfe

    def sample_info(self, plan: DrawPlan) -> dict[str, object]:
        return {"steps": plan.steps, "block_size": self.B, "kv_cache": True, **self.remasking_info(plan.sampler)}

    # ---- classifier guidance: masked diffusion's Taylor rule, on the states of block-by-block sampling --------
    def classifier_inputs(self, model: Transformer, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """The states block sampling passes through: a clean prefix of b whole blocks (b uniform), block b
        corrupted at t ~ U(0, 1) as masked diffusion corrupts it, and every later block still masked. The
        sampler steers each block with the Taylor rule (:mod:`textdiffusion.guidance.taylor`) on such a state."""
        n, L = x.shape
        b = torch.randint(0, L // self.B, (n, 1), generator=generator, device=x.device)
        t = sample_times(n, False, generator, x.device)
        z = corrupt(x, self.schedule.alpha(t), self.tok.mask_id, generator)[0]
        block = torch.arange(L, device=x.device)[None] // self.B
        return torch.where(block < b, x, torch.where(block == b, z, self.tok.mask_id)), None

    def labelled_network(self, model: Transformer, n: int) -> LabelledNetwork:
        """The network as the block sampler calls it for a batch of ``n`` sequences: ``(x, cache, rows=None)``
        runs ``x`` against ``cache`` (writing it, or a ``peek``), and ``rows`` (the sequences ``x`` holds, for the
        cached sampler) reads only those rows of the cache. A doubled batch (classifier-free guidance) keeps 2n
        rows in the cache, sequence r's conditional prefix at row r and its unconditional one at r + n, so a
        ``rows`` view reads rows r and r + n."""

        def call(labels: torch.Tensor | None, x: torch.Tensor, cache: KVCache,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
            return self.call_network(model, labels, x, cache=cache if rows is None else cache.rows(rows))

        def double(cache: KVCache, rows: torch.Tensor | None = None) -> tuple[KVCache, torch.Tensor | None]:
            return cache, None if rows is None else torch.cat((rows, rows + n))

        return LabelledNetwork(call, double)

    def _check_infill(self, fixed: torch.Tensor) -> None:
        """Blanks may only be followed by known text inside their own block: a block never sees later ones."""
        blank = (~fixed).nonzero().flatten()
        if not len(blank):
            return
        first = int(blank[0])
        later = (fixed & (torch.arange(len(fixed), device=fixed.device) // self.B > first // self.B)).nonzero()
        if len(later):
            q = int(later[0])
            raise ConfigError(f"--infill: the blank at position {first} is in block {first // self.B}, but known text "
                              f"follows in block {q // self.B}; block diffusion writes blocks left to right and a "
                              f"block never sees later ones. Keep known text after a blank within its block of "
                              f"{self.B} (or raise method.block_size), or use --method masked")


class _BlockWriter:
    """The state of one block-by-block generation: the sequence so far, the KV cache of its clean prefix and
    the network evaluations spent. ``write_block`` denoises one block against the cache, then commits it.

    Committing a finished block and the first denoising step of the next one share a forward pass (BD3-LM's
    sampler does the same): the input is [clean block b | noisy block b + 1], whose block-causal mask lets the
    clean block see only the prefix and itself, and the next block see the prefix, block b and itself. Only
    block b's keys and values stay in the cache.

    Every forward goes through ``net`` (:meth:`BlockDiffusion.labelled_network` wrapped in the request's
    guidance); a guided cache holds the conditional and the unconditional copy of every sequence."""

    def __init__(self, method: BlockDiffusion, model: Transformer, net: BlockNetwork, state: torch.Tensor,
                 fixed: torch.Tensor, on_step: StepCallback | None, steer: Steer, from_prior: bool = True):
        self.method, self.model, self.net, self.state, self.fixed = method, model, net, state, fixed
        self.on_step = on_step
        # classifier guidance: steer.tilt(logits, whole state, the block's span) -> steered logits
        self.steer = steer
        self.from_prior = from_prior  # whether a block starts from the schedule's prior, or from all masks
        self.B, self.context, self.length = method.B, method.model_cfg.context, state.shape[1]
        self.cache = KVCache.empty(len(model.blocks), self.context)
        self.cached_until = 0  # state[:, :cached_until] is in the cache (as its last cache.next_pos tokens)
        self.nfe = 0.0
        self.steps_done = 0  # sampler steps of the finished blocks: the trajectory's step counter
        self._last_step = 0
        # (start, initial block, its first-step logits) when the last commit already ran that first step
        self._ahead: tuple[int, torch.Tensor, torch.Tensor] | None = None
        if on_step:
            on_step(0, state.clone(), {"t": 1.0, "nfe": 0})

    def first_block(self) -> int:
        """Where generation starts: the first block with a blank (the prompt's full blocks are only read)."""
        blank = (self.state == self.method.tok.mask_id).any(0).nonzero().flatten()
        return (int(blank[0]) // self.B) * self.B if len(blank) else self.length

    def _encode_prefix(self, end: int, keep: int) -> None:
        """A fresh cache holding the last ``keep`` tokens before ``end`` (whole blocks), in one forward."""
        self.cache = KVCache.empty(len(self.model.blocks), self.context)
        if keep > 0:
            self.net(self._read(self.state[:, end - keep:end], end - keep), self.cache)
            self.nfe += 1
        self.cached_until = end

    def _make_room(self, start: int, length: int) -> None:
        """Bring the cache up to ``start``; when the prefix and the next block would not fit in the context,
        keep only the latest half context of whole blocks (so every block still sees at least that much)."""
        if self.cached_until == start and self.cache.next_pos + length <= self.context:
            return
        fits = self.cached_until == 0 and start + length <= self.context
        keep = start if fits else min(start, (self.context // 2 // self.B) * self.B)
        self._encode_prefix(start, keep)

    def _read(self, segment: torch.Tensor, start: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """What the network reads for the ``segment`` of the sequences (``rows`` of them) that begins at
        ``start``: the segment itself, or with ``method.shift`` the segment moved one place right behind the
        finished token before it (BOS at the start), as training's shifted layout reads it."""
        if not self.method.cfg.shift:
            return segment
        if start == 0:
            before = torch.full_like(segment[:, 0], self.method.tok.bos_id)
        else:
            before = (self.state if rows is None else self.state[rows])[:, start - 1]
        return shift_segment(segment, before)

    def _initial(self, start: int, end: int, generator: torch.Generator) -> torch.Tensor:
        block = self.state[:, start:end]
        return self.method._from_prior(block, self.fixed[:, start:end], generator) if self.from_prior else block

    def write_block(self, start: int, denoise: Any, generator: torch.Generator) -> None:
        end = min(start + self.B, self.length)
        if self._ahead is not None and self._ahead[0] == start:
            _, block, first = self._ahead
        else:
            self._make_room(start, end - start)
            block, first = self._initial(start, end, generator), None
        self._ahead = None
        cache, served = self.cache, False

        def forward(z: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            nonlocal first, served
            if first is not None and rows is None:  # the commit forward already computed this step
                logits, first, served = first, None, True
            else:
                first = None
                logits = self.net(self._read(z, start, rows), cache.peek(), rows)
            if not self.steer.active:
                return logits
            whole = (self.state if rows is None else self.state[rows]).clone()
            whole[:, start:end] = z  # the classifier judges the whole state: prefix, this block, masks after it
            return self.steer.tilt(logits, whole, slice(start, end))

        def report(step: int, block: torch.Tensor, info: dict[str, Any]) -> None:
            assert self.on_step is not None
            full = self.state.clone()
            full[:, start:end] = block
            self._last_step = step
            self.on_step(self.steps_done + step, full, {**info, "nfe": self.nfe + info["nfe"] - served})

        block, nfe = denoise(forward, block, report if self.on_step else None)
        self.state[:, start:end] = block
        self.nfe += nfe - served
        self.steps_done, self._last_step = self.steps_done + self._last_step, 0
        if end < self.length:
            self._commit(block, end, generator)

    def _commit(self, block: torch.Tensor, end: int, generator: torch.Generator) -> None:
        """The finished block joins the clean prefix, once; with room in the cache, in the same forward as the
        next block's first denoising step."""
        next_end = min(end + self.B, self.length)
        if self.cache.next_pos + block.shape[1] + (next_end - end) <= self.context:
            upcoming = self._initial(end, next_end, generator)
            logits = self.net(self._read(torch.cat((block, upcoming), dim=1), end - block.shape[1]),
                              self.cache)[:, block.shape[1]:]
            self.cache.drop_last(next_end - end)
            self._ahead = (end, upcoming, logits)
        else:
            self.net(self._read(block, end - block.shape[1]), self.cache)
        self.nfe += 1
        self.cached_until = end


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def clip_variance(method: BlockDiffusion, model: Transformer, windows: torch.Tensor | LabelledText,
                  clips: list[tuple[float, float]], batch_size: int = 64) -> list[dict[str, float]]:
    """For each (beta, omega): mean and variance across windows of the training estimator with block times
    drawn from U[beta, omega] (one draw per block, as in training, the evaluation seed), in nats per token.
    BD3-LM picks the clip range with the lowest variance; the validation bound is always over all of [0, 1].
    Plain windows of a labelled model are scored under its "no label" row, labelled ones under their labels."""
    windows, labels = split_labels(windows)
    out = []
    n, L = windows.shape
    for low, high in clips:
        gen = torch.Generator(device=windows.device).manual_seed(method.cfg.eval_seed)
        u = method.clip(torch.rand(n, L // method.B, generator=gen, device=windows.device), low, high)
        draws = method._draws(u)
        with torch.no_grad():
            row_labels = [None] * len(windows.split(batch_size)) if labels is None else labels.split(batch_size)
            per_window = torch.cat([method._block_terms(model, xb, db, gen, lb) for xb, db, lb in
                                    zip(windows.split(batch_size), draws.split(batch_size), row_labels,
                                        strict=True)]) / L
        out.append({"clip_low": low, "clip_high": high, "mean_nats": float(per_window.mean()),
                    "variance": float(per_window.var()) if n > 1 else float("nan")})
    return out
