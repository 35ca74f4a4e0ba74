"""Gaussian diffusion on embeddings at the `cpu` preset: from the published failure to the best recipe.

Every row trains in a fresh process (2,000 steps, the `cpu` preset, the same data and backbone as `ar` and
`masked`) and is then scored by `textdiffusion eval`: 64 samples of 64 tokens at temperature 1, the judge
and word statistics of :mod:`textdiffusion.evaluate`, and the VDM bound on 128 validation windows. Rows
that differ only in a sampling option reuse the trained run of the row they name.

    python benchmarks/embedding_table.py [--only NAME ...] [--table] [--guide runs/bench/ar-cpu-2000]
        [--ar-wordpiece RUN]     (an `ar` run trained with --set data.tokenizer=wordpiece, then evaluated)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import machine, run, train
from cpu_ar_vs_masked import ROOT, write_section

FAILURE = ["data.tokenizer=wordpiece", "method.embeddings=pretrained", "method.embed_norm=none",
           "method.decoder=cosine", "method.target=eps", "method.noise_schedule=linear", "method.timesteps=1000",
           "model.positions=none", "model.n_layer=3"]

# name -> (training overrides, or the name of the row whose run to reuse; sampling overrides)
ROWS: dict[str, tuple[list[str] | str, list[str]]] = {
    "pretrained frozen + cosine (the failure)": (FAILURE, []),
    "learned + cosine": (["method.decoder=cosine"], []),
    "learned + L2": (["method.decoder=l2"], []),
    "learned + rounding head": ([], []),
    "+ clamping": ("learned + rounding head", ["method.clamp=true"]),
    "+ self-conditioning": (["method.self_condition=true"], []),
    "+ self-conditioning + clamping": ("+ self-conditioning", ["method.clamp=true"]),
    "schedule cosine": (["method.noise_schedule=cosine"], []),
    "schedule linear": (["method.noise_schedule=linear"], []),
    "target probs (CDCD score interpolation)": (["method.target=probs"], []),
    "learned, no normalisation": (["method.embed_norm=none"], []),
    "learned, no normalisation, no rounding term": (["method.embed_norm=none", "method.rounding_weight=0"], []),
    "pretrained frozen, normalised, positions, sqrt, x0, L2": (
        ["data.tokenizer=wordpiece", "method.embeddings=pretrained", "method.decoder=l2"], []),
}
GUIDE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:48]


def row_run(method: str, name: str, training: list[str] | str, sampling: list[str], runs: Path, steps: int,
            reuse: dict | None = None) -> tuple[Path, dict | None, str]:
    """The run a table row is evaluated on: (run dir, training info or None, the command behind it).

    ``training`` as a string names the row whose run is reused with other sampling options; as a list it is
    the ``--set`` options of a fresh 2,000-step ``cpu`` training, unless ``reuse`` (the row's earlier
    result) says to evaluate the run already on disk."""
    if isinstance(training, str):
        return runs / slug(training), None, f"(the run of '{training}') textdiffusion eval --set {' '.join(sampling)}"
    run_dir = runs / slug(name)
    if reuse is not None:
        info = {"elapsed": reuse.get("train_s")} if reuse.get("train_s") else None
        return run_dir, info, reuse.get("command", "")
    shutil.rmtree(run_dir, ignore_errors=True)
    info = train(method, "cpu", run_dir, steps, [*training, "train.final_eval_windows=128",
                                                 "method.eval_time_samples=4"])
    return run_dir, info, info["command"]


def evaluate(run_dir: Path, sets: list[str], samples: int) -> dict:
    cmd = [sys.executable, "-m", "textdiffusion", "eval", str(run_dir), "--samples", str(samples),
           "--val-windows", "128"]
    if sets:
        cmd += ["--set", *sets]
    run(cmd)
    return json.loads((run_dir / "eval.json").read_text())


def row_of(name: str, ev: dict, train_info: dict | None, command: str) -> dict:
    q, v = ev["quality"], ev["val"]
    return {"name": name, "command": command, "judge_ppl": q["judge_ppl"], "word_validity": q["word_validity"],
            "distinct_2": q["distinct_2"], "repetition": q["repetition"], "copy_rate": q["copy_rate"],
            "sample_chars_per_s": ev["speed"]["sample_chars_per_s"], "bound_nats": v["nats_per_char"],
            "bound_stderr": v.get("stderr_nats"), "mse": v.get("denoising_mse"),
            "embed": {k: v[k] for k in v if k.startswith("embed_")},
            "train_s": train_info["elapsed"] if train_info else None, "examples": ev["samples"]["examples"],
            "reference": ev["reference"], "overrides": ev["samples"].get("overrides", [])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="exact row names to (re)run")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--guide", default="", help="an ar run for the guided-sampling sweep")
    p.add_argument("--guide-row", default="learned + rounding head")
    p.add_argument("--runs", default="runs/bench-embedding")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--table", action="store_true", help="only rebuild the BENCHMARKS.md section")
    p.add_argument("--eval-only", action="store_true", help="re-score existing runs, do not retrain")
    p.add_argument("--ar-wordpiece", default="", help="an evaluated ar run on WordPiece tokens, as a second reference")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "embedding_table.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}, "guided": {}}
    results["machine"] = machine()
    if args.ar_wordpiece:
        results["ar_wordpiece"] = reference_of(Path(args.ar_wordpiece))
    if not args.table:
        for name, (training, sampling) in ROWS.items():
            if args.only is not None and name not in args.only:
                continue
            print(f"== {name}", file=sys.stderr, flush=True)
            old = results["rows"].get(name, {}) if args.eval_only else None
            run_dir, info, command = row_run("embedding", name, training, sampling, Path(args.runs), args.steps, old)
            results["rows"][name] = row_of(name, evaluate(run_dir, sampling, args.samples), info, command)
            path.write_text(json.dumps(results, indent=1))
        if args.guide:
            run_dir = Path(args.runs) / slug(args.guide_row)
            for w in GUIDE_WEIGHTS:
                print(f"== guided w={w}", file=sys.stderr, flush=True)
                ev = evaluate(run_dir, ["method.sampler=guided", f"method.guide_run={args.guide}",
                                        f"method.guide_weight={w}"], args.samples)
                results["guided"][str(w)] = row_of(f"guided w={w}", ev, None, f"guided w={w}")
                path.write_text(json.dumps(results, indent=1))
            results["ar"] = reference_of(Path(args.guide))
            path.write_text(json.dumps(results, indent=1))
    write_table(results)


def reference_of(run_dir: Path) -> dict:
    """The numbers of an evaluated `ar` run (its eval.json), for the reference rows."""
    ev = json.loads((run_dir / "eval.json").read_text())
    keep = ("judge_ppl", "word_validity", "distinct_2", "repetition", "copy_rate")
    return {**{k: ev["quality"][k] for k in keep}, "sample_chars_per_s": ev["speed"]["sample_chars_per_s"],
            "bound_nats": ev["val"]["nats_per_char"], "run": str(run_dir)}


def fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def write_table(results: dict) -> None:
    lines = [f"Machine: {results['machine']}. `cpu` preset, 2,000 steps each, 64 samples x 64 tokens at "
             f"temperature 1, DDIM 200 steps unless the row says otherwise. Bound = the VDM variational bound "
             f"(nats/char, 128 windows x 4 time samples, ± its standard error); `python benchmarks/"
             f"embedding_table.py` rebuilds everything.", "",
             "| row | judge ppl | word validity | distinct-2 | repetition | copy rate | sample chars/s | "
             "bound nats/char | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("ar", "`ar` reference, char (same preset and steps)"),
                       ("ar_wordpiece", "`ar` reference, WordPiece (same preset and steps)")):
        if key in results:
            a = results[key]
            lines.append(f"| {label} | {a['judge_ppl']:.1f} | {a['word_validity']:.3f} | {a['distinct_2']:.3f} | "
                         f"{a['repetition']:.3f} | {a['copy_rate']:.3f} | {a['sample_chars_per_s']:,.0f} | "
                         f"{a.get('bound_nats', 1.792):.3f} (exact) | |")
    for r in results["rows"].values():
        se = f" ± {r['bound_stderr']:.2f}" if r.get("bound_stderr") is not None else ""
        lines.append(f"| {r['name']} | {r['judge_ppl']:.1f} | {r['word_validity']:.3f} | {r['distinct_2']:.3f} | "
                     f"{r['repetition']:.3f} | {r['copy_rate']:.3f} | {r['sample_chars_per_s']:,.0f} | "
                     f"{r['bound_nats']:.3f}{se} | {fmt(r['train_s'], '.0f')} |")
    if results.get("guided"):
        lines += ["", "Guided sampling (`--sampler guided`): the plan from the `learned + rounding head` run, "
                  "decoded left to right by the `ar` run with weight w on the plan:", "",
                  "| w | judge ppl | word validity | distinct-2 | repetition | sample chars/s |",
                  "|---|---|---|---|---|---|"]
        for w, r in results["guided"].items():
            lines.append(f"| {w} | {r['judge_ppl']:.1f} | {r['word_validity']:.3f} | {r['distinct_2']:.3f} | "
                         f"{r['repetition']:.3f} | {r['sample_chars_per_s']:,.0f} |")
    lines += ["", "Samples (the first three of each row's 64, newlines shown as ⏎):", ""]
    for r in results["rows"].values():
        lines.append(f"- **{r['name']}**")
        for ex in r["examples"][:3]:
            lines.append(f"  - `{ex.replace(chr(10), '⏎').replace('`', chr(39))[:100]}`")
    write_section(ROOT / "BENCHMARKS.md", "embedding-table", "\n".join(lines))


if __name__ == "__main__":
    main()
