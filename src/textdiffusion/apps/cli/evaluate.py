"""``textdiffusion eval``: validation bits per character, sample quality and speed of a run, through the
Python API; prints a table and writes ``RUN/eval.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiffusion.apps.cli.checks import read_only_note, refuse_image_run
from textdiffusion.apps.cli.flags import (
    DEVICE_HELP,
    RUN_DIR_HELP,
    SET_HELP,
    STEPS,
    VAL_WINDOWS,
    add_decoding,
    add_set,
    command,
    number,
    positive,
    text_sampler_help,
)
from textdiffusion.config import ConfigError


def add(sub: argparse._SubParsersAction) -> None:
    e = command(sub, "eval", "validation bits/char, sample quality and speed; writes RUN_DIR/eval.json",
                "Score a run: validation bits per character (exact for ar, an upper bound for diffusion), the "
                "quality of its samples against a fixed character n-gram judge, and sampling speed. Prints a "
                "table and writes RUN_DIR/eval.json; progress bars on stderr.",
                "examples:\n  textdiffusion eval runs/masked\n"
                "  textdiffusion eval runs/masked --sampler confidence --steps 16 --val-windows 256")
    e.add_argument("run_dir", help=RUN_DIR_HELP)
    e.add_argument("--samples", type=positive(int), default=64, help="number of samples to score")
    e.add_argument("--length", type=positive(int), help="characters per sample (default: the model's context)")
    e.add_argument("--sampler", help=text_sampler_help())
    e.add_argument("--steps", type=number(int, STEPS),
                   help="denoising steps of a diffusion sampler (default: the run's method.sample_steps, else the "
                        "method's)")
    add_decoding(e)
    e.add_argument("--val-windows", type=number(int, VAL_WINDOWS), default=None,
                   help="validation windows to score (0 = the whole validation split; default: the score "
                        "final.json recorded for these weights and settings, reused, else the whole split)")
    e.add_argument("--exact-windows", type=number(int, VAL_WINDOWS), default=None,
                   help="masked, block: validation windows the exact NLL beside the bound takes, the likelihood "
                        "of --sampler left_to_right (0 = the whole split; default: final.json's, reused, else "
                        "train.final_exact_windows). It costs a network pass per token of a window (block: per "
                        "position of a block): on the cpu preset about 2.7x the bound's time per window for "
                        "masked, 0.25x for block with B = 4")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_set(e, SET_HELP)
    e.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textdiffusion import limits
    from textdiffusion.api import TextModel, load
    from textdiffusion.evaluate import format_table
    from textdiffusion.methods import get_method

    limits.check_count(args.samples, limits.MAX_IMAGE_EVAL, "--samples", "the most one evaluation scores",
                       "score fewer: the standard error shrinks only as 1/sqrt(n)")
    if args.steps:
        limits.check_text_steps(args.steps, True, None)
    if args.length:
        limits.check_text_length(args.length, True)
    refuse_image_run(args.run_dir, "eval")
    model = load(args.run_dir, device=args.device, overrides=args.overrides)
    if not isinstance(model, TextModel):
        raise ConfigError(f"{args.run_dir} is an image run; use `textdiffusion mnist eval {args.run_dir}`")
    result = model.evaluate(samples=args.samples, length=args.length or 0, sampler=args.sampler or "",
                            steps=args.steps or 0, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, val_windows=args.val_windows,
                            progress=not args.no_progress, exact_windows=args.exact_windows)
    print(format_table(result, get_method(result.method)))
    if result.not_written:
        print(f"{Path(args.run_dir) / 'eval.json'} was not written ({result.not_written}): the results above are "
              f"printed only")
    else:
        print(read_only_note(args.run_dir) or f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0
