"""The exact NLL reaches the user: final.json, eval, compare and score show it beside the bound, labelled exact
and naming the sampler it is the likelihood of (left_to_right); old records without it load as before."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.config import ConfigError
from textdiffusion.evaluate import evaluate_text
from textdiffusion.records import FINAL, ExactScore, TextEval, TrainSummary

STEPS = ["--preset", "tiny", "--steps", "30", "--seed", "3", "--no-progress", "--set", "train.eval_every=30"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare) -> Path:
    root = tmp_path_factory.mktemp("exact")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    for name, method, extra in (("ar", "ar", []), ("masked", "masked", []),
                                ("block", "block", ["method.block_size=4", "train.final_exact_windows=8"])):
        argv = ["train", "--method", method, "--data", str(corpus), "--run-dir", str(root / name), *STEPS, *extra]
        assert main(argv) == 0
    return root


def test_final_json_records_the_exact_nll_beside_the_bound(runs, capsys):
    masked, block, ar = (TrainSummary.read(runs / name).score for name in ("masked", "block", "ar"))
    assert masked.kind == "bound" and masked.exact is not None
    ex = masked.exact
    assert ex.sampler == "left_to_right" and ex.windows == min(64, masked.windows)
    assert ex.windows_of == masked.windows_of
    assert ex.key is not None and ex.key.windows == ex.windows and ex.key.weights == masked.key.weights
    assert ex.details["order"] == "left-to-right" and ex.bits == pytest.approx(ex.nats / 0.6931471805599453)
    assert block.exact is not None and block.exact.windows == 8 and block.exact.details["block_size"] == 4
    assert ar.exact is None  # ar's validation number is exact already


def test_eval_reuses_the_recorded_exact_number_and_it_is_the_one_scoring_gives(runs, tmp_path, capsys):
    assert main(["eval", str(runs / "masked"), "--samples", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    recorded = TrainSummary.read(runs / "masked").score.exact
    assert "exact: the score final.json recorded" in out
    assert re.search(rf"exact bits/char +{recorded.bits:.4f}  exact: the likelihood of --sampler left_to_right", out)
    ev = TextEval.from_json(json.loads((runs / "masked" / "eval.json").read_text()))
    assert ev.exact.reused_from == FINAL and ev.exact.bits == recorded.bits
    # a copy whose final.json lost the number scores the same windows again: the very same bits
    copy = tmp_path / "masked"
    shutil.copytree(runs / "masked", copy)
    final = json.loads((copy / FINAL).read_text())
    del final["val_exact"]
    (copy / FINAL).write_text(json.dumps(final))
    fresh = evaluate_text(copy, samples=2, progress=False, exact_windows=recorded.windows)
    assert fresh.exact.reused_from is None and fresh.exact.bits == recorded.bits


def test_eval_takes_its_own_exact_window_count(runs, capsys):
    assert main(["eval", str(runs / "block"), "--samples", "2", "--val-windows", "4", "--exact-windows", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "exact: the likelihood of --sampler left_to_right; 3 windows, 96 chars" in out
    assert "exact: the score" not in out  # another count than final.json's: scored here
    saved = json.loads((runs / "block" / "eval.json").read_text())
    assert saved["exact"]["windows"] == 3 and saved["exact"]["kind"] == "exact"
    assert list(saved)[:list(saved).index("samples")][-2:] == ["val", "exact"]
    assert main(["eval", str(runs / "ar"), "--samples", "2", "--val-windows", "4", "--no-progress"]) == 0
    assert "exact bits/char" not in capsys.readouterr().out  # ar's val row is exact itself
    assert "exact" not in json.loads((runs / "ar" / "eval.json").read_text())


def test_a_final_json_without_the_exact_number_loads_and_eval_scores_the_configured_count(runs, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(runs / "masked", copy)
    final = json.loads((copy / FINAL).read_text())
    del final["val_exact"]
    (copy / FINAL).write_text(json.dumps(final))
    summary = TrainSummary.read(copy)
    assert summary.score.exact is None and "val_exact" not in summary.to_json()
    assert ExactScore.from_json({"bpc": 1.0}) is None  # a damaged record reads as none
    ev = evaluate_text(copy, samples=2, progress=False)
    assert ev.exact.windows == 64 and ev.exact.reused_from is None  # train.final_exact_windows' default
    old = ev.to_json()
    del old["exact"]
    assert TextEval.from_json(old).exact is None


def test_no_exact_windows_means_no_exact_score(tmp_path, shakespeare):
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare[:30_000], encoding="utf-8")
    assert main(["train", "--method", "masked", "--data", str(corpus), "--run-dir", str(tmp_path / "r"), *STEPS,
                 "train.final_exact_windows=0"]) == 0
    assert TrainSummary.read(tmp_path / "r").score.exact is None
    assert "val_exact" not in json.loads((tmp_path / "r" / FINAL).read_text())


def test_compare_shows_the_exact_column_and_the_ratio_to_ar(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["compare", str(runs / "ar"), str(runs / "masked"), str(runs / "block"), "--out", str(out),
                 "--samples", "2", "--sweep", "4", "--no-progress"]) == 0
    lines = (out / "comparison.md").read_text().split("## Text runs\n\n")[1].split("\n\n")[0].splitlines()
    header = lines[0].split(" | ")
    col, ratio = header.index("exact bits/char"), header.index("× ar")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
    ar_exact = float(rows["ar"][col])
    assert rows["ar"][header.index("val bits/char")].startswith(rows["ar"][col])  # ar's own exact number
    assert float(rows["ar"][ratio]) == 1.0
    masked = json.loads((out / "comparison.json").read_text())
    entry = next(r for r in masked["runs"] if r["name"] == "masked")["exact"]
    assert entry["kind"] == "exact" and entry["sampler"] == "left_to_right" and "left_to_right" in entry["what"]
    assert rows["masked"][col] == f"{entry['value']:.3f} (left_to_right)"
    assert float(rows["masked"][ratio]) == pytest.approx(entry["value"] / ar_exact, abs=1e-3)


def test_score_returns_the_exact_nll_when_asked(runs):
    model = load(runs / "masked", device="cpu")
    text = "ROMEO:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father"[:64]
    bound, exact = model.score(text), model.score(text, exact=True)
    assert bound.kind == "bound" and bound.sampler is None and bound.label == "upper bound"
    assert exact.kind == "exact" and exact.sampler == "left_to_right"
    assert exact.label == "exact, the likelihood of --sampler left_to_right"
    run = model.run
    ids = torch.tensor(model.tokenizer.encode(text)).view(2, 32)
    expected = run.method.exact_nll(run.model, ids)
    assert exact.nats_per_char == pytest.approx(expected.nats_per_unit, rel=1e-9)
    assert exact.bits_per_char != pytest.approx(bound.bits_per_char, rel=1e-4)
    ar = load(runs / "ar", device="cpu")
    assert ar.score(text, exact=True).bits_per_char == ar.score(text).bits_per_char


def test_score_refuses_exact_for_a_method_without_an_exact_likelihood(runs, tmp_path):
    rd = tmp_path / "emb"
    assert main(["train", "--method", "embedding", "--data", str(runs / "c.txt"), "--run-dir", str(rd), *STEPS]) == 0
    with pytest.raises(ConfigError, match=r"score\(exact=True\): the embedding method has no exact likelihood"):
        load(rd, device="cpu").score("ROMEO: O Romeo", exact=True)


def test_sample_says_what_the_left_to_right_draws_scored(runs, capsys):
    assert main(["sample", str(runs / "block"), "--sampler", "left_to_right", "--n", "2", "--prompt", "ROMEO:",
                 "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "sampler left_to_right" in err and "[exact: -log p of these draws under the draw that wrote them" in err
    assert main(["sample", str(runs / "block"), "--sampler", "left_to_right", "--steps", "4"]) == 2
    assert "error: --steps does not apply to block's left_to_right sampler" in capsys.readouterr().err
    assert main(["sample", str(runs / "masked"), "--sampler", "ancestral", "--steps", "4"]) == 0
    assert "[exact:" not in capsys.readouterr().err


def test_the_api_returns_each_samples_log_prob_and_it_is_the_exact_nll(runs):
    model = load(runs / "masked", device="cpu")
    res = model.sample(n=3, sampler="left_to_right", seed=4, progress=False)
    assert len(res.log_prob) == 3 and res.steps == 32 and res.nfe == 32
    run = model.run
    ids = torch.tensor([model.tokenizer.encode(t) for t in res.texts])
    exact = [run.method.exact_nll(run.model, row[None]).nats_per_unit * 32 for row in ids]
    assert [-lp for lp in res.log_prob] == pytest.approx(exact, rel=1e-5)
    assert res.bits_per_token() == pytest.approx(sum(exact) / 3 / 32 / 0.6931471805599453, rel=1e-5)
    assert model.sample(n=2, sampler="topk", steps=4, progress=False).log_prob is None


def test_the_final_budget_bounds_the_exact_windows_to_a_timed_probe(tmp_path, shakespeare, capsys):
    """With train.final_eval_budget bounding the final score, the exact NLL first scores 8 windows, timed,
    and takes more only when the budget's rest pays for them: a budget of almost nothing keeps the 8."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare[:30_000], encoding="utf-8")
    assert main(["train", "--method", "masked", "--data", str(corpus), "--run-dir", str(tmp_path / "r"), *STEPS,
                 "train.final_eval_windows=0", "train.final_eval_budget=0.0001", "train.eval_windows=16"]) == 0
    score = TrainSummary.read(tmp_path / "r").score
    assert score.exact.windows == 8 and score.exact.key.windows == 8 and score.windows == 16
    assert "exact: the likelihood of --sampler left_to_right; 8 windows)" in capsys.readouterr().out
    assert evaluate_text(tmp_path / "r", samples=2, progress=False).exact.reused_from == FINAL
