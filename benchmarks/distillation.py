"""A few-step student by self-distillation through time (SDTT), against `ar` at batch 1 and its teacher's quality.

    python benchmarks/distillation.py [--teacher runs/masked] [--ar runs/ar] [--runs runs/distill]
                                      [--rounds 32 16 8 4] [--round-steps 500 300] [--extra-round 8:4]
                                      [--samples 128]

The teacher (`masked`, cpu preset, 2,000 steps) and `ar` (same) are trained first unless their directories hold
finished runs. Each round trains a student of the previous round's model with `train --distill-from` (its steps
halved: 64 -> 32 -> 16 -> ...), kept and reused when it finished. Then, in this one process:

* speed: chars/s at batch 1 of a sample of one context (64 chars), `ar` and each model timed in turn, round after
  round (so the load of a shared machine falls on all of them alike);
* quality: judge perplexity, character entropy and word validity of `--samples` samples at temperature 1, and at
  the temperature whose character entropy is within 0.1 bits of the teacher's at its usual steps (bisection).

`--extra-round 8:4` adds a student of 8 steps taught by the 16-step one with ``train.distill_draws=4`` (each
target averaged over 4 runs of the teacher). The undistilled teacher at each student's steps is the baseline
distillation must beat. Writes
benchmarks/results/distillation.json and distillation.md (the command beside the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import machine, run

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 64  # one cpu-preset context
ENTROPY_TOLERANCE = 0.1  # bits: the "at the teacher's entropy"


def train_if_missing(run_dir: Path, args: list[str]) -> None:
    """Train ``run_dir`` with ``textdiffusion train ARGS`` unless it holds a finished run (final.json)."""
    if (run_dir / "final.json").exists():
        print(f"reusing {run_dir}", flush=True)
        return
    cmd = [sys.executable, "-m", "textdiffusion", "train", *args, "--run-dir", str(run_dir), "--no-progress"]
    print("training: textdiffusion " + " ".join(cmd[3:]), flush=True)
    run(cmd)


def timed(model, steps: int, n: int, seed: int) -> tuple[float, int]:
    """Seconds and characters of ``n`` samples of LENGTH at batch 1."""
    from textdiffusion.evaluate import generate
    from textdiffusion.methods import SampleRequest

    req = SampleRequest(n=n, length=LENGTH, sampler="" if model.method.name == "ar" else "ancestral", steps=steps)
    with torch.no_grad():
        _, speed = generate(model, req, seed, batch=1)
    return speed["seconds"], round(speed["sample_chars_per_s"] * speed["seconds"])


class Reference:
    """What samples are scored against: the judge and word list of the training split (``ref``) and the held-out
    text the n-gram distance compares them with."""

    def __init__(self, train_text: str, held_out: str):
        from textdiffusion.evaluate import TrainingReference

        self.training, self.held_out = TrainingReference(train_text), held_out

    def quality(self, texts: list[str]) -> dict:
        from textdiffusion.sample_distance import sample_distance

        distance = sample_distance(texts, self.held_out)
        return {**self.training.quality(texts), "ngram_js": distance.js_bits, "ngram_js_floor": distance.floor_bits}


def quality(model, ref: Reference, steps: int, samples: int, temperature: float) -> dict:
    from textdiffusion.evaluate import generate
    from textdiffusion.methods import SampleRequest

    sampler = "" if model.method.name == "ar" else "ancestral"
    req = SampleRequest(n=samples, length=LENGTH, sampler=sampler, steps=steps, temperature=temperature)
    with torch.no_grad():
        texts, _ = generate(model, req, 0, batch=64)
    return {"temperature": temperature, **ref.quality(texts), "example": texts[0]}


def at_entropy(model, ref: Reference, steps: int, samples: int, target: float, first: dict) -> dict:
    """Quality at the temperature whose character entropy is within ENTROPY_TOLERANCE of ``target`` (bisection on
    the temperature, which raises entropy monotonically here); ``first`` is the temperature-1 point."""
    if abs(first["char_entropy"] - target) <= ENTROPY_TOLERANCE:
        return first
    lo, hi = (0.5, 1.0) if first["char_entropy"] > target else (1.0, 2.0)
    best = first
    for _ in range(6):
        point = quality(model, ref, steps, samples, round((lo + hi) / 2, 4))
        if abs(point["char_entropy"] - target) < abs(best["char_entropy"] - target):
            best = point
        if abs(point["char_entropy"] - target) <= ENTROPY_TOLERANCE:
            return point
        lo, hi = (point["temperature"], hi) if point["char_entropy"] < target else (lo, point["temperature"])
    return best


def markdown(result: dict, cmd: str) -> str:
    ar = result["ar"]
    teacher = result["rows"][0]
    lines = [
        "## A few-step student: self-distillation through time (`masked`, cpu preset)",
        "",
        f"`{cmd}`",
        "",
        f"{result['machine']}. Speed: chars/s at batch 1, a {LENGTH}-character sample, each model and `ar` timed in "
        f"turn in one process ({result['speed_turns']} turns of {result['speed_samples']} samples); the machine "
        f"was shared with other jobs, so absolute rates are low, ratios to `ar` hold. Quality: {result['samples']} "
        f"samples at batch 64, judge = character 5-gram of the training split; 'at H' = at the temperature whose "
        f"character entropy is within {ENTROPY_TOLERANCE} bits of the teacher's at its usual steps "
        f"({teacher['t1']['char_entropy']:.2f} bits).",
        "",
        f"`ar`: {ar['chars_s']:,.0f} chars/s; judge ppl {ar['t1']['judge_ppl']:.1f}, entropy "
        f"{ar['t1']['char_entropy']:.2f} bits, word validity {ar['t1']['word_validity']:.2f}, n-gram JS "
        f"{ar['t1']['ngram_js']:.3f} bits (real text of the same size: {ar['t1']['ngram_js_floor']:.3f}; "
        f"`textdiffusion.sample_distance`, orders 1-4).",
        "",
        "| model | steps | chars/s (x ar) | ppl T=1 | H T=1 | valid T=1 | JS T=1 | T at H | ppl at H (x teacher) | H | "
        "valid | JS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = teacher["at_h"]["judge_ppl"]
    for r in result["rows"]:
        t1, h = r["t1"], r["at_h"]
        lines.append(f"| {r['label']} | {r['steps']} | {r['chars_s']:,.0f} ({r['chars_s'] / ar['chars_s']:.2f}x) | "
                     f"{t1['judge_ppl']:.1f} | {t1['char_entropy']:.2f} | {t1['word_validity']:.2f} | "
                     f"{t1['ngram_js']:.3f} | {h['temperature']:.2f} | {h['judge_ppl']:.1f} "
                     f"({h['judge_ppl'] / base:.2f}x) | {h['char_entropy']:.2f} | {h['word_validity']:.2f} | "
                     f"{h['ngram_js']:.3f} |")
    students = [r for r in result["rows"] if r["label"].startswith("student")]
    met = [r["label"] for r in students if r["chars_s"] >= 2 * ar["chars_s"] and r["at_h"]["judge_ppl"] <= 1.2 * base]
    lines += ["", "Target (a student >= 2x `ar`'s chars/s with judge perplexity <= 1.2x the teacher's at its "
                  f"entropy): {'met by ' + ', '.join(met) if met else 'not met'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="runs/masked", help="a masked run (trained here, cpu preset, if missing)")
    p.add_argument("--ar", default="runs/ar", help="an ar run (trained here, cpu preset, if missing)")
    p.add_argument("--runs", default="runs/distill", help="where the rounds' students go")
    p.add_argument("--rounds", type=int, nargs="+", default=[32, 16, 8, 4], help="the students' steps, in order")
    p.add_argument("--round-steps", type=int, nargs="+", default=[500],
                   help="training steps of each round (the last repeats for the rounds after)")
    p.add_argument("--set", dest="sets", nargs="*", default=["train.lr=3e-4", "train.warmup=50"],
                   help="config fields of every round")
    p.add_argument("--extra-round", metavar="STEPS:DRAWS", nargs="*", default=[],
                   help="also a student of STEPS from the round of twice as many, with train.distill_draws=DRAWS")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--speed-turns", type=int, default=4)
    p.add_argument("--speed-samples", type=int, default=4)
    args = p.parse_args()
    cmd = "python benchmarks/distillation.py " + " ".join(sys.argv[1:])
    teacher_dir, ar_dir, runs = Path(args.teacher), Path(args.ar), Path(args.runs)
    train_if_missing(teacher_dir, ["--method", "masked", "--preset", "cpu"])
    train_if_missing(ar_dir, ["--method", "ar", "--preset", "cpu"])
    previous, students = teacher_dir, []
    for i, steps in enumerate(args.rounds):
        student = runs / f"masked-s{steps}"
        length = args.round_steps[min(i, len(args.round_steps) - 1)]
        train_if_missing(student, ["--distill-from", str(previous), "--steps", str(length),
                                   "--set", f"train.distill_steps={steps}", *args.sets])
        students.append((student, steps))
        previous = student
    for extra in args.extra_round:
        steps, draws = (int(v) for v in extra.split(":"))
        parent = runs / f"masked-s{2 * steps}" if 2 * steps in args.rounds else teacher_dir
        student = runs / f"masked-s{steps}-k{draws}"
        train_if_missing(student, ["--distill-from", str(parent), "--steps", str(args.round_steps[-1]),
                                   "--set", f"train.distill_steps={steps}", f"train.distill_draws={draws}",
                                   *args.sets])
        students.append((student, steps))

    from textdiffusion.evaluate import run_corpus
    from textdiffusion.runs import open_run

    torch.set_num_threads(1)
    ar = open_run(ar_dir, device="cpu")
    teacher = open_run(teacher_dir, device="cpu")
    usual = teacher.method.default_steps(LENGTH)
    # (label, model, steps): the teacher at its usual steps first, then each student beside the teacher at its steps
    points = [("teacher", teacher, usual)]
    for student_dir, steps in students:
        if not any(label == f"teacher, {steps} steps" for label, _, _ in points):
            points.append((f"teacher, {steps} steps", teacher, steps))
        points.append((f"student {student_dir.name}", open_run(student_dir, device="cpu"), steps))
    # speed: alternate ar and every point, so load falls on all alike
    clock = {label: [0.0, 0] for label, _, _ in points} | {"ar": [0.0, 0]}
    for model, steps in [(ar, 0)] + [(m, s) for _, m, s in points]:
        timed(model, steps, 1, 99)  # warm-up
    for turn in range(args.speed_turns):
        for label, model, steps in [("ar", ar, 0), *points]:
            seconds, chars = timed(model, steps, args.speed_samples, turn)
            clock[label][0] += seconds
            clock[label][1] += chars
        print(f"speed turn {turn + 1}/{args.speed_turns}", flush=True)
    rate = {label: chars / seconds for label, (seconds, chars) in clock.items()}

    data, text, _ = run_corpus(teacher)
    ref = Reference(data.train_text, text[len(data.train_text):])
    ar_t1 = quality(ar, ref, 0, args.samples, 1.0)
    result = {"machine": machine(), "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "length": LENGTH, "samples": args.samples, "speed_turns": args.speed_turns,
              "speed_samples": args.speed_samples, "round_steps": args.round_steps,
              "ar": {"run": str(ar_dir), "chars_s": rate["ar"], "t1": ar_t1}, "rows": []}
    target_h = None
    for label, model, steps in points:
        t1 = quality(model, ref, steps, args.samples, 1.0)
        target_h = t1["char_entropy"] if target_h is None else target_h
        h = at_entropy(model, ref, steps, args.samples, target_h, t1)
        row = {"label": label, "run": str(model.path), "steps": steps, "chars_s": rate[label], "t1": t1, "at_h": h}
        result["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("label", "steps", "chars_s")} |
                         {"ppl_t1": t1["judge_ppl"], "H_t1": t1["char_entropy"], "T": h["temperature"],
                          "ppl_at_h": h["judge_ppl"], "H": h["char_entropy"]}), flush=True)
    out = ROOT / "benchmarks" / "results"
    (out / "distillation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "distillation.md").write_text(markdown(result, cmd))
    print(markdown(result, cmd))


if __name__ == "__main__":
    main()
