"""Sample quality that a collapsing sampler cannot game: judge perplexity, character entropy, word validity and
the n-gram distance from held-out text with its real-text floor, for `ar`, `masked` and `block` runs and their
samplers (same samples, same seed, one process).

    python benchmarks/sample_quality.py --runs /work/runs25 [--samples 256] [--train] [--methods ar,masked]

Reads (or with ``--train`` trains: `cpu` preset, 2,000 steps, seed 1337) ``RUNS/ar-cpu-2k``,
``RUNS/masked-cpu-2k`` and ``RUNS/block-cpu-2k`` (B = 4), draws ``--samples`` samples of the context length
with each sampler at each temperature, and writes ``benchmarks/results/sample_quality.json`` and the table of
docs/sample-quality.md (printed). The cost of the distance is measured in the same process as the sampling
it scores, so the ratio holds on a loaded machine where the seconds do not. ``--methods`` measures some of the
runs and keeps the others' rows from the results file when they were measured with the same settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import machine, train
from textdiffusion.evaluate import TrainingReference, generate, reference_windows, run_corpus
from textdiffusion.methods.base import SampleRequest
from textdiffusion.runs import open_run
from textdiffusion.sample_distance import sample_distance

RESULTS = Path(__file__).resolve().parent / "results" / "sample_quality.json"
RUNS = {"ar": ("ar-cpu-2k", []), "masked": ("masked-cpu-2k", []), "block": ("block-cpu-2k", ["method.block_size=4"])}
SAMPLERS = {"ar": ["ancestral"], "masked": ["ancestral", "confidence"], "block": ["ancestral", "confidence"]}


def rows_of_run(method: str, run_dir: Path, samples: int, temperatures: list[float], seed: int) -> list[dict]:
    run = open_run(run_dir)
    data, text, _source = run_corpus(run)
    ref = TrainingReference(data.train_text)
    held_out = text[len(data.train_text):]
    length = run.cfg.model.context
    rows = []
    for sampler in SAMPLERS[method]:
        for temperature in temperatures:
            req = SampleRequest(n=samples, length=length, sampler=sampler, temperature=temperature)
            with torch.no_grad():
                texts, speed = generate(run, req, seed)
            tic = time.perf_counter()
            d = sample_distance(texts, held_out)
            distance_s = time.perf_counter() - tic
            q = ref.quality(texts)
            rows.append({"run": str(run_dir), "method": method, "step": run.step, "sampler": sampler,
                         "steps": speed["steps"], "temperature": temperature, "samples": samples, "length": length,
                         **{k: q[k] for k in ("judge_ppl", "char_entropy", "word_validity")},
                         "js_bits": d.js_bits, "floor_bits": d.floor_bits, "excess": d.excess,
                         "per_order": d.per_order, "floor_per_order": d.floor_per_order,
                         "sampling_s": speed["seconds"], "distance_s": distance_s, "example": texts[0]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def real_row(run_dir: Path, samples: int) -> dict:
    """Held-out windows scored like the samples: their distance is the floor (a second slice of real text)."""
    run = open_run(run_dir)
    data, text, _source = run_corpus(run)
    length = run.cfg.model.context
    windows = reference_windows(text, len(data.train_text), length, samples)
    q = TrainingReference(data.train_text).quality(windows)
    d = sample_distance(windows, text[len(data.train_text):])
    return {"run": "real text", "method": "real", "sampler": "held-out windows", "temperature": None,
            **{k: q[k] for k in ("judge_ppl", "char_entropy", "word_validity")},
            "js_bits": d.floor_bits, "floor_bits": d.floor_bits, "excess": 0.0, "samples": samples,
            "length": length}


def table(rows: list[dict]) -> str:
    lines = ["| model | sampler | steps | T | judge ppl | char entropy | word validity | n-gram JS | real floor "
             "| excess |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = "" if r["temperature"] is None else f"{r['temperature']:g}"
        lines.append(f"| {r['method']} | {r['sampler']} | {r.get('steps') or ''} | {t} | {r['judge_ppl']:.1f} | "
                     f"{r['char_entropy']:.2f} | {r['word_validity']:.3f} | {r['js_bits']:.3f} | "
                     f"{r['floor_bits']:.3f} | {r['excess']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="folder holding ar-cpu-2k, masked-cpu-2k, block-cpu-2k")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--temperatures", default="1", help="comma-separated temperatures of the token draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true", help="train the runs that are missing (cpu preset, 2,000 steps)")
    p.add_argument("--methods", default=",".join(RUNS), help="the runs to measure now (the others' rows are kept)")
    args = p.parse_args()
    root = Path(args.runs)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    command = (f"python benchmarks/sample_quality.py --runs {args.runs} --samples {args.samples} "
               f"--temperatures {args.temperatures} --seed {args.seed}")
    kept = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    kept = kept.get("rows", []) if kept.get("command") == command else []
    measured: dict[str, list[dict]] = {}
    for method in args.methods.split(","):
        name, sets = RUNS[method]
        run_dir = root / name
        if not (run_dir / "checkpoint.safetensors").exists():
            if not args.train:
                raise SystemExit(f"{run_dir} has no checkpoint; train it or pass --train")
            train(method, "cpu", run_dir, 2000, sets)
        measured[method] = rows_of_run(method, run_dir, args.samples, temperatures, args.seed)
    rows = [r for method in RUNS for r in measured.get(method, [r for r in kept if r["method"] == method])]
    rows.append(real_row(root / RUNS["ar"][0], args.samples))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": command, "machine": machine(), "rows": rows}, indent=1) + "\n",
                       encoding="utf-8")
    print(f"\nCommand: `{command}`\n\n{table(rows)}")


if __name__ == "__main__":
    main()
