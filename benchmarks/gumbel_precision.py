"""Did the float64 categorical draw move any number? The same trained runs, the same seeds, sampled once with
the float32 Gumbel-max draw of 0.1 and once with today's float64 one (Zheng et al. 2024).

    python benchmarks/gumbel_precision.py RUN_DIR... [--seeds 4]

Likelihoods cannot move (no sampling in them); this measures the sample-quality columns. Writes
benchmarks/results/gumbel_precision.json and a section of BENCHMARKS.md.
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


def float32_gumbel(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The draw of textdiffusion 0.1: float32 uniforms, so the Gumbel noise never exceeds about 16.6."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1.0)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--samples", type=int, default=64)
    args = p.parse_args()
    cmd = "python benchmarks/gumbel_precision.py " + " ".join(sys.argv[1:])
    from textdiffusion.diffusion import discrete, tokens
    from textdiffusion.evaluate import TrainingReference, generate, run_corpus
    from textdiffusion.methods import SampleRequest
    from textdiffusion.runs import open_run

    modules = (tokens, discrete)  # every module whose samplers call gumbel_sample by name
    float64 = tokens.gumbel_sample
    rows, ref = [], None
    for path in args.runs:
        run = open_run(path, device="cpu")
        if ref is None:
            data, _, _ = run_corpus(run)
            ref = TrainingReference(data.train_text)
        for label, draw in (("float32", float32_gumbel), ("float64", float64)):
            for module in modules:
                module.gumbel_sample = draw
            try:
                scores = []
                for seed in range(args.seeds):
                    texts, _ = generate(run, SampleRequest(n=args.samples, length=run.cfg.model.context), seed)
                    scores.append(ref.quality(texts))
            finally:
                for module in modules:
                    module.gumbel_sample = float64
            mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("judge_ppl", "word_validity", "distinct_2",
                                                                         "char_entropy")}
            rows.append({"run": path, "method": run.cfg.method.name, "draw": label, **mean})
            print(json.dumps(rows[-1]), flush=True)
    (ROOT / "benchmarks" / "results" / "gumbel_precision.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = "| run | draw | judge ppl | word validity | distinct-2 | char entropy |\n|---|---|---:|---:|---:|---:|\n"
    table += "".join(f"| {r['run']} ({r['method']}) | {r['draw']} | {r['judge_ppl']:.2f} | {r['word_validity']:.3f} | "
                     f"{r['distinct_2']:.3f} | {r['char_entropy']:.3f} |\n" for r in rows)
    text = (f"Command: `{cmd}`  \nMachine: {machine()}  \nMeans over {args.seeds} seeds of {args.samples} samples "
            f"of one context, default sampler, temperature 1, the same models and seeds for both draws.\n\n" + table)
    write_section(ROOT / "BENCHMARKS.md", "gumbel-precision", text)


if __name__ == "__main__":
    main()
