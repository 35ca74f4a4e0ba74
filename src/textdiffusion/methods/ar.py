"""Autoregressive next-character prediction: the baseline every diffusion method is measured against.

Each training window x_1..x_L is fed as [BOS, x_1, .., x_{L-1}] under a causal mask and trained to predict
x_1..x_L, so the loss is exactly -log p(x_1..x_L) / L, the same per-window quantity the diffusion methods
bound. (nanoGPT scores L predictions that all have at least one character of context; we report that
variant too, as ``nats_per_char_nanogpt``, for the one-to-one comparison.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
from textdiffusion.nn.text_classifier import ConvTextClassifier
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
    classifier_rule = "fudge"  # Yang & Klein 2021: a prefix classifier reweights the next token's candidates

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

    # ---- classifier guidance: FUDGE ---------------------------------------------------------------------------
    def classifier_network(self, shape: dict[str, int], num_labels: int, model: Transformer) -> ConvTextClassifier:
        """A causal classifier: its output at position i is p(c | x_1..x_i), every prefix at once."""
        return ConvTextClassifier(num_labels, vocab_size=self.tok.vocab_size, causal=True, **shape)

    def classifier_inputs(self, model: Transformer, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """The states ``ar`` passes through are clean prefixes: the windows themselves, judged at every prefix."""
        return x, None

    @torch.no_grad()
    def sample(self, model: Transformer, req: SampleRequest, generator: torch.Generator,
               on_step: StepCallback | None = None) -> SampleResult:
        self.check_sampler(req.sampler)
        label, w = self.request_label(req)
        steer = self.classifier_request(req)
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
        fudge = None if steer is None else _Fudge(self.classifier, *steer, state[:, :start])
        if on_step:
            on_step(0, state.clone(), {"nfe": nfe})
        for pos in range(start, length):
            if fudge is not None:
                logits = fudge.reweight(logits, state[:, :pos])
            filtered = filter_logits(logits, req.temperature, req.top_k, req.top_p)
            state[:, pos] = gumbel_sample(filtered, generator)
            if fudge is not None:
                fudge.advance(state[:, :pos + 1])
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
        return SampleResult(state, nfe, fixed, {"sampler": "ancestral", "kv_cache": True, **self.label_info(label, w),
                                                **self.classifier_info(req)})


FUDGE_CANDIDATES = 32  # next tokens the classifier judges per step (FUDGE's top-k; a char LM's mass is in far fewer)


class _Fudge:
    r"""FUDGE (Yang & Klein 2021, "FUDGE: Controlled Text Generation With Future Discriminators"): the next token
    is drawn from

        p(x_i = v | x_<i, c)  ∝  p_theta(x_i = v | x_<i) * p(c | x_<i, v)^w

    over the ``FUDGE_CANDIDATES`` likeliest tokens v of the language model (the others get probability 0), with
    the causal noisy classifier as the "future discriminator" p(c | prefix). w = 1 is Bayes' rule (FUDGE's
    paper uses it); larger w steers harder. The classifier pools the features of the written prefix as a running
    sum, so judging a candidate only computes the features of its last ``receptive_field`` tokens: exactly the
    classifier's output on the whole prefix, at any length."""

    def __init__(self, classifier: Any, label: int, w: float, prompt: torch.Tensor):
        self.net, self.label, self.w = classifier.net, label, w
        self.total = self.net.features(prompt).sum(1) if prompt.shape[1] else \
            torch.zeros(prompt.shape[0], self.net.head.in_features, device=prompt.device)

    def reweight(self, logits: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """The language model's next-token logits (n, V) after ``prefix`` -> FUDGE's guided log-probabilities."""
        n, k = logits.shape[0], min(FUDGE_CANDIDATES, logits.shape[-1])
        logp = logits.float().log_softmax(-1)
        top, cand = logp.topk(k, dim=-1)
        tail = prefix[:, -(self.net.receptive_field - 1):] if self.net.receptive_field > 1 else prefix[:, :0]
        recent = torch.cat((tail.repeat_interleave(k, 0), cand.reshape(n * k, 1)), dim=1)
        judged = self.net.extend(recent, self.total.repeat_interleave(k, 0), prefix.shape[1])
        judged = judged.float().log_softmax(-1)[:, self.label].view(n, k)
        guided = torch.full_like(logp, float("-inf"))
        return guided.scatter(-1, cand, top + self.w * judged)

    def advance(self, prefix: torch.Tensor) -> None:
        """The drawn token's features join the running sum."""
        self.total = self.total + self.net.features(prefix[:, -self.net.receptive_field:])[:, -1]
