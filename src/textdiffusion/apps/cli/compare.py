"""``textdiffusion compare``: a self-contained HTML report of any mix of runs (:mod:`textdiffusion.apps.compare`)."""

from __future__ import annotations

import argparse

from textdiffusion.apps.cli.flags import DEVICE_HELP, command, number, positive
from textdiffusion.config import SEED


def add(sub: argparse._SubParsersAction) -> None:
    c = command(sub, "compare", "compare runs: a self-contained HTML report, comparison.md and .json",
                epilog="example:\n  textdiffusion compare runs/ar runs/masked runs/mnist --out report/ --evaluate")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (text and image runs mix)")
    c.add_argument("--out", required=True, help="folder for report.html, comparison.md and comparison.json")
    c.add_argument("--samples", type=positive(int), default=32,
                   help="samples per point of the quality-vs-speed sweep")
    c.add_argument("--length", type=positive(int), help="characters per sample (default: each run's context)")
    c.add_argument("--sweep", default="4,16,64,256",
                   help="comma-separated sampler step counts for the quality-vs-speed plot ('' = none)")
    c.add_argument("--seed", type=number(int, SEED), default=0, help="seed of the sweep's and the pictures' draws")
    c.add_argument("--evaluate", action="store_true",
                   help="run `eval` on runs whose eval.json is missing or older than the checkpoint")
    c.add_argument("--guidance", default="0,1,2,3,5",
                   help="comma-separated guidance scales w for the accuracy-vs-fluency curve of every run trained "
                        "with labels ('' or none = no curves); --samples is split over the labels")
    c.add_argument("--temperatures", default="none",
                   help="comma-separated temperatures, e.g. 0.6,0.8,0.9,1,1.1: each text run's judge perplexity "
                        "against character entropy (its frontier) beside real text's; each costs one draw of "
                        "--samples samples per text run, like a sweep point (default none)")
    c.add_argument("--refresh", action="store_true",
                   help="recompute sweeps, guidance curves and frontiers instead of reusing RUN/sweep.json, "
                        "RUN/guidance.json and RUN/frontier.json")
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textdiffusion.apps.compare import compare_runs

    paths = compare_runs(args.run_dirs, args.out, samples=args.samples, length=args.length or 0,
                         sweep=args.sweep, seed=args.seed, device=args.device, evaluate=args.evaluate,
                         progress=not args.no_progress, refresh=args.refresh, guidance=args.guidance,
                         temperatures=args.temperatures)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
