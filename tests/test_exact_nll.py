"""The exact chain-rule likelihood of masked diffusion: it is the product of the conditionals, a proper
distribution, and its average over random orders is the NELBO."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiffusion.config import ModelConfig
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.diffusion.chain_rule import order_nll, random_orders
from textdiffusion.methods import get_method
from textdiffusion.methods.masked import MaskedConfig

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=8)


def masked(chars: str = "abcdefg", **options: object):
    torch.manual_seed(0)
    method = get_method("masked")(MaskedConfig(**options), SMALL, CharTokenizer(list(chars)))
    return method, method.build_model().eval()


@torch.no_grad()
def reference(method, model, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """-log p(x) per window, one conditional at a time: reveal order[w, j] after the positions before it."""
    n, L = x.shape
    out = torch.zeros(n, dtype=torch.float64)
    for w in range(n):
        z = torch.full((1, L), method.tok.mask_id)
        for j in range(L):
            p = int(order[w, j])
            t = method.schedule.time_at(torch.tensor([j / L], dtype=torch.float64)).float()
            logits = method._forward(model, z, t)
            out[w] -= float(torch.log_softmax(logits[0, p].double(), -1)[x[w, p]])
            z[0, p] = x[w, p]
    return out


@pytest.mark.parametrize("options", [{}, {"time_conditioning": True, "schedule": "linear"}])
def test_exact_nll_is_the_product_of_the_conditionals(options):
    method, model = masked(**options)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, method.tok.n_symbols, (3, 8), generator=g)
    left = torch.arange(8).expand(3, 8)
    result = method.exact_nll(model, x, batch_size=5)  # chunks that straddle windows
    assert result.kind == "exact" and "left to right" in result.details["note"]
    assert result.nats_per_unit == pytest.approx(float(reference(method, model, x, left).sum()) / x.numel(),
                                                 rel=1e-5)
    order = random_orders(3, 8, g)
    shuffled = method.exact_nll(model, x, batch_size=7, order=order)
    assert shuffled.details["order"] == "given"
    assert shuffled.nats_per_unit == pytest.approx(float(reference(method, model, x, order).sum()) / x.numel(),
                                                   rel=1e-5)
    assert abs(shuffled.nats_per_unit - result.nats_per_unit) > 1e-5  # the order matters


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_exact_nll_is_a_proper_distribution(time_conditioning):
    method, model = masked("abc", time_conditioning=time_conditioning)
    everything = torch.tensor(list(itertools.product(range(3), repeat=3)))

    def network(z, t, rows):
        return method._forward(model, z, t)

    for order in (torch.arange(3), torch.tensor([2, 0, 1])):
        nll = order_nll(network, everything, order.expand(27, 3), method.tok.mask_id, method.schedule, 10)
        assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-6)
        assert nll.min() > 0


def test_an_order_that_is_not_a_permutation_is_refused():
    method, model = masked()
    x = torch.zeros((2, 4), dtype=torch.long)
    with pytest.raises(ValueError, match=r"permutation of 0\.\.L-1 in every row"):
        method.exact_nll(model, x, order=torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        method.exact_nll(model, x, order=torch.arange(4))


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_the_average_over_random_orders_is_the_nelbo(time_conditioning):
    """The count NELBO is E_order[chain rule] for any network; on a briefly trained one the Monte-Carlo
    average over orders must land within its error of the NELBO estimated with many draws."""
    method, model = masked("abcd", estimator="count", eval_time_samples=256,
                           time_conditioning=time_conditioning)
    text = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0] * 8).view(8, 8)
    g = torch.Generator().manual_seed(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        method.loss(model, text, g).backward()
        opt.step()
    model.eval()
    x = text[:2]
    K = 64
    rows = x.repeat_interleave(K, dim=0)
    per_order = method.exact_nll(model, rows, batch_size=256, order=random_orders(len(rows), 8, g))
    nelbo = method.nll(model, x)
    left = method.exact_nll(model, x)
    draws = torch.tensor([method.exact_nll(model, rows[i:i + 1], order=random_orders(1, 8, g)).nats_per_unit
                          for i in range(0, len(rows), 8)])
    spread = float(draws.std()) / math.sqrt(len(rows))  # the per-order standard deviation over all K draws
    assert abs(per_order.nats_per_unit - nelbo.nats_per_unit) < 4 * spread + 4 * nelbo.details["stderr_nats"]
    assert left.nats_per_unit < math.log(4)  # trained: better than uniform over the four symbols


def block(block_size: int, **options: object):
    from textdiffusion.methods.block import BlockConfig

    torch.manual_seed(0)
    method = get_method("block")(BlockConfig(block_size=block_size, **options), SMALL, CharTokenizer(list("abcdefg")))
    return method, method.build_model().eval()


@torch.no_grad()
def block_reference(method, model, x: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """One block and one conditional at a time; the other blocks of the noisy half are left clean, which the
    block-causal attention must make irrelevant."""
    n, L = x.shape
    out = torch.zeros(n, dtype=torch.float64)
    for w in range(n):
        for start in range(0, L, method.B):
            z = x[w:w + 1].clone()
            z[0, start:start + method.B] = method.tok.mask_id
            for j in range(method.B):
                p = start + int(inner[j])
                logits = method._paired_logits(model, z, x[w:w + 1])
                out[w] -= float(torch.log_softmax(logits[0, p].double(), -1)[x[w, p]])
                z[0, p] = x[w, p]
    return out


def test_block_exact_nll_is_the_chain_rule_inside_each_block():
    method, model = block(4)
    x = torch.randint(0, 7, (3, 8), generator=torch.Generator().manual_seed(3))
    result = method.exact_nll(model, x, batch_size=5)
    assert result.kind == "exact" and result.details["block_size"] == 4
    assert result.nats_per_unit == pytest.approx(float(block_reference(method, model, x, torch.arange(4)).sum())
                                                 / x.numel(), rel=1e-5)
    inner = torch.tensor([2, 0, 3, 1])
    assert method.exact_nll(model, x, order=inner).nats_per_unit == pytest.approx(
        float(block_reference(method, model, x, inner).sum()) / x.numel(), rel=1e-5)
    with pytest.raises(ValueError, match="permutation"):
        method.exact_nll(model, x, order=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"order has 8 entries; give one permutation of 0\.\.3"):
        method.exact_nll(model, x, order=torch.arange(8))


def test_block_of_one_is_autoregressive_and_its_count_bound_is_exact():
    """With B = 1 each block is one token predicted from the clean prefix: the count NELBO (k = 1 always) and
    the chain rule are the same number, and it is the autoregressive product of the conditionals."""
    method, model = block(1, estimator="count", eval_time_samples=1)
    x = torch.randint(0, 7, (4, 8), generator=torch.Generator().manual_seed(4))
    exact = method.exact_nll(model, x, batch_size=3)
    assert exact.nats_per_unit == pytest.approx(method.nll(model, x).nats_per_unit, rel=1e-5)
    assert exact.nats_per_unit == pytest.approx(float(block_reference(method, model, x, torch.arange(1)).sum())
                                                / x.numel(), rel=1e-5)
