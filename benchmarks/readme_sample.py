"""The README's text samples: `masked` and `ar` trained alike at the `cpu` preset, each sampled with a fixed seed.

Both runs get the same preset, steps and training seed, so the two samples compare as the two methods do at
that budget. Each run is trained once (a run directory that already holds a finished run is reused, so the
sampling settings can be changed and the script rerun in seconds); the samples are drawn through the command
line, and the script prints a Markdown block with every command beside what it printed, ready for the README.

    python benchmarks/readme_sample.py [--steps 2000] [--runs runs] [--seed 0]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from common import machine, run
from textdiffusion.records import TrainSummary

PROMPT = "ROMEO:"
# how each method is sampled, both at temperature 1: ar with its one sampler; masked as the demo samples,
# likeliest tokens first in 16 steps (random-order ancestral sampling writes character soup at this size;
# docs/masked-diffusion.md has the measurements)
SAMPLING = {
    "masked": ["--sampler", "confidence", "--steps", "16"],
    "ar": [],
}


def textdiffusion(*args: str) -> list[str]:
    return [sys.executable, "-m", "textdiffusion", *args]


def shown(cmd: list[str]) -> str:
    """A command as a user types it: `textdiffusion ...`, quoted for the shell."""
    return shlex.join(["textdiffusion", *cmd[3:]])


def train(method: str, run_dir: Path, steps: int) -> tuple[list[str], float | None]:
    """Train the run unless it is already finished; the command and its wall time (None when reused)."""
    cmd = textdiffusion("train", "--method", method, "--preset", "cpu", "--steps", str(steps),
                        "--run-dir", str(run_dir), "--no-progress")
    done = TrainSummary.read(run_dir)
    if done is not None:
        if done.step == steps:
            return cmd, None
        raise SystemExit(f"{run_dir} holds a run of {done.step} steps, not {steps}; remove it or pick another --runs")
    tic = time.perf_counter()
    run(cmd)
    return cmd, time.perf_counter() - tic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="training steps of each run")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="where the two runs live")
    ap.add_argument("--seed", type=int, default=0, help="the seed of the samples")
    args = ap.parse_args()
    lines = [f"Made by `python benchmarks/readme_sample.py --steps {args.steps} --seed {args.seed}` on "
             f"{machine()}.", ""]
    for method in ("masked", "ar"):
        run_dir = args.runs / f"readme-{method}"
        train_cmd, wall = train(method, run_dir, args.steps)
        sample_cmd = textdiffusion("sample", str(run_dir), "--prompt", PROMPT, "--seed", str(args.seed),
                                   *SAMPLING[method], "--no-progress")
        text = run(sample_cmd)["stdout"].strip("\n")
        summary = TrainSummary.read(run_dir)
        score = summary.score if summary is not None else None
        took = f"trained in {wall:.0f} s wall" if wall is not None else "trained earlier"
        bpc = f"validation {score.bits:.3f} bits/char, {score.kind}" if score is not None else "no score"
        lines += [f"`{method}` ({took}; {bpc}):",
                  "", "```bash", shown(train_cmd), shown(sample_cmd), "```", "", "```", text, "```", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
