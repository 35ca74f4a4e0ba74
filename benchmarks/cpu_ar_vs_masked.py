"""`ar` vs `masked` at one preset: the same number of steps, then the same wall-clock budget.

For each method: train (fresh process, so peak memory is per run), then `textdiffusion eval` (whole
validation split, 64 samples of one context each, default sampler, temperature 1). Writes the table into
BENCHMARKS.md between its markers, with this command and the machine, and the raw numbers to
benchmarks/results/.

    python benchmarks/cpu_ar_vs_masked.py [--preset cpu] [--steps 2000] [--budget 106] [--set k=v ...]

``--budget`` seconds of training per method (0 skips that half): the step count is the budget divided by
the seconds per step measured in the fixed-steps run, and the LR schedule is fitted to that count.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from common import machine, run, train

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- {key}:start -->", "<!-- {key}:end -->"


def evaluate(run_dir: Path, samples: int) -> dict:
    run([sys.executable, "-m", "textdiffusion", "eval", str(run_dir), "--samples", str(samples), "--val-windows", "0"])
    return json.loads((run_dir / "eval.json").read_text())


def row(label: str, method: str, tr: dict, ev: dict) -> dict:
    return {
        "label": label, "method": method, "steps": tr["step"], "train_s": tr["elapsed"],
        "val_nats": ev["val"]["nats_per_char"], "val_bpc": ev["val"]["bpc"], "val_kind": ev["val"]["kind"],
        "nanogpt_nats": ev["val"].get("nats_per_char_nanogpt"),
        "judge_ppl": ev["quality"]["judge_ppl"], "word_validity": ev["quality"]["word_validity"],
        "distinct_2": ev["quality"]["distinct_2"], "repetition": ev["quality"]["repetition"],
        "copy_rate": ev["quality"]["copy_rate"], "train_chars_s": tr["chars_per_s"],
        "sample_chars_s": ev["speed"]["sample_chars_per_s"], "nfe": ev["speed"]["nfe_per_sample"],
        "peak_rss_mb": tr["peak_rss_mb"], "example": ev["samples"]["examples"][0],
        "reference": ev["reference"], "command": tr["command"],
    }


def markdown(rows: list[dict], cmd: str, preset: str) -> str:
    head = ("| run | steps | train s | val nats/char | val bits/char | kind | judge ppl | word validity | "
            "distinct-2 | repetition | copy rate | train chars/s | sample chars/s | NFE/sample | peak RSS MB |\n"
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['label']} | {r['steps']} | {r['train_s']:.1f} | {r['val_nats']:.4f} | {r['val_bpc']:.4f} | "
        f"{'exact' if r['val_kind'] == 'exact' else 'NELBO bound'} | {r['judge_ppl']:.2f} | "
        f"{r['word_validity']:.3f} | {r['distinct_2']:.3f} | {r['repetition']:.3f} | {r['copy_rate']:.3f} | "
        f"{r['train_chars_s']:,.0f} | {r['sample_chars_s']:,.0f} | {r['nfe']:.0f} | {r['peak_rss_mb']:.0f} |\n"
        for r in rows)
    ref = rows[0]["reference"]
    notes = [f"Real validation text (64 windows, same length) scores: judge ppl {ref['judge_ppl']:.2f}, "
             f"word validity {ref['word_validity']:.3f}, distinct-2 {ref['distinct_2']:.3f}, "
             f"repetition {ref['repetition']:.3f}, copy rate {ref['copy_rate']:.3f}."]
    for r in rows:
        if r["nanogpt_nats"] is not None:
            notes.append(f"{r['label']}: {r['nanogpt_nats']:.4f} nats/char when each window's first character "
                         f"(predicted from BOS alone) is left out, as nanoGPT counts it.")
    samples = "".join(f"\n**{r['label']}** sample:\n\n```\n{r['example']}\n```\n" for r in rows)
    return (f"Command: `{cmd}`  \nMachine: {machine()}  \nPreset: `{preset}`; EMA weights; validation = the whole "
            f"validation split in non-overlapping windows of one context; masked NELBO with 16 stratified time "
            f"samples per window (fixed seed); 64 samples of one context for quality, default sampler, "
            f"temperature 1.\n\n" + head + body + "\n" + "\n".join(f"- {n}" for n in notes) + "\n" + samples)


def write_section(path: Path, key: str, text: str) -> None:
    start, end = START.format(key=key), END.format(key=key)
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--budget", type=float, default=106.0)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--methods", nargs="+", default=["ar", "masked"])
    p.add_argument("--set", dest="sets", nargs="*", default=[])
    p.add_argument("--runs", default="runs/bench")
    args = p.parse_args()
    cmd = "python benchmarks/cpu_ar_vs_masked.py " + " ".join(sys.argv[1:])
    rows = []
    for method in args.methods:
        rd = Path(args.runs) / f"{method}-{args.preset}-{args.steps}"
        shutil.rmtree(rd, ignore_errors=True)
        tr = train(method, args.preset, rd, args.steps, args.sets)
        rows.append(row(f"{method}, {args.steps} steps", method, tr, evaluate(rd, args.samples)))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "reference"}), flush=True)
        if args.budget > 0:
            steps = max(1, int(args.budget / (tr["elapsed"] / tr["step"])))
            rd = Path(args.runs) / f"{method}-{args.preset}-{int(args.budget)}s"
            shutil.rmtree(rd, ignore_errors=True)
            # the schedule is fitted to the step count the budget should allow; the trainer also stops when the
            # budget is spent, so a slower machine cannot overrun it
            tr = train(method, args.preset, rd, steps, [*args.sets, f"train.time_budget_s={args.budget}"])
            rows.append(row(f"{method}, {args.budget:.0f} s budget", method, tr, evaluate(rd, args.samples)))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "reference"}), flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    # merge with earlier rows of other methods, so one method can be re-measured on its own
    path = out / f"ar_vs_masked_{args.preset}.json"
    if path.exists():
        old = [r for r in json.loads(path.read_text()) if r["method"] not in args.methods]
        rows = sorted(old + rows, key=lambda r: (r["method"], "budget" in r["label"]))
    path.write_text(json.dumps(rows, indent=2) + "\n")
    write_section(ROOT / "BENCHMARKS.md", f"ar-vs-masked-{args.preset}", markdown(rows, cmd, args.preset))


if __name__ == "__main__":
    main()
