"""``textdiffusion train``: train a model into a run directory (or ``--resume`` one). ``mnist train`` and
``config`` start from the same config (:func:`new_run_config`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textdiffusion.apps.cli.checks import is_image_method, refuse_image_run, refuse_text_run
from textdiffusion.apps.cli.flags import (
    DEFAULT_PRESET,
    DEVICE_HELP,
    PRESET_HELP,
    TRAIN_STEPS,
    add_set,
    command,
    number,
)
from textdiffusion.catalogue import method_names
from textdiffusion.config import PRESETS, SEED, Config, ConfigError
from textdiffusion.records import FinalScore, TrainSummary

_TRAIN_EPILOG = """\
examples:
  textdiffusion train --method ar --preset cpu --run-dir runs/ar
  textdiffusion train --method masked --preset tiny --data my_corpus.txt --steps 200
  textdiffusion train --config runs/ar/config.json --set model.n_layer=6 --run-dir runs/ar-deeper
  textdiffusion train --resume runs/ar --steps 4000      # continue, with a longer schedule
  textdiffusion train --method masked --init-from runs/ar --steps 500   # start from the ar run's weights
  textdiffusion train --distill-from runs/masked --steps 500   # a student of half the teacher's steps"""


def add(sub: argparse._SubParsersAction) -> None:
    t = command(sub, "train", "train a model (or --resume one)",
                "Train a model into a run directory: the method's preset (or a --config file), with --set and the "
                "flags on top. Ctrl-C stops at a step boundary with a checkpoint that --resume continues.",
                _TRAIN_EPILOG)
    t.add_argument("--method", metavar="METHOD", help=f"what to train: {', '.join(method_names())}")
    add_new_run_flags(t, image=False)
    t.add_argument("--init-from", metavar="RUN", help="start from this run's EMA weights (an ar run or its export "
                                                      "with the same network and tokenizer; sets train.init_from)")
    t.add_argument("--distill-from", metavar="RUN", help="train a student of this masked, block or uniform run that "
                                                         "samples in half its steps (train.distill_substeps: SDTT; "
                                                         "uniform: consistency distillation); without "
                                                         "--method or --config, with the teacher's config (sets "
                                                         "train.distill_from)")
    t.set_defaults(func=run, torchrun=True)


def add_new_run_flags(parser: argparse.ArgumentParser, image: bool) -> None:
    """What ``train`` and ``mnist train`` share: where the config comes from and the flags that stand for
    single fields of it."""
    steps = ", ".join(f"{name} {p['train']['steps']}" for name, p in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help=f"{PRESET_HELP} (default: {DEFAULT_PRESET}, or the --config file's)")
    parser.add_argument("--config", metavar="FILE",
                        help="start from this JSON config instead of a preset: a run's config.json or what "
                             "`textdiffusion config --json` prints; --set and the flags below apply on top")
    if image:
        parser.add_argument("--data", help="mnist (the data directory's mnist.npz or IDX files, else a download), "
                                           "digits (scikit-learn's offline 8x8 digits), a mnist.npz or a directory "
                                           "of the four IDX files (default: mnist)")
        parser.add_argument("--steps", type=number(int, TRAIN_STEPS),
                            help="optimizer steps (default: the preset's; `textdiffusion config --method image` "
                                 "shows it)")
    else:
        parser.add_argument("--data", help="named corpus (tinyshakespeare), a UTF-8 file or a directory of .txt "
                                           "files (default: tinyshakespeare)")
        parser.add_argument("--steps", type=number(int, TRAIN_STEPS),
                            help=f"optimizer steps (default: the preset's: {steps})")
    parser.add_argument("--run-dir", help="where to write the run; it must not hold another run "
                                          "(default: runs/METHOD-PRESET-TIME)")
    parser.add_argument("--seed", type=number(int, SEED),
                        help=f"seed of the initial weights, the data order and the noise (default: {Config().seed})")
    parser.add_argument("--device", help=f"{DEVICE_HELP} (default: auto)")
    example = ("--set unet.base_channels=32 --set method.target=v" if image
               else "--set model.n_layer=8 --set train.lr=2e-3")
    add_set(parser, f"change any config field, one per --set, e.g. {example} (`textdiffusion config` lists "
                     f"every field)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run exactly where it left off, with its saved config (only "
                             "--steps may change)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the summary still prints)")


def run(args: argparse.Namespace) -> int:
    if args.resume:
        return resume_run(args)
    return train_new_run(new_run_config(args), args)


# the flags of train (and mnist train) that stand for one config field each; applied after --set, so they win
# the method ``mnist train`` trains when neither --method nor --config names one
DEFAULT_IMAGE_METHOD = "image"
_FIELD_FLAGS = {"data": "data.corpus", "steps": "train.steps", "seed": "seed", "device": "train.device",
                "init_from": "train.init_from", "distill_from": "train.distill_from"}


def new_run_config(args: argparse.Namespace, image: bool = False):
    """The config a new run trains with (``train``, ``mnist train``; ``config`` prints it): the ``--config``
    file or the method's ``--preset``, then ``--set`` and the flags that stand for fields. With ``--config``,
    ``--method`` and ``--preset`` may only repeat what the file says: the file's config is used whole.
    ``image``: ``mnist train``, which takes any method of the image family (default :data:`DEFAULT_IMAGE_METHOD`)."""
    from textdiffusion.config import apply_overrides
    from textdiffusion.methods import REGISTRY
    from textdiffusion.methods.configs import make_config, read_config_file

    overrides = list(args.overrides)
    for attr, key in _FIELD_FLAGS.items():
        if getattr(args, attr, None) is not None:
            overrides.append(f"{key}={getattr(args, attr)}")
    method = args.method
    if not args.config and not method and getattr(args, "distill_from", None):
        from textdiffusion.distill_from import student_config, teacher_config

        if not args.preset:  # a new round of the teacher's own config
            return student_config(args.distill_from, overrides)
        method = teacher_config(args.distill_from).method.name
    if not args.config:
        if image:
            method = method or DEFAULT_IMAGE_METHOD
            if method in REGISTRY and not is_image_method(method):
                raise ConfigError(f"--method {method} is a text method; train it with `textdiffusion train --method "
                                  f"{method}`")
        if not method:
            ways = [f"--method ({' | '.join(sorted(REGISTRY))})", "--config FILE"]
            if args.command == "train":
                ways.append("--resume RUN_DIR")
            raise ConfigError(f"{args.command} needs {', '.join(ways[:-1])} or {ways[-1]}")
        return make_config(method, args.preset or DEFAULT_PRESET, overrides)
    cfg = read_config_file(args.config)
    name = cfg.method.name
    if image and not is_image_method(name):
        raise ConfigError(f"--config {args.config} is a config of the text method {name}; train it with "
                          f"`textdiffusion train --config {args.config}`")
    if method and method != name:
        raise ConfigError(f"--method {method} and --config {args.config} (method {name}) disagree; leave --method "
                          f"out: the method comes with the file's options")
    if args.preset and args.preset != cfg.preset:
        raise ConfigError(f"--preset {args.preset} and --config {args.config} (preset {cfg.preset}) disagree; leave "
                          f"--preset out: the file's config is used whole (change single fields with --set)")
    return apply_overrides(cfg, overrides)


def train_new_run(cfg, args: argparse.Namespace) -> int:
    """Train ``cfg`` into ``--run-dir`` (or a fresh runs/ folder) and report; text and image alike."""
    from textdiffusion.trainer import default_run_dir, run_training

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    return report_training(run_training(cfg, run_dir, progress=not args.no_progress))


def resume_run(args: argparse.Namespace) -> int:
    """``train --resume RUN`` (text or image): the saved config decides everything but the step count."""
    from textdiffusion.trainer import resume_training

    flags = ("method", "preset", "config", "data", "run_dir", "seed", "device", "init_from", "distill_from")
    given = [f"--{name.replace('_', '-')}" for name in flags if getattr(args, name, None) is not None]
    given += ["--set"] if args.overrides else []
    if given:
        raise ConfigError(f"--resume continues a run with its saved config; only --steps may be changed, not "
                          f"{', '.join(given)}")
    if args.command == "mnist":
        refuse_text_run(args.resume, "train --resume")
    else:
        refuse_image_run(args.resume, "train --resume")
    return report_training(resume_training(Path(args.resume), progress=not args.no_progress, steps=args.steps))


def report_training(summary: TrainSummary) -> int:
    from textdiffusion.distributed import current_world

    if current_world().is_main:  # under torchrun, rank 0 speaks for the job
        _print_train_summary(summary)
    return 130 if summary.interrupted else 0


def _print_train_summary(summary: TrainSummary) -> None:
    rd, image, score = summary.run_dir, summary.unit == "images", summary.score
    if summary.scoring_interrupted:
        print(f"interrupted while scoring the final result; the run is saved at step {summary.step}: "
              f"`textdiffusion {'mnist ' if image else ''}train --resume {rd}` finishes the scoring", file=sys.stderr)
        return
    if summary.interrupted:
        print(f"stopped at step {summary.step}/{summary.steps}; saved. Continue with: "
              f"textdiffusion {'mnist ' if image else ''}train --resume {rd}", file=sys.stderr)
        return
    kind = "exact" if score is not None and score.kind == "exact" else "upper bound"
    if score is not None and score.unit == "dim":
        print(f"done: {summary.step} steps in {summary.elapsed:.1f}s of training, "
              f"{summary.rate:,.0f} images/s; val {score.bits:.4f} bits/dim ({kind}, "
              f"EMA weights, {score.windows} test images)")
        _print_bound(score, "test images", "")
        print(f"run: {rd}\n  sample: textdiffusion mnist sample {rd}\n  eval:   textdiffusion mnist eval {rd}")
        return
    if score is not None:
        print(f"done: {summary.step} steps in {summary.elapsed:.1f}s of training, "
              f"{summary.rate:,.0f} chars/s; val {score.bits:.4f} bits/char "
              f"({score.nats:.4f} nats/char, {kind}, EMA weights, {score.windows} windows)")
        _print_bound(score, "validation windows", f"; `textdiffusion eval {rd} --val-windows 0` scores all")
        if score.exact is not None:
            ex = score.exact
            print(f"exact {ex.bits:.4f} bits/char ({ex.nats:.4f} nats/char, {ex.label}; {ex.windows} windows)")
    else:
        print(f"stopped at step {summary.step} (checkpoint saved)")
    if summary.distill is not None:
        print(f"{summary.distill.label()}; the next round: textdiffusion train --distill-from {rd}")
    print(f"run: {rd}\n  sample: textdiffusion sample {rd} --show\n  eval:   textdiffusion eval {rd}")


def _print_bound(score: FinalScore, what: str, hint: str) -> None:
    """Say that the final score took a subset of the split because of train.final_eval_budget (a count fixed
    by train.final_eval_windows is the user's own and goes unsaid)."""
    from textdiffusion.final_score import budget_label

    if score.bounded and score.budget:
        print(f"scored {score.windows:,} of {score.windows_of:,} {what} (bounded to {budget_label(score.budget)} of "
              f"training time{hint})")
