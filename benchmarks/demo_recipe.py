"""What the demo's two runs write: the block-diffusion model's samples against the ar model it started from.

Runs `textdiffusion demo` (or reuses a finished one in --runs), then scores 64 samples of each run at
temperature 1 with the project's judge (`textdiffusion eval`): judge perplexity, character entropy, word
validity and the n-gram distance from held-out text where the evaluation has it; the block run with each
sampler listed. The demo's target: its diffusion samples reach word validity >= 0.8x its ar's.

    python benchmarks/demo_recipe.py [--runs runs/demo-bench] [--steps 1500] [--samples 64]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from common import machine, run
from textdiffusion.evaluate import evaluate_text
from textdiffusion.records import TextEval, TrainSummary

# the block run's samplers: the demo's (one character per step, left to right in each block, the exact
# likelihood's sampler) and the two that reveal several positions at once
SAMPLERS = (("left_to_right", 0), ("ancestral", 0), ("confidence", 0))


def demo(runs: Path, steps: int) -> float | None:
    """Run the demo into ``runs`` unless both of its runs are finished; its wall time (None when reused)."""
    if all(TrainSummary.read(runs / name) is not None for name in ("ar", "block")):
        return None
    tic = time.perf_counter()
    run([sys.executable, "-m", "textdiffusion", "demo", "--steps", str(steps), "--run-dir", str(runs)])
    return time.perf_counter() - tic


def row(name: str, ev: TextEval, ar: TextEval) -> str:
    q = ev.quality
    assert q is not None and ar.quality is not None
    dist = f"{ev.distance.js_bits:.3f} ({ev.distance.floor_bits:.3f})" if ev.distance is not None else "-"
    return (f"| {name} | {ev.samples.steps} | {q.judge_ppl:.1f} | {q.char_entropy:.2f} | {q.word_validity:.3f} | "
            f"{q.word_validity / ar.quality.word_validity:.2f}x | {dist} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/demo-bench"), help="the demo's run folder")
    ap.add_argument("--steps", type=int, default=1500, help="the demo's total training steps")
    ap.add_argument("--samples", type=int, default=64, help="samples per row")
    args = ap.parse_args()
    wall = demo(args.runs, args.steps)
    common = dict(samples=args.samples, seed=0, val_windows=0, progress=False)
    ar = evaluate_text(args.runs / "ar", **common)
    rows = [row("ar", ar, ar)]
    results = {"ar": {"samples": ar.samples.to_json(), "quality": ar.quality.to_json() if ar.quality else None}}
    for sampler, steps in SAMPLERS:
        ev = evaluate_text(args.runs / "block", sampler=sampler, steps=steps, **common)
        rows.append(row(f"block, {sampler}", ev, ar))
        results[sampler] = {"samples": ev.samples.to_json(), "quality": ev.quality.to_json() if ev.quality else None}
    reference = ar.reference
    assert reference is not None
    command = shlex.join(["python", "benchmarks/demo_recipe.py", "--runs", str(args.runs), "--steps",
                          str(args.steps), "--samples", str(args.samples)])
    took = f"the demo took {wall:.0f} s" if wall else "the runs of an earlier demo, reused"
    table = "\n".join([
        f"`{command}` ({machine()}; {took})", "",
        f"{args.samples} samples of 64 characters each, temperature 1, seed 0; real validation text scores judge "
        f"perplexity {reference.judge_ppl:.1f}, entropy {reference.char_entropy:.2f} bits, word validity "
        f"{reference.word_validity:.3f}.", "",
        "| run, sampler | steps | judge ppl | entropy (bits) | word validity | vs ar | n-gram JS (real floor) |",
        "|---|---|---|---|---|---|---|", *rows])
    print(table)
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_recipe.md").write_text(table + "\n")
    (out / "demo_recipe.json").write_text(json.dumps({"command": command, "machine": machine(), "wall_s": wall,
                                                      "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
