"""One process against two torchrun processes on this CPU machine, same global batch (issue 15's CPU benchmark).

    python benchmarks/ddp_cpu.py [--steps 200] [--method masked]

Three runs of the `cpu` preset, each drawing the same global batch of two data shards (2 x 12 windows):
one process with 2 threads, one process with 1 thread, and `torchrun --nproc_per_node 2` with 1 thread per
process. The point is correctness (the weights of the first and the last agree), not speed: two processes
on two shared cores have nothing to gain. Prints a markdown table of training throughput and wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    tic = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - tic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--method", default="masked")
    ap.add_argument("--data", default="tinyshakespeare")
    args = ap.parse_args()
    import torch

    from textdiffusion.checkpoint import read_group

    work = Path(tempfile.mkdtemp(prefix="ddp-cpu-"))
    train = ["-m", "textdiffusion", "train", "--method", args.method, "--preset", "cpu", "--data", args.data,
             "--steps", str(args.steps), "--no-progress", "--set", f"train.eval_every={args.steps}",
             "--set", "train.final_eval_windows=256"]
    rows = []
    for label, threads, launcher in (("1 process, 2 threads", 2, [sys.executable]),
                                     ("1 process, 1 thread", 1, [sys.executable]),
                                     ("torchrun, 2 processes x 1 thread", 1,
                                      [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node", "2"])):
        run = work / label.replace(" ", "_").replace(",", "")
        shards = ["--set", "train.data_shards=2"] if "torchrun" not in label else []
        wall = _run([*launcher, *train, "--run-dir", str(run), *shards], threads)
        final = json.loads((run / "final.json").read_text())
        rows.append((label, final["chars_per_s"], final["elapsed"], wall, final["val_bpc"], run))
    base = read_group(rows[0][5], "model")[0]
    print(f"{args.method}, `cpu` preset, {args.steps} steps, global batch 2 x 12 windows of 64 characters; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores\n")
    print("| launch | train chars/s | training s | wall-clock s | val bits/char | max weight difference vs first |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, rate, elapsed, wall, val, run in rows:
        other = read_group(run, "model")[0]
        diff = max(float((base[k] - other[k]).abs().max()) for k in base)
        print(f"| {label} | {rate:,.0f} | {elapsed:.1f} | {wall:.1f} | {val:.4f} | {diff:.2e} |")


if __name__ == "__main__":
    main()
