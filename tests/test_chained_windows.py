"""Text past one context from a method that cannot slide a cache (masked, embedding, bits): windows chained in the
sampling template, each new window starting with the tail of the text so far fixed, as a prompt is."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from helpers import train_tiny
from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.config import ConfigError
from textdiffusion.methods import REGISTRY, TextMethod
from textdiffusion.methods.requests import window_starts

CONTEXT = 32  # the tiny preset's


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("chained")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:30_000], encoding="utf-8")
    for method in ("masked", "embedding", "bits", "ar"):
        train_tiny(method, corpus, root / method, steps=2)
    return root


def test_which_methods_chain():
    chaining = {name for name, cls in REGISTRY.items() if issubclass(cls, TextMethod) and cls.chains_windows}
    sliding = {name for name, cls in REGISTRY.items() if issubclass(cls, TextMethod) and cls.extends_past_context}
    assert chaining == {"masked", "embedding", "bits", "uniform"} and sliding == {"ar", "block"}


def test_windows_advance_by_window_minus_overlap_and_end_at_the_length():
    assert window_starts(32, 32, 16) == [0]
    assert window_starts(96, 32, 16) == [0, 16, 32, 48, 64]
    assert window_starts(100, 32, 8) == [0, 24, 48, 68]  # the last moved back: it shares 12, not 8
    for length, overlap in ((33, 1), (100, 31), (500, 16)):
        starts = window_starts(length, 32, overlap)
        assert starts[-1] + 32 == length
        assert all(32 - overlap >= b - a > 0 for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("method", ["masked", "embedding", "bits"])
def test_three_windows_long_gives_exactly_that_many_characters(runs, method):
    model = load(runs / method)
    res = model.sample("ROMEO:", n=2, length=3 * CONTEXT, steps=4, seed=1, progress=False)
    assert [len(t) for t in res.texts] == [3 * CONTEXT] * 2 and all(t.startswith("ROMEO:") for t in res.texts)
    assert (res.windows, res.overlap, res.length) == (5, CONTEXT // 2, 3 * CONTEXT)
    assert res.fixed == list(range(6))  # the prompt's positions; the overlaps are the sampler's own text


def test_each_window_starts_with_the_tail_written_before_it(runs, monkeypatch):
    """Every window after the first is an ordinary draw whose first ``overlap`` positions are fixed to what the
    window before wrote there, and the draw keeps them."""
    model = load(runs / "masked")
    method = model.text_method
    calls = []
    draw = type(method).draw

    def recording(self, model_, forward, state, fixed, plan, generator, on_step):
        ids, nfe = draw(self, model_, forward, state, fixed, plan, generator, on_step)
        calls.append((state.clone(), fixed.clone(), ids.clone()))
        return ids, nfe

    monkeypatch.setattr(type(method), "draw", recording)
    overlap, length = 10, 3 * CONTEXT
    res = model.sample(n=2, length=length, overlap=overlap, steps=4, seed=5, progress=False)
    starts = window_starts(length, CONTEXT, overlap)
    assert len(calls) == len(starts) == res.windows
    text_ids = torch.tensor([model.tokenizer.encode(t) for t in res.texts])
    for k, (start, (state, fixed, ids)) in enumerate(zip(starts, calls, strict=True)):
        assert state.shape == (2, CONTEXT) and torch.equal(ids, text_ids[:, start:start + CONTEXT])
        if k == 0:
            assert not fixed.any()
            continue
        shared = calls[k - 1][2][:, start - starts[k - 1]:]  # the previous window's tail
        assert shared.shape[1] >= overlap and fixed[:, :shared.shape[1]].all() and not fixed[:, shared.shape[1]:].any()
        assert torch.equal(state[:, :shared.shape[1]], shared) and torch.equal(ids[:, :shared.shape[1]], shared)
    assert res.nfe == pytest.approx(4 * len(starts))


def test_the_same_seed_draws_the_same_long_text(runs):
    model = load(runs / "masked")
    first = model.generate(n=2, length=80, overlap=12, steps=3, seed=9, progress=False)
    assert model.generate(n=2, length=80, overlap=12, steps=3, seed=9, progress=False) == first
    assert model.generate(n=2, length=80, overlap=12, steps=3, seed=10, progress=False) != first
    assert model.generate(n=2, length=80, overlap=20, steps=3, seed=9, progress=False) != first


def test_one_window_is_drawn_as_before(runs):
    """A request that fits the context is not chained: the same draw as the method's own loop, windows = 1."""
    model = load(runs / "masked")
    res = model.sample(n=2, length=CONTEXT, steps=4, seed=3, progress=False)
    assert (res.windows, res.overlap) == (1, 0)
    assert model.plan(n=2, length=CONTEXT).windows == 1 and model.plan(n=2, length=80, overlap=8).windows == 3


def test_an_infill_template_longer_than_the_window_keeps_its_known_text(runs):
    template = "ROMEO:\n" + "_" * 40 + " art thou " + "_" * 30
    texts = load(runs / "masked").infill(template, steps=4, seed=2, progress=False)
    assert len(texts[0]) == len(template)
    assert all(c == template[i] for i, c in enumerate(texts[0]) if template[i] != "_")
    assert "_" not in texts[0]


@pytest.mark.parametrize(("run", "overlap", "message"), [
    ("masked", CONTEXT, "--overlap 32 must be between 1 and 31"),
    ("masked", 100, "--overlap 100 must be between 1 and 31"),
    ("masked", -1, "overlap"),
    ("ar", 8, "--overlap applies to methods that chain windows"),
])
def test_overlap_out_of_bounds_is_a_one_line_error(runs, run, overlap, message):
    with pytest.raises(ConfigError, match=message):
        load(runs / run).plan(length=80, overlap=overlap)


def test_cli_chains_and_says_so(runs, tmp_path, capsys):
    traj = tmp_path / "t.json"
    assert main(["sample", str(runs / "masked"), "--length", "80", "--overlap", "8", "--steps", "3",
                 "--prompt", "ROMEO", "--trajectory", str(traj), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out) == 81 and captured.out.startswith("ROMEO")
    assert "1 x 80 chars in 3 windows overlapping by 8" in captured.err
    frames = json.loads(traj.read_text())["frames"]
    assert all(len(f["texts"][0]) == 80 for f in frames)
    assert [f["step"] for f in frames] == list(range(3 * 3 + 1)) and frames[-1]["masked"][0] == []
    assert main(["sample", str(runs / "masked"), "--length", "80", "--overlap", "40"]) == 2
    assert "error: --overlap 40 must be between 1 and 31" in capsys.readouterr().err
