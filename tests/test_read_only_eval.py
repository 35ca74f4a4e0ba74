"""``eval`` on a run it cannot write into (read-only, a full disk) prints the results it computed and says in
one line that eval.json was not written, and why."""

from __future__ import annotations

import errno

import textdiffusion.checkpoint as checkpoint_module
from helpers import train_tiny
from textdiffusion.apps.cli import main


def test_eval_prints_its_results_when_eval_json_cannot_be_written(small_corpus, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=2)

    def read_only(path, write, **how):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(checkpoint_module, "atomic_write", read_only)
    rc = main(["eval", str(run), "--samples", "2", "--val-windows", "2", "--exact-windows", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "bits/char" in out  # the table
    assert out.rstrip().splitlines()[-1] == (f"{run / 'eval.json'} was not written (Read-only file system): the "
                                             f"results above are printed only")
    assert not (run / "eval.json").exists()
