"""Progress on the long jobs (validation scoring, eval, the trainer's final score) without changing a number,
and quiet in a log: a bar written to a file redraws at most every 15 s, so a whole job is a few lines."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config, train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.methods import REGISTRY
from textdiffusion.methods.base import score
from textdiffusion.trainer import Trainer


def _redraws(err: str) -> int:
    """Lines a bar wrote: every redraw starts with a carriage return, the last ends with a newline."""
    return err.count("\r") + err.count("\n")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_scoring_reports_every_batch_and_changes_no_number(name, small_corpus, tmp_path, capsys):
    extra = {"data.corpus": "digits"} if name == "image" else {}
    cfg = tiny_config(name, small_corpus, steps=1, **extra)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    windows = trainer.source.val_set(trainer.method.window, 40)
    model = trainer.model.eval()
    heard: list[tuple[int, int]] = []
    with torch.no_grad():
        silent = trainer.method.nll(model, windows, batch_size=16)
        counted = trainer.method.nll(model, windows, batch_size=16, progress=lambda d, t: heard.append((d, t)))
        shown = score(trainer.method, model, windows, batch_size=16, progress=True, desc="scoring")
    for result in (counted, shown):
        assert result.nats_per_unit == silent.nats_per_unit  # bit for bit: the progress hook only counts
        assert json.dumps(result.details, sort_keys=True) == json.dumps(silent.details, sort_keys=True)
    total = heard[0][1]
    assert total >= 2 and heard == [(done, total) for done in range(total + 1)]
    err = capsys.readouterr().err
    assert "scoring: 100%" in err and f"{total}/{total}" in err and _redraws(err) <= 4


def test_final_score_shows_progress_only_when_asked(small_corpus, tmp_path, capsys):
    for progress in (True, False):
        run = tmp_path / f"run-{progress}"
        Trainer(tiny_config("masked", small_corpus, steps=4), run, progress=progress).train()
        err = capsys.readouterr().err
        final = json.loads((run / "final.json").read_text())
        if progress:
            assert "final score, EMA weights: 100%" in err and f"({final['val_windows']} windows)" in err
        else:
            assert "final score" not in err and "scoring the validation split" not in err
    quiet, shown = (json.loads((tmp_path / f"run-{p}" / "final.json").read_text())["val_bpc"] for p in (False, True))
    assert quiet == shown


def test_eval_into_a_log_writes_a_few_lines(small_corpus, tmp_path, capsys):
    """`eval` with stderr not a terminal (capsys): two bars, a handful of lines. Printed per batch, or redrawn
    by an unthrottled bar, the scoring alone would be 47 lines (187 windows x 16 time draws / 64 per batch)."""
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4)
    capsys.readouterr()
    assert main(["eval", str(run), "--samples", "130", "--set", "method.eval_time_samples=16",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "scoring 187 validation windows: 100%" in err and "47/47" in err
    assert "sampling 130 texts: 100%" in err and "130/130" in err
    assert _redraws(err) <= 10, err


def test_one_batch_of_samples_shows_its_steps_on_a_terminal_and_the_same_texts(small_corpus, tmp_path):
    """`sample` of one batch: a bar over the denoising steps when stderr is a terminal (a pseudo-terminal
    here), none into a pipe, and the same texts either way (watching a step draws nothing)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4)
    cmd = [sys.executable, "-m", "textdiffusion", "sample", str(run), "--steps", "40", "--n", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    piped = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert "sampling" not in piped.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a width, so tqdm draws
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    out = proc.communicate()[0].decode()
    os.close(leader)
    assert proc.returncode == 0
    assert b"sampling:" in shown and b"/40" in shown
    assert out == piped.stdout


def test_no_progress_silences_the_bars_of_eval_and_sample(small_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=4)
    capsys.readouterr()
    assert main(["eval", str(run), "--samples", "130", "--val-windows", "8", "--device", "cpu", "--no-progress"]) == 0
    assert main(["sample", str(run), "--n", "1100", "--device", "cpu", "--no-progress"]) == 0  # two batches
    err = capsys.readouterr().err
    assert "%|" not in err and "scoring" not in err, err
    assert main(["sample", str(run), "--n", "1100", "--device", "cpu"]) == 0  # the bar the flag silenced
    assert "/1100 [" in capsys.readouterr().err
