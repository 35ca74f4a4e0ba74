"""The end-of-training score sized to the run (train.final_eval_budget), eval reusing an identical recorded
score."""

from __future__ import annotations

import json

import torch

from helpers import train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.final_score import budget_count, budget_label, weights_digest
from textdiffusion.records import FinalScore, TrainSummary
from textdiffusion.runs import open_run


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
            f"{run}` scores all)") in out


def test_the_weights_digest_sees_every_weight(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer = train_tiny("ar", small_corpus, run, steps=2)
    loaded = open_run(run, device="cpu").model
    assert weights_digest(loaded) == weights_digest(trainer.ema.model)  # the checkpoint holds them exactly
    with torch.no_grad():
        next(iter(loaded.parameters())).view(-1)[0] += 1e-6
    assert weights_digest(loaded) != weights_digest(trainer.ema.model)
