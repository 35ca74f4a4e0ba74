"""Autoregressive next-character prediction: the baseline every diffusion method is measured against.

Each training window x_1..x_L is fed as [BOS, x_1, .., x_{L-1}] under a causal mask and trained to predict
x_1..x_L, so the loss is exactly -log p(x_1..x_L) / L, the same per-window quantity the diffusion methods
bound. (nanoGPT scores L predictions that all have at least one character of context; we report that
variant too, as ``nats_per_char_nanogpt``, for the one-to-one comparison.)

This file holds what makes ``ar`` itself: the causal attention, the shifted inputs, the loss and likelihood, and
the draw loop. The sampling preamble (request checks, prompt, steps) is :meth:`TextMethod.sample`'s, and guidance
wraps the network from outside (:mod:`textdiffusion.guidance`). :mod:`textdiffusion.methods.masked` lists what
differs on its side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

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
from textdiffusion.nn.text_classifier import ConvTextClassifier
from textdiffusion.nn.transformer import KVCache, Transformer
from textdiffusion.noisy_channel import beam_decode

if TYPE_CHECKING:
    from textdiffusion.corruption import Channel
    from textdiffusion.methods.repairs import RepairRequest


@dataclass
class ARConfig(TextMethodConfig):
    """``ar`` has nothing of its own to configure: the backbone and the token draw say it all."""

    name: str = "ar"


@register
class AutoRegressive(TextMethod):
    name = "ar"
    config_class = ARConfig
    attention = "causal"
    samplers = ("ancestral",)
    likelihood_kind = "exact"
    loss_is_likelihood = True  # the cross-entropy of the next token
    supports_infill = False
    extends_past_context = True  # the KV cache slides: any --length
    supports_labels = True
    classifier_rule = "fudge"  # a prefix classifier reweights the next token's candidates (guidance/fudge.py)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        bos = torch.full_like(x[:, :1], self.tok.bos_id)
        return torch.cat((bos, x[:, :-1]), dim=1)

    def _forward(self, model: Transformer, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                 cache: KVCache | None = None) -> torch.Tensor:
        return self.call_network(model, labels, inputs, cache=cache)

    def loss(self, model: Transformer, x: torch.Tensor | LabelledText, generator: torch.Generator) -> torch.Tensor:
        x, labels = split_labels(x)
        labels = self.drop_labels(labels, generator)
        return cross_entropy_per_token(self._forward(model, self._inputs(x), labels), x).mean()

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
        """BOS and the prompt in one forward (prefill), then one token per forward with the KV cache."""
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
