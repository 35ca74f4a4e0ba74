"""Readers of a run in training are told what they read (the run's lock), a run in training without a trained
checkpoint is refused, and train.save_every_s keeps a recent checkpoint between evaluations."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_config, train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import CheckpointError, read_group, read_header
from textdiffusion.records import TrainSummary
from textdiffusion.run_lock import RunLock, training_pid
from textdiffusion.runs import open_run
from textdiffusion.trainer import Trainer, resume_training


def test_the_lock_tells_a_reader_who_trains_the_run(tmp_path):
    tmp_path.joinpath(".lock").write_text("")
    assert training_pid(tmp_path) is None
    with RunLock(tmp_path):
        assert training_pid(tmp_path) == os.getpid()
    assert training_pid(tmp_path) is None
    assert training_pid(tmp_path / "absent") is None


def test_reading_a_run_in_training_names_the_step_it_reads(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4)
    with RunLock(run):  # a live trainer holds this lock
        open_run(run, device="cpu")
    err = capsys.readouterr().err
    assert err == f"warning: {run} is being trained (pid {os.getpid()}); reading its checkpoint at step 4 of 4\n"
    open_run(run, device="cpu")  # once the lock is free, nothing to say
    assert capsys.readouterr().err == ""


def test_a_run_in_training_without_a_checkpoint_past_step_0_is_refused(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config("masked", small_corpus, 4), run, progress=False)  # wrote step 0
    trainer.lock.acquire()
    try:
        with pytest.raises(CheckpointError, match=r"is being trained \(pid \d+\) and has no checkpoint past step 0"):
            open_run(run, device="cpu")
        assert main(["sample", str(run), "--n", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "wait for its first checkpoint" in err and "\n" not in err
    finally:
        trainer.lock.release()
    open_run(run, device="cpu")  # a run no one trains is read as it is


def test_a_run_whose_trainer_has_written_nothing_yet_is_refused_as_in_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run), pytest.raises(CheckpointError, match=r"is being trained .* no checkpoint past step 0"):
        open_run(run, device="cpu")  # no config.json yet: the trainer is still reading its corpus


@pytest.mark.parametrize("every", [1e-9, 0.0])
def test_save_every_s_keeps_a_recent_checkpoint(every, small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config("ar", small_corpus, 6, **{"train.eval_every": 100, "train.save_every_s": every}),
                      run, progress=False)
    seen: list[int] = []
    trainer.train(on_step=lambda step: seen.append(read_header(run).step))
    # on_step(s) runs right after step s; a due checkpoint is written before the next step
    assert seen == ([0, 1, 2, 3, 4, 6] if every else [0, 0, 0, 0, 0, 6])


def test_a_saved_checkpoint_between_evaluations_resumes_exactly(small_corpus, tmp_path):
    sets = {"train.eval_every": 100, "train.save_every_s": 1e-9}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_tiny("ar", small_corpus, whole, steps=6, **sets)
    Trainer(tiny_config("ar", small_corpus, 6, **sets), cut, progress=False).train(stop_at=3)
    resume_training(cut, progress=False)
    a, b = read_group(whole, "ema")[0], read_group(cut, "ema")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # to the last bit
    assert TrainSummary.read(whole).score.bits == TrainSummary.read(cut).score.bits


def test_torchrun_saves_between_evaluations_and_bounds_its_final_score(small_corpus, tmp_path):
    """Every process must take part in a save (a collective), so all must agree a save is due; rank 0 alone
    times and scores the final windows while the others wait."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m",
           "textdiffusion", "train", "--method", "ar", "--preset", "tiny", "--data", str(small_corpus), "--steps",
           "6", "--run-dir", str(run), "--no-progress", "--set", "train.eval_every=100", "train.save_every_s=1e-9",
           "train.final_eval_windows=0", "train.final_eval_budget=0.001"]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert job.returncode == 0, job.stderr[-3000:]
    score = TrainSummary.read(run).score
    assert score.bounded and score.windows == 32 and job.stdout.count("scored 32 of") == 1
    assert read_header(run).step == 6
