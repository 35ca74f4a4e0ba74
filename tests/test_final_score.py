"""The end-of-training score sized to the run (train.final_eval_budget), eval reusing an identical recorded
score."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config, train_tiny
from textdiffusion import evaluate
from textdiffusion.apps.cli import main
from textdiffusion.catalogue import TEXT_METHODS
from textdiffusion.checkpoint import read_header
from textdiffusion.config import Config
from textdiffusion.evaluate import evaluate_text, format_table
from textdiffusion.final_score import NEUTRAL_ADDITIONS, budget_count, budget_label, settings_digest, weights_digest
from textdiffusion.records import FinalScore, TrainSummary
from textdiffusion.runs import open_run
from textdiffusion.trainer import Trainer, resume_training


# ---- the budget rule --------------------------------------------------------------------------------------
def test_the_whole_split_is_scored_when_the_budget_pays_for_it():
    # 100 windows in 1 s: 1,000 windows cost 10 s, and 12 s of budget leave 11 after the probe
    assert budget_count(1000, 100, 1.0, 12.0) == 1000


def test_a_short_budget_takes_the_largest_doubling_of_the_probe_it_pays_for():
    # 0.01 s a window, 4 s left after the probe: 200 windows cost 2 s, 400 cost 4 s, 800 would cost 8 s
    assert budget_count(1000, 100, 1.0, 5.0) == 400
    assert budget_count(1000, 100, 1.0, 4.9) == 200
    # the raw weights too: every window is scored twice
    assert budget_count(1000, 100, 1.0, 5.0, passes=2) == 200


def test_the_probe_is_the_least_scored_even_past_the_budget():
    assert budget_count(1000, 100, 3.0, 1.0) == 100
    assert budget_count(50, 100, 3.0, 1.0) == 50  # a split smaller than the probe: all of it


def test_budgets_read_as_fractions():
    assert budget_label(0.33) == "1/3" and budget_label(0.5) == "1/2" and budget_label(0.4) == "40%"
    assert budget_label(0.001) == "1/1000" and budget_label(1.0) == "100%"


# ---- what a run records -----------------------------------------------------------------------------------
def test_a_budget_bounded_final_score_says_what_it_scored(small_corpus, tmp_path):
    run = tmp_path / "run"
    # a budget no scoring fits in: the probe (train.eval_windows evenly spread windows) is the score
    trainer = train_tiny("masked", small_corpus, run, steps=4, **{"train.final_eval_windows": 0,
                                                                  "train.final_eval_budget": 0.001})
    score = TrainSummary.read(run).score
    total = len(trainer.source.val_set(trainer.method.window, 0))
    assert score.windows == 32 < total == score.windows_of and score.bounded and score.budget == 0.001
    assert score.units == 32 * 32  # characters of 32 windows of 32
    assert score.key.windows == 32 and score.key.step == 4
    # the number is the one those windows give: the periodic evaluation scored the same 32 at step 4
    last_eval = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last_eval["val_bpc"] == score.bits


@pytest.mark.parametrize("budget", [100.0, 0.001])
def test_a_larger_count_is_scored_unless_it_overruns_the_budget(budget, small_corpus, tmp_path, monkeypatch):
    import textdiffusion.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "budget_count", lambda *a: 64)  # the timing asked for 64 windows
    run, logged = tmp_path / "run", []
    trainer = Trainer(tiny_config("masked", small_corpus, 4, **{"train.final_eval_windows": 0,
                                                                "train.final_eval_budget": budget}),
                      run, progress=False, log=logged.append)
    trainer.train()
    score = TrainSummary.read(run).score
    if budget == 100.0:  # time enough: the 64 windows, scored as any score of 64 windows is
        assert score.windows == score.key.windows == 64
        monkeypatch.setattr(evaluate, "recorded_val", lambda *a: None)
        assert evaluate_text(run, samples=1, val_windows=64, progress=False).val.bpc == score.bits
    else:  # the deadline passed after the first batch: the probe's 32 windows stand
        assert score.windows == score.key.windows == 32
        assert any("ran past the budget" in line and "keeps the 32 already scored" in line for line in logged)


def test_without_a_budget_the_whole_split_is_scored(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer = train_tiny("ar", small_corpus, run, steps=2, **{"train.final_eval_windows": 0,
                                                              "train.final_eval_budget": 0})
    score = TrainSummary.read(run).score
    assert score.windows == score.windows_of == len(trainer.source.val_set(trainer.method.window, 0))
    assert not score.bounded and score.budget is None


def test_a_fixed_count_is_not_bounded_by_the_budget(small_corpus, tmp_path):
    run = tmp_path / "run"
    train_tiny("ar", small_corpus, run, steps=2, **{"train.final_eval_windows": 48,
                                                    "train.final_eval_budget": 0.001})
    score = TrainSummary.read(run).score
    assert score.windows == 48 and score.budget is None


def test_final_json_of_earlier_versions_still_reads():
    old = {"val_bpc": 2.5, "val_nats": 1.7, "val_kind": "bound", "val_windows": 64, "val_details": {}}
    score = FinalScore.from_json(old)
    assert score.windows == 64 and score.windows_of is None and score.key is None and not score.bounded
    assert score.to_json() == old


def test_the_command_line_says_the_score_was_bounded(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(small_corpus), "--steps", "3",
                 "--run-dir", str(run), "--no-progress", "--set", "train.final_eval_windows=0",
                 "train.final_eval_budget=0.001"]) == 0
    out = capsys.readouterr().out
    total = TrainSummary.read(run).score.windows_of
    assert (f"scored 32 of {total:,} validation windows (bounded to 1/1000 of training time; `textdiffusion eval "
            f"{run} --val-windows 0` scores all)") in out


# ---- eval reuses an identical score -----------------------------------------------------------------------
def _no_scoring(*args, **kwargs):
    raise AssertionError("the validation windows were scored again")


def test_eval_returns_the_recorded_score_without_computing_it(small_corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4, **{"train.final_eval_windows": 24})
    final = TrainSummary.read(run).score
    monkeypatch.setattr(evaluate, "score", _no_scoring)
    assert main(["eval", str(run), "--samples", "2", "--val-windows", "24", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{final.bits:.4f}" in out and "final.json recorded for these weights, windows and settings" in out
    written = json.loads((run / "eval.json").read_text())["val"]
    assert written["bpc"] == final.bits and written["reused_from"] == "final.json"
    assert written["chars"] == final.units and written["windows"] == 24


def test_plain_eval_after_a_bounded_final_score_returns_it_and_says_how_to_score_all(small_corpus, tmp_path,
                                                                                      monkeypatch, capsys):
    run = tmp_path / "run"
    trainer = train_tiny("masked", small_corpus, run, steps=4, **{"train.final_eval_windows": 0,
                                                                  "train.final_eval_budget": 0.001})
    final = TrainSummary.read(run).score
    total = len(trainer.source.val_set(trainer.method.window, 0))
    assert final.bounded
    monkeypatch.setattr(evaluate, "score", _no_scoring)
    assert main(["eval", str(run), "--samples", "2", "--no-progress"]) == 0  # no --val-windows: the default
    out = capsys.readouterr().out
    assert f"{final.bits:.4f}" in out and "(reused, not recomputed)" in out
    assert f"{final.windows} of the {total} validation windows" in out and "--val-windows 0 scores them all" in out
    written = json.loads((run / "eval.json").read_text())["val"]
    assert written["windows"] == final.windows and written["windows_of"] == total


def test_plain_eval_scores_the_whole_split_when_the_record_is_not_this_score(small_corpus, tmp_path,
                                                                             monkeypatch):
    run = tmp_path / "run"
    trainer = train_tiny("masked", small_corpus, run, steps=4, **{"train.final_eval_windows": 0,
                                                                  "train.final_eval_budget": 0.001})
    total = len(trainer.source.val_set(trainer.method.window, 0))
    scored = []
    real = evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda m, model, windows, **k: scored.append((len(windows), k.get("exact")))
                        or real(m, model, windows, **k))
    result = evaluate_text(run, samples=2, overrides=["method.eval_time_samples=2"], progress=False)
    bound = [n for n, exact in scored if not exact]  # the exact NLL beside it takes its own count
    assert bound == [total] and result.val.windows == total and result.val.reused_from is None


def test_the_reused_score_is_the_number_eval_computes(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4, **{"train.final_eval_windows": 24})
    first = evaluate_text(run, samples=2, val_windows=24, progress=False)
    reused = first.val
    assert "reused" in format_table(first)
    monkeypatch.setattr(evaluate, "recorded_val", lambda *a: None)
    computed = evaluate_text(run, samples=2, val_windows=24, progress=False).val
    assert reused.reused_from == "final.json" and computed.reused_from is None
    assert (computed.bpc, computed.nats_per_char, computed.windows, computed.chars) == \
        (reused.bpc, reused.nats_per_char, reused.windows, reused.chars)


@pytest.mark.parametrize("change", ["windows", "setting", "checkpoint"])
def test_eval_computes_what_differs_from_the_record(change, small_corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4, **{"train.final_eval_windows": 24})
    windows, overrides = 24, None
    if change == "windows":  # the whole split after a bounded final score: other windows
        windows = 0
    elif change == "setting":  # another estimator setting
        overrides = ["method.eval_time_samples=2"]
    else:  # the checkpoint moved on (two more steps, not finished: final.json is the old one)
        resume_training(run, progress=False, steps=8, stop_at=6)
        assert read_header(run).step == 6 and TrainSummary.read(run).step == 4
    capsys.readouterr()
    calls = []
    real = evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = evaluate_text(run, samples=2, val_windows=windows, overrides=overrides)
    assert calls and result.val.reused_from is None
    # only other windows of the same score are worth a word: the recorded count would return its number
    note = "final.json scored 24 of these validation windows; scoring"
    assert (note in capsys.readouterr().err) == (change == "windows")


def test_the_weights_digest_sees_every_weight(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer = train_tiny("ar", small_corpus, run, steps=2)
    loaded = open_run(run, device="cpu").model
    assert weights_digest(loaded) == weights_digest(trainer.ema.model)  # the checkpoint holds them exactly
    with torch.no_grad():
        next(iter(loaded.parameters())).view(-1)[0] += 1e-6
    assert weights_digest(loaded) != weights_digest(trainer.ema.model)


# a value other than the neutral one, for every option NEUTRAL_ADDITIONS names (a new entry must add its own)
OTHER_VALUE = {"train_chars": 5000, "fim_rate": 0.5, "fim_mode": "spm"}


@pytest.mark.parametrize("section, field", [(s, f) for s, fields in NEUTRAL_ADDITIONS.items() for f in fields])
def test_an_option_added_at_its_neutral_value_keeps_old_score_keys(monkeypatch, section, field):
    """An option added after runs recorded final.json keys, at the value that behaves as those runs did: the
    settings digest must read the same with the field as without it (or `eval` would score such a run again
    instead of reusing its final score); any other value is other training and changes it."""
    method = next(m for m in TEXT_METHODS if hasattr(getattr(tiny_config(m, "x"), section), field))
    cfg = tiny_config(method, "x")
    cpu = torch.device("cpu")
    now = settings_digest(cfg, cpu, 64)
    to_dict = Config.to_dict

    def before_the_option(self):
        d = to_dict(self)
        del d[section][field]
        return d

    monkeypatch.setattr(Config, "to_dict", before_the_option)
    assert settings_digest(cfg, cpu, 64) == now
    monkeypatch.undo()
    setattr(getattr(cfg, section), field, OTHER_VALUE[field])
    assert settings_digest(cfg, cpu, 64) != now
