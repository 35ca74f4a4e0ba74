"""A full disk during training: the one-line error names the file that could not be written (the target, not
an atomic write's temporary name) and what is intact, the last checkpoint, which the resume it names takes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import textdiffusion.checkpoint as checkpoint_module
import textdiffusion.files as files_module
import textdiffusion.trainer as train_module
from helpers import tiny_config
from textdiffusion.checkpoint import CHECKPOINT, CheckpointError
from textdiffusion.trainer import Trainer, resume_training

FULL = os.strerror(errno.ENOSPC)


def _cfg(corpus: Path):
    return tiny_config("masked", corpus, steps=4, **{"train.eval_every": 2, "train.eval_windows": 2,
                                                     "train.final_eval_windows": 2,
                                                     "train.sample_every_eval": "false"})


def test_a_full_disk_on_metrics_names_the_file_and_the_intact_checkpoint(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def full(path, line):
        raise OSError(errno.ENOSPC, FULL, str(path))

    monkeypatch.setattr(files_module, "append_line", full)
    trainer = Trainer(_cfg(small_corpus), run, progress=False)
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    assert str(info.value) == (f"could not write {run / 'metrics.jsonl'} ({FULL}); the checkpoint at step "
                               f"{trainer.saved_step} is intact: free space and run `textdiffusion train --resume "
                               f"{run}`")
    monkeypatch.undo()
    assert resume_training(run, progress=False).step == 4


def test_a_full_disk_on_an_atomic_write_names_the_target_not_the_temporary(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = checkpoint_module.atomic_write

    def full_for_final(path, write, **how):
        if Path(path).name != "final.json":
            return real(path, write, **how)

        def fail(tmp):
            raise OSError(errno.ENOSPC, FULL, tmp)  # as the write of the temporary file reports it
        return real(path, fail, **how)

    monkeypatch.setattr(checkpoint_module, "atomic_write", full_for_final)
    with pytest.raises(CheckpointError, match=rf"^could not write {run / 'final.json'} \({FULL}\); the "
                                              rf"checkpoint at step 4 is intact"):
        Trainer(_cfg(small_corpus), run, progress=False).train()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_on_a_checkpoint_names_the_checkpoint_file(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = train_module.write_checkpoint
    calls = []

    def full_after_the_first(*args, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, FULL, str(run / f".{CHECKPOINT}.x1y2.tmp"))
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "write_checkpoint", full_after_the_first)
    with pytest.raises(CheckpointError, match=rf"^could not write the checkpoint of step 2 to {run / CHECKPOINT} "
                                              rf"\({FULL}\); the checkpoint at step 0 is intact"):
        Trainer(_cfg(small_corpus), run, progress=False).train()


def test_a_full_disk_before_any_checkpoint_says_nothing_is_saved_and_the_resume_starts_over(small_corpus, tmp_path,
                                                                                         monkeypatch):
    run = tmp_path / "run"

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, FULL, str(run / f".{CHECKPOINT}.x1y2.tmp"))

    monkeypatch.setattr(train_module, "write_checkpoint", full)
    with pytest.raises(CheckpointError) as info:
        Trainer(_cfg(small_corpus), run, progress=False).train()
    assert str(info.value) == (f"could not write the checkpoint of step 0 to {run / CHECKPOINT} ({FULL}); no "
                               f"checkpoint was written yet: free space and run `textdiffusion train --resume {run}` "
                               f"(it starts again from step 0)")
    monkeypatch.undo()
    assert resume_training(run, progress=False).step == 4
