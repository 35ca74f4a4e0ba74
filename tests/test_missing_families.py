"""benchmarks/missing_families.py's bookkeeping, without training: which entries this code can run, how each
target of the table is judged, and what it says of a bad flag."""

from __future__ import annotations

import sys

import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def families():
    return benchmark_module("missing_families")


def test_an_entry_this_code_cannot_run_is_skipped_with_its_reason(families):
    Entry = families.Entry
    assert families.skip_reason(Entry("masked", "masked"), set()) is None
    assert families.skip_reason(Entry("x", "no-such-method"), set()) == \
        "the method `no-such-method` is not registered in this code"
    assert families.skip_reason(Entry("m", "masked", ("method.no_such_field=1",)), set()) == \
        "`masked` has no option method.no_such_field in this code"
    assert families.skip_reason(Entry("s", "masked", teacher="t", distill_steps=8), {"t"}) == \
        "its teacher t is skipped"
    assert families.skip_reason(Entry("s", "ar", teacher="ar", distill_steps=8), set()) == \
        "`ar` has no few-step student (train --distill-from) in this code"
    assert families.skip_reason(Entry("s", "masked", teacher="masked", distill_steps=8), set()) is None


def row(families, entry: str, nats: float, kind: str, points=(), terms=None):
    lik = families.Likelihood(nats, nats / 0.693, kind, 8, terms or {})
    return families.Row(entry, entry, "", f"runs/{entry}", 2000, 1.0, lik, list(points))


def pt(families, entry: str, steps, ppl: float, entropy: float, chars_s: float, default: bool = False,
       validity: float = 0.5, js: float = 0.3):
    return families.Point(entry, entry, "ancestral", steps, default, ppl, entropy, validity, js, 0.1, chars_s)


def test_each_target_is_judged_with_its_margin(families):
    real = {"judge_ppl": 6.0, "char_entropy": 4.4, "word_validity": 0.97, "ngram_js": 0.1}
    rows = [row(families, "ar", 1.7, "exact", [pt(families, "ar", None, 9.0, 4.3, 500, True)]),
            row(families, "masked", 2.0, "bound", [pt(families, "masked", 64, 12.0, 4.4, 100, True)]),
            row(families, "embedding", 3.0, "bound", [pt(families, "embedding", 200, 30.0, 3.0, 50, True,
                                                         validity=0.3, js=0.5)]),
            row(families, "uniform", 2.3, "bound", [pt(families, "uniform", 64, 14.0, 4.40, 100, True)]),
            row(families, "uniform-s8", 2.4, "bound", [pt(families, "uniform-s8", 8, 13.0, 4.45, 700, True)]),
            row(families, "latent", 2.5, "bound", [pt(families, "latent", 50, 20.0, 4.0, 500, True,
                                                      validity=0.6, js=0.4)],
                {"reconstruction_accuracy": 0.985, "reconstruction_nats_per_char": 0.1,
                 "latent_nats_per_char": 2.7, "entropy_nats_per_char": 0.3})]
    families.ratios(rows)
    assert rows[3].likelihood.x_masked == pytest.approx(1.15) and rows[0].likelihood.x_ar == 1.0
    got = {t.name: t for t in families.targets(rows, real)}
    bound = got["uniform: bound <= 1.10x masked's"]
    assert bound.passed is False and bound.measured == "1.150x" and bound.margin == "-0.050x"
    assert got["student at 8 steps: judge ppl <= teacher's at 64"].passed is True
    assert got["student at 8 steps: entropy within 0.1 bits of teacher's at 64"].passed is True
    speed = got["student at 8 steps: >= 4x teacher's chars/s (at 64)"]
    assert speed.passed is True and speed.measured == "7.00x"
    recon = got["latent: reconstruction >= 99% of validation characters"]
    assert recon.passed is False and recon.margin == "-0.0050"
    assert got["latent: bound reported with its three terms"].passed is True  # 0.1 + 2.7 - 0.3 = 2.5
    rows[-1].likelihood.terms["entropy_nats_per_char"] = 0.2
    assert {t.name: t for t in families.targets(rows, real)}["latent: bound reported with its three terms"].passed \
        is False  # terms that do not add up to the bound
    assert got["latent: >= 4x masked's chars/s at batch 64"].passed is True
    assert all(got[f"latent better than embedding: {m}"].passed for m in
               ("judge ppl", "word validity", "n-gram JS", "entropy, distance from real text's"))
    assert got["latent better than embedding: word validity"].margin == "+100.0%"  # 0.6 against 0.3, higher is better
    assert got["latent better than embedding: judge ppl"].margin == "+33.3%"  # 20 against 30, lower is better


def test_a_target_whose_runs_are_missing_says_so(families):
    rows = [row(families, "masked", 2.0, "bound", [pt(families, "masked", 64, 12.0, 4.4, 100, True)])]
    got = {t.name: t for t in families.targets(rows, {"char_entropy": 4.4})}
    missing = got["uniform: bound <= 1.10x masked's"]
    assert missing.passed is None and missing.measured == "not measured (uniform not in the table)"
    assert "latent" in got["latent: >= 4x masked's chars/s at batch 64"].measured


def test_an_unknown_entry_is_refused_in_one_line(families, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["missing_families.py", "--only", "masked,nope"])
    with pytest.raises(SystemExit) as refused:
        families.main()
    assert str(refused.value).startswith("error: --only nope: no such entry; the entries are ar, masked")
