"""Command line: parsing only. Each subcommand calls one function of the package.

    textdiffusion train --method METHOD --preset {tiny,cpu,base} [--data X] [--steps N] [--run-dir D]
                        [--seed S] [--set key=value]...
    textdiffusion train --resume RUN_DIR [--steps N]
    textdiffusion sample RUN_DIR [--prompt T | --infill T] [--n N] [--length L] [--steps S] [--sampler NAME]
                        [--temperature T] [--seed S] [--show] [--trajectory FILE]
    textdiffusion eval RUN_DIR [--samples N]
    textdiffusion demo
    textdiffusion compare RUN_DIR... --out DIR   (HTML report + comparison.md + comparison.json)
    textdiffusion serve RUN_DIR... [--port 8000]   (live sampling page on http://127.0.0.1:8000)
    textdiffusion mnist train|sample|eval|demo ...   (image diffusion on MNIST, same trainer and run layout)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from textdiffusion.catalogue import IMAGE_METHODS, TEXT_METHODS, method_names
from textdiffusion.config import (
    ETA,
    GUIDANCE,
    MAX_SAMPLE_STEPS,
    PRESETS,
    SEED,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    ConfigError,
    Range,
    override_keys,
)
from textdiffusion.errors import CheckpointError, DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)

# the CLI's own number ranges (the ones that override config fields are imported with them)
STEPS = Range(1, MAX_SAMPLE_STEPS)  # denoising steps of one sampling
TRAIN_STEPS = Range(1, 10**9)  # as train.steps
PORT = Range(0, 65535)  # 0 = any free port (the one taken is printed)
DELAY = Range(0.0, 60.0)  # seconds per frame of --show
VAL_WINDOWS = Range(0, 10**9)  # 0 = the whole validation split


def _number(kind: type, bound: Range):
    """An argparse type: a ``kind`` (int or float) within ``bound``, else argparse's one-line usage error
    naming what is allowed. nan and inf are never within a bound; a whole number may be written 1e3."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
            if kind is int:  # 1e3 is a whole number; 1.5, nan and 1e999 are not
                try:
                    number = float(text)
                except ValueError:
                    number = math.nan
                if math.isfinite(number) and number.is_integer():
                    value = int(number)
            if value is None:
                raise argparse.ArgumentTypeError(f"must be {bound.describe(kind is int)}, got {text!r}") from None
        if not bound.allows(value):
            raise argparse.ArgumentTypeError(f"must be {bound.describe(kind is int)}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive(kind: type):
    """An argparse type for a count or size: a finite ``kind`` above 0 (an int below 2**31, so no count
    overflows a tensor's index before the code that uses it can say it is too large)."""
    return _number(kind, Range(0, 2**31 - 1 if kind is int else None, lo_open=True))


# sampling flags and the method field each overrides; given both, they must agree (see _check_flags_agree)
FLAG_FIELDS = {"temperature": "method.temperature", "top_k": "method.top_k", "top_p": "method.top_p",
               "sampler": "method.sampler", "steps": "method.sample_steps", "eta": "method.eta",
               "guidance": "method.guidance"}


def _check_flags_agree(args: argparse.Namespace) -> None:
    """``sample``/``eval`` (text and mnist): a flag and a ``--set`` of the field it overrides that disagree
    are refused, rather than one of them silently losing (the flag wins when they agree or only it is given;
    the run's config, ``--set`` included, decides when the flag is not given)."""
    sampling = args.command in ("sample", "eval") or getattr(args, "mnist_command", None) in ("sample", "eval")
    if not sampling:
        return
    sets = override_keys(args.overrides)
    for attr, key in FLAG_FIELDS.items():
        flag, raw = getattr(args, attr, None), sets.get(key)
        if flag is None or raw is None:
            continue
        try:
            same = float(raw) == flag if isinstance(flag, (int, float)) else raw == flag
        except ValueError:
            continue  # not a number: apply_overrides says so, by field name
        if not same:
            raise ConfigError(f"--{attr.replace('_', '-')} {flag} and --set {key}={raw} disagree; give only one")


def cmd_train(args: argparse.Namespace) -> int:
    from textdiffusion.config import make_config
    from textdiffusion.methods import REGISTRY

    if args.resume:
        return _resume_training(args)
    if not args.method:
        raise ConfigError(f"train needs --method ({' | '.join(sorted(REGISTRY))}) or --resume RUN_DIR")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.corpus={args.data}")
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    return _train_new_run(make_config(args.method, args.preset, overrides), args)


def _train_new_run(cfg, args: argparse.Namespace) -> int:
    """Train ``cfg`` into ``--run-dir`` (or a fresh runs/ folder) and report; text and image alike."""
    from textdiffusion.train import default_run_dir, run_training

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    return _report_training(run_training(cfg, run_dir, progress=not args.no_progress))


def _resume_training(args: argparse.Namespace) -> int:
    """``train --resume RUN`` (text or image): the saved config decides everything but the step count."""
    from textdiffusion.train import resume_training

    if getattr(args, "method", None) or args.overrides or args.data or args.run_dir:
        raise ConfigError("--resume continues a run with its saved config; only --steps may be changed")
    if args.command == "mnist":
        _refuse_text_run(args.resume, "train --resume")
    else:
        _refuse_image_run(args.resume, "train --resume")
    return _report_training(resume_training(Path(args.resume), progress=not args.no_progress, steps=args.steps))


def _report_training(summary: dict) -> int:
    from textdiffusion.distributed import current_world

    if current_world().is_main:  # under torchrun, rank 0 speaks for the job
        _print_train_summary(summary)
    return 130 if summary["interrupted"] else 0


def _print_train_summary(summary: dict) -> None:
    rd = summary["run_dir"]
    if summary.get("scoring_interrupted"):
        image = summary.get("unit") == "images"
        print(f"interrupted while scoring the final result; the run is saved at step {summary['step']}: "
              f"`textdiffusion {'mnist ' if image else ''}train --resume {rd}` finishes the scoring", file=sys.stderr)
        return
    if summary["interrupted"]:
        image = summary.get("unit") == "images"
        print(f"stopped at step {summary['step']}/{summary['steps']}; saved. Continue with: "
              f"textdiffusion {'mnist ' if image else ''}train --resume {rd}", file=sys.stderr)
        return
    if "val_bpd" in summary:
        print(f"done: {summary['step']} steps in {summary['elapsed']:.1f}s of training, "
              f"{summary['images_per_s']:,.0f} images/s; val {summary['val_bpd']:.4f} bits/dim (upper bound, "
              f"EMA weights, {summary['val_windows']} test images)")
        print(f"run: {rd}\n  sample: textdiffusion mnist sample {rd}\n  eval:   textdiffusion mnist eval {rd}")
        return
    if "val_bpc" in summary:
        kind = "exact" if summary["val_kind"] == "exact" else "upper bound"
        print(f"done: {summary['step']} steps in {summary['elapsed']:.1f}s of training, "
              f"{summary['chars_per_s']:,.0f} chars/s; val {summary['val_bpc']:.4f} bits/char "
              f"({summary['val_nats']:.4f} nats/char, {kind}, EMA weights, {summary['val_windows']} windows)")
    else:
        print(f"stopped at step {summary['step']} (checkpoint saved)")
    print(f"run: {rd}\n  sample: textdiffusion sample {rd} --show\n  eval:   textdiffusion eval {rd}")


def _run_kind(run_dir: str | Path) -> tuple[str, str] | None:
    """``("image" | "text", method name)`` of the run in ``run_dir``, read from config.json alone (nothing is
    loaded); None when that cannot be told (no such run, an unreadable or unknown config), which is left to
    the command itself, whose error says what is wrong with the run."""
    from textdiffusion.checkpoint import recorded_method
    from textdiffusion.methods import REGISTRY
    from textdiffusion.methods.image import ImageDiffusion

    name = recorded_method(Path(run_dir))
    cls = REGISTRY.get(name) if name else None
    if cls is None:
        return None
    return ("image" if issubclass(cls, ImageDiffusion) else "text"), name


def _refuse_image_run(run_dir: str, command: str) -> None:
    """Point an image run at ``textdiffusion mnist`` before the text path tries (and fails) to open it."""
    kind = _run_kind(run_dir)
    if kind and kind[0] == "image":
        raise ConfigError(f"{run_dir} is an image run; use `textdiffusion mnist {command} {run_dir}`")


def _refuse_text_run(run_dir: str, command: str) -> None:
    """Point a text run at ``textdiffusion sample|eval|train`` before ``mnist`` builds its model."""
    kind = _run_kind(run_dir)
    if kind and kind[0] == "text":
        raise ConfigError(f"{run_dir} is a text run (method {kind[1]}); use `textdiffusion {command} {run_dir}`")


def _sample_watchers(args: argparse.Namespace, tokenizer):
    """The ``on_step`` callback for ``--show`` and ``--trajectory`` (None when neither is asked, so the sampler
    does no per-step work), and the trajectory recorder to write afterwards (or None)."""
    from textdiffusion.viz import TerminalAnimation, TrajectoryRecorder

    callbacks = []
    if args.show:
        callbacks.append(TerminalAnimation(tokenizer, delay=args.delay))
    recorder = TrajectoryRecorder(tokenizer, args.placeholder) if args.trajectory else None
    if recorder:
        callbacks.append(recorder)

    def on_step(step, state, info):
        for cb in callbacks:
            cb(step, state, info)

    return (on_step if callbacks else None), recorder


def cmd_sample(args: argparse.Namespace) -> int:
    """Draw ``--n`` texts through the Python API (:meth:`textdiffusion.api.TextModel.sample`: batches that
    bound memory, exactly the draws of one sampling for everyday requests), refusing counts and steps past
    :mod:`.bounds`' limits and an unwritable ``--trajectory`` before the run is even loaded."""
    from textdiffusion.api import TextModel, load
    from textdiffusion.apps import bounds

    bounds.check_count(args.n, bounds.MAX_TEXT_SAMPLES, "--n", "the most one command draws",
                       "draw more in several runs with different --seed")
    if args.steps:  # the method's own (smaller) limit is checked once the run is open
        bounds.check_text_steps(args.steps, True, None)
    trajectory = bounds.check_output_file(args.trajectory, "--trajectory") if args.trajectory else None
    _refuse_image_run(args.run_dir, "sample")
    model = load(args.run_dir, device=args.device, weights=args.weights, overrides=args.overrides)
    if not isinstance(model, TextModel):
        raise ConfigError(f"{args.run_dir} is an image run; use `textdiffusion mnist sample {args.run_dir}`")
    request = {"infill": args.infill, "placeholder": args.placeholder, "n": args.n, "length": args.length or 0,
               "sampler": args.sampler or "", "steps": args.steps or 0, "temperature": args.temperature,
               "top_k": args.top_k, "top_p": args.top_p}
    plan = model.plan(args.prompt or "", **request)
    if trajectory and plan.batches > 1:
        raise ConfigError(f"--trajectory records every step of every sample, at most {plan.batch_size} samples of "
                          f"this length (one batch); use --n <= {plan.batch_size} with --trajectory")
    on_step, recorder = _sample_watchers(args, model.tokenizer)
    res = model.sample(args.prompt or "", **request, seed=args.seed, on_step=on_step)
    if recorder:
        recorder.write(trajectory, method=model.method, run=str(model.path), sampler=res.sampler, n=len(res.texts),
                       length=res.length, nfe=res.nfe, fixed=[res.fixed] * len(res.texts), final=res.texts)
    print(f"\n{'=' * 40}\n".join(res.texts))
    print(f"[{model.method} step {model.step}: {len(res.texts)} x {res.length} chars, sampler {res.sampler}, "
          f"{res.nfe:g} network evaluations per sample, {res.seconds:.2f}s]", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from textdiffusion.api import TextModel, load
    from textdiffusion.apps import bounds
    from textdiffusion.evaluate import format_table
    from textdiffusion.methods import get_method

    bounds.check_count(args.samples, bounds.MAX_IMAGE_EVAL, "--samples", "the most one evaluation scores",
                       "score fewer: the standard error shrinks only as 1/sqrt(n)")
    if args.steps:
        bounds.check_text_steps(args.steps, True, None)
    if args.length:
        bounds.check_text_length(args.length, True)
    _refuse_image_run(args.run_dir, "eval")
    model = load(args.run_dir, device=args.device, overrides=args.overrides)
    if not isinstance(model, TextModel):
        raise ConfigError(f"{args.run_dir} is an image run; use `textdiffusion mnist eval {args.run_dir}`")
    result = model.evaluate(samples=args.samples, length=args.length or 0, sampler=args.sampler or "",
                            steps=args.steps or 0, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, val_windows=args.val_windows)
    print(format_table(result, get_method(result["method"])))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from textdiffusion.apps.demo import run_demo

    return run_demo(steps=args.steps, data=args.data, run_dir=args.run_dir, preset=args.preset)


def cmd_compare(args: argparse.Namespace) -> int:
    from textdiffusion.apps.compare import compare_runs

    paths = compare_runs(args.run_dirs, args.out, samples=args.samples, length=args.length or 0,
                         sweep=args.sweep, seed=args.seed, device=args.device, evaluate=args.evaluate,
                         progress=not args.no_progress, refresh=args.refresh)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from textdiffusion.apps.serve import serve

    return serve(args.run_dirs, host=args.host, port=args.port, device=args.device, max_steps=args.max_steps,
                 max_concurrent=args.max_concurrent)


def cmd_mnist_train(args: argparse.Namespace) -> int:
    from textdiffusion.config import make_config

    if args.resume:
        return _resume_training(args)

    overrides = list(args.overrides)
    for flag, key in ((args.data, "data.corpus"), (args.steps, "train.steps"), (args.seed, "seed"),
                      (args.device, "train.device")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    return _train_new_run(make_config("image", args.preset, overrides), args)


def cmd_mnist_sample(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import check_digit, sample_images

    check_digit(args.digit)
    _refuse_text_run(args.run_dir, "sample")
    res = sample_images(args.run_dir, out=args.out, n=args.n or 0, digit=args.digit, sampler=args.sampler or "",
                        steps=args.steps or 0, eta=args.eta, guidance=args.guidance, seed=args.seed,
                        device=args.device, weights=args.weights, gif=not args.no_gif,
                        overrides=args.overrides)
    for kind, path in res["files"].items():
        print(f"{kind}: {path}")
    print(f"[{res['n']} images, sampler {res['sampler']} {res['steps']} steps, {res['nfe']:g} network evaluations "
          f"per image, {res['seconds']:.2f}s]", file=sys.stderr)
    return 0


def cmd_mnist_eval(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import evaluate_images, format_eval

    _refuse_text_run(args.run_dir, "eval")
    row = evaluate_images(args.run_dir, samples=args.samples, sampler=args.sampler or "", steps=args.steps or 0,
                          eta=args.eta, guidance=args.guidance, seed=args.seed, device=args.device,
                          overrides=args.overrides)
    print(format_eval(row))
    print(f"wrote {Path(args.run_dir) / 'eval.json'} (and appended to evals.jsonl)")
    return 0


def cmd_mnist_demo(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import run_demo

    return run_demo(steps=args.steps, data=args.data, run_dir=args.run_dir, preset=args.preset)


_SET_HELP = "sampling options of the method, one per --set, e.g. --set method.clamp=true --set method.eta=0.5"


def _add_set(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _add_decoding(parser: argparse.ArgumentParser) -> None:
    """How text samples are drawn, shared by ``sample`` and ``eval`` so the two score the same thing."""
    # None = the run's own method.temperature / top_k / top_p (as trained, or changed with --set)
    parser.add_argument("--temperature", type=_number(float, TEMPERATURE),
                        help="sharpen (< 1) or flatten (> 1) the token draw (default: the run's, 1 unless set)")
    parser.add_argument("--top-k", type=_number(int, TOP_K), help="keep the k likeliest tokens (0 = all)")
    parser.add_argument("--top-p", type=_number(float, TOP_P), help="nucleus: keep this much probability (1 = all)")
    parser.add_argument("--seed", type=_number(int, SEED), default=0)


def _text_sampler_help() -> str:
    """Each text method's samplers, read from the registry so a new method or sampler shows up unasked."""
    groups = [f"{' | '.join(samplers)} ({name})" for name, samplers in sorted(TEXT_METHODS.items())]
    return "; ".join(groups) + "; the first listed is the default unless the run's config names another"


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model (or --resume one)")
    t.add_argument("--method", metavar="METHOD", help=f"what to train: {', '.join(method_names())}")
    t.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model/trainer size (default cpu)")
    t.add_argument("--data", help="named corpus (tinyshakespeare), a UTF-8 file or a directory of .txt files")
    t.add_argument("--steps", type=_number(int, TRAIN_STEPS), help="optimizer steps (overrides the preset)")
    t.add_argument("--run-dir", help="where to write the run (default runs/METHOD-PRESET-TIME)")
    t.add_argument("--seed", type=_number(int, SEED), help="random seed (default 1337)")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    _add_set(t, "override any config field, one per --set, e.g. --set model.n_layer=8 --set train.lr=2e-3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly where it left off")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


def _sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--prompt", help="text the sample must start with")
    s.add_argument("--infill", help="text with placeholder characters to fill in, e.g. 'O ____ art thou'")
    s.add_argument("--placeholder", default="_", help="the character marking blanks in --infill (default _)")
    s.add_argument("--n", type=_positive(int), default=1, help="number of samples")
    s.add_argument("--length", type=_positive(int), help="characters per sample, prompt included (default: context)")
    s.add_argument("--steps", type=_number(int, STEPS), help="denoising steps (diffusion samplers)")
    s.add_argument("--sampler", help=_text_sampler_help())
    _add_decoding(s)
    s.add_argument("--show", action="store_true", help="animate the denoising in the terminal (on stderr)")
    s.add_argument("--delay", type=_number(float, DELAY), default=0.03, help="seconds per frame of --show")
    s.add_argument("--trajectory", metavar="FILE", help="write every intermediate state as JSON")
    s.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA (default) or raw weights")
    s.add_argument("--device", default="auto")
    _add_set(s, _SET_HELP)
    s.set_defaults(func=cmd_sample)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="validation bits/char, sample quality and speed; writes RUN_DIR/eval.json")
    e.add_argument("run_dir")
    e.add_argument("--samples", type=_positive(int), default=64, help="number of samples to score (default 64)")
    e.add_argument("--length", type=_positive(int), help="characters per sample (default: context)")
    e.add_argument("--sampler", help=_text_sampler_help())
    e.add_argument("--steps", type=_number(int, STEPS))
    _add_decoding(e)
    e.add_argument("--val-windows", type=_number(int, VAL_WINDOWS), default=0,
                   help="validation windows to score (0 = all)")
    e.add_argument("--device", default="auto")
    _add_set(e, _SET_HELP)
    e.set_defaults(func=cmd_eval)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="train a small masked-diffusion model on Tiny Shakespeare and watch it write")
    d.add_argument("--steps", type=_number(int, TRAIN_STEPS), default=None, help="training steps (default 1500)")
    d.add_argument("--data", default="tinyshakespeare")
    d.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    d.add_argument("--run-dir")
    d.set_defaults(func=cmd_demo)


def _compare_parser(sub) -> None:
    c = sub.add_parser("compare", help="compare runs: a self-contained HTML report, comparison.md and .json")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (text and image runs mix)")
    c.add_argument("--out", required=True, help="folder for report.html, comparison.md, comparison.json")
    c.add_argument("--samples", type=_positive(int), default=32,
                   help="samples per point of the quality-vs-speed sweep (default 32)")
    c.add_argument("--length", type=_positive(int), help="characters per sample (default: each run's context)")
    c.add_argument("--sweep", default="4,16,64,256",
                   help="comma-separated sampler step counts for the quality-vs-speed plot ('' = none)")
    c.add_argument("--seed", type=_number(int, SEED), default=0)
    c.add_argument("--evaluate", action="store_true",
                   help="run `eval` on runs whose eval.json is missing or older than the checkpoint")
    c.add_argument("--refresh", action="store_true", help="recompute sweeps instead of reusing RUN/sweep.json")
    c.add_argument("--device", default="auto")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_compare)


def _serve_parser(sub) -> None:
    v = sub.add_parser("serve", help="a local web page to sample and infill interactively, denoising streamed live")
    v.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="text run directories to offer")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=_number(int, PORT), default=8000, help="0 = any free port (default 8000)")
    v.add_argument("--device", default="auto")
    v.add_argument("--max-steps", type=_number(int, STEPS), default=1000, help="largest step count a request may ask")
    v.add_argument("--max-concurrent", type=_number(int, Range(1, 1024)), default=4, help="samplings running at once")
    v.set_defaults(func=cmd_serve)


def _mnist_train_parser(msub) -> None:
    t = msub.add_parser("train", help="train a DDPM U-Net (or --resume one)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model/trainer size (default cpu)")
    t.add_argument("--data", help="mnist (default: data dir or download), digits (offline 8x8), a mnist.npz "
                                  "or a directory of the four IDX files")
    t.add_argument("--steps", type=_number(int, TRAIN_STEPS))
    t.add_argument("--run-dir")
    t.add_argument("--seed", type=_number(int, SEED))
    t.add_argument("--device")
    _add_set(t, "e.g. --set unet.base_channels=32 --set method.noise_schedule=cosine --set method.target=v")
    t.add_argument("--resume", metavar="RUN_DIR")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_mnist_train)


def _add_image_sampling(parser: argparse.ArgumentParser) -> None:
    """The image sampler's knobs, shared by ``mnist sample`` and ``mnist eval``; choices from the method."""
    parser.add_argument("--sampler", choices=IMAGE_METHODS["image"])
    parser.add_argument("--steps", type=_number(int, STEPS), help="network evaluations (<= the T of training)")
    parser.add_argument("--eta", type=_number(float, ETA),
                        help="DDIM noise in [0, 1] (0 = deterministic; default: the run's method.eta)")
    parser.add_argument("--guidance", type=_number(float, GUIDANCE),
                        help="classifier-free guidance scale >= 0 (1 = plain conditional; default: the run's)")
    parser.add_argument("--seed", type=_number(int, SEED), default=0)
    parser.add_argument("--device", default="auto")


_IMAGE_SET_HELP = "sampling options, e.g. --set method.clamp=false (no x0 clipping)"


def _mnist_sample_parser(msub) -> None:
    s = msub.add_parser("sample", help="write a sample grid, a denoising strip and a GIF of the reverse process")
    s.add_argument("run_dir")
    s.add_argument("--out", help="output folder (default RUN/samples)")
    s.add_argument("--n", type=_positive(int), help="images (default 8 per digit, or 64 unconditional)")
    s.add_argument("--digit", type=int, help="generate only this digit (class-conditional runs)")
    _add_image_sampling(s)
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--no-gif", action="store_true")
    _add_set(s, _IMAGE_SET_HELP)
    s.set_defaults(func=cmd_mnist_sample)


def _mnist_eval_parser(msub) -> None:
    e = msub.add_parser("eval", help="FID and class accuracy in a trained classifier's feature space")
    e.add_argument("run_dir")
    e.add_argument("--samples", type=_positive(int), default=1000)
    _add_image_sampling(e)
    _add_set(e, _IMAGE_SET_HELP)
    e.set_defaults(func=cmd_mnist_eval)


def _mnist_demo_parser(msub) -> None:
    d = msub.add_parser("demo", help="train a small class-conditional model and write its samples (CPU minutes)")
    d.add_argument("--steps", type=_number(int, TRAIN_STEPS), help="training steps (default 1500)")
    d.add_argument("--data", default="mnist", help="mnist (falls back to the offline digits) or digits")
    d.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    d.add_argument("--run-dir")
    d.set_defaults(func=cmd_mnist_demo)


def _mnist_parser(sub) -> None:
    m = sub.add_parser("mnist", help="image diffusion on MNIST: train | sample | eval | demo")
    msub = m.add_subparsers(dest="mnist_command", required=True)
    for add in (_mnist_train_parser, _mnist_sample_parser, _mnist_eval_parser, _mnist_demo_parser):
        add(msub)


_KEY_VALUE = re.compile(r"\s*[A-Za-z_][\w.]*\s*=")


def _one_setting_per_flag(argv: list[str]) -> list[str]:
    """Rewrite ``--set a=1 b=2`` as ``--set a=1 --set b=2``.

    ``--set`` takes one KEY=VALUE, so a run directory may follow it (``sample --set method.eta=0.5 RUN``);
    command lines written for the older several-per-flag form keep working: the KEY=VALUE items that follow
    a setting are given flags of their own. The first item after ``--set`` is left to argparse as before (a
    malformed one is reported by the config, which says what a setting looks like)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item == "--":  # everything after it is positional
            return out + argv[i:]
        out.append(item)
        i += 1
        if item == "--set" and i < len(argv) and not argv[i].startswith("-"):
            out.append(argv[i])
            i += 1
            while i < len(argv) and _KEY_VALUE.match(argv[i]):
                out += ["--set", argv[i]]
                i += 1
    return out


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that accepts the several-settings-per ``--set`` form (:func:`_one_setting_per_flag`)."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(_one_setting_per_flag(args), namespace)


def build_parser() -> argparse.ArgumentParser:
    from textdiffusion import __version__

    p = _Parser(prog="textdiffusion", description="Train, sample, evaluate and compare diffusion models on text "
                                                  "and images, side by side with an autoregressive baseline.")
    p.add_argument("--version", action="version", version=f"textdiffusion {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _sample_parser, _eval_parser, _demo_parser, _compare_parser, _serve_parser,
                _mnist_parser):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.func not in (cmd_train, cmd_mnist_train):
            from textdiffusion.distributed import refuse_world

            refuse_world(args.command if args.command != "mnist" else f"mnist {args.mnist_command}")
        _check_flags_agree(args)
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; ask for less (a smaller --n, --length, --samples or preset)", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, a permission, a vanished file
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; check the path, its permissions and the free disk space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the trainer's says which checkpoint is intact
        print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
