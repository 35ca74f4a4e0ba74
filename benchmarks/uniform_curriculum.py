"""What Duo's curriculum buys `uniform`: the validation bound at equal training steps, with and without it.

    python benchmarks/uniform_curriculum.py [--runs runs/duo] [--steps 2000] [--curriculum 1000]

Trains (unless their directories hold finished runs) two `uniform` runs of the cpu preset with the same seed:
``RUNS/uniform-cpu-2k`` without the curriculum and ``RUNS/uniform-curriculum-cpu-2k`` with
``method.curriculum_steps=CURRICULUM`` (the tempered-softmax input, its temperature annealed from 0.1 to 0.01,
then the argmax). Both score the same NELBO on the same validation windows (the discrete process: the
curriculum changes only what the network reads during its first steps), every ``train.eval_every`` steps on
128 windows during training, and at the end, here, on the same ``--windows`` evenly spread windows with the
same Monte-Carlo draws (a paired comparison). Writes benchmarks/results/uniform_curriculum.json and .md (the
command beside the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import machine
from distillation import train_if_missing

ROOT = Path(__file__).resolve().parents[1]


def curve(run_dir: Path) -> dict[int, float]:
    """The validation bits per character at each evaluation step of a run (metrics.jsonl's evaluation rows)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["val_bpc"] for r in rows if r.get("kind", "eval") == "eval" and "val_bpc" in r}


def paired_final(runs: dict[str, Path], count: int) -> dict[str, dict]:
    """Each run's validation NELBO on the same ``count`` windows, scored here (EMA weights, the run's own fixed
    Monte-Carlo seed, so both see the same times and noise draws), with the per-window difference's stderr."""
    import torch

    from textdiffusion.data.sources import text_source
    from textdiffusion.evaluate import SCORE_BATCH, run_corpus
    from textdiffusion.runs import open_run

    scores = {}
    for name, path in runs.items():
        run = open_run(path, device="cpu")
        data, _, _ = run_corpus(run)
        windows = text_source(data, run.cfg).val_set(run.method.window, count)
        with torch.no_grad():
            nll = run.method.nll(run.model, windows, batch_size=SCORE_BATCH)
        scores[name] = {"val_bpc": nll.bits_per_unit, "windows": nll.windows,
                        "stderr_bits": nll.details["stderr_nats"] / 0.6931471805599453}
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/duo")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--curriculum", type=int, default=1000, help="method.curriculum_steps of the second run")
    p.add_argument("--windows", type=int, default=512, help="validation windows of the paired final score")
    args = p.parse_args()
    cmd = "python benchmarks/uniform_curriculum.py " + " ".join(sys.argv[1:])
    runs = Path(args.runs)
    common = ["--method", "uniform", "--preset", "cpu", "--steps", str(args.steps), "--set", "method.sample_steps=64"]
    plain, curriculum = runs / "uniform-cpu-2k", runs / "uniform-curriculum-cpu-2k"
    train_if_missing(plain, common)
    train_if_missing(curriculum, [*common, f"method.curriculum_steps={args.curriculum}"])
    finals = {name: json.loads((d / "final.json").read_text()) for name, d in (("plain", plain),
                                                                            ("curriculum", curriculum))}
    curves = {"plain": curve(plain), "curriculum": curve(curriculum)}
    steps = sorted(set(curves["plain"]) & set(curves["curriculum"]))
    result = {"machine": machine(), "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "steps": args.steps, "curriculum_steps": args.curriculum, "curves": curves,
              "elapsed": {k: f["elapsed"] for k, f in finals.items()},
              "final": paired_final({"plain": plain, "curriculum": curriculum}, args.windows)}
    lines = [f"## What Duo's curriculum buys `uniform` (cpu preset, {args.steps:,} steps, same seed)", "", f"`{cmd}`",
             "", f"{result['machine']}; validation NELBO in bits per character (an upper bound), EMA weights. The "
                 f"curriculum run feeds the network softmax(w_t / tau) of the Gaussian view for its first "
                 f"{args.curriculum:,} steps (tau 0.1 -> 0.01), then the argmax.", "",
             "| step | without | with the curriculum | difference |", "|---:|---:|---:|---:|"]
    for s in steps:
        a, b = curves["plain"][s], curves["curriculum"][s]
        lines.append(f"| {s:,} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    fa, fb = result["final"]["plain"], result["final"]["curriculum"]
    lines.append(f"| {args.steps:,}, {fa['windows']} windows | {fa['val_bpc']:.3f} (± {fa['stderr_bits']:.3f}) | "
                 f"{fb['val_bpc']:.3f} (± {fb['stderr_bits']:.3f}) | {fb['val_bpc'] - fa['val_bpc']:+.3f} |")
    ea, eb = result["elapsed"]["plain"], result["elapsed"]["curriculum"]
    lines += ["", f"Training time (the two trained at once on a shared machine): {ea:.0f} s without, {eb:.0f} s with "
                  f"({eb / ea:.2f}x)."]
    out = ROOT / "benchmarks" / "results"
    (out / "uniform_curriculum.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "uniform_curriculum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
