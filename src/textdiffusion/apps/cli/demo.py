"""``textdiffusion demo``: train a small ar model on Tiny Shakespeare, turn it into block diffusion, watch it write."""

from __future__ import annotations

import argparse

from textdiffusion.apps.cli.flags import DEFAULT_PRESET, PRESET_HELP, TRAIN_STEPS, command, number
from textdiffusion.config import PRESETS


def add(sub: argparse._SubParsersAction) -> None:
    d = command(sub, "demo", "train a small ar model on Tiny Shakespeare, turn it into a block-diffusion model "
                                  "and watch it write")
    d.add_argument("--steps", type=number(int, TRAIN_STEPS), default=None,
                   help="training steps of both runs together, 3/4 for ar (default: 1500, about 2 minutes on a CPU)")
    d.add_argument("--data", default="tinyshakespeare", help="the corpus: a name, a UTF-8 file or a directory")
    d.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=PRESET_HELP)
    d.add_argument("--run-dir", help="the folder of its two runs, DIR/ar and DIR/block "
                                     "(default: runs/demo-PRESET-TIME)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textdiffusion.apps.demo import run_demo

    return run_demo(steps=args.steps, data=args.data, run_dir=args.run_dir, preset=args.preset)
