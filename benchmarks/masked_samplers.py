"""Sample quality and speed of every masked-diffusion sampler on one trained run (same model, same seed).

    python benchmarks/masked_samplers.py RUN_DIR [--samples 64]

Scores each sampler's samples with the judge/statistics of `textdiffusion eval` (no validation bound: it does
not depend on the sampler) and writes the table into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json

from common import machine
from cpu_ar_vs_masked import ROOT, write_section
from textdiffusion.data import TextData
from textdiffusion.evaluate import TrainingReference, generate
from textdiffusion.methods.base import SampleRequest
from textdiffusion.runs import open_run

CONFIGS = [("ancestral", 64, 1.0), ("ancestral", 64, 0.8), ("ancestral", 1000, 1.0), ("cached", 1000, 1.0),
           ("topk", 64, 1.0), ("topk", 64, 0.8), ("confidence", 64, 1.0), ("confidence", 16, 0.8),
           ("topk", 16, 0.8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=64)
    args = p.parse_args()
    run = open_run(args.run_dir)
    data = TextData.load(run.cfg.data.corpus, run.tokenizer, run.cfg.data.val_fraction)
    ref = TrainingReference(data.train_text)
    lines = ["| sampler | steps | temperature | judge ppl | word validity | distinct-2 | NFE/sample | sample chars/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for sampler, steps, temp in CONFIGS:
        texts, speed = generate(run, SampleRequest(n=args.samples, sampler=sampler, steps=steps, temperature=temp),
                                seed=0)
        q = ref.quality(texts)
        rows.append({"sampler": sampler, "steps": steps, "temperature": temp, **q, **speed, "example": texts[0]})
        print(json.dumps(rows[-1]), flush=True)
        lines.append(f"| {sampler} | {steps} | {temp} | {q['judge_ppl']:.1f} | {q['word_validity']:.3f} | "
                     f"{q['distinct_2']:.3f} | {speed['nfe_per_sample']:.1f} | {speed['sample_chars_per_s']:,.0f} |")
    text = (f"Command: `python benchmarks/masked_samplers.py {args.run_dir} --samples {args.samples}`  \n"
            f"Machine: {machine()}  \nModel: `{args.run_dir}` (masked, {run.cfg.preset} preset, step {run.step}); "
            f"{args.samples} samples of {run.cfg.model.context} characters, seed 0.\n\n" + "\n".join(lines))
    write_section(ROOT / "BENCHMARKS.md", "masked-samplers", text)


if __name__ == "__main__":
    main()
