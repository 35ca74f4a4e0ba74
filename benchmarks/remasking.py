"""ReMDM's remasking against the ancestral sampler at equal network evaluations, on one trained masked run (and
a block run): does remasking score better, and keep improving with steps?

    python benchmarks/remasking.py [--runs runs/remasking] [--steps 64 128 256 512] [--samples 64]
                                   [--methods masked block4] [--samplers ancestral cap rescale loop]
                                   [--train-steps 2000]

Trains each run with `textdiffusion train --preset cpu` unless its directory already holds a finished run (so a
second call reuses it), then draws ``--samples`` samples of one context at every step count with: ancestral, and
remdm cap, rescale and loop at the paper's recommended eta (temperature 1, no nucleus; the same seed for every
sampler). The ancestral samples are drawn by the `cached` sampler: the same texts from the same seed in fewer
evaluations, a saving the table does not count. A step count is network evaluations per sample for masked, and
per sample over all blocks for block (steps per block = steps / blocks). Samples are kept in RUNS/samples/ (a
killed benchmark resumes there, and scoring again after a metric changes draws nothing), then scored: judge
perplexity, character entropy, word validity, and the distance of their character n-gram distributions from
held-out text (:mod:`textdiffusion.sample_distance`: Jensen-Shannon, bits, orders 1-4), with the value a second
slice of real held-out text of the same size reaches (the floor) beside it.
Writes benchmarks/results/remasking.json and remasking.md (the table with this command).
Run with OMP_NUM_THREADS=1 on a shared machine; times are not reported, only evaluations.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from common import machine, train

ROOT = Path(__file__).resolve().parents[1]
# (label, --set options) of each sampler; the paper's eta for each schedule (OpenWebText, 1,024 tokens)
SAMPLERS: dict[str, tuple[str, str, list[str]]] = {
    "ancestral": ("ancestral", "cached", []),
    "cap": ("remdm cap eta=0.008", "remdm", ["method.remdm_schedule=cap", "method.remdm_eta=0.008"]),
    "rescale": ("remdm rescale eta=0.015", "remdm", ["method.remdm_schedule=rescale", "method.remdm_eta=0.015"]),
    "loop": ("remdm loop eta=0.02", "remdm", ["method.remdm_schedule=loop", "method.remdm_eta=0.02",
                                               "method.remdm_t_on=0.55", "method.remdm_t_off=0.05",
                                               "method.remdm_alpha_on=0.9"]),
    # five times the paper's loop eta: more remasking, for a model whose conditionals are far weaker than its
    "loop-eta0.1": ("remdm loop eta=0.1", "remdm", ["method.remdm_schedule=loop", "method.remdm_eta=0.1"]),
}
# run name -> (method, its --set options)
RUNS = {"masked": ("masked", []), "block4": ("block", ["method.block_size=4"])}


@dataclass
class Row:
    run: str
    sampler: str
    steps: int  # network evaluations the request asked for, per sample
    nfe: float  # network evaluations the sampler spends per sample (ancestral: steps, see the docstring)
    judge_ppl: float
    char_entropy: float
    word_validity: float
    distance: float  # the n-gram JS distance from held-out text, bits
    floor: float  # what real held-out text of the same size reaches
    example: str


def ensure_run(runs: Path, name: str, train_steps: int) -> Path:
    """The run directory, trained now unless its checkpoint has all its steps already (a finished run, or one
    whose end-of-training score is still running: sampling needs only the weights)."""
    from textdiffusion.checkpoint import read_header

    path = runs / name
    if (path / "final.json").exists() or ((path / "config.json").exists() and read_header(path).step >= train_steps):
        return path
    method, sets = RUNS[name]
    print(f"training {name} ({train_steps} steps)...", file=sys.stderr, flush=True)
    train(method, "cpu", path, train_steps, sets)
    return path


def draw(run_dir: Path, store: Path, label: str, sampler: str, sets: list[str], steps: int, n: int,
         seed: int = 0) -> dict:
    """``n`` samples (cached in ``store``): their texts and network evaluations per sample."""
    key = store / f"{label.replace(' ', '_').replace('=', '')}-{steps}{f'-seed{seed}' if seed else ''}.json"
    if key.exists():
        return json.loads(key.read_text())
    from textdiffusion.evaluate import generate
    from textdiffusion.methods.base import SampleRequest
    from textdiffusion.runs import open_run

    run = open_run(run_dir, device="cpu", overrides=sets)
    blocks = run.cfg.model.context // getattr(run.method, "B", run.cfg.model.context)  # 1 for masked
    per_block = max(1, steps // blocks)
    texts, speed = generate(run, SampleRequest(n=n, length=run.cfg.model.context, sampler=sampler,
                                               steps=per_block), seed=seed)
    drawn = {"texts": texts, "nfe": speed["nfe_per_sample"]}
    store.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps(drawn))
    return drawn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/remasking")
    p.add_argument("--steps", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--methods", nargs="+", default=["masked", "block4"], choices=sorted(RUNS))
    p.add_argument("--samplers", nargs="+", default=["ancestral", "cap", "rescale", "loop"], choices=list(SAMPLERS))
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--noise-seeds", type=int, default=4, help="seeds of the ancestral sampler at the fewest steps, "
                   "whose spread says how far apart two rows must be to differ")
    args = p.parse_args()
    cmd = "python benchmarks/remasking.py " + " ".join(sys.argv[1:])
    from textdiffusion.evaluate import TrainingReference, reference_windows, run_corpus
    from textdiffusion.runs import open_run
    from textdiffusion.sample_distance import sample_distance

    runs = Path(args.runs)
    rows: list[Row] = []
    spread: dict[str, dict[str, float]] = {}
    reference: dict[str, float] = {}
    for name in args.methods:
        run_dir = ensure_run(runs, name, args.train_steps)
        data, text, _ = run_corpus(open_run(run_dir, device="cpu"))
        ref = TrainingReference(data.train_text)
        context = json.loads((run_dir / "config.json").read_text())["config"]["model"]["context"]
        real = reference_windows(text, len(data.train_text), context, args.samples)
        held_out = text[len(data.train_text):]
        if not reference:
            q = ref.quality(real)
            reference = {"judge_ppl": q["judge_ppl"], "char_entropy": q["char_entropy"],
                         "word_validity": q["word_validity"]}
        label, sampler, sets = SAMPLERS["ancestral"]
        seeds = [draw(run_dir, runs / "samples" / name, label, sampler, sets, min(args.steps), args.samples, seed)
                 for seed in range(args.noise_seeds)]
        js = [sample_distance(d["texts"], held_out).js_bits for d in seeds]
        ppl = [ref.quality(d["texts"])["judge_ppl"] for d in seeds]
        spread[name] = {"seeds": len(seeds), "js_sd": statistics.stdev(js) if len(js) > 1 else math.nan,
                        "judge_ppl_sd": statistics.stdev(ppl) if len(ppl) > 1 else math.nan}
        for steps in args.steps:
            for label, sampler, sets in (SAMPLERS[s] for s in args.samplers):
                drawn = draw(run_dir, runs / "samples" / name, label, sampler, sets, steps, args.samples)
                q = ref.quality(drawn["texts"])
                nfe = drawn["nfe"] if sampler == "remdm" else steps  # cached's saving is not the ancestral sampler's
                d = sample_distance(drawn["texts"], held_out)
                rows.append(Row(name, label, steps, nfe, q["judge_ppl"], q["char_entropy"], q["word_validity"],
                                d.js_bits, d.floor_bits, drawn["texts"][0]))
                print(json.dumps(asdict(rows[-1])), flush=True)
    out = ROOT / "benchmarks" / "results"
    (out / "remasking.json").write_text(json.dumps({"command": cmd, "machine": machine(), "reference": reference,
                                                    "seed_spread": spread, "rows": [asdict(r) for r in rows]},
                                                   indent=1) + "\n")
    (out / "remasking.md").write_text(markdown(rows, reference, spread, cmd, args.samples, min(args.steps)))


def markdown(rows: list[Row], reference: dict[str, float], spread: dict[str, dict[str, float]], cmd: str, n: int,
             fewest: int) -> str:
    head = ("| run | sampler | steps | NFE/sample | n-gram JS (bits) | excess over real | judge ppl | "
            "char entropy (bits) | word validity |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r.run} | {r.sampler} | {r.steps} | {r.nfe:.0f} | {r.distance:.4f} | "
                   f"{r.distance - r.floor:+.4f} | {r.judge_ppl:.2f} | {r.char_entropy:.3f} | {r.word_validity:.3f} |\n"
                   for r in rows)
    real = (f"| real held-out text | {n} windows | | | {rows[0].floor:.4f} | 0 | {reference['judge_ppl']:.2f} | "
            f"{reference['char_entropy']:.3f} | {reference['word_validity']:.3f} |\n")
    return (f"Command: `{cmd}`  \nMachine: {machine()}  \n{n} samples of one context per row, seed 0, temperature 1, "
            f"EMA weights. n-gram JS: the Jensen-Shannon divergence between the character 1- to 4-gram "
            f"distributions of the samples and of held-out text, averaged over the orders; excess: minus what a "
            f"second slice of held-out text of the same size reaches (its row: the floor). Lower is better.\n\n"
            + head + body + real + "".join(
                f"\n{name}: over {s['seeds']} seeds of the ancestral sampler at {fewest} steps, the n-gram JS varies "
                f"by {s['js_sd']:.4f} bits and the judge perplexity by {s['judge_ppl_sd']:.1f} (standard deviations)."
                for name, s in spread.items()) + "\n")


if __name__ == "__main__":
    main()
