"""Experiment logging: the train rows of ``metrics.jsonl`` (``train.log_every``) and ``train.logger``.

The rows must say what happened (a mean over the interval, the pre-clip gradient norm), survive a resume
exactly as an uninterrupted run writes them, and change no number of the run. TensorBoard is tested end to
end by reading its event files back; wandb and trackio, which are not installed here, through fake modules
that record what the adapters call.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from helpers import assert_same_weights, metric_rows, tiny_config
from textdiffusion import loggers
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import read_group
from textdiffusion.config import LOGGERS, ConfigError
from textdiffusion.records import read_metrics
from textdiffusion.trainer import Trainer, lr_at, resume_training

TIMING = {"elapsed", "chars_per_s", "images_per_s", "tokens_per_s", "mfu"}  # the only numbers allowed to differ
TRAIN_KEYS = {"step", "kind", "train_loss", "lr", "grad_norm", "grad_norm_max", "chars_per_s", "tokens_per_s",
              "elapsed"}


def _train(corpus: Path, run: Path, steps: int = 20, method: str = "masked", log=None, **sets: object) -> Trainer:
    trainer = Trainer(tiny_config(method, corpus, steps, **sets), run, progress=False, log=log)
    trainer.train()
    return trainer


def _all_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---- the train rows -----------------------------------------------------------------------------------------
def test_train_rows_every_log_every_steps(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer = _train(small_corpus, run, steps=20, **{"train.log_every": 5, "train.eval_every": 10})
    rows = metric_rows(run, "train")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for r in rows:
        assert set(r) == TRAIN_KEYS, r
        assert all(math.isfinite(v) for v in loggers.scalars(r).values()), r
        assert 0 < r["grad_norm"] <= r["grad_norm_max"]
        assert r["lr"] == lr_at(r["step"] - 1, trainer.cfg)  # the rate of the interval's last update
        assert r["chars_per_s"] > 0 and r["tokens_per_s"] == r["chars_per_s"]  # masked: one copy per character
    assert [r["elapsed"] for r in rows] == sorted(r["elapsed"] for r in rows)
    # the evaluation rows are as they were, and each follows the train row of its step
    assert [r["step"] for r in metric_rows(run)] == [10, 20]
    assert [(r["step"], r.get("kind")) for r in _all_rows(run)] == [
        (5, "train"), (10, "train"), (10, None), (15, "train"), (20, "train"), (20, None)]
    # the typed rows write back each line as the trainer wrote it: same keys, order and values
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.dumps(r.to_json()) for r in read_metrics(run)] == lines


def test_a_row_is_the_mean_of_its_steps_and_the_norm_is_read_before_clipping(small_corpus, tmp_path):
    """log_every=1 shows every step; log_every=5 must report the mean (and the max norm) of each five. The
    tiny preset clips at 1.0, and the norms logged go above it: they are read before the clip."""
    every = metric_rows(_train(small_corpus, tmp_path / "every", **{"train.log_every": 1}).run_dir, "train")
    five = metric_rows(_train(small_corpus, tmp_path / "five", **{"train.log_every": 5}).run_dir, "train")
    assert len(every) == 20 and len(five) == 4
    for i, row in enumerate(five):
        steps = every[5 * i: 5 * i + 5]
        assert row["train_loss"] == pytest.approx(sum(s["train_loss"] for s in steps) / 5, rel=1e-12)
        assert row["grad_norm"] == pytest.approx(sum(s["grad_norm"] for s in steps) / 5, rel=1e-12)
        assert row["grad_norm_max"] == max(s["grad_norm"] for s in steps)
    assert max(s["grad_norm"] for s in every) > 1.0  # train.grad_clip=1.0


def test_the_norm_without_clipping_is_the_one_clipping_would_see(small_corpus, tmp_path):
    """grad_clip=0: the trainer computes the norm itself; it must be the global L2 norm clip_grad_norm_
    returns (checked on the first step, whose gradients a fresh trainer reproduces)."""
    run = _train(small_corpus, tmp_path / "noclip", steps=1, **{"train.log_every": 1, "train.grad_clip": 0}).run_dir
    (row,) = metric_rows(run, "train")
    probe = Trainer(tiny_config("masked", small_corpus, 1, **{"train.grad_clip": 0}), tmp_path / "probe",
                    progress=False)
    x = probe.source.train_batch(probe.cfg.train.batch_size, probe.method.window, probe.data_gen)
    probe.model.train()
    probe.method.loss(probe.forward_model, x, probe.noise_gen).backward()
    expected = torch.nn.utils.clip_grad_norm_(probe.model.parameters(), float("inf"))
    assert row["grad_norm"] == pytest.approx(float(expected), rel=1e-6)
    probe.lock.release()


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_logging_changes_no_number(small_corpus, tmp_path, clip):
    """Weights, validation numbers and samples of a run with train rows and a logger are those of a run
    without them (with and without clipping, the two ways the norm is read)."""
    base = {"train.grad_clip": clip, "train.eval_every": 10}
    off = _train(small_corpus, tmp_path / "off", **base, **{"train.log_every": 0}).run_dir
    on = _train(small_corpus, tmp_path / "on", **base, **{"train.log_every": 3, "train.logger": "tensorboard"}).run_dir
    assert_same_weights(off, on)
    assert metric_rows(off, "train") == [] and len(metric_rows(on, "train")) == 7  # 3, 6, ..., 18 and 20
    assert _untimed(metric_rows(off)) == _untimed(metric_rows(on))
    final = [json.loads((r / "final.json").read_text()) for r in (off, on)]
    assert final[0]["val_bpc"] == final[1]["val_bpc"]
    assert [p.read_text() for p in sorted((off / "samples").iterdir())] == \
        [p.read_text() for p in sorted((on / "samples").iterdir())]


def test_image_runs_log_images_per_second(tmp_path):
    cfg = tiny_config("image", "digits", 6, **{"train.log_every": 3, "train.eval_every": 6})
    Trainer(cfg, tmp_path / "img", progress=False).train()
    rows = metric_rows(tmp_path / "img", "train")
    assert [r["step"] for r in rows] == [3, 6]
    assert all(r["images_per_s"] > 0 and "tokens_per_s" not in r and "chars_per_s" not in r for r in rows)


# ---- resume -------------------------------------------------------------------------------------------------
class Crash(BaseException):
    """Stands in for a kill between two checkpoints."""


def _crash_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise Crash
    return on_step


def test_resume_leaves_the_rows_of_an_uninterrupted_run(small_corpus, tmp_path):
    """Checkpoints (every 8 steps) fall inside logging intervals (every 5): the interval's sums travel in the
    checkpoint, and rows written after it by a killed run are dropped and written again, identically."""
    sets = {"train.log_every": 5, "train.eval_every": 8}
    whole = _train(small_corpus, tmp_path / "whole", steps=24, **sets).run_dir

    run = tmp_path / "parts"
    trainer = Trainer(tiny_config("masked", small_corpus, 24, **sets), run, progress=False)
    trainer.train(stop_at=7)  # a Ctrl-C at step 7: checkpoint mid-interval
    with pytest.raises(Crash):  # then a kill at step 21: the row of step 20 is newer than the checkpoint at 16...
        Trainer(tiny_config("masked", small_corpus, 24, **sets), run, resume=True,
                progress=False).train(on_step=_crash_at(21))
    assert [r["step"] for r in _all_rows(run)][-1] == 20
    resume_training(run, progress=False)  # ... so it is dropped and written again
    assert_same_weights(whole, run)
    assert [r["step"] for r in metric_rows(run, "train")] == [5, 10, 15, 20, 24]
    assert _untimed(metric_rows(run, "train")) == _untimed(metric_rows(whole, "train"))
    assert [r["step"] for r in metric_rows(run)] == [8, 16, 24]
    # the evaluation rows' train_loss is a moving average over every step so far: it travels too
    assert _untimed(metric_rows(run)) == _untimed(metric_rows(whole))


def test_a_checkpoint_without_the_smoothed_loss_resumes_and_starts_it_afresh(small_corpus, tmp_path):
    """Checkpoints written before the smoothed loss was kept still resume; their average restarts at the resume
    step, which is why the record must carry it (the rows then differ from an uninterrupted run's)."""
    from safetensors.torch import save_file

    from textdiffusion.checkpoint import CHECKPOINT, read_header

    sets = {"train.eval_every": 8}
    whole = _train(small_corpus, tmp_path / "whole", steps=16, **sets).run_dir
    run = tmp_path / "old"
    Trainer(tiny_config("masked", small_corpus, 16, **sets), run, progress=False).train(stop_at=5)
    header = read_header(run)
    assert header.state["smoothed_loss"] is not None
    state = {k: v for k, v in header.state.items() if k != "smoothed_loss"}
    tensors = {f"{g}.{k}": v for g in ("model", "ema", "trainer") for k, v in read_group(run, g)[0].items()}
    save_file(tensors, str(run / CHECKPOINT), metadata={"format": "pt", "step": str(header.step),
                                                         "state": json.dumps(state),
                                                         "config": json.dumps(header.config), "run_id": header.run_id})
    resume_training(run, progress=False)
    assert_same_weights(whole, run)
    ours, theirs = metric_rows(run), metric_rows(whole)
    assert [r["step"] for r in ours] == [8, 16]
    assert [r["val_bpc"] for r in ours] == [r["val_bpc"] for r in theirs]
    assert ours[0]["train_loss"] != theirs[0]["train_loss"]


# ---- TensorBoard, end to end ---------------------------------------------------------------------------------
def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / loggers.TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _expected_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as metrics.jsonl and final.json say, in the order they were logged."""
    out: dict[str, list[tuple[int, float]]] = {}
    final = json.loads((run / "final.json").read_text())
    final_row = {"step": final["step"], "kind": "final", **{k: v for k, v in final.items() if k.startswith("val_")}}
    for row in [*_all_rows(run), final_row]:
        for tag, value in loggers.scalars(row).items():
            out.setdefault(tag, []).append((row["step"], value))
    return out


def _assert_events_match_metrics(run: Path) -> None:
    acc = _events(run)
    expected = _expected_scalars(run)
    assert set(acc.Tags()["scalars"]) == set(expected)
    assert {"train/train_loss", "train/grad_norm", "train/lr", "eval/val_bpc", "final/val_bpc"} <= set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(got, points, strict=True):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-30), tag  # event files hold float32


def _logged_config(run: Path) -> list[tuple[int, dict]]:
    acc = _events(run)
    out = []
    for event in acc.Tensors("config/text_summary"):
        text = event.tensor_proto.string_val[0].decode()
        out.append((event.step, json.loads("\n".join(line[4:] for line in text.splitlines()))))
    return out


def test_tensorboard_event_files_hold_the_rows_and_the_config(small_corpus, tmp_path):
    run = _train(small_corpus, tmp_path / "tb", **{"train.log_every": 5, "train.eval_every": 10,
                                                   "train.logger": "tensorboard"}).run_dir
    _assert_events_match_metrics(run)
    recorded = json.loads((run / "config.json").read_text())["config"]
    assert _logged_config(run) == [(0, recorded)]


def test_tensorboard_continues_on_resume_without_the_rows_after_the_checkpoint(small_corpus, tmp_path):
    """The killed session logged step 15 after its checkpoint at 10; the resumed one purges it and logs it
    again, so each tag holds one point per step, equal to metrics.jsonl."""
    sets = {"train.log_every": 5, "train.eval_every": 10, "train.logger": "tensorboard"}
    run = tmp_path / "tb"
    with pytest.raises(Crash):
        Trainer(tiny_config("masked", small_corpus, 20, **sets), run, progress=False).train(on_step=_crash_at(17))
    assert [e.step for e in _events(run).Scalars("train/train_loss")] == [5, 10, 15]
    resume_training(run, progress=False)
    assert len(list((run / loggers.TENSORBOARD_DIR).iterdir())) == 2  # one event file per session, one folder
    _assert_events_match_metrics(run)
    assert [step for step, _ in _logged_config(run)] == [0, 10]


# ---- a missing package, a failing logger ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tensorboard", "wandb", "trackio"])
def test_a_missing_logger_package_is_one_line_before_training(small_corpus, tmp_path, monkeypatch, kind):
    monkeypatch.setitem(sys.modules, loggers.BACKENDS[kind].module, None)  # import fails as if not installed
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        Trainer(tiny_config("masked", small_corpus, 4, **{"train.logger": kind}), run, progress=False)
    message = str(e.value)
    assert "\n" not in message and f'pip install "textdiffusion[{kind}]"' in message
    assert message.startswith(f"train.logger={kind} needs the {kind} package")
    assert not run.exists()  # refused before the run directory was made


def test_a_resume_without_the_package_says_how_to_go_on_without_it(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    Trainer(tiny_config("masked", small_corpus, 8, **{"train.logger": "tensorboard"}), run,
            progress=False).train(stop_at=4)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=f'or set "logger": "" under "train" in {run / "config.json"} to resume'):
        resume_training(run, progress=False)
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["train"]["logger"] = ""  # the edit the message names: the checkpoint still accepts the run
    (run / "config.json").write_text(json.dumps(meta))
    assert resume_training(run, progress=False).step == 8


def test_the_cli_says_it_in_one_line(small_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    code = main(["train", "--method", "masked", "--preset", "tiny", "--data", str(small_corpus), "--run-dir",
                 str(tmp_path / "run"), "--no-progress", "--set", "train.logger=wandb"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and err.startswith("error: train.logger=wandb needs")


def test_an_unknown_logger_is_refused_naming_the_choices(small_corpus):
    with pytest.raises(ConfigError, match=r'train\.logger must be one of "", tensorboard, wandb, trackio, got'):
        tiny_config("masked", small_corpus, 4, **{"train.logger": "mlflow"})
    assert set(LOGGERS) == {"", *loggers.BACKENDS}  # every choice has a backend


class FakeWandb(types.ModuleType):
    """Records what the adapter calls; ``fail_after`` makes ``log`` raise from that call on."""

    def __init__(self, fail_after: int | None = None):
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[int, dict]] = []
        self.finished = 0
        self.fail_after = fail_after
        fake = self

        class Run:
            def log(self, values, step=None):
                if fake.fail_after is not None and len(fake.logged) >= fake.fail_after:
                    raise OSError("No space left on device")
                fake.logged.append((step, dict(values)))

            def finish(self):
                fake.finished += 1

        self.Run = Run

    def init(self, **kw):
        self.inits.append(kw)
        return self.Run()


def _expected_log(run: Path) -> list[tuple[int, dict]]:
    final = json.loads((run / "final.json").read_text())
    rows = [*_all_rows(run), {"step": final["step"], "kind": "final",
                              **{k: v for k, v in final.items() if k.startswith("val_")}}]
    return [(r["step"], loggers.scalars(r)) for r in rows]


def test_wandb_gets_every_row_offline_by_default(small_corpus, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    trainer = _train(small_corpus, tmp_path / "w", **{"train.log_every": 5, "train.eval_every": 10,
                                                      "train.logger": "wandb"})
    (init,) = fake.inits
    assert init["mode"] == "offline" and init["project"] == "textdiffusion" and init["resume"] == "allow"
    assert init["id"] == trainer.run_id and init["dir"] == str(trainer.run_dir)
    assert init["config"] == json.loads((trainer.run_dir / "config.json").read_text())["config"]
    assert fake.logged == _expected_log(trainer.run_dir) and fake.finished == 1
    # the user's WANDB_MODE wins (wandb reads it itself), and a resume continues the same wandb run
    monkeypatch.setenv("WANDB_MODE", "online")
    resume_training(trainer.run_dir, steps=25, progress=False)
    assert fake.inits[1]["mode"] is None and fake.inits[1]["id"] == trainer.run_id
    assert [step for step, _ in fake.logged][-3:] == [25, 25, 25]  # train row, evaluation row, final numbers


def test_trackio_gets_every_row_locally(small_corpus, tmp_path, monkeypatch, capsys):
    calls: list[tuple] = []
    fake = types.ModuleType("trackio")

    def init(**kw):
        print("* Trackio project initialized")  # a banner: must not land on stdout
        calls.append(("init", kw))

    fake.init = init
    fake.log = lambda values, step=None: calls.append(("log", step, dict(values)))
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    monkeypatch.delenv("TRACKIO_PROJECT", raising=False)
    trainer = _train(small_corpus, tmp_path / "t", **{"train.log_every": 5, "train.eval_every": 10,
                                                      "train.logger": "trackio"})
    kind, kw = calls[0]
    assert kind == "init" and kw["project"] == "textdiffusion" and kw["resume"] == "allow"
    assert kw["name"] == f"t-{trainer.run_id[:8]}" and "space_id" not in kw  # local: no Space unless the user says
    assert kw["config"] == trainer.cfg.to_dict()
    assert [(c[1], c[2]) for c in calls if c[0] == "log"] == _expected_log(trainer.run_dir)
    assert calls[-1] == ("finish",)
    out = capsys.readouterr()
    assert "Trackio" not in out.out and "Trackio" in out.err


def test_a_failing_logger_is_reported_once_and_the_run_goes_on(small_corpus, tmp_path, monkeypatch):
    fake = FakeWandb(fail_after=2)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    said: list[str] = []
    sets = {"train.log_every": 5, "train.eval_every": 10, "train.logger": "wandb"}
    run = _train(small_corpus, tmp_path / "w", log=said.append, **sets).run_dir
    warnings = [m for m in said if "wandb logger" in m]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("warning: the wandb logger could not log a row (OSError: No space left on device)")
    assert len(fake.logged) == 2 and fake.finished == 0  # dropped at the failure, never called again
    assert (run / "final.json").exists() and [r["step"] for r in metric_rows(run, "train")] == [5, 10, 15, 20]
    assert_same_weights(run, _train(small_corpus, tmp_path / "plain", **{**sets, "train.logger": ""}).run_dir)


def test_a_logger_that_cannot_start_is_reported_and_training_goes_on(small_corpus, tmp_path, monkeypatch):
    fake = FakeWandb()

    def broken_init(**kw):
        raise RuntimeError("wandb: cannot reach the server\nlong traceback text")

    fake.init = broken_init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    said: list[str] = []
    run = _train(small_corpus, tmp_path / "w", steps=4, log=said.append, **{"train.logger": "wandb"}).run_dir
    assert [m for m in said if m.startswith("warning:")] == [
        "warning: the wandb logger could not start (RuntimeError: wandb: cannot reach the server); training goes "
        "on without it, and metrics.jsonl keeps every row"]
    assert (run / "final.json").exists()


def test_an_interval_reads_back_from_any_checkpoint_state():
    interval = loggers.Interval()
    interval.add(2.5, 1.5, 100, 0.25)
    assert loggers.Interval.from_state(json.loads(json.dumps(interval.to_state()))) == interval
    assert loggers.Interval.from_state(None) == loggers.Interval()  # a checkpoint written before train rows
    assert loggers.Interval.from_state({"steps": "x", "loss_sum": True}) == loggers.Interval()
