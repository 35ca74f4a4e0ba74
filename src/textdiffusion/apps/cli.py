"""The command line: a parser per subcommand, and a small ``cmd_*`` function per subcommand that calls the package.

    textdiffusion train --method METHOD [--preset P | --config FILE] [--set KEY=VALUE]... | --resume RUN_DIR
    textdiffusion sample RUN_DIR [--prompt T | --infill T] [--n N] [--sampler S] [--steps K] [--show] ...
    textdiffusion eval RUN_DIR [--samples N]
    textdiffusion config --method METHOD [--preset P] [--set KEY=VALUE]... [--json]
    textdiffusion demo | compare RUN_DIR... --out DIR | serve RUN_DIR...
    textdiffusion mnist train|sample|eval|demo ...

Building the parser imports no torch, so ``--help`` answers at once (tests/test_layout.py checks it): method
and sampler names come from :mod:`textdiffusion.catalogue`, the user errors from :mod:`textdiffusion.errors`,
and each ``cmd_*`` imports what it needs when it runs. Every flag has a help line that says its default
(tests/test_cli.py walks every parser), and the top level and each command show examples.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from textdiffusion.catalogue import GUIDANCE_RULES, IMAGE_METHODS, TEXT_METHODS, method_names
from textdiffusion.config import (
    ETA,
    GUIDANCE,
    MAX_SAMPLE_STEPS,
    PRESETS,
    SEED,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    Config,
    ConfigError,
    Range,
    override_keys,
)
from textdiffusion.errors import CheckpointError, DataError
from textdiffusion.limits import IMAGE_EVAL_SAMPLES, IMAGE_EVAL_STEPS

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
    if args.resume:
        return _resume_training(args)
    return _train_new_run(_new_run_config(args), args)


# the flags of train (and mnist train) that stand for one config field each; applied after --set, so they win
_FIELD_FLAGS = {"data": "data.corpus", "steps": "train.steps", "seed": "seed", "device": "train.device"}


def _new_run_config(args: argparse.Namespace, image: bool = False):
    """The config a new run trains with (``train``, ``mnist train``; ``config`` prints it): the ``--config``
    file or the method's ``--preset``, then ``--set`` and the flags that stand for fields. With ``--config``,
    ``--method`` and ``--preset`` may only repeat what the file says: the file's config is used whole."""
    from textdiffusion.config import apply_overrides, make_config, read_config_file
    from textdiffusion.methods import REGISTRY

    overrides = list(args.overrides)
    for attr, key in _FIELD_FLAGS.items():
        if getattr(args, attr, None) is not None:
            overrides.append(f"{key}={getattr(args, attr)}")
    method = "image" if image else args.method
    if not args.config:
        if not method:
            ways = [f"--method ({' | '.join(sorted(REGISTRY))})", "--config FILE"]
            if args.command == "train":
                ways.append("--resume RUN_DIR")
            raise ConfigError(f"{args.command} needs {', '.join(ways[:-1])} or {ways[-1]}")
        return make_config(method, args.preset or DEFAULT_PRESET, overrides)
    cfg = read_config_file(args.config)
    name = cfg.method.name
    if image and not _is_image_method(name):
        raise ConfigError(f"--config {args.config} is a config of the text method {name}; train it with "
                          f"`textdiffusion train --config {args.config}`")
    if method and method != name and not image:
        raise ConfigError(f"--method {method} and --config {args.config} (method {name}) disagree; leave --method "
                          f"out: the method comes with the file's options")
    if args.preset and args.preset != cfg.preset:
        raise ConfigError(f"--preset {args.preset} and --config {args.config} (preset {cfg.preset}) disagree; leave "
                          f"--preset out: the file's config is used whole (change single fields with --set)")
    return apply_overrides(cfg, overrides)


def _is_image_method(name: str) -> bool:
    from textdiffusion.methods import REGISTRY
    from textdiffusion.methods.image import ImageDiffusion

    return name in REGISTRY and issubclass(REGISTRY[name], ImageDiffusion)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the config ``train`` would start from with the same ``--method``/``--preset``/``--config``/``--set``:
    every field with its value, what it may hold and what it means; ``--json`` prints the bare config that
    ``--config`` reads back."""
    from textdiffusion.config import describe_fields

    cfg = _new_run_config(args, image=False)
    if args.json:
        print(cfg.to_json())
        return 0
    rows = describe_fields(cfg)
    width = max(len(r.key) for r in rows)
    shown = [_config_value(r.value) for r in rows]
    vwidth = min(max(len(v) for v in shown), 24)
    image = _is_image_method(cfg.method.name)
    train = "mnist train" if image else "train"
    source = (f"--config {args.config}" if args.config
              else f"{'' if image else f'--method {cfg.method.name} '}--preset {cfg.preset}")
    print(f"# the config `textdiffusion {train} {source}{' --set ...' if args.overrides else ''}` starts from; "
          f"--json prints it as the file --config reads")
    print("# * = a sampling option: `sample` and `eval` may change it on a trained run with --set")
    section = None
    for row, value in zip(rows, shown, strict=True):
        head = row.key.split(".")[0] if "." in row.key else "run"
        if head != section:
            section = head
            print(f"\n[{section}]")
        text = row.doc if _says(row.doc, row.allowed) else f"{row.doc} [{row.allowed}]"
        print(f"{row.key:<{width}} {'*' if row.sampling else ' '} {value:<{vwidth}}  {text}")
    return 0


def _says(doc: str, allowed: str) -> bool:
    """Whether a field's doc already names every value ``allowed`` lists ("one of a, b or c"), so the table
    need not repeat them."""
    options = re.split(r", | or ", allowed.removeprefix("one of "))
    return all(re.search(rf"(?<![\w:]){re.escape(o)}(?![\w:])", doc) for o in options if o)


def _config_value(value) -> str:
    """A field's value as ``--set`` would take it: true/false, numbers as Python writes them, text as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def _train_new_run(cfg, args: argparse.Namespace) -> int:
    """Train ``cfg`` into ``--run-dir`` (or a fresh runs/ folder) and report; text and image alike."""
    from textdiffusion.trainer import default_run_dir, run_training

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    return _report_training(run_training(cfg, run_dir, progress=not args.no_progress))


def _resume_training(args: argparse.Namespace) -> int:
    """``train --resume RUN`` (text or image): the saved config decides everything but the step count."""
    from textdiffusion.trainer import resume_training

    flags = ("method", "preset", "config", "data", "run_dir", "seed", "device")
    given = [f"--{name.replace('_', '-')}" for name in flags if getattr(args, name, None) is not None]
    given += ["--set"] if args.overrides else []
    if given:
        raise ConfigError(f"--resume continues a run with its saved config; only --steps may be changed, not "
                          f"{', '.join(given)}")
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
    from textdiffusion import limits as bounds
    from textdiffusion.api import TextModel, load

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
               "top_k": args.top_k, "top_p": args.top_p, "label": args.label or "",
               "guidance": 1.0 if args.guidance is None else args.guidance, "rule": args.guidance_rule or ""}
    plan = model.plan(args.prompt or "", **request)
    if trajectory and plan.batches > 1:
        raise ConfigError(f"--trajectory records every step of every sample, at most {plan.batch_size} samples of "
                          f"this length (one batch); use --n <= {plan.batch_size} with --trajectory")
    on_step, recorder = _sample_watchers(args, model.tokenizer)
    res = model.sample(args.prompt or "", **request, seed=args.seed, on_step=on_step, progress=not args.no_progress)
    if recorder:
        recorder.write(trajectory, method=model.method, run=str(model.path), sampler=res.sampler, n=len(res.texts),
                       length=res.length, nfe=res.nfe, fixed=[res.fixed] * len(res.texts), final=res.texts)
    print(f"\n{'=' * 40}\n".join(res.texts))
    print(f"[{model.method} step {model.step}: {len(res.texts)} x {res.length} chars, sampler {res.sampler}, "
          f"{res.nfe:g} network evaluations per sample, {res.seconds:.2f}s]", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from textdiffusion import limits as bounds
    from textdiffusion.api import TextModel, load
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
                            top_p=args.top_p, seed=args.seed, val_windows=args.val_windows,
                            progress=not args.no_progress)
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
                         progress=not args.no_progress, refresh=args.refresh, guidance=args.guidance)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from textdiffusion.apps.serve import serve

    return serve(args.run_dirs, host=args.host, port=args.port, device=args.device, max_steps=args.max_steps,
                 max_concurrent=args.max_concurrent)


def cmd_mnist_train(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume_training(args)
    return _train_new_run(_new_run_config(args, image=True), args)


def cmd_mnist_sample(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import check_digit, sample_images

    check_digit(args.digit)
    _refuse_text_run(args.run_dir, "sample")
    res = sample_images(args.run_dir, out=args.out, n=args.n or 0, digit=args.digit, sampler=args.sampler or "",
                        steps=args.steps or 0, eta=args.eta, guidance=args.guidance, seed=args.seed,
                        device=args.device, weights=args.weights, gif=not args.no_gif,
                        overrides=args.overrides, progress=not args.no_progress)
    for kind, path in res["files"].items():
        print(f"{kind}: {path}")
    print(f"[{res['n']} images, sampler {res['sampler']} {res['steps']} steps, {res['nfe']:g} network evaluations "
          f"per image, {res['seconds']:.2f}s]", file=sys.stderr)
    return 0


def cmd_mnist_eval(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import format_eval
    from textdiffusion.image_evaluation import evaluate_images

    _refuse_text_run(args.run_dir, "eval")
    row = evaluate_images(args.run_dir, samples=args.samples, sampler=args.sampler or "", steps=args.steps or 0,
                          eta=args.eta, guidance=args.guidance, seed=args.seed, device=args.device,
                          overrides=args.overrides, progress=not args.no_progress)
    print(format_eval(row))
    print(f"wrote {Path(args.run_dir) / 'eval.json'} (and appended to evals.jsonl)")
    return 0


def cmd_mnist_demo(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import run_demo

    return run_demo(steps=args.steps, data=args.data, run_dir=args.run_dir, preset=args.preset)


# ---- parsing ------------------------------------------------------------------------------------------------
DEFAULT_PRESET = "cpu"
_PRESET_HELP = ("model and trainer size: tiny (seconds, for tests), cpu (nanoGPT's CPU shape, minutes), base "
                "(nanoGPT's shakespeare_char shape, a GPU)")
_DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda, cuda:N or mps"

DESCRIPTION = ("Train, sample, evaluate and compare diffusion models on text and images, side by side with an "
               "autoregressive baseline. A run is one directory (config, checkpoint, metrics, samples) that every "
               "other command reads: `textdiffusion COMMAND --help` tells what each one takes.")

EPILOG = f"""\
methods: {', '.join(sorted(TEXT_METHODS))} (text); {', '.join(sorted(IMAGE_METHODS))} (`textdiffusion mnist`)
presets: tiny (seconds), cpu (minutes on a laptop), base (nanoGPT's shakespeare_char; a GPU)

examples:
  textdiffusion demo                                          # train a small model and watch it write
  textdiffusion train --method masked --preset cpu --run-dir runs/masked
  textdiffusion sample runs/masked --prompt "ROMEO:" --n 4 --show
  textdiffusion eval runs/masked                              # bits/char, sample quality, speed
  textdiffusion config --method masked --preset cpu           # every option: value and meaning
  textdiffusion train --config runs/masked/config.json --set train.lr=2e-3 --run-dir runs/masked-lr
  textdiffusion compare runs/ar runs/masked --out report/     # an HTML report of any mix of runs
  textdiffusion mnist train --preset cpu --run-dir runs/mnist && textdiffusion mnist eval runs/mnist"""


class _HelpFormatter(argparse.HelpFormatter):
    """Examples as written, paragraphs wrapped to the terminal, and every flag's default after its help.

    A description or epilog with line breaks (examples, lists) keeps them, as RawDescriptionHelpFormatter
    would; a one-paragraph description is wrapped to the terminal's width. argparse's
    ArgumentDefaultsHelpFormatter would also print "(default: None)" for every flag whose default means "not
    given" or "the run's own", which says nothing; those flags say in words what happens instead, and a help
    that already names its default is left alone."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "(default" in text or default is None or default is False
                or default is argparse.SUPPRESS or default == []):
            return text
        return f"{text} (default: %(default)s)"


def _command(sub, name: str, help: str, description: str = "", epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand whose own --help starts with what it does (``help`` is the line the command list shows)."""
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                          epilog=epilog or None, formatter_class=_HelpFormatter)


def _add_set(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


_SET_HELP = ("change a sampling option of the run's method, one per --set, e.g. --set method.clamp=true --set "
             "method.eta=0.5 (`textdiffusion config` lists them, marked *)")
_RUN_DIR_HELP = "a run directory, as `train` wrote it (it holds config.json and checkpoint.safetensors)"


def _add_decoding(parser: argparse.ArgumentParser) -> None:
    """How text samples are drawn, shared by ``sample`` and ``eval`` so the two score the same thing."""
    # None = the run's own method.temperature / top_k / top_p (as trained, or changed with --set)
    parser.add_argument("--temperature", type=_number(float, TEMPERATURE),
                        help="sharpen (< 1) or flatten (> 1) the token draw (default: the run's method.temperature, "
                             "1 unless set)")
    parser.add_argument("--top-k", type=_number(int, TOP_K),
                        help="draw from the k likeliest tokens only, 0 = all (default: the run's method.top_k, 0)")
    parser.add_argument("--top-p", type=_number(float, TOP_P),
                        help="nucleus: draw from the likeliest tokens holding this much probability, 1 = all "
                             "(default: the run's method.top_p, 1)")
    parser.add_argument("--seed", type=_number(int, SEED), default=0,
                        help="seed of the draw: the same seed, run and flags give the same samples")


def _text_sampler_help() -> str:
    """Each text method's samplers, read from the registry so a new method or sampler shows up unasked."""
    groups = [f"{' | '.join(samplers)} ({name})" for name, samplers in sorted(TEXT_METHODS.items())]
    return "; ".join(groups) + "; the first listed is the default unless the run's config names another"


def _add_new_run(parser: argparse.ArgumentParser, image: bool) -> None:
    """What ``train`` and ``mnist train`` share: where the config comes from and the flags that stand for
    single fields of it."""
    steps = ", ".join(f"{name} {p['train']['steps']}" for name, p in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help=f"{_PRESET_HELP} (default: {DEFAULT_PRESET}, or the --config file's)")
    parser.add_argument("--config", metavar="FILE",
                        help="start from this JSON config instead of a preset: a run's config.json or what "
                             "`textdiffusion config --json` prints; --set and the flags below apply on top")
    if image:
        parser.add_argument("--data", help="mnist (the data directory's mnist.npz or IDX files, else a download), "
                                           "digits (scikit-learn's offline 8x8 digits), a mnist.npz or a directory "
                                           "of the four IDX files (default: mnist)")
        parser.add_argument("--steps", type=_number(int, TRAIN_STEPS),
                            help="optimizer steps (default: the preset's; `textdiffusion config --method image` "
                                 "shows it)")
    else:
        parser.add_argument("--data", help="named corpus (tinyshakespeare), a UTF-8 file or a directory of .txt "
                                           "files (default: tinyshakespeare)")
        parser.add_argument("--steps", type=_number(int, TRAIN_STEPS),
                            help=f"optimizer steps (default: the preset's: {steps})")
    parser.add_argument("--run-dir", help="where to write the run; it must not hold another run "
                                          "(default: runs/METHOD-PRESET-TIME)")
    parser.add_argument("--seed", type=_number(int, SEED),
                        help=f"seed of the initial weights, the data order and the noise (default: {Config().seed})")
    parser.add_argument("--device", help=f"{_DEVICE_HELP} (default: auto)")
    example = ("--set unet.base_channels=32 --set method.target=v" if image
               else "--set model.n_layer=8 --set train.lr=2e-3")
    _add_set(parser, f"change any config field, one per --set, e.g. {example} (`textdiffusion config` lists "
                     f"every field)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run exactly where it left off, with its saved config (only "
                             "--steps may change)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the summary still prints)")


_TRAIN_EPILOG = """\
examples:
  textdiffusion train --method ar --preset cpu --run-dir runs/ar
  textdiffusion train --method masked --preset tiny --data my_corpus.txt --steps 200
  textdiffusion train --config runs/ar/config.json --set model.n_layer=6 --run-dir runs/ar-deeper
  textdiffusion train --resume runs/ar --steps 4000      # continue, with a longer schedule"""


def _train_parser(sub) -> None:
    t = _command(sub, "train", "train a model (or --resume one)",
                 "Train a model into a run directory: the method's preset (or a --config file), with --set and the "
                 "flags on top. Ctrl-C stops at a step boundary with a checkpoint that --resume continues.",
                 _TRAIN_EPILOG)
    t.add_argument("--method", metavar="METHOD", help=f"what to train: {', '.join(method_names())}")
    _add_new_run(t, image=False)
    t.set_defaults(func=cmd_train)


def _config_parser(sub) -> None:
    c = _command(sub, "config", "print a config with every field's value and meaning",
                 "Print the config `train` would start from with these flags: every field with its value, what it "
                 "may hold and what it means. Images: --method image (the config `mnist train` starts from).",
                 "examples:\n  textdiffusion config --method masked --preset cpu\n"
                 "  textdiffusion config --method image --preset cpu --set unet.base_channels=32\n"
                 "  textdiffusion config --config runs/masked/config.json          # what a run was trained with\n"
                 "  textdiffusion config --method ar --json > ar.json && textdiffusion train --config ar.json")
    c.add_argument("--method", metavar="METHOD", help=f"the method: {', '.join(method_names())}")
    c.add_argument("--preset", choices=sorted(PRESETS), help=f"{_PRESET_HELP} (default: {DEFAULT_PRESET})")
    c.add_argument("--config", metavar="FILE", help="show this config (a run's config.json, or a --json output) "
                                                    "instead of a preset's")
    _add_set(c, "change a field, one per --set, as `train --set` would")
    c.add_argument("--json", action="store_true",
                   help="print the bare config as JSON: the file `train --config` and `mnist train --config` read")
    c.set_defaults(func=cmd_config)


def _sample_parser(sub) -> None:
    s = _command(sub, "sample", "generate text from a trained run",
                 "Generate text from a trained run: unconditionally, after a --prompt, or filling the blanks of "
                 "an --infill template. Samples go to stdout, one per block; statistics to stderr.",
                 "examples:\n  textdiffusion sample runs/masked --prompt \"ROMEO:\" --n 4 --show\n"
                 "  textdiffusion sample runs/masked --infill $'ROMEO:\\nO ____ art thou' --sampler confidence\n"
                 "  textdiffusion sample runs/ar --length 500 --temperature 0.8 --top-p 0.95")
    s.add_argument("run_dir", help=_RUN_DIR_HELP)
    s.add_argument("--prompt", help="text the sample must start with")
    s.add_argument("--infill", help="text with placeholder characters to fill in, e.g. 'O ____ art thou'")
    s.add_argument("--placeholder", default="_", help="the character that marks a blank in --infill")
    s.add_argument("--n", type=_positive(int), default=1, help="number of samples")
    s.add_argument("--length", type=_positive(int),
                   help="characters per sample, prompt included (default: the model's context)")
    s.add_argument("--steps", type=_number(int, STEPS),
                   help="denoising steps of a diffusion sampler (default: the run's method.sample_steps, else the "
                        "method's: one per token for masked)")
    s.add_argument("--sampler", help=_text_sampler_help())
    _add_decoding(s)
    s.add_argument("--label", metavar="NAME",
                   help="write as this label (a speaker, e.g. ROMEO) of a run trained with --set data.labels=speaker")
    s.add_argument("--guidance", type=_number(float, GUIDANCE), metavar="W",
                   help="guidance toward --label: 0 = unconditional, 1 = plain conditional (default), above 1 "
                        "sharper")
    s.add_argument("--guidance-rule", choices=GUIDANCE_RULES,
                   help="free: classifier-free guidance, on a run trained with labels (the default); classifier: "
                        "a small classifier of the method's noisy states steers any run, trained on first use and "
                        "cached in RUN/speaker-classifier")
    s.add_argument("--show", action="store_true", help="animate the denoising in the terminal (on stderr)")
    s.add_argument("--delay", type=_number(float, DELAY), default=0.03, help="seconds per frame of --show")
    s.add_argument("--trajectory", metavar="FILE", help="write every intermediate state to this JSON file")
    s.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="ema: the moving average of the weights, which eval scores; model: the raw weights")
    s.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_set(s, _SET_HELP)
    s.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    s.set_defaults(func=cmd_sample)


def _eval_parser(sub) -> None:
    e = _command(sub, "eval", "validation bits/char, sample quality and speed; writes RUN_DIR/eval.json",
                 "Score a run: validation bits per character (exact for ar, an upper bound for diffusion), the "
                 "quality of its samples against a fixed character n-gram judge, and sampling speed. Prints a "
                 "table and writes RUN_DIR/eval.json; progress bars on stderr.",
                 "examples:\n  textdiffusion eval runs/masked\n"
                 "  textdiffusion eval runs/masked --sampler confidence --steps 16 --val-windows 256")
    e.add_argument("run_dir", help=_RUN_DIR_HELP)
    e.add_argument("--samples", type=_positive(int), default=64, help="number of samples to score")
    e.add_argument("--length", type=_positive(int), help="characters per sample (default: the model's context)")
    e.add_argument("--sampler", help=_text_sampler_help())
    e.add_argument("--steps", type=_number(int, STEPS),
                   help="denoising steps of a diffusion sampler (default: the run's method.sample_steps, else the "
                        "method's)")
    _add_decoding(e)
    e.add_argument("--val-windows", type=_number(int, VAL_WINDOWS), default=0,
                   help="validation windows to score (0 = the whole validation split)")
    e.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_set(e, _SET_HELP)
    e.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    e.set_defaults(func=cmd_eval)


def _demo_parser(sub) -> None:
    d = _command(sub, "demo", "train a small masked-diffusion model on Tiny Shakespeare and watch it write")
    d.add_argument("--steps", type=_number(int, TRAIN_STEPS), default=None,
                   help="training steps (default: 1500, a few minutes on a CPU)")
    d.add_argument("--data", default="tinyshakespeare", help="the corpus: a name, a UTF-8 file or a directory")
    d.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=_PRESET_HELP)
    d.add_argument("--run-dir", help="where to write the run (default: runs/masked-PRESET-TIME)")
    d.set_defaults(func=cmd_demo)


def _compare_parser(sub) -> None:
    c = _command(sub, "compare", "compare runs: a self-contained HTML report, comparison.md and .json",
                 epilog="example:\n  textdiffusion compare runs/ar runs/masked runs/mnist --out report/ --evaluate")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (text and image runs mix)")
    c.add_argument("--out", required=True, help="folder for report.html, comparison.md and comparison.json")
    c.add_argument("--samples", type=_positive(int), default=32,
                   help="samples per point of the quality-vs-speed sweep")
    c.add_argument("--length", type=_positive(int), help="characters per sample (default: each run's context)")
    c.add_argument("--sweep", default="4,16,64,256",
                   help="comma-separated sampler step counts for the quality-vs-speed plot ('' = none)")
    c.add_argument("--seed", type=_number(int, SEED), default=0, help="seed of the sweep's and the pictures' draws")
    c.add_argument("--evaluate", action="store_true",
                   help="run `eval` on runs whose eval.json is missing or older than the checkpoint")
    c.add_argument("--guidance", default="0,1,2,3,5",
                   help="comma-separated guidance scales w for the accuracy-vs-fluency curve of every run trained "
                        "with labels ('' or none = no curves); --samples is split over the labels")
    c.add_argument("--refresh", action="store_true",
                   help="recompute sweeps and guidance curves instead of reusing RUN/sweep.json and RUN/guidance.json")
    c.add_argument("--device", default="auto", help=_DEVICE_HELP)
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compare)


def _serve_parser(sub) -> None:
    v = _command(sub, "serve", "a local web page to sample and infill interactively, denoising streamed live",
                 epilog="example:\n  textdiffusion serve runs/masked runs/ar      # then open http://127.0.0.1:8000")
    v.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="text run directories to offer")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind; 127.0.0.1 is this machine only")
    v.add_argument("--port", type=_number(int, PORT), default=8000, help="port; 0 = any free one (printed)")
    v.add_argument("--device", default="auto", help=_DEVICE_HELP)
    v.add_argument("--max-steps", type=_number(int, STEPS), default=1000, help="largest step count a request may ask")
    v.add_argument("--max-concurrent", type=_number(int, Range(1, 1024)), default=4,
                   help="samplings running at once (more wait their turn)")
    v.set_defaults(func=cmd_serve)


def _mnist_train_parser(msub) -> None:
    t = _command(msub, "train", "train a DDPM U-Net (or --resume one)",
                 "Train a class-conditional DDPM U-Net on MNIST (the image preset, or a --config file), with "
                 "--set and the flags on top; the same trainer and run directory as text.",
                 "examples:\n  textdiffusion mnist train --preset cpu --run-dir runs/mnist\n"
                 "  textdiffusion mnist train --preset tiny --data digits --steps 200   # offline, seconds\n"
                 "  textdiffusion mnist train --config runs/mnist/config.json --set method.target=v --run-dir runs/v")
    _add_new_run(t, image=True)
    t.set_defaults(func=cmd_mnist_train)


def _add_image_sampling(parser: argparse.ArgumentParser, steps_help: str) -> None:
    """The image sampler's knobs, shared by ``mnist sample`` and ``mnist eval``; choices from the method."""
    parser.add_argument("--sampler", choices=IMAGE_METHODS["image"],
                        help="ddpm (ancestral) or ddim (deterministic at --eta 0) (default: the run's "
                             "method.sampler, ddpm unless set)")
    parser.add_argument("--steps", type=_number(int, STEPS), help=steps_help)
    parser.add_argument("--eta", type=_number(float, ETA),
                        help="DDIM noise in [0, 1], 0 = deterministic (default: the run's method.eta, 0)")
    parser.add_argument("--guidance", type=_number(float, GUIDANCE),
                        help="classifier-free guidance scale >= 0, 1 = plain conditional (default: the run's "
                             "method.guidance, 1)")
    parser.add_argument("--seed", type=_number(int, SEED), default=0, help="seed of the draw")
    parser.add_argument("--device", default="auto", help=_DEVICE_HELP)


_IMAGE_SET_HELP = ("change a sampling option, one per --set, e.g. --set method.clamp=false (no x0 clipping; "
                   "`textdiffusion config --method image` lists them, marked *)")


def _mnist_sample_parser(msub) -> None:
    s = _command(msub, "sample", "write a sample grid, a denoising strip and a GIF of the reverse process",
                 epilog="examples:\n  textdiffusion mnist sample runs/mnist --sampler ddim --steps 50 --guidance 3\n"
                        "  textdiffusion mnist sample runs/mnist --digit 7 --n 16 --out sevens/")
    s.add_argument("run_dir", help=_RUN_DIR_HELP)
    s.add_argument("--out", help="output folder (default: RUN_DIR/samples)")
    s.add_argument("--n", type=_positive(int), help="images (default: 8 per digit, or 64 unconditional)")
    s.add_argument("--digit", type=int, help="draw only this digit, 0-9 (class-conditional runs)")
    _add_image_sampling(s, "network evaluations per image, at most the run's training grid T (default: the run's "
                           "method.sample_steps, else T for ddpm and at most 250 for ddim)")
    s.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="ema: the moving average of the weights; model: the raw weights")
    s.add_argument("--no-gif", action="store_true", help="skip reverse.gif (the slowest file to write)")
    _add_set(s, _IMAGE_SET_HELP)
    s.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    s.set_defaults(func=cmd_mnist_sample)


def _mnist_eval_parser(msub) -> None:
    e = _command(msub, "eval", "FID and class accuracy in a trained classifier's feature space",
                 f"FID against the test set and class accuracy, in the feature space of a small MNIST classifier "
                 f"(trained once, about 3 CPU minutes, then cached), and the time per image. The defaults "
                 f"({IMAGE_EVAL_SAMPLES} samples, {IMAGE_EVAL_STEPS} steps) take about a minute on 2 CPU cores for "
                 f"a cpu-preset run; the cost is printed before the work starts. Writes RUN_DIR/eval.json.",
                 "example:\n  textdiffusion mnist eval runs/mnist --sampler ddim --guidance 2")
    e.add_argument("run_dir", help=_RUN_DIR_HELP)
    e.add_argument("--samples", type=_positive(int), default=IMAGE_EVAL_SAMPLES,
                   help="images to draw and score; FID is biased upward at small counts, so compare equal counts "
                        "(BENCHMARKS.md's table: 500)")
    _add_image_sampling(e, f"network evaluations per image (default: the run's method.sample_steps, else "
                           f"{IMAGE_EVAL_STEPS}, at most the run's training grid T)")
    _add_set(e, _IMAGE_SET_HELP)
    e.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    e.set_defaults(func=cmd_mnist_eval)


def _mnist_demo_parser(msub) -> None:
    d = _command(msub, "demo", "train a small class-conditional model and write its samples (CPU minutes)")
    d.add_argument("--steps", type=_number(int, TRAIN_STEPS), help="training steps (default: 1500)")
    d.add_argument("--data", default="mnist", help="mnist (falls back to the offline digits) or digits")
    d.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=_PRESET_HELP)
    d.add_argument("--run-dir", help="where to write the run (default: runs/image-PRESET-TIME)")
    d.set_defaults(func=cmd_mnist_demo)


def _mnist_parser(sub) -> None:
    m = _command(sub, "mnist", "image diffusion on MNIST: train | sample | eval | demo",
                 "Image diffusion on MNIST: a class-conditional DDPM U-Net through the same trainer, run "
                 "directories and Gaussian samplers as the text methods.",
                 "examples:\n  textdiffusion mnist demo                     # ~6 min on 2 CPU cores\n"
                 "  textdiffusion mnist train --preset cpu --run-dir runs/mnist\n"
                 "  textdiffusion mnist eval runs/mnist")
    msub = m.add_subparsers(dest="mnist_command", required=True, metavar="COMMAND", help="one of:")
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

    p = _Parser(prog="textdiffusion", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"textdiffusion {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    for add in (_train_parser, _sample_parser, _eval_parser, _config_parser, _demo_parser, _compare_parser,
                _serve_parser, _mnist_parser):
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
    except BrokenPipeError:  # the reader stopped reading (`textdiffusion config | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 141
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
