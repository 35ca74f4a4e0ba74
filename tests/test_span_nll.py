"""The likelihood of a span given both sides, per method: masked's and block's exact left-to-right chain rule over
the span (checked against one conditional at a time and as a distribution), uniform's NELBO restricted to the span
(the whole window's bound when the span is the window), and the refusals."""

from __future__ import annotations

import itertools

import pytest
import torch

from textdiffusion.config import ConfigError, ModelConfig
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods import get_method
from textdiffusion.methods.block import BlockConfig
from textdiffusion.methods.masked import MaskedConfig
from textdiffusion.methods.spans import span_mask
from textdiffusion.methods.uniform import UniformConfig

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=8)


def build(name: str, cfg, chars: str = "abcdefg"):
    torch.manual_seed(0)
    method = get_method(name)(cfg, SMALL, CharTokenizer(list(chars)))
    return method, method.build_model().eval()


@torch.no_grad()
def left_to_right_reference(method, model, x: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """-log p(span | rest) one conditional at a time: the span masked, revealed left to right, the network at the
    time whose clean fraction is the state's."""
    n, L = x.shape
    out = torch.zeros(n, dtype=torch.float64)
    for w in range(n):
        z = torch.where(span[w], method.tok.mask_id, x[w])[None]
        for p in span[w].nonzero().flatten().tolist():
            clean = float((z != method.tok.mask_id).sum()) / L
            t = method.schedule.time_at(torch.tensor([clean], dtype=torch.float64)).float()
            logits = method._forward(model, z, t) if method.name == "masked" else \
                method._paired_logits(model, z, x[w][None])
            out[w] -= float(logits[0, p].double().log_softmax(-1)[x[w, p]])
            z[0, p] = x[w, p]
    return out


@pytest.mark.parametrize("options", [{}, {"time_conditioning": True, "schedule": "linear"}])
def test_masked_span_nll_is_the_left_to_right_chain_rule_over_the_span(options):
    method, model = build("masked", MaskedConfig(**options))
    x = torch.randint(0, 7, (3, 8), generator=torch.Generator().manual_seed(1))
    span = span_mask(torch.tensor([0, 3, 5]), 3, 8)
    result = method.span_nll(model, x, span, batch_size=4)
    assert result.kind == "exact" and result.units == 9
    assert result.nats.tolist() == pytest.approx(left_to_right_reference(method, model, x, span).tolist(), rel=1e-5)
    # the context matters: the same span with other text around it scores differently
    other = torch.where(span, x, (x + 1) % 7)
    assert not torch.allclose(method.span_nll(model, other, span).nats, result.nats)


@torch.no_grad()
def test_masked_span_nll_is_a_distribution_over_the_span():
    method, model = build("masked", MaskedConfig(), chars="abc")
    every = torch.tensor([[0, 1, a, 2, b, 0, 1, 2] for a, b in itertools.product(range(3), repeat=2)])
    span = torch.zeros(9, 8, dtype=torch.bool)
    span[:, [2, 4]] = True  # the span need not be one piece for masked diffusion
    assert float(torch.exp(-method.span_nll(model, every, span).nats).sum()) == pytest.approx(1.0, abs=1e-6)


def test_block_span_nll_is_exact_where_block_sampling_can_fill_and_refused_elsewhere():
    method, model = build("block", BlockConfig(block_size=4))
    x = torch.randint(0, 7, (2, 8), generator=torch.Generator().manual_seed(2))
    span = span_mask(torch.tensor([5, 4]), 2, 8)  # known text after the span only inside its last block
    result = method.span_nll(model, x, span)
    assert result.kind == "exact"
    assert result.nats.tolist() == pytest.approx(left_to_right_reference(method, model, x, span).tolist(), rel=1e-5)
    with pytest.raises(ConfigError, match="never sees later ones"):
        method.span_nll(model, x, span_mask(torch.tensor([1, 1]), 2, 8))


@torch.no_grad()
def test_uniform_span_bound_of_the_whole_window_is_its_nelbo_and_of_less_is_less():
    method, model = build("uniform", UniformConfig(eval_time_samples=4))
    x = torch.randint(0, 7, (3, 8), generator=torch.Generator().manual_seed(3))
    everything = torch.ones_like(x, dtype=torch.bool)
    whole = method.span_nll(model, x, everything, batch_size=5)
    assert whole.kind == "bound"
    assert whole.nats_per_unit == pytest.approx(method.nll(model, x, batch_size=5).nats_per_unit, rel=1e-6)
    part = method.span_nll(model, x, span_mask(torch.tensor([2, 2, 2]), 2, 8))
    assert part.units == 6 and (part.nats > 0).all() and (part.nats < whole.nats).all()


def test_methods_without_a_span_likelihood_and_bad_spans_are_refused():
    method, model = build("masked", MaskedConfig())
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="same number of positions"):
        method.span_nll(model, x, torch.stack([span_mask(torch.tensor([0]), 2, 8)[0],
                                               span_mask(torch.tensor([0]), 3, 8)[0]]))
    with pytest.raises(ValueError, match="at least one span position"):
        method.span_nll(model, x, torch.zeros(2, 8, dtype=torch.bool))
    embedding, net = build("embedding", get_method("embedding").config_class())
    with pytest.raises(ConfigError, match="the embedding method has no likelihood of a span"):
        embedding.span_nll(net, x, span_mask(torch.tensor([0, 0]), 2, 8))
