"""Long sampling keeps its work: each finished batch is written at once (stdout or ``--out``), Ctrl-C keeps what
was finished and says so, and a request estimated to take long says how long before the rest is drawn."""

from __future__ import annotations

import json

import pytest

from textdiffusion import limits
from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.methods.base import TextMethod

SEPARATOR = "\n" + "=" * 40 + "\n"


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("long")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:30_000], encoding="utf-8")
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(corpus), "--steps", "10",
                 "--run-dir", str(root / "masked"), "--seed", "3", "--no-progress"]) == 0
    return root / "masked"


@pytest.fixture
def batches_of_two(monkeypatch):
    """Text batches of 2 samples, so a request of a few samples is drawn in several batches."""
    monkeypatch.setattr(limits, "_MAX_TEXT_BATCH", 2)


ARGS = ["--n", "5", "--length", "12", "--steps", "3", "--seed", "7", "--no-progress"]


def _interrupt_on_call(monkeypatch, calls: int) -> None:
    """Make the method's sampler raise KeyboardInterrupt on its ``calls``-th call (one call per batch)."""
    original = TextMethod.sample
    seen = {"n": 0}

    def sample(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TextMethod, "sample", sample)


def test_batches_print_as_they_finish_and_match_one_print(masked_run, batches_of_two, capsys):
    """Streamed batch by batch, stdout holds exactly what one print of all texts gave, and the texts are those
    of the API's sample for the same seed."""
    assert main(["sample", str(masked_run), *ARGS]) == 0
    out = capsys.readouterr().out
    texts = load(masked_run).generate(n=5, length=12, steps=3, seed=7, progress=False)
    assert out == SEPARATOR.join(texts) + "\n"


def test_out_writes_json_lines(masked_run, batches_of_two, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(["sample", str(masked_run), *ARGS, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    texts = load(masked_run).generate(n=5, length=12, steps=3, seed=7, progress=False)
    assert [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()] == texts
    assert captured.out == "" and f"written to {out}" in captured.err


def test_interrupt_keeps_the_first_batch_in_out(masked_run, batches_of_two, tmp_path, monkeypatch, capsys):
    out = tmp_path / "samples.jsonl"
    texts = load(masked_run).generate(n=5, length=12, steps=3, seed=7, progress=False)
    _interrupt_on_call(monkeypatch, 2)
    assert main(["sample", str(masked_run), *ARGS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted after 2 of 5 samples; 2 written to {out}" in err and "Traceback" not in err
    assert [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()] == texts[:2]


def test_interrupt_keeps_the_printed_batches(masked_run, batches_of_two, monkeypatch, capsys):
    texts = load(masked_run).generate(n=5, length=12, steps=3, seed=7, progress=False)
    _interrupt_on_call(monkeypatch, 3)
    assert main(["sample", str(masked_run), *ARGS]) == 130
    captured = capsys.readouterr()
    assert captured.out == SEPARATOR.join(texts[:4]) + "\n"
    assert "interrupted after 4 of 5 samples; 4 printed above" in captured.err


def test_interrupt_before_any_batch_says_nothing_was_written(masked_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "samples.jsonl"
    _interrupt_on_call(monkeypatch, 1)
    assert main(["sample", str(masked_run), *ARGS, "--out", str(out)]) == 130
    assert "interrupted after 0 of 5 samples; nothing written" in capsys.readouterr().err
    assert out.read_text() == ""


def test_a_long_request_says_how_long_after_its_first_batch(masked_run, batches_of_two, monkeypatch, capsys):
    monkeypatch.setattr(limits, "LONG_SAMPLING_S", 0.0)
    assert main(["sample", str(masked_run), *ARGS]) == 0
    err = capsys.readouterr().err
    assert "for 5 samples (3 batches of 2); Ctrl-C keeps the finished ones" in err and "about " in err


def test_an_ordinary_request_says_nothing_of_time(masked_run, batches_of_two, capsys):
    assert main(["sample", str(masked_run), *ARGS]) == 0
    assert "Ctrl-C keeps" not in capsys.readouterr().err


def test_the_estimate_scales_the_first_batch():
    line = limits.sampling_estimate(252.0, 1024, 100_000, 1024, 98)
    assert line == "about 6.8 h for 100000 samples (98 batches of 1024); Ctrl-C keeps the finished ones"
    assert limits.sampling_estimate(0.5, 1024, 100_000, 1024, 98) is None  # under a minute in all
    assert limits.sampling_estimate(500.0, 10, 10, 10, 1) is None  # nothing left to draw
    assert [limits.duration(s) for s in (0.2, 59, 61, 3599, 3600, 7 * 3600 + 100, 40 * 3600)] == \
        ["1 s", "59 s", "1 min", "60 min", "1 h", "7 h", "40 h"]


def test_out_is_checked_before_the_run_is_loaded(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


def test_api_on_batch_hears_each_batch(masked_run, batches_of_two):
    seen = []
    model = load(masked_run)
    res = model.sample(n=5, length=12, steps=3, seed=7, progress=False, on_batch=seen.append)
    assert [(b.start, len(b.texts), b.batch, b.batches, b.done) for b in seen] == \
        [(0, 2, 0, 3, 2), (2, 2, 1, 3, 4), (4, 1, 2, 3, 5)]
    assert [t for b in seen for t in b.texts] == res.texts
