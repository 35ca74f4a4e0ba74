"""``textdiffusion mnist train|sample|eval|demo``: image diffusion through the same trainer and run directories
as text; the pictures and the demo are :mod:`textdiffusion.apps.mnist`, the scores
:mod:`textdiffusion.image_evaluation`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textdiffusion.apps.cli.checks import read_only_note, refuse_text_run
from textdiffusion.apps.cli.flags import (
    DEFAULT_PRESET,
    DEVICE_HELP,
    PRESET_HELP,
    RUN_DIR_HELP,
    STEPS,
    TRAIN_STEPS,
    add_set,
    command,
    number,
    positive,
)
from textdiffusion.apps.cli.train import (
    DEFAULT_IMAGE_METHOD,
    add_new_run_flags,
    new_run_config,
    resume_run,
    train_new_run,
)
from textdiffusion.catalogue import IMAGE_METHODS
from textdiffusion.config import ETA, GUIDANCE, PRESETS, SEED
from textdiffusion.limits import IMAGE_EVAL_SAMPLES, IMAGE_EVAL_STEPS


def add(sub: argparse._SubParsersAction) -> None:
    m = command(sub, "mnist", "image diffusion on MNIST: train | sample | eval | demo",
                "Image diffusion on MNIST: a class-conditional DDPM U-Net through the same trainer, run "
                "directories and Gaussian samplers as the text methods.",
                "examples:\n  textdiffusion mnist demo                     # ~6 min on 2 CPU cores\n"
                "  textdiffusion mnist train --preset cpu --run-dir runs/mnist\n"
                "  textdiffusion mnist eval runs/mnist")
    msub = m.add_subparsers(dest="mnist_command", required=True, metavar="COMMAND", help="one of:")
    for add_command in (_add_train, _add_sample, _add_eval, _add_demo):
        add_command(msub)


def _add_train(msub: argparse._SubParsersAction) -> None:
    t = command(msub, "train", "train a DDPM U-Net (or --resume one)",
                "Train a class-conditional DDPM U-Net on MNIST (the image preset, or a --config file), with "
                "--set and the flags on top; the same trainer and run directory as text.",
                "examples:\n  textdiffusion mnist train --preset cpu --run-dir runs/mnist\n"
                "  textdiffusion mnist train --preset tiny --data digits --steps 200   # offline, seconds\n"
                "  textdiffusion mnist train --config runs/mnist/config.json --set method.target=v --run-dir runs/v")
    t.add_argument("--method", metavar="METHOD",
                   help=f"an image method: {', '.join(sorted(IMAGE_METHODS))} (default: {DEFAULT_IMAGE_METHOD}, or "
                        f"the --config file's)")
    add_new_run_flags(t, image=True)
    t.set_defaults(func=train, torchrun=True)


# the samplers of every image method, in the order the methods list them
IMAGE_SAMPLERS = tuple(dict.fromkeys(s for samplers in IMAGE_METHODS.values() for s in samplers))


def _add_image_sampling(parser: argparse.ArgumentParser, steps_help: str) -> None:
    """The image sampler's knobs, shared by ``mnist sample`` and ``mnist eval``; choices from the method."""
    parser.add_argument("--sampler", choices=IMAGE_SAMPLERS,
                        help="ddpm (ancestral) or ddim (deterministic at --eta 0) (default: the run's "
                             "method.sampler, ddpm unless set)")
    parser.add_argument("--steps", type=number(int, STEPS), help=steps_help)
    parser.add_argument("--eta", type=number(float, ETA),
                        help="DDIM noise in [0, 1], 0 = deterministic (default: the run's method.eta, 0)")
    parser.add_argument("--guidance", type=number(float, GUIDANCE),
                        help="classifier-free guidance scale >= 0, 1 = plain conditional (default: the run's "
                             "method.guidance, 1)")
    parser.add_argument("--seed", type=number(int, SEED), default=0, help="seed of the draw")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


_IMAGE_SET_HELP = ("change a sampling option, one per --set, e.g. --set method.clamp=false (no x0 clipping; "
                   "`textdiffusion config --method image` lists them, marked *)")


def _add_sample(msub: argparse._SubParsersAction) -> None:
    s = command(msub, "sample", "write a sample grid, a denoising strip and a GIF of the reverse process",
                epilog="examples:\n  textdiffusion mnist sample runs/mnist --sampler ddim --steps 50 --guidance 3\n"
                       "  textdiffusion mnist sample runs/mnist --digit 7 --n 16 --out sevens/")
    s.add_argument("run_dir", help=RUN_DIR_HELP)
    s.add_argument("--out", help="output folder (default: RUN_DIR/samples)")
    s.add_argument("--n", type=positive(int), help="images (default: 8 per digit, or 64 unconditional)")
    s.add_argument("--digit", type=int, help="draw only this digit, 0-9 (class-conditional runs)")
    _add_image_sampling(s, "network evaluations per image, at most the run's training grid T (default: the run's "
                           "method.sample_steps, else T for ddpm and at most 250 for ddim)")
    s.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="ema: the moving average of the weights; model: the raw weights")
    s.add_argument("--no-gif", action="store_true", help="skip reverse.gif (the slowest file to write)")
    add_set(s, _IMAGE_SET_HELP)
    s.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    s.set_defaults(func=sample)


def _add_eval(msub: argparse._SubParsersAction) -> None:
    e = command(msub, "eval", "FID and class accuracy in a trained classifier's feature space",
                f"FID against the test set and class accuracy, in the feature space of a small MNIST classifier "
                f"(trained once, about 3 CPU minutes, then cached), and the time per image. The defaults "
                f"({IMAGE_EVAL_SAMPLES} samples, {IMAGE_EVAL_STEPS} steps) take about a minute on 2 CPU cores for "
                f"a cpu-preset run; the cost is printed before the work starts. Writes RUN_DIR/eval.json.",
                "example:\n  textdiffusion mnist eval runs/mnist --sampler ddim --guidance 2")
    e.add_argument("run_dir", help=RUN_DIR_HELP)
    e.add_argument("--samples", type=positive(int), default=IMAGE_EVAL_SAMPLES,
                   help="images to draw and score; FID is biased upward at small counts, so compare equal counts "
                        "(BENCHMARKS.md's table: 500)")
    _add_image_sampling(e, f"network evaluations per image (default: the run's method.sample_steps, else "
                           f"{IMAGE_EVAL_STEPS}, at most the run's training grid T)")
    add_set(e, _IMAGE_SET_HELP)
    e.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    e.set_defaults(func=evaluate)


def _add_demo(msub: argparse._SubParsersAction) -> None:
    d = command(msub, "demo", "train a small class-conditional model and write its samples (CPU minutes)")
    d.add_argument("--steps", type=number(int, TRAIN_STEPS), help="training steps (default: 1500)")
    d.add_argument("--data", default="mnist", help="mnist (falls back to the offline digits) or digits")
    d.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=PRESET_HELP)
    d.add_argument("--run-dir", help="where to write the run (default: runs/image-PRESET-TIME)")
    d.set_defaults(func=demo)


def train(args: argparse.Namespace) -> int:
    if args.resume:
        return resume_run(args)
    return train_new_run(new_run_config(args, image=True), args)


def sample(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import check_digit, sample_images

    check_digit(args.digit)
    refuse_text_run(args.run_dir, "sample")
    res = sample_images(args.run_dir, out=args.out, n=args.n or 0, digit=args.digit, sampler=args.sampler or "",
                        steps=args.steps or 0, eta=args.eta, guidance=args.guidance, seed=args.seed,
                        device=args.device, weights=args.weights, gif=not args.no_gif,
                        overrides=args.overrides, progress=not args.no_progress)
    for kind, path in res["files"].items():
        print(f"{kind}: {path}")
    print(f"[{res['n']} images, sampler {res['sampler']} {res['steps']} steps, {res['nfe']:g} network evaluations "
          f"per image, {res['seconds']:.2f}s]", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import format_eval
    from textdiffusion.image_evaluation import evaluate_images

    refuse_text_run(args.run_dir, "eval")
    ev = evaluate_images(args.run_dir, samples=args.samples, sampler=args.sampler or "", steps=args.steps or 0,
                          eta=args.eta, guidance=args.guidance, seed=args.seed, device=args.device,
                          overrides=args.overrides, progress=not args.no_progress)
    print(format_eval(ev))
    if ev.not_written:
        print(f"{Path(args.run_dir) / 'eval.json'} was not written ({ev.not_written}): the results above are "
              f"printed only")
    else:
        print(read_only_note(args.run_dir) or f"wrote {Path(args.run_dir) / 'eval.json'} (and appended to "
                                              f"evals.jsonl)")
    return 0


def demo(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import run_demo

    return run_demo(steps=args.steps, data=args.data, run_dir=args.run_dir, preset=args.preset)
