"""A new run killed while writing its first config.json leaves the trainer's own temporary file (and the
lock file) in its directory. Neither makes the directory "occupied": ``train --run-dir`` takes it (and removes
the temporary), and ``train --resume`` finishes the write when the temporary holds the whole record."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import tiny_config
from textdiffusion.checkpoint import CHECKPOINT, CheckpointError
from textdiffusion.run_lock import LOCK_NAME
from textdiffusion.trainer import Trainer, resume_training

TEMP = ".config.json.k1ll3d.tmp"  # the name atomic_write's mkstemp gives config.json's temporary file


def _killed_start(small_corpus: Path, tmp_path: Path, whole: bool) -> tuple[Path, bytes]:
    """A directory as a kill during the first config.json write leaves it: the lock file and the temporary
    file (the whole record, or its first 40 bytes); and the record's bytes."""
    scratch = tmp_path / "scratch"
    Trainer(tiny_config("masked", small_corpus, steps=2), scratch, progress=False).lock.release()
    record = (scratch / "config.json").read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).touch()
    (run / TEMP).write_bytes(record if whole else record[:40])
    shutil.rmtree(scratch)
    return run, record


@pytest.mark.parametrize("whole", [True, False])
def test_a_new_run_takes_a_directory_holding_only_its_own_temporaries(small_corpus, tmp_path, whole):
    run, _ = _killed_start(small_corpus, tmp_path, whole)
    Trainer(tiny_config("masked", small_corpus, steps=2), run, progress=False).train()
    assert not (run / TEMP).exists() and (run / CHECKPOINT).is_file()


def test_another_programs_temporary_still_makes_a_directory_occupied(small_corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".notes.txt.abc.tmp").write_text("someone else's")
    with pytest.raises(CheckpointError, match=r"is not empty \(\.notes\.txt\.abc\.tmp\)"):
        Trainer(tiny_config("masked", small_corpus, steps=2), run, progress=False)


def test_resume_finishes_a_whole_first_config_write_and_trains(small_corpus, tmp_path, capsys):
    run, record = _killed_start(small_corpus, tmp_path, whole=True)
    summary = resume_training(run, progress=False)
    assert (run / "config.json").read_bytes() == record  # the record the killed trainer meant to write
    assert summary.step == 2 and (run / CHECKPOINT).is_file() and not (run / TEMP).exists()
    assert "finished writing config.json" in capsys.readouterr().err


def test_resume_of_a_cut_first_config_write_says_to_start_it_again(small_corpus, tmp_path):
    run, _ = _killed_start(small_corpus, tmp_path, whole=False)
    with pytest.raises(CheckpointError, match=r"has no config\.json, only a cut copy .* `train --run-dir "):
        resume_training(run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_NAME, TEMP])  # nothing touched
