"""Repairing corrupted text with a run: each family's repairer on the method contract, the windows of a long text,
the refusals, and the ``textdiffusion repair`` command."""

from __future__ import annotations

import pytest
import torch

from helpers import train_tiny
from textdiffusion.api import load
from textdiffusion.config import ConfigError
from textdiffusion.corruption import make_channel
from textdiffusion.diffusion import uniform as uniform_maths
from textdiffusion.methods.requests import window_starts

CONTEXT = 32  # the tiny preset's
REPAIRERS = ("ar", "masked", "block", "uniform")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("repair")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:30_000], encoding="utf-8")
    for method in (*REPAIRERS, "embedding"):
        train_tiny(method, corpus, root / method, steps=2)
    return root


@pytest.fixture(scope="module")
def held_out(shakespeare) -> str:
    return shakespeare[-(3 * CONTEXT + 5):]


def noisy_copy(model, text: str, rate: float = 0.2, seed: int = 0) -> str:
    ids = torch.tensor(model.tokenizer.encode(text))
    noisy, _ = make_channel("uniform", rate, model.tokenizer).corrupt(ids, torch.Generator().manual_seed(seed))
    return model.tokenizer.decode(noisy.tolist())


@pytest.mark.parametrize("method", REPAIRERS)
def test_every_repairer_keeps_the_length_window_after_window(runs, held_out, method):
    model = load(runs / method)
    noisy = noisy_copy(model, held_out)
    res = model.repair(noisy, rate=0.2, progress=False)
    assert len(res.text) == len(noisy) and set(res.text) <= set(model.tokenizer.chars)
    assert res.windows == len(window_starts(len(noisy), CONTEXT, CONTEXT // 2))
    assert res.changed == sum(a != b for a, b in zip(res.text, noisy, strict=True))
    again = model.repair(noisy, rate=0.2, progress=False)
    assert again.text == res.text  # a seed gives the same repair


def test_each_window_keeps_what_the_windows_before_repaired(runs, held_out, monkeypatch):
    model = load(runs / "masked")
    method = model.text_method
    seen = []
    repair = type(method).repair

    def recording(self, model_, state, fixed, channel, req, generator):
        out = repair(self, model_, state, fixed, channel, req, generator)
        seen.append((state.clone(), fixed.clone(), out.clone()))
        return out

    monkeypatch.setattr(type(method), "repair", recording)
    res = model.repair(noisy_copy(model, held_out), rate=0.2, progress=False)
    ids = torch.tensor(model.tokenizer.encode(res.text))
    starts = window_starts(len(ids), CONTEXT, CONTEXT // 2)
    done = 0
    for k, (start, (state, fixed, out)) in enumerate(zip(starts, seen, strict=True)):
        assert int(fixed.sum()) == max(0, done - start) and bool(fixed[0, :done - start].all())
        assert torch.equal(out[fixed], state[fixed])  # what an earlier window kept stays
        # a window keeps its repair up to the middle of its overlap with the next (the last: all of it)
        keep = len(ids) if k + 1 == len(starts) else (starts[k + 1] + start + CONTEXT) // 2
        assert torch.equal(out[0, :keep - start], ids[start:keep])
        done = keep
    assert done == len(ids)


@pytest.mark.parametrize("method", ["masked", "block"])
def test_masked_repair_masks_the_rates_share_of_the_free_positions(runs, held_out, method, monkeypatch):
    """The rate's share of the free characters, those least likely clean, are masked and filled; every other
    character comes back as it was read."""
    model = load(runs / method)
    cls = type(model.text_method)
    filled = []
    fill = cls.fill

    def recording(self, model_, forward, state, fixed, plan, generator):
        before = state.clone()
        out = fill(self, model_, forward, state, fixed, plan, generator)
        filled.append((before, fixed.clone(), out.clone()))
        return out

    monkeypatch.setattr(cls, "fill", recording)
    text = held_out[:CONTEXT]
    noisy = noisy_copy(model, text, rate=0.25)
    res = model.repair(noisy, rate=0.25, progress=False)
    (state, fixed, out), = filled
    masks = state == model.tokenizer.mask_id
    assert torch.equal(masks, ~fixed) and int(masks.sum()) == round(0.25 * CONTEXT)
    read = torch.tensor([model.tokenizer.encode(noisy)])
    assert torch.equal(out[fixed], read[fixed]) and res.text == model.tokenizer.decode(out[0].tolist())


def test_block_repair_fills_blanks_followed_by_later_blocks(runs, held_out):
    """Sampling refuses a blank with known text in a later block (a block never sees it); repair's fill writes
    such blanks, reading the blocks before and its own."""
    model = load(runs / "block")
    with pytest.raises(ConfigError, match="known text follows"):
        model.infill("ab_d" * 8, progress=False)
    res = model.repair(noisy_copy(model, held_out[:CONTEXT], rate=0.3), rate=0.3, progress=False)
    assert len(res.text) == CONTEXT


def test_uniform_repair_starts_at_the_time_its_rate_matches(runs, held_out, monkeypatch):
    model = load(runs / "uniform")
    method = model.text_method
    starts = []
    run = uniform_maths.UniformSampler.run

    def recording(self, *args, **kwargs):
        starts.append((self.start, self.steps, self.greedy_end))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(uniform_maths.UniformSampler, "run", recording)
    model.repair(noisy_copy(model, held_out[:CONTEXT], 0.1), rate=0.1, progress=False)
    model.repair(noisy_copy(model, held_out[:CONTEXT], 0.1), rate=0.1, steps=5, progress=False)
    t = uniform_maths.time_for_rate(method.schedule, 0.1, model.tokenizer.n_symbols)
    assert starts == [(t, 1, True), (t, 5, True)]


def test_a_method_that_cannot_repair_says_so(runs):
    model = load(runs / "embedding")
    with pytest.raises(ConfigError, match="the embedding method cannot repair text; use a run of ar, masked"):
        model.repair("hello", progress=False)


def test_bad_requests_are_refused_in_one_line(runs):
    masked, ar = load(runs / "masked"), load(runs / "ar")
    with pytest.raises(ConfigError, match="--beam applies to ar's noisy-channel decoder, not to the masked"):
        masked.repair("hello", beam=2, progress=False)
    with pytest.raises(ConfigError, match="--groups applies to masked and block's scoring, not to the ar"):
        ar.repair("hello", groups=2, progress=False)
    with pytest.raises(ConfigError, match="repair has no setting 'width'"):
        ar.repair("hello", width=2, progress=False)
    with pytest.raises(ConfigError, match="the text to repair is empty"):
        ar.repair("", progress=False)
    with pytest.raises(ConfigError, match=r"outside .*'s vocabulary: 'é', '€'; remove or replace them"):
        ar.repair("café for €", progress=False)
    for rate in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="--rate must be between 0 and 1"):
            ar.repair("hello", rate=rate, progress=False)
    with pytest.raises(ConfigError, match="unknown channel 'ocr'"):
        ar.repair("hello", channel="ocr", progress=False)
    with pytest.raises(ConfigError, match="--beam must be between 1 and 64"):
        ar.repair("hello", beam=0, progress=False)
    with pytest.raises(ConfigError, match="uniform repair needs a smaller rate"):
        load(runs / "uniform").repair("hello", rate=0.99, progress=False)



@pytest.mark.parametrize("method", ["masked", "uniform"])
@pytest.mark.parametrize("channel", ["uniform", "keyboard"])
def test_a_network_that_knows_the_text_puts_back_every_change(runs, held_out, method, channel, monkeypatch):
    """With an oracle for a network (the clean text's character, certain, at every position), the masked repairer
    masks exactly the changed characters and fills them back, and uniform's one step puts each back: what remains
    is the repairers' logic, not the network."""
    model = load(runs / method)
    tok = model.tokenizer
    clean_text = held_out[:CONTEXT]
    clean = torch.tensor([tok.encode(clean_text)])
    noisy = clean.clone()
    where = [3, 11, 12, 25]  # 4 of 32 changed, below round(0.2 * 32) = 6
    table = make_channel(channel, 0.2, tok).confusion
    for i in where:
        noisy[0, i] = int(table[clean[0, i]].argmax())  # a change the channel can make

    def oracle(self, model_, z, t, labels=None, attn_mask=None):
        logits = torch.full((*z.shape, tok.n_symbols), -12.0)
        return logits.scatter(-1, clean.expand(z.shape[0], -1)[..., None], 12.0)

    monkeypatch.setattr(type(model.text_method), "_forward", oracle)
    res = model.repair(tok.decode(noisy[0].tolist()), rate=0.2, channel=channel, progress=False)
    assert res.text == clean_text and res.changed == len(where)


def test_a_threshold_masks_every_character_less_likely_clean(runs, held_out, monkeypatch):
    """At a rate whose share (round(0.05 * 32) = 2) is below the 4 characters changed, the rate leaves two of them
    and a threshold of 0.5 puts all four back (the oracle network of the test above)."""
    model = load(runs / "masked")
    tok = model.tokenizer
    clean_text = held_out[:CONTEXT]
    clean = torch.tensor([tok.encode(clean_text)])
    noisy = clean.clone()
    for i in (3, 11, 12, 25):
        noisy[0, i] = (int(clean[0, i]) + 1) % tok.n_symbols

    def oracle(self, model_, z, t, labels=None, attn_mask=None):
        logits = torch.full((*z.shape, tok.n_symbols), -12.0)
        return logits.scatter(-1, clean.expand(z.shape[0], -1)[..., None], 12.0)

    monkeypatch.setattr(type(model.text_method), "_forward", oracle)
    text = tok.decode(noisy[0].tolist())
    assert model.repair(text, rate=0.05, progress=False).changed == 2
    assert model.repair(text, rate=0.05, threshold=0.5, progress=False).text == clean_text
    with pytest.raises(ConfigError, match="--threshold must be between 0 and 1"):
        model.repair(text, threshold=1.0, progress=False)
    with pytest.raises(ConfigError, match="--threshold applies to masked and block's scoring, not to the uniform"):
        load(runs / "uniform").repair(text, threshold=0.5, progress=False)
