"""Autoregressive next-character prediction: the baseline every diffusion method is measured against.

Each training window x_1..x_L is fed as [BOS, x_1, .., x_{L-1}] under a causal mask and trained to predict
x_1..x_L, so the loss is exactly -log p(x_1..x_L) / L, the same per-window quantity the diffusion methods
bound. (nanoGPT scores L predictions that all have at least one character of context; we report that
variant too, as ``nats_per_char_nanogpt``, for the one-to-one comparison.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textdiffusion.data.speakers import LabelledText, split_labels
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
from textdiffusion.nn.transformer import KVCache, Transformer


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
    supports_infill = False
    extends_past_context = True  # the KV cache slides: any --length
    supports_labels = True

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

    @torch.no_grad()
    def sample(self, model: Transformer, req: SampleRequest, generator: torch.Generator,
               on_step: StepCallback | None = None) -> SampleResult:
        self.check_sampler(req.sampler)
        label, w = self.request_label(req)
        device = next(model.parameters()).device
        state, fixed = self.prepare(req, device)
        n, length = state.shape
        start = int(fixed[0].sum())  # prompt length
        ctx = self.model_cfg.context
        cache = KVCache.empty(len(model.blocks), ctx)
        labels, doubled = self.guidance_labels(label, w, n, device)

        def next_logits(inputs: torch.Tensor, cache: KVCache) -> torch.Tensor:
            """The next token's logits after ``inputs``; guided, from the conditional and unconditional rows
            of one doubled forward (the cache holds both halves)."""
            if not doubled:
                return self._forward(model, inputs, labels, cache)[:, -1]
            return self.combine_guided(self._forward(model, torch.cat((inputs, inputs)), labels, cache)[:, -1], w)

        bos = torch.full((n, 1), self.tok.bos_id, dtype=torch.long, device=device)
        # prefill: BOS + prompt in one forward, then one token per forward with the KV cache
        prefix = torch.cat((bos, state[:, :start]), dim=1)[:, -ctx:]
        logits = next_logits(prefix, cache)
        nfe = 1
        if on_step:
            on_step(0, state.clone(), {"nfe": nfe})
        for pos in range(start, length):
            filtered = filter_logits(logits, req.temperature, req.top_k, req.top_p)
            state[:, pos] = gumbel_sample(filtered, generator)
            if on_step:
                on_step(pos - start + 1, state.clone(), {"nfe": nfe})
            if pos + 1 < length:
                if cache.full:
                    # past the context: re-encode the latest half window (so every prediction still sees
                    # between context/2 and context characters), then go on incrementally
                    cache = KVCache.empty(len(model.blocks), ctx)
                    logits = next_logits(state[:, pos + 1 - ctx // 2:pos + 1], cache)
                else:
                    logits = next_logits(state[:, pos:pos + 1], cache)
                nfe += 1
        return SampleResult(state, nfe, fixed, {"sampler": "ancestral", "kv_cache": True, **self.label_info(label, w)})
