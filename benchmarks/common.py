"""Helpers shared by the benchmark scripts: run a training in a fresh process, read its numbers."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def run(cmd: list[str]) -> dict:
    """Run a textdiffusion command in a child process; return wall time and the child's peak RSS."""
    tic = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_rss_mb": max(peak, before) / 1024, "stdout": proc.stdout, "stderr": proc.stderr}


def train(method: str, preset: str, run_dir: Path, steps: int, sets: list[str], seed: int = 1337) -> dict:
    cmd = [sys.executable, "-m", "textdiffusion", "train", "--method", method, "--preset", preset,
           "--steps", str(steps), "--run-dir", str(run_dir), "--seed", str(seed), "--no-progress"]
    if sets:
        cmd += ["--set", *sets]
    info = run(cmd)
    final = json.loads((run_dir / "final.json").read_text())
    return {**final, "wall_s": info["wall_s"], "peak_rss_mb": info["peak_rss_mb"], "command": " ".join(cmd[2:])}
