"""data.train_chars: training on a prefix of the training split, scored on the one validation split.

Runs on prefixes of several sizes are only comparable if they are scored on the same text, so the split point
is fixed by the whole corpus and only the training text shrinks; the run records the prefix, a resume refuses
a changed one, and evaluation judges samples against the text the run actually trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import tiny_config
from textdiffusion.apps.cli import main
from textdiffusion.data import DataError, TextData
from textdiffusion.trainer import Trainer


def test_a_prefix_shrinks_the_training_text_and_leaves_validation_where_it_was(small_corpus):
    text = small_corpus.read_text(encoding="utf-8")
    whole = TextData.from_text(text)
    split = int(len(text) * 0.9)
    for size in (2_000, 25_000, split):
        part = TextData.from_text(text, train_chars=size)
        assert part.train_text == text[:size] and part.train_ids.numel() == size
        # the split point does not move with the prefix: the same validation characters and ids
        assert part.val_start == whole.val_start == split
        assert part.val_ids.tolist() == whole.val_ids.tolist()
        # the char vocabulary is the corpus alphabet whatever the prefix, so every run's ids mean the same
        assert part.tokenizer.to_dict() == whole.tokenizer.to_dict()
    assert TextData.from_text(text, train_chars=0).train_text == whole.train_text == text[:split]
    # built directly, without a prefix: validation begins where the training text ends
    direct = TextData(whole.train_ids, whole.val_ids, whole.tokenizer, "x", whole.train_text)
    assert direct.val_start == split


def test_a_bpe_prefix_is_encoded_from_the_prefix_and_validation_is_unchanged(small_corpus):
    text = small_corpus.read_text(encoding="utf-8")
    whole = TextData.from_text(text, tokenizer_kind="bpe", vocab_size=300)
    part = TextData.from_text(text, whole.tokenizer, train_chars=10_000)
    assert part.train_ids.tolist() == whole.tokenizer.encode(text[:10_000])
    assert part.val_ids.tolist() == whole.val_ids.tolist()


def test_a_prefix_longer_than_the_training_split_is_refused_in_one_line(small_corpus):
    text = small_corpus.read_text(encoding="utf-8")
    split = int(len(text) * 0.9)
    with pytest.raises(DataError) as e:
        TextData.from_text(text, train_chars=split + 1)
    assert str(e.value) == (f"data.train_chars={split + 1:,} is more than the training split's {split:,} characters; "
                            f"pick at most {split:,} (0 = the whole split)")


def test_the_command_line_refuses_a_bad_prefix_in_one_line(small_corpus, tmp_path, capsys):
    base = ["train", "--method", "ar", "--preset", "tiny", "--data", str(small_corpus), "--steps", "2",
            "--no-progress"]
    assert main([*base, "--run-dir", str(tmp_path / "long"), "--set", "data.train_chars=100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.train_chars=100,000 is more than the training split's 54,000 characters")
    assert len(err.splitlines()) == 1 and not (tmp_path / "long" / "config.json").exists()
    assert main([*base, "--run-dir", str(tmp_path / "neg"), "--set", "data.train_chars=-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "data.train_chars" in err and len(err.splitlines()) == 1


@pytest.fixture
def prefix_run(small_corpus: Path, tmp_path: Path) -> Path:
    """An ar run of 4 steps on the first 5,000 characters, stopped with a checkpoint at step 2."""
    run = tmp_path / "prefix"
    cfg = tiny_config("ar", small_corpus, 4, **{"data.train_chars": 5000, "train.eval_every": 2})
    Trainer(cfg, run, progress=False).train(stop_at=2)
    return run


def test_a_run_records_its_prefix_and_scores_the_whole_validation_split(prefix_run, small_corpus, tmp_path):
    meta = json.loads((prefix_run / "config.json").read_text())
    assert meta["config"]["data"]["train_chars"] == 5000
    assert meta["corpus"]["train_chars"] == 5000
    whole = tmp_path / "whole"
    Trainer(tiny_config("ar", small_corpus, 2), whole, progress=False).train(stop_at=1)
    assert json.loads((whole / "config.json").read_text())["corpus"]["train_chars"] == 54_000
    assert meta["corpus"]["val_chars"] == json.loads((whole / "config.json").read_text())["corpus"]["val_chars"]


def test_evaluation_reads_the_prefix_the_run_trained_on(prefix_run, small_corpus):
    from textdiffusion.evaluate import run_corpus
    from textdiffusion.runs import open_run

    data, text, _ = run_corpus(open_run(prefix_run, device="cpu"))
    assert data.train_text == text[:5000]
    assert data.val_start == int(len(text) * 0.9)


def test_a_resume_refuses_a_changed_prefix_by_name(prefix_run, capsys):
    meta = json.loads((prefix_run / "config.json").read_text())
    meta["config"]["data"]["train_chars"] = 8000
    (prefix_run / "config.json").write_text(json.dumps(meta, indent=2))
    assert main(["train", "--resume", str(prefix_run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.train_chars: 5000 in the checkpoint, 8000 in config.json" in err and len(err.splitlines()) == 1


def test_a_resume_goes_on_with_the_prefix(prefix_run):
    from textdiffusion.trainer import resume_training

    summary = resume_training(prefix_run, progress=False)
    assert summary.step == 4
    assert json.loads((prefix_run / "config.json").read_text())["corpus"]["train_chars"] == 5000


# ---- what a curve against epochs needs: the x axis from the record, the exact NLL beside the bound ------------
def test_epochs_follow_from_the_runs_record(prefix_run):
    from textdiffusion.epochs import Epochs

    epochs = Epochs.of_run(prefix_run)
    assert epochs == Epochs(8 * 32, 5000)  # the tiny preset's batch of 8 windows of 32 on a 5,000-char prefix
    assert epochs.at(2) == pytest.approx(2 * 256 / 5000)
    assert epochs.steps_for(epochs.at(40)) == 40 and epochs.steps_for(0.0) == 1
    doubled = tiny_config("ar", "x", 4, **{"train.grad_accum": 2})
    assert Epochs.of_config(doubled, 5000).at(2) == pytest.approx(2 * epochs.at(2))


def test_epochs_of_a_directory_without_a_corpus_record_is_a_one_line_error(prefix_run):
    from textdiffusion.epochs import Epochs
    from textdiffusion.errors import CheckpointError

    meta = json.loads((prefix_run / "config.json").read_text())
    del meta["corpus"]
    (prefix_run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"records no training split size \(corpus.train_chars\)"):
        Epochs.of_run(prefix_run)


@pytest.mark.parametrize("method", ["masked", "block"])
def test_each_evaluation_can_score_the_exact_nll_beside_the_bound(method, small_corpus, tmp_path):
    """With train.eval_exact_windows the evaluation rows carry the exact NLL of the left_to_right sampler, the very
    number scoring those windows after training gives; without it the rows are as they were."""
    from helpers import metric_rows
    from textdiffusion.data.sources import text_source
    from textdiffusion.evaluate import run_corpus
    from textdiffusion.methods.base import score
    from textdiffusion.runs import open_run

    sets = {"train.eval_every": 2, "data.train_chars": 4000}
    if method == "block":
        sets["method.block_size"] = 4
    Trainer(tiny_config(method, small_corpus, 4, **sets, **{"train.eval_exact_windows": 3}), tmp_path / "exact",
            progress=False).train(stop_at=4)
    rows = metric_rows(tmp_path / "exact")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["val_kind"] == "bound" and r["val_exact_windows"] == 3 for r in rows)
    assert all(0 < r["val_exact_nats"] < 10 and r["val_exact_nats"] != r["val_nats"] for r in rows)
    run = open_run(tmp_path / "exact", device="cpu")
    data, _, _ = run_corpus(run)
    windows = text_source(data, run.cfg).val_set(run.method.window, 3)
    again = score(run.method, run.model, windows, batch_size=64, exact=True)
    assert again.nats_per_unit == pytest.approx(rows[-1]["val_exact_nats"], rel=1e-5)

    Trainer(tiny_config(method, small_corpus, 4, **sets), tmp_path / "plain", progress=False).train(stop_at=2)
    assert all("val_exact_nats" not in r for r in metric_rows(tmp_path / "plain"))


def test_ar_needs_no_exact_score_beside_its_number(small_corpus, tmp_path):
    from helpers import metric_rows

    cfg = tiny_config("ar", small_corpus, 2, **{"train.eval_every": 2, "train.eval_exact_windows": 3})
    Trainer(cfg, tmp_path / "ar", progress=False).train()
    row = metric_rows(tmp_path / "ar")[0]
    assert row["val_kind"] == "exact" and "val_exact_nats" not in row
