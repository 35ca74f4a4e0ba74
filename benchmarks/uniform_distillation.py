"""A few-step `uniform` student by Discrete Consistency Distillation, against its teacher and `masked`.

    python benchmarks/uniform_distillation.py [--teacher runs/uniform] [--masked runs/masked] [--runs runs/duo]
                                              [--rounds 32 16 8] [--round-steps 500 300] [--grid 4 8 16 32 64]
                                              [--samples 128]

The teacher (`uniform`, cpu preset, 2,000 steps, sampled with 64 steps) and `masked` (same) are trained first
unless their directories hold finished runs. Each round trains a student of the previous round's model with
`train --distill-from` (its steps halved: 64 -> 32 -> 16 -> 8), kept and reused when it finished. Then, in this
one process:

* speed: chars/s at batch 64 of one context, the teacher at its 64 steps and the last student at its steps,
  timed in turn (so the load of a shared machine falls on both alike);
* quality over the step grid: judge perplexity, character entropy, word validity and the n-gram distance from
  held-out text of ``--samples`` samples at temperature 1, for the teacher, the last student and `masked` at
  every step count of ``--grid``, and every round's student at its own steps;
* the target: the last student at its steps against the teacher at 64, at temperature 1 and, where their
  entropies differ by more than 0.1 bits, at the temperature that brings the student's within 0.1 bits.

Writes benchmarks/results/uniform_distillation.json and .md (the command beside the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import machine
from distillation import ENTROPY_TOLERANCE, Reference, at_entropy, quality, train_if_missing

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 64  # one cpu-preset context
BATCH = 64


def speed(model, steps: int, turn: int) -> tuple[float, int]:
    """Seconds and characters of one batch of BATCH samples of LENGTH."""
    from textdiffusion.evaluate import generate
    from textdiffusion.methods import SampleRequest

    req = SampleRequest(n=BATCH, length=LENGTH, sampler="ancestral", steps=steps)
    with torch.no_grad():
        _, measured = generate(model, req, turn, batch=BATCH)
    return measured["seconds"], round(measured["sample_chars_per_s"] * measured["seconds"])


def cell(q: dict) -> str:
    return f"{q['judge_ppl']:.1f} / {q['char_entropy']:.2f} / {q['word_validity']:.2f} / {q['ngram_js']:.3f}"


def markdown(result: dict, cmd: str) -> str:
    grid = result["grid"]
    lines = [
        "## A few-step `uniform` student: Discrete Consistency Distillation (cpu preset)",
        "",
        f"`{cmd}`",
        "",
        f"{result['machine']}; the machine was shared with other jobs, so absolute rates are low and only the "
        f"ratio of two rates timed in turn holds. {result['samples']} samples of {LENGTH} characters per cell at "
        f"temperature 1, the ancestral sampler, seed 0; each cell: judge perplexity / character entropy (bits) / "
        f"word validity / n-gram JS from held-out text (bits; real text of the same size: "
        f"{result['js_floor']:.3f}).",
        "",
        "| model | " + " | ".join(f"{s} steps" for s in grid) + " |",
        "|---|" + "---:|" * len(grid),
    ]
    for row in result["grid_rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(cell(row['by_steps'][str(s)]) if str(s) in row['by_steps']
                                                        else "" for s in grid) + " |")
    lines += ["", "Each round's student at its own steps:", "", "| student | steps | ppl / H / valid / JS |",
              "|---|---:|---|"]
    for r in result["rounds"]:
        lines.append(f"| {r['label']} | {r['steps']} | {cell(r['t1'])} |")
    t = result["target"]
    lines += ["", f"Speed at batch {BATCH}: the teacher at {t['teacher_steps']} steps {t['teacher_chars_s']:,.0f} "
                  f"chars/s, the student at {t['student_steps']} steps {t['student_chars_s']:,.0f} chars/s "
                  f"({t['speedup']:.2f}x; timed in turn, {result['speed_turns']} batches each).",
              "",
              f"Target (the {t['student_steps']}-step student: judge perplexity <= the teacher's at "
              f"{t['teacher_steps']} steps, entropy within {ENTROPY_TOLERANCE} bits, >= 4x its chars/s): "
              f"teacher {t['teacher']['judge_ppl']:.1f} at {t['teacher']['char_entropy']:.2f} bits; student "
              f"{t['student']['judge_ppl']:.1f} at {t['student']['char_entropy']:.2f} bits (temperature "
              f"{t['student']['temperature']:.2f}): {'met' if t['met'] else 'not met'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="runs/uniform", help="a uniform run (trained here, cpu preset, if missing)")
    p.add_argument("--masked", default="runs/masked", help="a masked run (trained here, cpu preset, if missing)")
    p.add_argument("--runs", default="runs/duo", help="where the rounds' students go")
    p.add_argument("--rounds", type=int, nargs="+", default=[32, 16, 8], help="the students' steps, in order")
    p.add_argument("--round-steps", type=int, nargs="+", default=[500, 300],
                   help="training steps of each round (the last repeats for the rounds after)")
    p.add_argument("--set", dest="sets", nargs="*", default=["train.lr=3e-4", "train.warmup=50"],
                   help="config fields of every round")
    p.add_argument("--grid", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="sampling steps to score")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--speed-turns", type=int, default=3)
    args = p.parse_args()
    cmd = "python benchmarks/uniform_distillation.py " + " ".join(sys.argv[1:])
    teacher_dir, masked_dir, runs = Path(args.teacher), Path(args.masked), Path(args.runs)
    train_if_missing(teacher_dir, ["--method", "uniform", "--preset", "cpu", "--set", "method.sample_steps=64"])
    train_if_missing(masked_dir, ["--method", "masked", "--preset", "cpu"])
    previous, students = teacher_dir, []
    for i, steps in enumerate(args.rounds):
        student = runs / f"uniform-s{steps}"
        length = args.round_steps[min(i, len(args.round_steps) - 1)]
        train_if_missing(student, ["--distill-from", str(previous), "--steps", str(length),
                                   "--set", f"train.distill_steps={steps}", *args.sets])
        students.append((student, steps))
        previous = student

    from textdiffusion.evaluate import run_corpus
    from textdiffusion.runs import open_run

    torch.set_num_threads(1)
    teacher = open_run(teacher_dir, device="cpu")
    masked = open_run(masked_dir, device="cpu")
    opened = [(d.name, open_run(d, device="cpu"), s) for d, s in students]
    last_label, last, last_steps = opened[-1]
    teacher_steps = teacher.method.default_steps(LENGTH)

    clock = {"teacher": [0.0, 0], "student": [0.0, 0]}
    speed(teacher, teacher_steps, 99), speed(last, last_steps, 99)  # warm-up
    for turn in range(args.speed_turns):
        for label, model, steps in (("teacher", teacher, teacher_steps), ("student", last, last_steps)):
            seconds, chars = speed(model, steps, turn)
            clock[label][0] += seconds
            clock[label][1] += chars
        print(f"speed turn {turn + 1}/{args.speed_turns}", flush=True)
    rate = {label: chars / seconds for label, (seconds, chars) in clock.items()}

    data, text, _ = run_corpus(teacher)
    ref = Reference(data.train_text, text[len(data.train_text):])
    grid_rows = []
    for label, model in (("uniform teacher", teacher), (f"student {last_label}", last), ("masked", masked)):
        by_steps = {}
        for steps in args.grid:
            by_steps[str(steps)] = quality(model, ref, steps, args.samples, 1.0)
            print(json.dumps({"model": label, "steps": steps} | {k: by_steps[str(steps)][k] for k in
                             ("judge_ppl", "char_entropy", "word_validity", "ngram_js")}), flush=True)
        grid_rows.append({"label": label, "run": str(model.path), "by_steps": by_steps})
    rounds = [{"label": label, "run": str(model.path), "steps": steps,
               "t1": quality(model, ref, steps, args.samples, 1.0)} for label, model, steps in opened]

    mine = grid_rows[0]["by_steps"].get(str(teacher_steps)) or quality(teacher, ref, teacher_steps, args.samples, 1.0)
    theirs = quality(last, ref, last_steps, args.samples, 1.0)
    student_h = at_entropy(last, ref, last_steps, args.samples, mine["char_entropy"], theirs)
    met = (student_h["judge_ppl"] <= mine["judge_ppl"]
           and abs(student_h["char_entropy"] - mine["char_entropy"]) <= ENTROPY_TOLERANCE
           and rate["student"] >= 4 * rate["teacher"])
    result = {"machine": machine(), "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "length": LENGTH, "samples": args.samples, "grid": args.grid, "speed_turns": args.speed_turns,
              "round_steps": args.round_steps, "sets": args.sets, "js_floor": mine["ngram_js_floor"],
              "grid_rows": grid_rows, "rounds": rounds,
              "target": {"teacher_steps": teacher_steps, "student_steps": last_steps, "teacher": mine,
                         "student_t1": theirs, "student": student_h, "teacher_chars_s": rate["teacher"],
                         "student_chars_s": rate["student"], "speedup": rate["student"] / rate["teacher"],
                         "met": met}}
    out = ROOT / "benchmarks" / "results"
    (out / "uniform_distillation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "uniform_distillation.md").write_text(markdown(result, cmd))
    print(markdown(result, cmd))


if __name__ == "__main__":
    main()
