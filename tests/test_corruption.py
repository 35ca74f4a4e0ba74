"""The corruption channels and the repairers' maths, pinned without a trained network: the realised rate, the
channel's probabilities, the time that matches a rate, the leave-group-out scores, and the noisy-channel beam."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiffusion.config import ConfigError
from textdiffusion.corruption import CONFUSABLE, ChannelSteer, character_errors, make_channel
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.diffusion.masking import make_schedule
from textdiffusion.diffusion.uniform import UniformSampler, corrupt, posterior, time_for_rate
from textdiffusion.nn.transformer import KVCache
from textdiffusion.noisy_channel import beam_decode
from textdiffusion.suspicion import clean_probability, group_masks, suspects

VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # Tiny Shakespeare's 65


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer(sorted(VOCAB))


@pytest.mark.parametrize("name", ["uniform", "keyboard"])
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_the_realised_rate_is_p_and_every_change_is_a_change(tok, name, rate):
    channel = make_channel(name, rate, tok)
    ids = torch.randint(0, tok.n_symbols, (200_000,), generator=torch.Generator().manual_seed(0))
    noisy, changed = channel.corrupt(ids, torch.Generator().manual_seed(1))
    realised = float((noisy != ids).float().mean())
    assert abs(realised - rate) < 4 * math.sqrt(rate * (1 - rate) / ids.numel())
    assert torch.equal(noisy != ids, changed)  # a changed character never lands on itself


@pytest.mark.parametrize("name", ["uniform", "keyboard"])
def test_the_channel_is_a_distribution_for_every_clean_character(tok, name):
    channel = make_channel(name, 0.1, tok)
    q = channel.matrix()
    assert torch.allclose(q.sum(1), torch.ones(tok.n_symbols, dtype=torch.float64))
    assert (q >= 0).all() and torch.allclose(q.diagonal(), torch.full((tok.n_symbols,), 0.9, dtype=torch.float64))
    assert (channel.confusion.diagonal() == 0).all()
    # log_likelihood reads the matrix's column of the observed character
    x = torch.tensor([tok.stoi["e"], tok.stoi["m"]])
    assert torch.allclose(channel.log_likelihood(x).exp().double(), q[:, x].T, atol=1e-6)


def test_the_keyboard_table_names_neighbours_case_slips_and_lookalikes(tok):
    assert {"q", "w", "s", "z", "A"} <= CONFUSABLE["a"] and not {"x", "p"} & CONFUSABLE["a"]
    assert {"n", "M"} <= CONFUSABLE["m"] and {"O", "Q"} <= CONFUSABLE["0"] and "l" in CONFUSABLE["1"]
    assert all(a in CONFUSABLE[b] for a, near in CONFUSABLE.items() for b in near)  # symmetric
    channel = make_channel("keyboard", 0.2, tok)
    row = channel.confusion[tok.stoi["a"]]
    shared = {tok.chars[i] for i in row.nonzero().flatten().tolist()}
    assert shared == CONFUSABLE["a"] & set(VOCAB)  # only characters the vocabulary has
    assert torch.allclose(row[row > 0], torch.full_like(row[row > 0], 1 / len(shared)))
    space = channel.confusion[tok.stoi[" "]]  # nothing in the table: uniform over the others
    assert torch.allclose(space.sum(), torch.tensor(1.0, dtype=torch.float64)) and int((space > 0).sum()) == 64


def test_the_drawn_substitutions_follow_the_confusion_row(tok):
    channel = make_channel("keyboard", 0.5, tok)
    e = tok.stoi["e"]
    noisy, _ = channel.corrupt(torch.full((100_000,), e), torch.Generator().manual_seed(3))
    counts = torch.bincount(noisy, minlength=tok.n_symbols).double() / noisy.numel()
    assert torch.allclose(counts, channel.matrix()[e], atol=0.01)


def test_bad_channels_are_refused_in_one_line(tok):
    with pytest.raises(ConfigError, match="unknown channel 'ocr'"):
        make_channel("ocr", 0.1, tok)
    for rate in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            make_channel("uniform", rate, tok)


def test_character_errors_count_differing_positions():
    assert character_errors("hello", "hallo") == 1 and character_errors("abc", "abc") == 0
    with pytest.raises(ValueError, match="position by position"):
        character_errors("ab", "abc")


@pytest.mark.parametrize("schedule", ["loglinear", "linear"])
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_the_matched_time_changes_that_fraction_of_characters(schedule, rate):
    """(1 - alpha_t)(N - 1)/N = p: the uniform process run to t* changes a fraction p of a text."""
    sched, n = make_schedule(schedule, 10.0), 65
    t = time_for_rate(sched, rate, n)
    assert 0 < t < 1
    alpha = sched.alpha(torch.tensor([t], dtype=torch.float64))
    assert math.isclose(float((1 - alpha) * (n - 1) / n), rate, rel_tol=1e-9)
    x = torch.randint(0, n, (1, 200_000), generator=torch.Generator().manual_seed(0))
    z, _ = corrupt(x, alpha.float(), n, torch.Generator().manual_seed(1))
    assert abs(float((z != x).float().mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / x.numel())
    with pytest.raises(ValueError, match="uniform noise"):
        time_for_rate(sched, 0.99, n)


def test_a_one_step_greedy_repair_is_the_channels_bayes_rule():
    """From t* straight to 0, the greedy end takes argmax_y q(z | y) x_theta(y): the posterior at alpha_s = 1."""
    sched, n = make_schedule("loglinear", 10.0), 7
    t = time_for_rate(sched, 0.2, n)
    z = torch.randint(0, n, (3, 9), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(3, 9, n, generator=torch.Generator().manual_seed(1)) * 3

    def forward(state, times):
        assert torch.allclose(times, torch.full((3,), t))  # the network is asked at the matched time
        return logits

    sampler = UniformSampler("ancestral", 1, alpha=sched.alpha, start=t, greedy_end=True)
    out, nfe = sampler.run(forward, z, torch.zeros_like(z, dtype=torch.bool), torch.Generator().manual_seed(2))
    a_t = sched.alpha(torch.tensor(t, dtype=torch.float64))
    expected = posterior(z, logits.double().softmax(-1), a_t, torch.tensor(1.0, dtype=torch.float64)).argmax(-1)
    assert torch.equal(out, expected) and nfe == 1.0
    assert (out != z).any() and (out == z).any()  # it keeps some characters and changes others


def test_groups_cover_every_position_once():
    masks = group_masks(37, 8, torch.device("cpu"))
    assert masks.shape == (8, 37) and torch.equal(masks.sum(0), torch.ones(37, dtype=torch.long))
    assert group_masks(3, 8, torch.device("cpu")).shape == (3, 3)


def test_clean_probability_is_bayes_rule_from_one_batched_call(tok):
    """A network that predicts the true text at every masked position: the corrupted characters get a probability
    of being clean near 0, the others near 1, from one forward of G rows (every group at once)."""
    channel = make_channel("keyboard", 0.1, tok)
    clean = torch.tensor([tok.encode("the quick brown fox jumps over the lazy dog")])
    noisy, changed = channel.corrupt(clean, torch.Generator().manual_seed(4))
    assert changed.any()
    calls = []

    def oracle(z):
        calls.append(z.shape)
        logits = torch.full((*z.shape, tok.n_symbols), -8.0)
        logits.scatter_(-1, clean.expand_as(z)[..., None], 8.0)
        return logits

    p = clean_probability(oracle, noisy, channel.log_likelihood(noisy), tok.mask_id, 8)
    assert calls == [(8, clean.shape[1])]
    assert (p[changed] < 0.01).all() and (p[~changed] > 0.99).all()
    chosen = suspects(p, torch.ones_like(changed), int(changed.sum()))
    assert torch.equal(chosen, changed)
    # a position known in advance is never a suspect
    free = torch.ones_like(changed)
    free[0, changed[0].nonzero()[0]] = False
    assert not (suspects(p, free, 100) & ~free).any()


def test_the_channel_steer_adds_log_q_over_the_span(tok):
    table = torch.randn(2, 10, tok.n_symbols)
    logits = torch.randn(2, 4, tok.n_symbols)
    assert torch.allclose(ChannelSteer(table).tilt(logits, torch.zeros(2, 10), slice(3, 7)), logits + table[:, 3:7])


class Bigram:
    """A Markov prior as the beam calls a network: the next logits from the last input token (BOS its own row),
    counting positions into the cache as a transformer's would."""

    def __init__(self, n: int, seed: int):
        self.table = torch.randn(n + 1, n, generator=torch.Generator().manual_seed(seed)) * 2
        self.n = n

    def __call__(self, inputs: torch.Tensor, cache: KVCache) -> torch.Tensor:
        cache.next_pos += inputs.shape[1]
        return self.table[inputs[:, -1]]

    def log_prob(self, y: tuple[int, ...]) -> float:
        prev, total = self.n, 0.0
        for c in y:
            total += float(self.table[prev].log_softmax(-1)[c])
            prev = c
        return total


def test_a_beam_wide_enough_finds_the_exact_noisy_channel_argmax():
    """With every candidate and a beam as wide as every path, beam_decode returns argmax_y log p(y) + log q(x|y),
    found here by enumerating all 3^5 texts; a narrower beam never scores better."""
    n, length = 3, 5
    prior = Bigram(n, seed=0)
    tok = CharTokenizer(["a", "b", "c"])
    channel = make_channel("uniform", 0.3, tok)
    observed = torch.tensor([0, 2, 1, 1, 0])
    log_q = channel.log_likelihood(observed)

    def score(y):
        return prior.log_prob(y) + sum(float(log_q[i, c]) for i, c in enumerate(y))

    best = max(itertools.product(range(n), repeat=length), key=score)
    found = beam_decode(prior, log_q, observed, 0, n, 1, 64, width=n ** length, candidates=n)
    assert tuple(found.tolist()) == best
    narrow = beam_decode(prior, log_q, observed, 0, n, 1, 64, width=1, candidates=1)
    assert score(tuple(narrow.tolist())) <= score(best)


def test_the_beam_keeps_a_fixed_prefix_and_slides_past_the_context():
    prior = Bigram(5, seed=1)
    tok = CharTokenizer(list("abcde"))
    channel = make_channel("uniform", 0.1, tok)
    observed = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(2))
    out = beam_decode(prior, channel.log_likelihood(observed), observed, 7, 5, 1, context=8, width=3)
    assert out.shape == (40,) and torch.equal(out[:7], observed[:7])
