"""benchmarks/repair.py's bookkeeping, without training: the noisy texts it reads, the cache that makes it
resumable, and how each target is judged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from helpers import benchmark_module
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods.repairs import Repaired


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("repair", "repair_benchmark")


def test_every_repairer_reads_the_same_noisy_text_at_the_rate(bench):
    tok = CharTokenizer(sorted(set("abcdefghij ")))
    clean = "abc def ghij " * 400
    once, again = bench.noisy_texts(tok, clean, [0.05, 0.2]), bench.noisy_texts(tok, clean, [0.05, 0.2])
    assert once == again and set(once) == {(c, r) for c in bench.CHANNELS for r in (0.05, 0.2)}
    for (_, rate), text in once.items():
        assert abs(sum(a != b for a, b in zip(text, clean, strict=True)) / len(clean) - rate) < 0.03


def test_a_measured_cell_is_read_back_not_repaired_again(bench, tmp_path):
    calls = []

    def repair(text, **kwargs):
        calls.append(kwargs)
        return Repaired(text.upper(), 0, 1, 0.5)

    model = SimpleNamespace(path=tmp_path, step=7, repair=repair)
    repairer = bench.Repairer("r", bench.RUNS["masked"], {"groups": 4})
    noisy = {("uniform", 0.1): "abXd", ("keyboard", 0.1): "abcd"}
    first = bench.measure(repairer, model, "abcd", noisy)
    assert len(calls) == 2 and calls[0]["groups"] == 4
    assert [(c.errors_before, c.errors_after) for c in first] == [(1, 4), (0, 4)]
    assert bench.measure(repairer, model, "abcd", noisy) == first and len(calls) == 2
    cached = json.loads((tmp_path / "repair_score.json").read_text())
    assert all("step=7" in key and "groups=4" in key for key in cached)


def test_the_targets_compare_the_best_diffusion_repairer_with_ar(bench):
    def row(name, before, after):
        cells = [bench.Cell(ch, 0.1, before, after, 0, 1.0, 1000) for ch in bench.CHANNELS]
        return bench.Row(name, "", "", 1, cells)

    tgts = bench.targets([row("uniform", 100, 40), row("masked", 100, 60), row("ar", 100, 45)])
    assert [t.held for t in tgts] == [True, True, True, True]
    assert tgts[0].measured == "best diffusion (uniform) 40 vs ar 45 (0.89x)"
    tgts = bench.targets([row("masked", 100, 60), row("ar", 100, 45)])
    assert [t.held for t in tgts] == [False, False, False, False]
    assert bench.targets([row("masked", 100, 60)])[0].held is None
