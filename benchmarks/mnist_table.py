"""MNIST image diffusion: FID and class accuracy against sampling steps and guidance scale.

Evaluates one trained run (``textdiffusion mnist train``) with ``textdiffusion.mnist.evaluate_images``:
DDPM with all T = 1000 steps, DDIM (eta 0) with 250/100/50/20/10 steps, all at guidance 1 (the plain
class-conditional model), then a guidance sweep at DDIM 50. Every row uses the same number of samples
(balanced over the ten digits) and the same seed, so FIDs compare with each other; FID is computed in the
penultimate layer of our own MNIST classifier (not Inception), so compare it only within this project.

    python benchmarks/mnist_table.py runs/bench-mnist/cpu --samples 500
    python benchmarks/mnist_table.py runs/bench-mnist/cpu --table      # re-write BENCHMARKS.md only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import machine
from cpu_ar_vs_masked import ROOT, write_section

STEP_ROWS = [("ddpm", 1000), ("ddim", 250), ("ddim", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10)]
GUIDANCE_STEPS = 50
GUIDANCE = [0.0, 1.0, 2.0, 3.0, 5.0]


def key(sampler: str, steps: int, guidance: float) -> str:
    return f"{sampler}-{steps}-w{guidance:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--only", nargs="*", help="row keys to (re)run, e.g. ddim-50-w3")
    p.add_argument("--out", default="benchmarks/results/mnist_table.json")
    p.add_argument("--table", action="store_true", help="only re-write the BENCHMARKS.md section")
    args = p.parse_args()
    from textdiffusion.mnist import evaluate_images

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    plan = [(s, n, 1.0) for s, n in STEP_ROWS] + [("ddim", GUIDANCE_STEPS, w) for w in GUIDANCE if w != 1.0]
    if not args.table:
        results["machine"] = machine()
        results["run"] = args.run_dir
        final = json.loads((Path(args.run_dir) / "final.json").read_text())
        results["training"] = {k: final.get(k) for k in ("step", "elapsed", "images_per_s", "val_bpd")}
        for sampler, steps, w in plan:
            k = key(sampler, steps, w)
            if args.only is not None and k not in args.only:
                continue
            print(f"== {k}", file=sys.stderr, flush=True)
            row = evaluate_images(args.run_dir, samples=args.samples, sampler=sampler, steps=steps, eta=0.0,
                                  guidance=w, seed=0, progress=False, write=False)
            results["rows"][k] = row
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
            print(f"   FID {row['fid']:.3f}  class acc {row['class_accuracy']:.4f}  "
                  f"{row['seconds_per_image'] * 1000:.1f} ms/image", file=sys.stderr, flush=True)
    rows = results["rows"]
    tr = results.get("training", {})
    any_row = next(iter(rows.values()))
    lines = [
        f"Machine: {results['machine']}. `python benchmarks/mnist_table.py {results['run']} --samples "
        f"{any_row['samples']}`: the `cpu` image preset ({tr.get('step')} steps, "
        f"{(tr.get('elapsed') or 0) / 60:.0f} min of training, val bound {tr.get('val_bpd', 0):.3f} bits/dim), "
        f"{any_row['samples']} samples per row balanced over the digits, seed 0. FID is in our classifier's "
        f"feature space (its test accuracy: {any_row['classifier_test_accuracy']:.4f}); class accuracy = how often "
        f"that classifier recognises the digit that was asked for.",
        "",
        "| sampler | steps | guidance | FID | class accuracy | network evals / image | ms / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for sampler, steps, w in plan:
        r = rows.get(key(sampler, steps, w))
        if r is None:
            continue
        lines.append(f"| {sampler} | {steps} | {w:g} | {r['fid']:.3f} | {r['class_accuracy']:.4f} | "
                     f"{r['nfe']:g} | {r['seconds_per_image'] * 1000:.1f} |")
    ddpm, ddim50 = rows.get(key("ddpm", 1000, 1.0)), rows.get(key("ddim", 50, 1.0))
    if ddpm and ddim50:
        ratio = ddim50["fid"] / ddpm["fid"]
        lines += ["", f"DDIM 50 / DDPM 1000 FID ratio: {ratio:.3f} (target: within 10%, i.e. <= 1.10)."]
    best = max((r for r in rows.values()), key=lambda r: r["class_accuracy"])
    lines.append(f"Best class accuracy: {best['class_accuracy']:.4f} at guidance {best['guidance']:g} "
                 f"({best['sampler']} {best['steps']}); target >= 0.95.")
    write_section(ROOT / "BENCHMARKS.md", "mnist", "\n".join(lines))


if __name__ == "__main__":
    main()
