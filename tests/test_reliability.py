"""Never lose a run: a crash at any write point, a kill mid-save, a second trainer, a signal at any moment.

Every test here ends by checking the run against an uninterrupted twin, bit for bit: "it resumed" is not
enough, it must resume to exactly the weights it would have had.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import textdiffusion.checkpoint as checkpoint_module
import textdiffusion.files as files_module
import textdiffusion.trainer as train_module
from helpers import tiny_config
from textdiffusion.checkpoint import CHECKPOINT, CheckpointError, read_group, read_header
from textdiffusion.config import ConfigError
from textdiffusion.run_lock import RunLock
from textdiffusion.trainer import Trainer, TrainingDiverged, resume_training

STEPS, EVERY = 4, 2
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cfg(corpus, steps=STEPS, **kw):
    return tiny_config("ar", corpus, steps=steps, **{"train.eval_every": EVERY, **kw})


def _final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    final = json.loads((run / "final.json").read_text())
    return read_group(run, "model")[0], read_group(run, "ema")[0], {k: final[k] for k in ("step", "val_bpc")}


def _assert_same_run(a: Path, b: Path) -> None:
    ma, ea, fa = _final_state(a)
    mb, eb, fb = _final_state(b)
    assert fa == fb
    for x, y in ((ma, mb), (ea, eb)):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    rows = lambda run: [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(a)] == [r["step"] for r in rows(b)]
    # the train rows (train.log_every) are the same numbers too, the clock's aside; an evaluation row's
    # train_loss is the progress bar's moving average, which restarts on resume
    untimed = lambda run: [{k: v for k, v in r.items() if k not in ("elapsed", "chars_per_s", "tokens_per_s")}  # noqa: E731
                           for r in rows(run) if r.get("kind") == "train"]
    assert untimed(a) == untimed(b) and untimed(a)


@pytest.fixture
def whole(small_corpus, tmp_path) -> Path:
    """The uninterrupted run every interrupted one must end identical to."""
    run = tmp_path / "whole"
    Trainer(_cfg(small_corpus), run, progress=False).train()
    return run


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way up can handle it."""


def _count_writes(monkeypatch, corpus, run: Path) -> list[str]:
    """The names of everything training writes, in order: the write points of a run."""
    names: list[str] = []
    real, real_append = files_module.atomic_write, files_module.append_line

    def spy(path, write, **how):
        names.append(Path(path).name)
        return real(path, write, **how)

    def append_spy(path, line):
        names.append(Path(path).name)
        return real_append(path, line)

    monkeypatch.setattr(files_module, "atomic_write", spy)
    monkeypatch.setattr(checkpoint_module, "atomic_write", spy)
    monkeypatch.setattr(files_module, "append_line", append_spy)
    Trainer(_cfg(corpus), run, progress=False).train()
    monkeypatch.undo()
    return names


def test_a_crash_at_every_write_point_resumes_bit_identically(small_corpus, tmp_path, whole, monkeypatch):
    points = _count_writes(monkeypatch, small_corpus, tmp_path / "count")
    assert points.count(CHECKPOINT) == 1 + STEPS // EVERY  # step 0, then every evaluation
    assert {"config.json", "tokenizer.json", "final.json", "metrics.jsonl"} <= set(points)
    for k in range(len(points)):
        run = tmp_path / f"crash{k}"
        with pytest.raises(Crash), monkeypatch.context() as patch:
            crash = _CrashAt(k)
            patch.setattr(files_module, "atomic_write", crash.write)
            patch.setattr(checkpoint_module, "atomic_write", crash.write)
            patch.setattr(files_module, "append_line", crash.append)
            Trainer(_cfg(small_corpus), run, progress=False).train()
        assert not run.exists() or not list(run.glob(".*.tmp")), points[k]
        if (run / "config.json").exists():
            resume_training(run, progress=False)
        else:  # the crash came before the run existed: nothing was left behind, the name is free
            assert not run.exists(), points[k]
            Trainer(_cfg(small_corpus), run, progress=False).train()
        _assert_same_run(whole, run)


class _CrashAt:
    """Crashes the ``k``-th write of a run (atomic writes and metrics appends counted together), leaving half
    of what was being written on disk, as a kill at that moment would."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0
        self.real_write, self.real_append = files_module.atomic_write, files_module.append_line

    def _due(self) -> bool:
        self.calls += 1
        return self.calls - 1 == self.k

    def write(self, path, write, **how):
        if not self._due():
            return self.real_write(path, write, **how)

        def half(tmp):
            write(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(max(1, os.path.getsize(tmp) // 2))
            raise Crash

        return self.real_write(path, half, **how)

    def append(self, path, line):
        if not self._due():
            return self.real_append(path, line)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line[: len(line) // 2])
        raise Crash


def _child(code: str, run: Path, corpus: Path, steps: int = STEPS) -> subprocess.Popen:
    """A training process in its own interpreter, so it can be killed like a real one."""
    setup = (f"import sys; sys.path[:0] = [{SRC!r}, {str(Path(__file__).parent)!r}]\n"
             f"from helpers import tiny_config\nimport textdiffusion.checkpoint as ck\n"
             f"from textdiffusion.trainer import Trainer, resume_training\n"
             f"cfg = tiny_config('ar', {str(corpus)!r}, steps={steps}, **{{'train.eval_every': {EVERY}}})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", setup + code, str(run)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode} early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.01)


SLOW_SECOND_SAVE = """
real, calls = ck.save_file, []
def slow(tensors, path, metadata=None):
    calls.append(path)
    real(tensors, path, metadata=metadata)
    if len(calls) == 2:  # the first save after step 0: half the file is on disk, then the disk stalls
        with open(path, 'r+b') as f:
            f.truncate(__import__('os').path.getsize(path) // 2)
        print('stalled', flush=True)
        __import__('time').sleep(600)
ck.save_file = slow
Trainer(cfg, sys.argv[1], progress=False).train()
"""


def test_sigkill_while_the_checkpoint_temp_file_is_half_written(small_corpus, tmp_path, whole):
    run = tmp_path / "killed"
    child = _child(SLOW_SECOND_SAVE, run, small_corpus)
    assert child.stdout.readline().strip() == "stalled", child.stderr.read()[-2000:]
    assert list(run.glob(f".{CHECKPOINT}.*.tmp"))  # the half-written temporary file is there
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert read_header(run).step == 0  # the step-0 checkpoint is whole; the half-written one never replaced it
    logged: list[str] = []
    resumed = Trainer(tiny_config("ar", small_corpus, steps=STEPS, **{"train.eval_every": EVERY}), run,
                      resume=True, progress=False, log=logged.append)
    assert any("temporary file" in line for line in logged) and not list(run.glob(".*.tmp"))
    resumed.train()
    _assert_same_run(whole, run)


def test_two_trainers_on_one_directory_exactly_one_runs(small_corpus, tmp_path):
    run = tmp_path / "shared"
    code = "Trainer(cfg, sys.argv[1], progress=False).train()\n"
    procs = [_child(code, run, small_corpus, steps=40) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, outs
    loser = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode != 0)
    assert "CheckpointError" in loser and ("another process (PID" in loser or "already holds a run" in loser)
    assert read_header(run).step == 40


def test_a_locked_run_names_the_holder(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus, steps=6), run, progress=False).train(stop_at=2)
    holder = RunLock(run)
    holder.acquire()  # another open file description: flock conflicts even within one process
    try:
        with pytest.raises(CheckpointError, match=f"another process \\(PID {os.getpid()}\\)"):
            resume_training(run, progress=False)
    finally:
        holder.release()
    resume_training(run, progress=False)
    assert read_header(run).step == 6


SIGTERM_AFTER_FIRST_EVAL = """
Trainer(cfg, sys.argv[1], progress=False).train()
"""


def test_sigterm_saves_and_stops_like_ctrl_c(small_corpus, tmp_path):
    run = tmp_path / "term"
    child = _child(SIGTERM_AFTER_FIRST_EVAL, run, small_corpus, steps=100_000)
    _wait_for(lambda: (run / "metrics.jsonl").exists(), child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err  # the loop stopped cleanly: train() returned its summary
    assert "SIGTERM: stopping at the end of this step and saving a checkpoint" in err
    step = read_header(run).step
    assert step >= EVERY and not (run / "final.json").exists()


def test_a_signal_during_the_last_step_of_a_piece_still_stops_the_caller(small_corpus, tmp_path):
    """A caller that trains in pieces (train(stop_at=...)) learns of a SIGTERM that came during the piece's last
    step, its evaluation included, instead of starting the next piece; at the run's last step it skips scoring."""
    run = tmp_path / "r"
    trainer = Trainer(_cfg(small_corpus, steps=6), run, progress=False, log=lambda m: None)

    def term_at(step: int):
        def hook(now: int) -> None:
            if now == step:
                os.kill(os.getpid(), signal.SIGTERM)
        return hook

    summary = trainer.train(stop_at=EVERY, on_step=term_at(EVERY))
    assert summary.interrupted and trainer.step == EVERY == read_header(run).step
    summary = trainer.train(on_step=term_at(6))
    assert summary.interrupted and read_header(run).step == 6
    assert not (run / "final.json").exists()  # left to the resume, as any signal leaves it
    assert not trainer.train().interrupted and (run / "final.json").exists()


def test_a_second_signal_during_a_save_waits_for_the_save(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "r"
    trainer = Trainer(_cfg(small_corpus, steps=6), run, progress=False, log=lambda m: None)
    real = train_module.write_checkpoint

    def signalled_twice(run_dir, groups, state, *rest):
        if state["step"] == 2:  # the first Ctrl-C came earlier; the second arrives mid-write
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real(run_dir, groups, state, *rest)

    monkeypatch.setattr(train_module, "write_checkpoint", signalled_twice)
    with pytest.raises(KeyboardInterrupt, match="once the checkpoint was complete; the checkpoint at step 2 is intact"):
        trainer.train()
    assert read_header(run).step == 2  # the write in progress completed before the abort


def test_ctrl_c_while_scoring_leaves_a_run_that_resume_finishes(small_corpus, tmp_path, whole, monkeypatch):
    run = tmp_path / "r"
    trainer = Trainer(_cfg(small_corpus), run, progress=False, log=lambda m: None)
    real = Trainer.evaluate

    def interrupted(self, windows, model=None, **kw):
        if windows is not self.val_windows:  # the final scoring
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        return real(self, windows, model, **kw)

    monkeypatch.setattr(Trainer, "evaluate", interrupted)
    summary = trainer.train()
    monkeypatch.undo()
    assert summary.interrupted and summary.scoring_interrupted and summary.step == STEPS
    assert not (run / "final.json").exists()
    resume_training(run, progress=False)  # scores, trains nothing
    _assert_same_run(whole, run)


def test_a_run_killed_before_its_first_evaluation_resumes(small_corpus, tmp_path, whole):
    run = tmp_path / "early"
    trainer = Trainer(_cfg(small_corpus), run, progress=False)

    def die(step):
        if step == 1:
            raise Crash

    with pytest.raises(Crash):
        trainer.train(on_step=die)
    trainer.lock.release()
    assert read_header(run).step == 0
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(_cfg(small_corpus), run, progress=False)  # a new run is refused, pointing at --resume
    resume_training(run, progress=False)
    _assert_same_run(whole, run)


def test_a_run_with_no_checkpoint_at_all_restarts_from_step_0(small_corpus, tmp_path, whole):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus), run, progress=False).train(stop_at=1)
    (run / CHECKPOINT).unlink()  # as if killed between config.json and the first checkpoint
    with pytest.raises(CheckpointError, match="starts it again from step 0"):
        Trainer(_cfg(small_corpus), run, progress=False)
    resume_training(run, progress=False)
    _assert_same_run(whole, run)


def test_a_nan_loss_is_reported_and_never_checkpointed(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "r"
    trainer = Trainer(_cfg(small_corpus, steps=6), run, progress=False)
    real = trainer.method.loss

    def poisoned(model, x, gen):
        loss = real(model, x, gen)
        return loss * float("nan") if trainer.step == 3 else loss

    monkeypatch.setattr(trainer.method, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3; the checkpoint at step 2 is intact"):
        trainer.train()
    assert read_header(run).step == 2


def test_nan_weights_are_refused_by_sample(small_corpus, tmp_path, capsys):
    from safetensors.torch import save_file

    from textdiffusion.apps.cli import main

    run = tmp_path / "r"
    Trainer(_cfg(small_corpus), run, progress=False).train()
    header = read_header(run)
    tensors = {f"{g}.{k}": v for g in ("model", "ema", "trainer") for k, v in read_group(run, g)[0].items()}
    first = next(k for k in tensors if k.startswith("ema."))
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    meta = {"format": "pt", "step": str(header.step), "state": json.dumps(header.state),
            "config": json.dumps(header.config), "run_id": header.run_id}
    save_file(tensors, str(run / CHECKPOINT), metadata=meta)
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err
    assert "contain NaN or inf" in err and len(err.strip().splitlines()) == 1


def test_an_edited_config_is_refused_before_building(small_corpus, tmp_path, capsys):
    from textdiffusion.apps.cli import main

    run = tmp_path / "r"
    Trainer(tiny_config("masked", small_corpus, steps=2), run, progress=False).train()
    meta = json.loads((run / "config.json").read_text())
    for edit in ({"model": {"n_embd": 64}}, {"model": {"n_embd": 4096, "n_layer": 48}}):
        edited = json.loads(json.dumps(meta))
        for section, values in edit.items():
            edited["config"][section].update(values)
        (run / "config.json").write_text(json.dumps(edited))
        assert main(["sample", str(run)]) == 2
        err = capsys.readouterr().err
        assert "does not match the config its checkpoint was trained with" in err, err
    # another method on the same backbone would load the weights fine, and sample garbage
    edited = json.loads(json.dumps(meta))
    edited["config"]["method"] = {"name": "ar"}
    (run / "config.json").write_text(json.dumps(edited))
    assert main(["sample", str(run)]) == 2
    assert "method.name: 'masked' in the checkpoint, 'ar' in config.json" in capsys.readouterr().err


def test_a_directory_that_is_not_a_run_is_never_written(small_corpus, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(CheckpointError, match=r"is not empty .* and is not a run directory"):
        Trainer(_cfg(small_corpus), folder, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == b"precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        Trainer(_cfg(small_corpus), a_file, progress=False)


def test_a_refused_resume_leaves_config_json_alone(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus, steps=6), run, progress=False).train()
    before = (run / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="past --steps 3"):
        resume_training(run, progress=False, steps=3)
    with pytest.raises(ConfigError, match="already finished"):
        resume_training(run, progress=False)
    assert (run / "config.json").read_bytes() == before


def test_a_truncated_metrics_line_does_not_block_resume(small_corpus, tmp_path, whole):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus), run, progress=False).train(stop_at=2)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "val_b')  # a kill mid-append
    resume_training(run, progress=False)
    _assert_same_run(whole, run)


def test_runs_written_by_0_1_resume_and_convert(small_corpus, tmp_path, whole):
    """A 0.1 run's four files resume, and the next save replaces them with the one-file checkpoint."""
    from textdiffusion.checkpoint import write_json, write_tensors

    run = tmp_path / "old"
    trainer = Trainer(_cfg(small_corpus), run, progress=False)
    trainer.train(stop_at=2)
    header = read_header(run)
    tr, _ = read_group(run, "trainer")
    for group in ("model", "ema"):
        write_tensors(run / f"{group}.safetensors", read_group(run, group)[0], header.step)
    write_tensors(run / "trainer.safetensors", tr, header.step)
    write_json(run / "trainer.json", header.state)
    (run / CHECKPOINT).unlink()
    resume_training(run, progress=False)
    assert not any((run / n).exists() for n in ("model.safetensors", "trainer.json"))
    _assert_same_run(whole, run)


def test_the_run_lock_is_released_by_a_dead_holder(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus, steps=6), run, progress=False).train(stop_at=2)
    hold = ("import time\nfrom textdiffusion.run_lock import RunLock\nlock = RunLock(sys.argv[1])\nlock.acquire()\n"
            "print('locked', flush=True)\ntime.sleep(600)\n")
    child = _child(hold, run, small_corpus)
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(CheckpointError, match=f"PID {child.pid}"):
        resume_training(run, progress=False)
    child.kill()
    child.wait(timeout=30)
    resume_training(run, progress=False)
    assert read_header(run).step == 6


def test_copies_of_runs_are_independent(small_corpus, tmp_path):
    """A copied run (cp -r) carries its .lock file, which locks nothing: the copy trains on its own."""
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus, steps=6), run, progress=False).train(stop_at=2)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    holder = RunLock(run)
    holder.acquire()
    try:
        resume_training(copy, progress=False)
    finally:
        holder.release()
    assert read_header(copy).step == 6


def test_a_checkpoint_copied_from_another_run_is_refused(small_corpus, tmp_path, capsys):
    """Same config, other seed: identical shapes, so only the run id can tell the weights are not this run's."""
    from textdiffusion.apps.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(_cfg(small_corpus, steps=2), a, progress=False).train()
    Trainer(_cfg(small_corpus, steps=2, seed=7), b, progress=False).train(stop_at=1)
    shutil.copyfile(a / CHECKPOINT, b / CHECKPOINT)
    assert main(["sample", str(b)]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="belongs to another run"):
        resume_training(b, progress=False)


def test_a_deleted_checkpoint_is_not_mistaken_for_a_young_run(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus), run, progress=False).train(stop_at=2)  # evaluated and sampled at step 2
    (run / CHECKPOINT).unlink()
    with pytest.raises(CheckpointError, match="was deleted or moved"):
        resume_training(run, progress=False)
    with pytest.raises(CheckpointError, match="is missing; restore it"):
        Trainer(_cfg(small_corpus), run, progress=False)
    assert (run / "metrics.jsonl").exists()  # nothing of the run was touched


def test_resume_says_where_it_resumes_from(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(small_corpus), run, progress=False).train(stop_at=2)
    logged: list[str] = []
    Trainer(_cfg(small_corpus), run, resume=True, log=logged.append)
    assert any("from its checkpoint at step 2" in line for line in logged)


def test_a_trainer_that_loses_the_race_for_the_lock_removes_nothing(small_corpus, tmp_path, monkeypatch):
    """Two new trainers on one path: the one that created the directory may still lose the lock to the other,
    and must then leave the winner's lock file and directory alone."""
    run = tmp_path / "new"
    winner = RunLock(run)
    real = RunLock.acquire

    def racing(self):
        if self is not winner and not winner.held:
            real(winner)  # the other trainer takes the lock between our mkdir and our acquire
        return real(self)

    monkeypatch.setattr(RunLock, "acquire", racing)
    try:
        with pytest.raises(CheckpointError, match="another process"):
            Trainer(_cfg(small_corpus), run, progress=False)
        assert (run / ".lock").is_file()
    finally:
        winner.release()
