"""benchmarks/infilling.py's bookkeeping: the blanks it draws, how fills are scored, how the target is judged, that
a run's scores are cached per span length, and what it says of a bad flag; one end-to-end smoke run (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import benchmark_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def infilling():
    return benchmark_module("infilling")


def test_blanks_are_one_span_per_window_at_a_seeded_position(infilling):
    windows = torch.zeros(50, 16, dtype=torch.long)
    span = infilling.blanked(windows, 4, seed=3)
    assert (span.sum(1) == 4).all()
    starts = span.float().argmax(1)
    assert (span.long().diff(dim=1).abs().sum(1) <= 2).all() and len(set(starts.tolist())) > 5
    assert torch.equal(span, infilling.blanked(windows, 4, seed=3))
    assert not torch.equal(span, infilling.blanked(windows, 4, seed=4))


def test_fills_are_scored_by_exact_match_and_character_accuracy(infilling):
    truth = ["abcdef", "abcdef"]
    filled = ["abXdef", "abcdef"]
    assert infilling.match_scores(filled, truth, [1, 1], 3) == (0.5, 5 / 6)


def score(infilling, entry, span, exact, bits, kind):
    return infilling.SpanScore(entry, span, 10, exact, exact, bits, kind, 9.0, 1.0)


def test_the_target_needs_a_diffusion_method_better_on_both_counts(infilling):
    scores = [score(infilling, "ar-fim", 8, 0.10, 2.0, "exact"), score(infilling, "masked", 8, 0.20, 1.9, "exact"),
              score(infilling, "ar-fim", 16, 0.10, 2.0, "exact"), score(infilling, "masked", 16, 0.20, 2.1, "exact"),
              score(infilling, "uniform", 16, 0.05, 1.5, "bound"), score(infilling, "ar-fim", 4, 0.5, 9.0, "exact")]
    tgts = {t.span: t for t in infilling.targets(scores)}
    assert set(tgts) == {8, 16}  # spans of 8+ only
    assert tgts[8].passed and "beaten by masked" in tgts[8].measured
    assert tgts[16].passed is False  # masked matches more but scores worse; uniform the reverse
    assert infilling.targets([score(infilling, "masked", 8, 0.2, 1.0, "exact")])[0].passed is None


def test_the_target_is_judged_against_the_strongest_fim_ar(infilling):
    masked = score(infilling, "masked", 8, 0.20, 1.9, "exact")
    psm = score(infilling, "ar-fim", 8, 0.10, 2.0, "exact")
    assert infilling.targets([psm, masked])[0].passed
    spm = score(infilling, "ar-fim-spm", 8, 0.15, 1.5, "exact")  # lower NLL than masked: masked no longer wins
    tgt = infilling.targets([psm, spm, masked])[0]
    assert tgt.passed is False and "ar-fim-spm span NLL 1.500" in tgt.measured
    matches = score(infilling, "ar-fim-both", 8, 0.30, 2.5, "exact")  # more exact matches than masked
    assert infilling.targets([psm, matches, masked])[0].passed is False
    assert set(infilling.FIM_ARS) == {"ar-fim", "ar-fim-spm", "ar-fim-both", "ar-fim-spm-0.9"}


def test_the_left_to_right_cost_of_each_fim_ar_is_tabled_against_plain_ar(infilling, tmp_path):
    for name, bits in (("ar", 2.5), ("ar-fim", 2.6), ("ar-fim-spm", 2.55)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "final.json").write_text(json.dumps({
            "run_dir": name, "step": 5, "steps": 5, "elapsed": 1.0, "chars_per_s": 1.0, "unit": "chars",
            "val_bpc": bits, "val_nats": bits * math.log(2), "val_kind": "exact", "val_windows": 3}))
    got = infilling.left_to_right(tmp_path, ["ar-fim", "ar-fim-spm", "ar-fim-both"])  # ar-fim-both: not trained
    assert got == {"ar": 2.5, "ar-fim": 2.6, "ar-fim-spm": 2.55}
    assert infilling.left_to_right(tmp_path, []) == {}  # no FIM ar measured: no table
    result = {"command": "c", "machine": "m", "date": "d", "preset": "cpu", "steps": 5, "windows": 3, "length": 8,
              "seed": 0, "real_judge_ppl": 5.0, "skipped": {}, "left_to_right": got}
    md = infilling.markdown(result, [score(infilling, "ar-fim", 8, 0.1, 2.0, "exact")], [])
    assert "| ar-fim | 2.600 | +0.100 |" in md and "| ar-fim-spm | 2.550 | +0.050 |" in md


def test_scores_are_cached_per_span_length_and_reused(infilling, tmp_path, monkeypatch):
    calls = []

    def fake(entry, run, windows, length, seed, judge):
        calls.append(length)
        return score(infilling, entry, length, 0.5, 1.0, "exact")

    monkeypatch.setattr(infilling, "score_span", fake)
    run = type("Run", (), {"path": tmp_path, "step": 7})()
    args = type("Args", (), {"preset": "tiny", "steps": 7, "windows": 4, "seed": 0, "lengths": [1, 2]})()
    entry = infilling.BY_NAME["masked"]
    assert [s.span for s in infilling.scores_of(entry, run, None, args, None)] == [1, 2]
    args.lengths = [1, 2, 4]
    infilling.scores_of(entry, run, None, args, None)
    assert calls == [1, 2, 4]  # the second pass measured only the new length
    run.step = 8  # new weights: everything again
    infilling.scores_of(entry, run, None, args, None)
    assert calls == [1, 2, 4, 1, 2, 4]
    assert json.loads((tmp_path / "infilling_score.json").read_text())["key"].startswith("step=8 ")


def test_a_fim_ar_gets_its_left_only_nll_once_beside_cached_scores(infilling, tmp_path, monkeypatch):
    from textdiffusion.config import ModelConfig
    from textdiffusion.data.tokenizer import CharTokenizer
    from textdiffusion.methods import get_method
    from textdiffusion.methods.ar import ARConfig

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, context=8)
    method = get_method("ar")(ARConfig(fim_rate=0.5, fim_mode="spm"), cfg, CharTokenizer(list("abc")))
    run = type("Run", (), {"path": tmp_path, "step": 3, "method": method, "model": method.build_model().eval()})()
    windows = torch.randint(0, 3, (5, 8), generator=torch.Generator().manual_seed(1))
    span = infilling.blanked(windows, 2, seed=2)
    bos = torch.full((5, 1), method.tok.bos_id)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(run.model(torch.cat((bos, windows[:, :-1]), 1)).transpose(1, 2),
                                               windows, reduction="none")
    want = float(ce[span].mean()) / math.log(2)
    assert infilling.left_only_bits(run, windows, span) == pytest.approx(want, rel=1e-5)
    monkeypatch.setattr(infilling, "score_span", lambda e, r, w, length, seed, j: score(infilling, e, length, 0.5,
                                                                                         1.0, "exact"))
    calls = []
    monkeypatch.setattr(infilling, "left_only_bits", lambda r, w, s: calls.append(s) or 2.5)
    args = type("Args", (), {"preset": "tiny", "steps": 3, "windows": 5, "seed": 0, "lengths": [2]})()
    masked = infilling.scores_of(infilling.BY_NAME["masked"], run, windows, args, None)
    assert masked[0].left_bits is None and not calls  # only a FIM ar has a left-to-right reading
    (tmp_path / "infilling_score.json").unlink()
    got = infilling.scores_of(infilling.BY_NAME["ar-fim-spm"], run, windows, args, None)
    assert got[0].left_bits == 2.5 and len(calls) == 1 and torch.equal(calls[0], span)
    infilling.scores_of(infilling.BY_NAME["ar-fim-spm"], run, windows, args, None)
    assert len(calls) == 1  # kept in the cache


@pytest.mark.parametrize(("flags", "message"), [
    (["--lengths", "1,x"], "--lengths '1,x': give span lengths as whole numbers"),
    (["--lengths", "0,2"], "every span length must be at least 1"),
    (["--windows", "0"], "--windows 0: score at least one window"),
    (["--only", "nope"], "--only nope: no such entry"),
])
def test_bad_flags_are_refused_in_one_line(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "infilling.py"), "--runs", str(tmp_path),
                           *flags], capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr and proc.stderr.count("\n") == 1


FIM_ARS = ("ar-fim", "ar-fim-spm", "ar-fim-both", "ar-fim-spm-0.9")


@pytest.mark.slow
def test_a_tiny_run_of_the_script_writes_its_tables(tmp_path):
    out = tmp_path / "infilling"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "infilling.py"), "--runs", str(tmp_path / "r"),
                           "--preset", "tiny", "--steps", "10", "--windows", "3", "--lengths", "1,8", "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.with_suffix(".json").read_text())
    assert {(s["entry"], s["span"]) for s in result["scores"]} == \
        {(e, m) for e in (*FIM_ARS, "masked", "uniform", "embedding") for m in (1, 8)}
    kinds = {s["entry"]: s["span_kind"] for s in result["scores"]}
    assert kinds == {**dict.fromkeys(FIM_ARS, "exact"), "masked": "exact", "uniform": "bound",
                     "embedding": ""}
    assert "### Span of 8 characters" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()
