"""What moves the masked-diffusion NELBO at the `cpu` preset and 2,000 steps.

Each variant is one full training run in a fresh process; the number is the NELBO (an upper bound on
nats/char) on the whole validation split with EMA weights, 16 stratified time samples per window.

    python benchmarks/masked_ablations.py [--steps 2000] [--only NAME ...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import machine, train

VARIANTS: dict[str, list[str]] = {
    "baseline (loglinear, antithetic, lr 1e-3)": [],
    "lr 2e-3": ["train.lr=2e-3", "train.min_lr=2e-4"],
    "lr 3e-3": ["train.lr=3e-3", "train.min_lr=3e-4"],
    "no antithetic time sampling": ["method.antithetic=false"],
    "linear schedule (sigma_max 10)": ["method.schedule=linear"],
    "time conditioning on": ["method.time_conditioning=true"],
    "EMA 0.999": ["train.ema_decay=0.999"],
    "lr 6e-4": ["train.lr=6e-4", "train.min_lr=6e-5"],
    "count estimator (t integrated out)": ["method.estimator=count"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--only", nargs="*", help="exact variant names to run")
    p.add_argument("--extra", nargs="*", default=[], help="key=value applied to every variant")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--runs", default="runs/bench-masked")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "masked_ablations.jsonl"
    for i, (name, sets) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        run_dir = Path(args.runs) / f"v{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        r = train("masked", "cpu", run_dir, args.steps, sets + args.extra)
        row = {"variant": name, "sets": sets + args.extra, "steps": args.steps, "nelbo_nats": r["val_nats"],
               "stderr": r["val_details"]["stderr_nats"], "bpc": r["val_bpc"], "train_s": r["elapsed"],
               "wall_s": r["wall_s"], "machine": machine(), "command": r["command"]}
        print(json.dumps(row), flush=True)
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
