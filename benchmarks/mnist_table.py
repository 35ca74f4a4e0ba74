"""MNIST image diffusion: FID and class accuracy against sampling steps and guidance scale.

Evaluates one trained run (``textdiffusion mnist train``) with ``textdiffusion.image_evaluation.evaluate_images``:
DDPM with all T = 1000 steps, DDPM's ancestral step on 250 and 50 evenly spaced times, DDIM (eta 0) with
250/100/50/20/10 steps, all at guidance 1 (the plain class-conditional model), then a guidance sweep at
DDIM 50. Every row uses the same number of samples
(balanced over the ten digits) and the same seed, so FIDs compare with each other; FID is computed in the
penultimate layer of our own MNIST classifier (not Inception), so compare it only within this project.

    python benchmarks/mnist_table.py runs/bench-mnist/cpu --samples 500
    python benchmarks/mnist_table.py runs/bench-mnist/cpu --timing 100  # sampling time, on an idle machine
    python benchmarks/mnist_table.py runs/bench-mnist/cpu --table       # re-write BENCHMARKS.md only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import machine
from cpu_ar_vs_masked import ROOT, write_section

STEP_ROWS = [("ddpm", 1000), ("ddpm", 250), ("ddpm", 50), ("ddim", 250), ("ddim", 100), ("ddim", 50), ("ddim", 20),
             ("ddim", 10)]
GUIDANCE_STEPS = 50
GUIDANCE = [0.0, 1.0, 2.0, 3.0, 5.0]


ETA_ROWS = [0.5]  # DDIM between deterministic (0) and DDPM's ancestral noise (1), at 50 steps


def key(sampler: str, steps: int, guidance: float, eta: float = 0.0) -> str:
    return f"{sampler}-{steps}-w{guidance:g}" + (f"-eta{eta:g}" if sampler == "ddim" and eta else "")


def time_rows(run_dir: str, plan: list, n: int, results: dict) -> None:
    """Sampling time per image for each row, on ``n`` images in one batch (the FID runs shared the machine
    with other jobs, so their own times are not reported)."""
    import time

    import torch

    from textdiffusion.image_evaluation import open_image_run
    from textdiffusion.methods.image import ImageRequest

    run = open_image_run(run_dir)
    labels = [i % 10 for i in range(n)]
    results["timing"] = {"images": n, "threads": torch.get_num_threads(), "machine": machine()}
    for sampler, steps, w, eta in plan:
        k = key(sampler, steps, w, eta)
        if k not in results["rows"]:
            continue
        gen = torch.Generator().manual_seed(0)
        tic = time.perf_counter()
        run.method.sample(run.model, ImageRequest(n=n, labels=labels, sampler=sampler, steps=steps, eta=eta,
                                                  guidance=w), gen)
        results["rows"][k]["idle_ms_per_image"] = 1000 * (time.perf_counter() - tic) / n
        print(f"   {k}: {results['rows'][k]['idle_ms_per_image']:.1f} ms/image", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--only", nargs="*", help="row keys to (re)run, e.g. ddim-50-w3")
    p.add_argument("--out", default="benchmarks/results/mnist_table.json")
    p.add_argument("--table", action="store_true", help="only re-write the BENCHMARKS.md section")
    p.add_argument("--timing", type=int, default=0, metavar="N",
                   help="only time each row's sampler on N images (run this on an otherwise idle machine)")
    p.add_argument("--merge", nargs="*", default=[], help="result files of parallel runs (--only ... --out X) "
                                                           "whose rows are added to --out first")
    args = p.parse_args()
    from textdiffusion.image_evaluation import evaluate_images

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    for extra in args.merge:
        part = json.loads(Path(extra).read_text())
        results["rows"].update(part["rows"])
        for k in ("machine", "run", "training"):
            results.setdefault(k, part.get(k))
    if args.merge:
        out.write_text(json.dumps(results, indent=1))
    plan = ([(s, n, 1.0, 0.0) for s, n in STEP_ROWS] + [("ddim", GUIDANCE_STEPS, 1.0, e) for e in ETA_ROWS]
            + [("ddim", GUIDANCE_STEPS, w, 0.0) for w in GUIDANCE if w != 1.0])
    if args.timing:
        time_rows(args.run_dir, plan, args.timing, results)
        out.write_text(json.dumps(results, indent=1))
    elif not args.table:
        results["machine"] = machine()
        results["run"] = args.run_dir
        final = json.loads((Path(args.run_dir) / "final.json").read_text())
        results["training"] = {k: final.get(k) for k in ("step", "elapsed", "images_per_s", "val_bpd")}
        for sampler, steps, w, eta in plan:
            k = key(sampler, steps, w, eta)
            if args.only is not None and k not in args.only:
                continue
            print(f"== {k}", file=sys.stderr, flush=True)
            row = evaluate_images(args.run_dir, samples=args.samples, sampler=sampler, steps=steps, eta=eta,
                                  guidance=w, seed=0, progress=False, write=False).to_json()
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
        f"that classifier recognises the digit that was asked for. "
        + (f"Time per image: {results['timing']['images']} images in one batch, {results['timing']['threads']} "
           f"threads, nothing else running (`--timing {results['timing']['images']}`)."
           if "timing" in results else ""),
        "",
        "| sampler | steps | eta | guidance | FID | class accuracy | NFE / image | ms / image (idle machine) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sampler, steps, w, eta in plan:
        r = rows.get(key(sampler, steps, w, eta))
        if r is None:
            continue
        ms = f"{r['idle_ms_per_image']:.1f}" if "idle_ms_per_image" in r else "–"
        lines.append(f"| {sampler} | {steps} | {r['eta']:g} | {w:g} | {r['fid']:.3f} | {r['class_accuracy']:.4f} | "
                     f"{r['nfe']:g} | {ms} |")
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
