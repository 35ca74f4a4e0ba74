"""Block diffusion against `ar` and `masked`, side by side in one run: bound, sample quality and speed.

    python benchmarks/block_table.py [--preset cpu] [--steps 2000] [--blocks 1 2 4 8 16 64] [--budget-blocks 4 16]

Trains (fresh process each) `ar`, `masked` and `block` at every block size for the same number of steps and
seed, and `block` at ``--budget-blocks`` for `ar`'s training seconds (block training forwards 2L positions, so
the equal-time comparison matters). Then, for every run and for its default and the `confidence` sampler:
64 samples of one context at batch 64 (quality: judge perplexity, word validity, distinct-2, repetition,
character entropy; speed) and 16 samples at batch 1 (speed). Validation is each run's final.json: the whole
validation split, EMA weights. Writes benchmarks/results/block_table.json and the table into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from common import machine, train
from cpu_ar_vs_masked import write_section

ROOT = Path(__file__).resolve().parents[1]


def measure(run_dir: Path, samplers: list[str], ref, length: int, seed: int = 0) -> list[dict]:
    from textdiffusion.evaluate import generate
    from textdiffusion.methods import SampleRequest
    from textdiffusion.runs import open_run

    run = open_run(run_dir, device="cpu")
    out = []
    for sampler in samplers:
        if sampler not in run.method.samplers:
            continue
        row: dict = {"sampler": sampler}
        with torch.no_grad():
            texts, fast = generate(run, SampleRequest(n=64, length=length, sampler=sampler), seed, batch=64)
            row.update(ref.quality(texts))
            row.update({"chars_s_b64": fast["sample_chars_per_s"], "nfe": fast["nfe_per_sample"],
                        "example": texts[0]})
            _, slow = generate(run, SampleRequest(n=16, length=length, sampler=sampler), seed, batch=1)
            row.update({"chars_s_b1": slow["sample_chars_per_s"], "nfe_b1": slow["nfe_per_sample"]})
        out.append(row)
    return out


def markdown(rows: list[dict], cmd: str, reference: dict) -> str:
    head = ("| run | train s | val nats/char | × ar | kind | sampler | judge ppl | word validity | distinct-2 | "
            "repetition | char entropy | NFE | chars/s batch 1 | chars/s batch 64 |\n"
            "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    ar_nats = next(r["val_nats"] for r in rows if r["label"].startswith("ar"))
    lines = []
    for r in rows:
        for i, s in enumerate(r["samplers"]):
            first = i == 0
            lines.append(
                f"| {r['label'] if first else ''} | {r['train_s']:.0f} | {r['val_nats']:.4f} | "
                f"{r['val_nats'] / ar_nats:.3f} | {r['val_kind']} | {s['sampler']} | {s['judge_ppl']:.1f} | "
                f"{s['word_validity']:.3f} | {s['distinct_2']:.3f} | {s['repetition']:.3f} | "
                f"{s['char_entropy']:.3f} | {s['nfe']:.0f} | {s['chars_s_b1']:,.0f} | {s['chars_s_b64']:,.0f} |"
                if first else
                f"| | | | | | {s['sampler']} | {s['judge_ppl']:.1f} | {s['word_validity']:.3f} | "
                f"{s['distinct_2']:.3f} | {s['repetition']:.3f} | {s['char_entropy']:.3f} | {s['nfe']:.0f} | "
                f"{s['chars_s_b1']:,.0f} | {s['chars_s_b64']:,.0f} |")
    ref = (f"Real validation text (64 windows of one context): judge ppl {reference['judge_ppl']:.2f}, word "
           f"validity {reference['word_validity']:.3f}, distinct-2 {reference['distinct_2']:.3f}, repetition "
           f"{reference['repetition']:.3f}, char entropy {reference['char_entropy']:.3f} bits.")
    return (f"Command: `{cmd}`  \nMachine: {machine()}  \nValidation: the whole validation split, EMA weights "
            f"(exact for `ar`; for `masked` and `block` the NELBO with 16 stratified time samples per window, a "
            f"bound). Samples: temperature 1, one context each, seed 0; quality from 64 samples at batch 64; NFE "
            f"per sample (for `block`: denoising steps of every block plus one forward per finished block and "
            f"any prefix re-encoding).\n\n" + head + "\n".join(lines) + "\n\n- " + ref + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    p.add_argument("--budget-blocks", type=int, nargs="*", default=[4, 16])
    p.add_argument("--runs", default="runs/bench-block")
    p.add_argument("--measure-only", action="store_true",
                   help="reuse the trained runs in --runs (their final.json) and only measure sampling again")
    args = p.parse_args()
    cmd = "python benchmarks/block_table.py " + " ".join(sys.argv[1:])
    from textdiffusion.evaluate import TrainingReference, reference_windows, run_corpus
    from textdiffusion.runs import open_run

    runs: list[tuple[str, str, Path, dict]] = []  # label, method, run dir, training summary

    def fresh(method: str, name: str, steps: int, sets: list[str], label: str) -> dict:
        rd = Path(args.runs) / name
        if args.measure_only:
            tr = json.loads((rd / "final.json").read_text())
            runs.append((label, method, rd, tr))
            return tr
        shutil.rmtree(rd, ignore_errors=True)
        tic = time.perf_counter()
        tr = train(method, args.preset, rd, steps, sets)
        print(f"{label}: {tr.get('val_nats', float('nan')):.4f} nats/char, {time.perf_counter() - tic:.0f} s",
              flush=True)
        runs.append((label, method, rd, tr))
        return tr

    ar = fresh("ar", "ar", args.steps, [], f"ar, {args.steps} steps")
    fresh("masked", "masked", args.steps, [], f"masked, {args.steps} steps")
    for b in args.blocks:
        fresh("block", f"block{b}", args.steps, [f"method.block_size={b}"], f"block B={b}, {args.steps} steps")
    budget = ar["elapsed"]
    if args.measure_only:  # the budget runs were labelled with the budget they were given
        budget = json.loads((Path(args.runs) / f"block{args.budget_blocks[0]}-budget" / "config.json").read_text())[
            "config"]["train"]["time_budget_s"] if args.budget_blocks else budget
    for b in args.budget_blocks:
        per_step = next(tr["elapsed"] / tr["step"] for label, m, rd, tr in runs if rd.name == f"block{b}")
        steps = max(1, int(budget / per_step))
        fresh("block", f"block{b}-budget", steps, [f"method.block_size={b}", f"train.time_budget_s={budget}"],
              f"block B={b}, {budget:.0f} s (= ar's)")

    first = open_run(runs[0][2], device="cpu")
    data, text, _ = run_corpus(first)
    ref = TrainingReference(data.train_text)
    length = first.cfg.model.context
    reference = ref.quality(reference_windows(text, len(data.train_text), length, 64))
    rows = []
    for label, method, rd, tr in runs:
        samplers = ["ancestral"] if method == "ar" else ["ancestral", "confidence"]
        rows.append({"label": label, "method": method, "run": str(rd), "steps": tr["step"], "train_s": tr["elapsed"],
                     "val_nats": tr["val_nats"], "val_kind": "exact" if tr["val_kind"] == "exact" else "bound",
                     "samplers": measure(rd, samplers, ref, length)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samplers"}), flush=True)
    out = ROOT / "benchmarks" / "results" / "block_table.json"
    out.write_text(json.dumps({"rows": rows, "reference": reference, "command": cmd}, indent=1) + "\n")
    write_section(ROOT / "BENCHMARKS.md", "block-table", markdown(rows, cmd, reference))


if __name__ == "__main__":
    main()
