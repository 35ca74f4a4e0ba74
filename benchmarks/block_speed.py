"""Parallel decoding inside a block: fewer denoising steps per block than characters, against `ar`'s speed.

    python benchmarks/block_speed.py [--runs runs/bench-block] [--blocks 4 8 16] [--steps 1 2 4]

For the 2,000-step runs of benchmarks/block_table.py: `ar` (KV cache, one character per forward) and `block`
at each block size with the `confidence` and `topk` samplers at each number of denoising steps per block
(<= B). Speed at batch 1 (16 samples, after one warm-up sample) and quality from 64 samples at batch 64,
temperature 1, one context each. Writes benchmarks/results/block_speed.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import machine
from cpu_ar_vs_masked import write_section

ROOT = Path(__file__).resolve().parents[1]


def point(run, ref, sampler: str, steps: int) -> dict:
    from textdiffusion.evaluate import generate
    from textdiffusion.methods import SampleRequest

    length = run.cfg.model.context
    with torch.no_grad():
        generate(run, SampleRequest(n=1, length=length, sampler=sampler, steps=steps), 99, batch=1)  # warm-up
        _, slow = generate(run, SampleRequest(n=16, length=length, sampler=sampler, steps=steps), 0, batch=1)
        texts, _ = generate(run, SampleRequest(n=64, length=length, sampler=sampler, steps=steps), 0, batch=64)
    return {"sampler": sampler, "steps": steps, "chars_s_b1": slow["sample_chars_per_s"],
            "nfe": slow["nfe_per_sample"], **ref.quality(texts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/bench-block")
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    cmd = "python benchmarks/block_speed.py " + " ".join(sys.argv[1:])
    from textdiffusion.evaluate import TrainingReference, run_corpus
    from textdiffusion.runs import open_run

    ar = open_run(Path(args.runs) / "ar", device="cpu")
    data, _, _ = run_corpus(ar)
    ref = TrainingReference(data.train_text)
    rows = [{"run": "ar", **point(ar, ref, "ancestral", 0)}]
    print(json.dumps(rows[-1]), flush=True)
    for b in args.blocks:
        run = open_run(Path(args.runs) / f"block{b}", device="cpu")
        for sampler in ("confidence", "topk"):
            for steps in sorted({s for s in args.steps if s <= b}):
                rows.append({"run": f"block B={b}", **point(run, ref, sampler, steps)})
                print(json.dumps(rows[-1]), flush=True)
    (ROOT / "benchmarks" / "results" / "block_speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    base = rows[0]
    table = ("| run | sampler | steps per block | NFE | chars/s batch 1 | × ar | judge ppl | × ar | word validity | "
             "distinct-2 | char entropy |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    table += "".join(
        f"| {r['run']} | {r['sampler']} | {r['steps'] or '—'} | {r['nfe']:.0f} | {r['chars_s_b1']:,.0f} | "
        f"{r['chars_s_b1'] / base['chars_s_b1']:.2f} | {r['judge_ppl']:.1f} | "
        f"{r['judge_ppl'] / base['judge_ppl']:.2f} | "
        f"{r['word_validity']:.3f} | {r['distinct_2']:.3f} | {r['char_entropy']:.3f} |\n" for r in rows)
    text = (f"Command: `{cmd}`  \nMachine: {machine()}  \nThe 2,000-step runs of the table above; speed from 16 "
            f"samples at batch 1 after a warm-up, quality from 64 samples at batch 64 (seed 0, temperature 1, one "
            f"context).\n\n" + table)
    write_section(ROOT / "BENCHMARKS.md", "block-speed", text)


if __name__ == "__main__":
    main()
