"""Data-parallel training under torchrun, on CPU with gloo: two processes must train exactly what one process
trains from the same global batch, write one run, resume (at the same or another world size) and fail loudly.

Each test starts real ``torchrun`` jobs of two processes with one thread each on the ``tiny`` preset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import metric_rows
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import read_group, read_header

SRC = str(Path(__file__).resolve().parents[1] / "src")
STEPS = 8


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@dataclass(frozen=True)
class Job:
    """What one torchrun job left: its exit status and everything it and its processes printed."""

    returncode: int
    stdout: str
    stderr: str

    def tail(self, chars: int = 10_000) -> str:
        """The end of both streams, for a failed assertion: long enough to hold a child's own message (a traceback,
        `terminate called ...`) above the summary torchrun prints after it."""
        return (f"torchrun exited with {self.returncode}\n--- stdout (tail) ---\n{self.stdout[-chars:]}\n"
                f"--- stderr (tail) ---\n{self.stderr[-chars:]}")


def _torchrun(*args: str, nproc: int = 2, cwd: Path | None = None, timeout: float = 240, ok: bool = True) -> Job:
    """Run ``torchrun --standalone`` (a free rendezvous port of its own, so jobs may run side by side) and,
    with ``ok``, fail the test unless it exited 0, showing what the processes printed. A job that outlives
    ``timeout`` is killed with all its processes (its own session) and fails the test with what it printed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", *args]
    proc = subprocess.Popen(cmd, env=_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun ran past {timeout:.0f} s and was killed\n" + Job(-9, out, err).tail())
    job = Job(proc.returncode, out, err)
    if ok and job.returncode != 0:
        pytest.fail(job.tail())
    return job


def _train_args(method: str, corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["-m", "textdiffusion", "train", "--method", method, "--preset", "tiny", "--data", str(corpus),
            "--steps", str(STEPS), "--run-dir", str(run), "--no-progress", "--set", "train.eval_every=4", *extra]


def _same_weights(a: Path, b: Path, exact: bool = False) -> None:
    for group in ("model", "ema"):
        x, y = read_group(a, group)[0], read_group(b, group)[0]
        assert x.keys() == y.keys()
        for k in x:
            if exact:
                assert torch.equal(x[k], y[k]), (group, k)
            else:
                torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6, msg=f"{group}.{k}")


@pytest.mark.parametrize("method", ["masked", "embedding"])  # DDP's hooks; one all-reduce after backward
def test_two_processes_train_what_one_trains_from_the_same_global_batch(method, small_corpus, tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    job = _torchrun(*_train_args(method, small_corpus, ddp))
    assert main(["train", "--method", method, "--preset", "tiny", "--data", str(small_corpus), "--steps",
                 str(STEPS), "--run-dir", str(single), "--no-progress", "--set", "train.eval_every=4",
                 "--set", "train.data_shards=2"]) == 0
    _same_weights(ddp, single)
    assert read_header(ddp).state["world_size"] == 2
    # one run, written once: one summary, one set of files, every shard's generators in the checkpoint
    assert job.stdout.count("done:") == 1
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert {"rng.data", "rng.data.1", "rng.noise.1", "rng.torch.1"} <= set(read_group(ddp, "trainer")[0])
    # rank 0 alone writes the train row, with the global batch's loss and gradient norm
    ddp_rows, single_rows = metric_rows(ddp, "train"), metric_rows(single, "train")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows] == [STEPS]
    for key in ("train_loss", "grad_norm", "grad_norm_max", "lr"):
        assert ddp_rows[0][key] == pytest.approx(single_rows[0][key], rel=1e-5), key


def test_one_run_directory_without_run_dir(small_corpus, tmp_path):
    """Each process would pick its own timestamped default directory; rank 0's is used by all."""
    _torchrun("-m", "textdiffusion", "train", "--method", "ar", "--preset", "tiny", "--data", str(small_corpus),
              "--steps", "2", "--no-progress", cwd=tmp_path)
    assert len(list((tmp_path / "runs").iterdir())) == 1


# trains to step argv[3], or with a negative one fails on rank 1 once the process group is formed (rank 0 then
# waits in the trainer's first collective); run_training leaves the group as the command does
STOP_AT = """
import sys
import torch
from textdiffusion import distributed
from textdiffusion.methods.configs import make_config
from textdiffusion.trainer import run_training
corpus, run, stop = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = make_config("masked", "tiny", [f"data.corpus={corpus}", "train.steps=%d" % {steps}, "train.eval_every=4"])
world = distributed.current_world()
distributed.init(world, torch.device("cpu"))
if world.rank == 1 and stop < 0:
    raise RuntimeError("rank 1 fails on purpose")
run_training(cfg, run, progress=False, stop_at=stop)
"""


def test_resume_under_torchrun_and_at_another_world_size(small_corpus, tmp_path):
    script = tmp_path / "stop_at.py"
    script.write_text(STOP_AT.replace("{steps}", str(STEPS)))
    whole = tmp_path / "whole"
    _torchrun(*_train_args("masked", small_corpus, whole))
    for name, nproc in (("same", 2), ("fewer", 1)):
        run = tmp_path / name
        _torchrun(str(script), str(small_corpus), str(run), "3")
        assert read_header(run).step == 3
        if nproc == 2:
            _torchrun("-m", "textdiffusion", "train", "--resume", str(run), "--no-progress")
        else:  # one process owns both shards: the same draws, only in one place
            assert main(["train", "--resume", str(run), "--no-progress"]) == 0
        _same_weights(whole, run)


def test_a_world_size_that_cannot_share_the_shards_is_refused(small_corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    _torchrun(*_train_args("ar", small_corpus, run))  # two data shards
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["train", "--resume", str(run), "--steps", "9", "--no-progress"]) == 2
    assert "2 data shards, which 3 processes cannot share evenly" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sample", str(run)]) == 2  # only train is data-parallel
    assert "runs in one process; run it without torchrun" in capsys.readouterr().err


def test_a_failing_rank_stops_the_job(small_corpus, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(STOP_AT.replace("{steps}", str(STEPS)))
    job = _torchrun(str(script), str(small_corpus), str(tmp_path / "r"), "-1", timeout=180, ok=False)
    assert job.returncode != 0, job.tail()
    assert "rank 1 fails on purpose" in job.stderr, job.tail()


def test_precision_resolution_and_model_flops():
    from textdiffusion import precision

    cpu = torch.device("cpu")
    assert precision.resolve("auto", cpu) == "fp32" and precision.resolve("off", cpu) == "fp32"
    assert precision.resolve("bf16", cpu) == "bf16"
    assert precision.peak_flops(cpu) is None and not precision.enable_tf32(cpu)
    # nanoGPT's shakespeare_char shape: 10.7M parameters, 6 layers of width 384, 256 positions
    per_token = precision.transformer_flops_per_token(10_672_896, 6, 384, 256)
    assert per_token == 6 * 10_672_896 + 12 * 6 * 384 * 256
    assert precision.mfu(per_token, 1e6, 989e12, 1) == pytest.approx(per_token * 1e6 / 989e12)
    assert precision.mfu(per_token, 1e6, None, 1) is None


# every DDP-trained method (parameters read in forward only) with variants that change which modules exist
_DDP_VARIANTS = [("ar", []), ("masked", []), ("masked", ["method.time_conditioning=true"]),
                 ("masked", ["method.estimator=count"]), ("block", []), ("block", ["method.block_size=4"]),
                 ("image", []), ("image", ["unet.class_conditional=false"]), ("image", ["unet.label_dropout=0.5"])]


@pytest.mark.parametrize(("method", "sets"), _DDP_VARIANTS)
def test_methods_that_use_every_parameter_say_so(method, sets, shakespeare):
    """DDP is told to search for unused parameters only when a method declares ``leaves_parameters_unused``;
    a method using every parameter must really do so on each step, or DDP fails on the next one."""
    from textdiffusion.data.images import ImageBatch, ImageSpec
    from textdiffusion.data.tokenizer import CharTokenizer
    from textdiffusion.methods.configs import make_config
    from textdiffusion.runs import build

    cfg = make_config(method, "tiny", sets)
    if method == "image":
        built, model = build(cfg, ImageSpec(size=28))
        gen = torch.Generator().manual_seed(0)
        x = ImageBatch(torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8, generator=gen),
                       torch.randint(0, 10, (8,), generator=gen))
    else:
        tok = CharTokenizer.from_text(shakespeare)
        built, model = build(cfg, tok)
        x = torch.tensor(tok.encode(shakespeare[:8 * built.window])).view(8, -1)
    assert built.parameters_in_forward_only
    for seed in range(3):  # several draws of the random branches (times, masks, dropped labels)
        model.zero_grad(set_to_none=True)
        built.loss(model, x, torch.Generator().manual_seed(seed)).backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert built.leaves_parameters_unused or not unused, unused
