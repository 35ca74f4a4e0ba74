from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace

import pytest
import torch

from helpers import metric_rows, tiny_config
from textdiffusion.checkpoint import CheckpointError, read_group, read_header
from textdiffusion.records import TrainSummary
from textdiffusion.sharing import shareable_path
from textdiffusion.trainer import Trainer, lr_at, resume_training


def _weights(run_dir, name="model"):
    return read_group(run_dir, name)[0]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["ar", "masked"])
def test_resume_after_ctrl_c_ends_bit_identical(method, small_corpus, tmp_path):
    cfg = lambda: tiny_config(method, small_corpus, steps=24, **{"train.eval_every": 10})  # noqa: E731
    whole = tmp_path / "whole"
    Trainer(cfg(), whole, progress=False).train()

    parts = tmp_path / "parts"
    trainer = Trainer(cfg(), parts, progress=False)

    def ctrl_c(step):
        if step == 7:  # a real SIGINT, handled like a user's Ctrl-C: finish the step, save, stop
            os.kill(os.getpid(), signal.SIGINT)

    summary = trainer.train(on_step=ctrl_c)
    assert summary.interrupted and summary.step == 7
    assert read_header(parts).step == 7
    resume_training(parts, progress=False)

    for name in ("model", "ema"):
        assert _same(_weights(whole, name), _weights(parts, name)), name
    assert [r["step"] for r in metric_rows(parts)] == [10, 20, 24]
    assert [r["step"] for r in metric_rows(parts, "train")] == [10, 20, 24]  # train.log_every=10, and the last


def test_resume_from_a_killed_run_replays_from_the_last_checkpoint(small_corpus, tmp_path):
    cfg = lambda: tiny_config("masked", small_corpus, steps=20, **{"train.eval_every": 10})  # noqa: E731
    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    killed = Trainer(cfg(), tmp_path / "killed", progress=False)
    killed.train(stop_at=10)  # checkpoint at 10 ...
    # ... then metrics from steps that never made it into a checkpoint, as after a SIGKILL
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 15, "val_bpc": 9.9}) + "\n")
    resume_training(tmp_path / "killed", progress=False)
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "killed"))
    assert [r["step"] for r in metric_rows(tmp_path / "killed")] == [10, 20]


def test_run_directory_contents(small_corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config("masked", small_corpus, steps=30), run, progress=False).train()
    for name in ("config.json", "tokenizer.json", "checkpoint.safetensors", "metrics.jsonl", "final.json"):
        assert (run / name).exists(), name
    meta = json.loads((run / "config.json").read_text())
    assert meta["seed"] == 1337 and meta["config"]["method"]["name"] == "masked"
    assert {"torch", "textdiffusion", "python"} <= meta["versions"].keys()
    assert len(meta["corpus"]["sha256"]) == 64
    row = metric_rows(run)[0]
    assert {"step", "train_loss", "val_bpc", "lr", "chars_per_s", "elapsed"} <= row.keys()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000030.txt"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no debris


def test_existing_run_dir_is_not_overwritten(small_corpus, tmp_path):
    Trainer(tiny_config("ar", small_corpus, steps=2), tmp_path / "r", progress=False).train()
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_config("ar", small_corpus, steps=2), tmp_path / "r", progress=False)


def test_corrupt_and_mismatched_checkpoints_are_refused(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_config("ar", small_corpus, steps=4, **{"train.eval_every": 2}), run, progress=False).train(stop_at=2)
    (run / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        resume_training(run, progress=False)


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = tiny_config("ar", "unused", steps=100, **{"train.warmup": 10, "train.lr": 1e-3, "train.min_lr": 1e-4})
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(40, cfg) > lr_at(60, cfg)


def test_gradient_accumulation_matches_the_big_batch(small_corpus, tmp_path):
    """Two micro-batches of 4 give (to rounding) the step of one batch of 8 drawn the same way."""
    big = Trainer(tiny_config("ar", small_corpus, steps=1), tmp_path / "a", progress=False)
    small = Trainer(tiny_config("ar", small_corpus, steps=1, **{"train.batch_size": 4, "train.grad_accum": 2}),
                    tmp_path / "b", progress=False)
    big.train()
    small.train()
    a, b = big.model.state_dict(), small.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_time_budget_stops_training_and_still_scores(small_corpus, tmp_path):
    trainer = Trainer(tiny_config("ar", small_corpus, steps=100_000, **{"train.time_budget_s": 0.5}),
                      tmp_path / "r", progress=False)
    summary = trainer.train()
    assert summary.out_of_time and not summary.interrupted
    assert 0 < summary.step < 100_000 and summary.elapsed >= 0.5
    written = TrainSummary.read(tmp_path / "r")  # final.json names the run by a shareable path, never absolute
    assert summary.score is not None and written == replace(summary, run_dir=shareable_path(summary.run_dir))


def test_stopping_between_evaluations_checkpoints_that_step_but_does_not_score(small_corpus, tmp_path):
    run = tmp_path / "r"
    summary = Trainer(tiny_config("ar", small_corpus, steps=20, **{"train.eval_every": 10}), run,
                      progress=False).train(stop_at=13)
    assert summary.step == 13 and not summary.interrupted and not summary.out_of_time
    assert summary.score is None and TrainSummary.read(run) is None  # not finished: resume, don't score
    assert {read_group(run, n)[1] for n in ("model", "ema", "trainer")} == {13}
    assert read_header(run).state["step"] == 13


def test_progress_bar_shows_the_smoothed_loss_and_the_last_evaluation(small_corpus, tmp_path, monkeypatch):
    import textdiffusion.trainer as train_module

    bars = []

    class Bar:  # stands in for tqdm: records what the bar would show
        def __init__(self, **kw):
            self.kw, self.updates, self.postfixes = kw, 0, []
            bars.append(self)

        def update(self, n):
            self.updates += n

        def set_postfix_str(self, text, refresh=True):
            self.postfixes.append(text)

        def close(self):
            pass

    monkeypatch.setattr(train_module, "progress_bar", Bar)
    logged = []
    run = tmp_path / "r"
    Trainer(tiny_config("ar", small_corpus, steps=4, **{"train.eval_every": 2}), run, log=logged.append).train()
    (bar,) = bars
    assert bar.kw["desc"] == "ar/tiny" and bar.kw["total"] == 4 and bar.updates == 4
    row = metric_rows(run)[0]
    assert row["step"] == 2
    before, at_eval, after, _ = bar.postfixes  # steps 1 to 4; 2 and 4 evaluate
    assert before.startswith("train bpc ") and " | val bpc - | " in before and before.endswith(" chars/s")
    # the row logged at step 2 (nats) and the bar (bits, as val) agree on the smoothed loss; the bar keeps the
    # last validation number
    assert at_eval.startswith(f"train bpc {row['train_loss'] / math.log(2):.3f} | val bpc {row['val_bpc']:.3f} | ")
    assert f" | val bpc {row['val_bpc']:.3f} | " in after
    assert logged[0].startswith(f"run directory: {run} (") and logged[-1].startswith("scoring the validation split")


def test_the_bar_shows_a_likelihood_loss_in_the_unit_of_val_and_any_other_as_an_objective():
    from textdiffusion.methods import get_method
    from textdiffusion.methods.configs import make_config
    from textdiffusion.trainer import _loss_label

    labels = {name: _loss_label(get_method(name), make_config(name, "tiny"))
              for name in ("ar", "masked", "block", "embedding", "bits", "image")}
    assert labels == {**dict.fromkeys(("ar", "masked", "block"), ("train bpc", 1 / math.log(2))),
                      **dict.fromkeys(("embedding", "bits", "image"), ("objective", 1.0))}
    bpe = make_config("masked", "tiny", ["data.tokenizer=bpe"])
    assert _loss_label(get_method("masked"), bpe) == ("train bits/token", 1 / math.log(2))


def test_a_companion_run_is_checked_before_training(small_corpus, tmp_path):
    """A method's companion runs (embedding's guided sampler reads an ar run) must be run directories when
    the trainer is built, not at the first sampling minutes later."""
    from textdiffusion.config import ConfigError

    cfg = tiny_config("embedding", small_corpus, steps=2, **{"method.guide_run": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"method.guide_run=.*nowhere is not a run directory"):
        Trainer(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_a_method_without_companions_refuses_one(small_corpus, tmp_path):
    from textdiffusion.config import ConfigError

    trainer = Trainer(tiny_config("masked", small_corpus, steps=2), tmp_path / "r", progress=False)
    assert trainer.method.companion_runs() == {}
    with pytest.raises(ConfigError, match="reads no other run"):
        trainer.method.attach_companions({"x": object()})
    trainer.lock.release()
