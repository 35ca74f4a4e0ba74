"""The left_to_right sampler of masked and block diffusion: what it draws has exactly the probability the
chain rule (``exact_nll``) gives, so the exact number is the likelihood of a sampler a user can run."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from textdiffusion.config import ConfigError, ModelConfig
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.diffusion.chain_rule import left_to_right, order_nll
from textdiffusion.methods import get_method
from textdiffusion.methods.block import BlockConfig
from textdiffusion.methods.masked import MaskedConfig
from textdiffusion.methods.requests import SampleRequest

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=8)


def build(name: str, chars: str = "abcdefg", **options: object):
    torch.manual_seed(0)
    cfg = BlockConfig(**options) if name == "block" else MaskedConfig(**options)
    method = get_method(name)(cfg, SMALL, CharTokenizer(list(chars)))
    return method, method.build_model().eval()


def per_window_exact(method, model, ids: torch.Tensor) -> torch.Tensor:
    """-log p(x) of each window on its own, in nats (exact_nll's total over one window)."""
    return torch.tensor([method.exact_nll(model, row[None]).nats_per_unit * row.numel() for row in ids],
                        dtype=torch.float64)


@pytest.mark.parametrize("name, options", [
    ("masked", {}),
    ("masked", {"time_conditioning": True, "schedule": "linear"}),  # the times, and a prior with alpha(1) > 0
    ("block", {"block_size": 4}),
    ("block", {"block_size": 2}),
])
def test_what_the_sampler_draws_has_the_probability_of_the_chain_rule(name, options):
    method, model = build(name, **options)
    res = method.sample(model, SampleRequest(n=5, length=8, sampler="left_to_right"), torch.Generator().manual_seed(1))
    assert res.info["sampler"] == "left_to_right"
    assert (res.ids < method.tok.n_symbols).all()  # every position written
    log_prob = torch.tensor(res.info["log_prob"], dtype=torch.float64)
    assert torch.allclose(-log_prob, per_window_exact(method, model, res.ids), rtol=1e-5)
    # block: a commit per finished block, whose forward also takes the next block's first step: L in all
    assert res.nfe == 8
    assert res.info["steps"] == (8 if name == "masked" else method.B)


@pytest.mark.parametrize("name", ["masked", "block"])
def test_its_draw_frequencies_are_the_chain_rules_probabilities(name):
    """On two symbols and three positions every text can be listed: the sampler's frequencies over 6,000 draws
    match exp(-exact NLL) of each of the eight texts within four standard errors."""
    method, model = build(name, "ab", **({"block_size": 2} if name == "block" else {}))
    texts = torch.tensor(list(itertools.product(range(2), repeat=4)))
    if name == "masked":
        def network(z, t, rows):
            return method._forward(model, z, t)

        probs = torch.exp(-order_nll(network, texts, left_to_right(len(texts), 4), method.tok.mask_id,
                                     method.schedule))
    else:
        probs = torch.exp(-per_window_exact(method, model, texts))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    n = 6000
    res = method.sample(model, SampleRequest(n=n, length=4, sampler="left_to_right"), torch.Generator().manual_seed(2))
    seen = Counter(tuple(row) for row in res.ids.tolist())
    for text, p in zip(texts.tolist(), probs.tolist(), strict=True):
        freq = seen[tuple(text)] / n
        assert abs(freq - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3, (text, freq, p)


@torch.no_grad()
def chain_factors(method, model, ids: torch.Tensor, start: int, temperature: float = 1.0) -> torch.Tensor:
    """-sum_{j >= start} log p(x_j | x_<j, masks after) per window, one conditional at a time, at the chain
    rule's times, from the conditionals divided by ``temperature``."""
    n, L = ids.shape
    out = torch.zeros(n, dtype=torch.float64)
    for w, row in enumerate(ids):
        for j in range(start, L):
            z = torch.cat((row[:j], torch.full((L - j,), method.tok.mask_id)))[None]
            t = method.schedule.time_at(torch.tensor([j / L], dtype=torch.float64)).float()
            logits = method._forward(model, z, t)[0, j].double() / temperature
            out[w] -= float(logits.log_softmax(-1)[row[j]])
    return out


def test_a_prompt_is_kept_and_the_log_prob_is_of_the_rest_given_it():
    method, model = build("masked")
    prompt = "abc"
    res = method.sample(model, SampleRequest(n=3, length=8, prompt=prompt, sampler="left_to_right"),
                        torch.Generator().manual_seed(3))
    assert all(method.tok.decode(row.tolist()).startswith(prompt) for row in res.ids)
    assert res.nfe == 5  # one step per position left to write
    log_prob = torch.tensor(res.info["log_prob"], dtype=torch.float64)
    assert torch.allclose(-log_prob, chain_factors(method, model, res.ids, len(prompt)), rtol=1e-5)


def test_an_infill_keeps_the_known_text_and_fills_the_blanks_left_to_right():
    method, model = build("masked")
    frames: list[torch.Tensor] = []
    res = method.sample(model, SampleRequest(n=1, infill="ab__cd__", sampler="left_to_right"),
                        torch.Generator().manual_seed(4), lambda step, state, info: frames.append(state))
    text = method.tok.decode(res.ids[0].tolist())
    assert text[:2] == "ab" and text[4:6] == "cd" and "_" not in text
    written = [int((a != b).nonzero()[0, 1]) for a, b in itertools.pairwise(frames)]
    assert written == [2, 3, 6, 7]  # one blank per step, left to right


def test_steps_are_not_a_choice_of_the_left_to_right_sampler():
    method, model = build("masked")
    with pytest.raises(ConfigError, match="--steps does not apply to the left_to_right sampler"):
        method.sample(model, SampleRequest(n=1, length=8, sampler="left_to_right", steps=4), torch.Generator())
    assert method.default_steps(8, "left_to_right") is None and method.default_steps(8, "ancestral") == 8


def test_at_a_lower_temperature_the_log_prob_is_of_the_sharpened_draw():
    """log_prob is what the draw had: at temperature 0.5, the chain rule of the sharpened conditionals (the
    model's exact likelihood only at temperature 1)."""
    method, model = build("masked")
    res = method.sample(model, SampleRequest(n=4, length=8, sampler="left_to_right", temperature=0.5),
                        torch.Generator().manual_seed(5))
    log_prob = torch.tensor(res.info["log_prob"], dtype=torch.float64)
    assert torch.allclose(-log_prob, chain_factors(method, model, res.ids, 0, temperature=0.5), rtol=1e-5)
    assert not torch.allclose(-log_prob, per_window_exact(method, model, res.ids), rtol=1e-3)
