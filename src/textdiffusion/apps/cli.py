"""Command line: parsing only. Each subcommand calls one function of the package.

    textdiffusion train --method {ar,masked} --preset {tiny,cpu,base} [--data X] [--steps N] [--run-dir D]
                        [--seed S] [--set key=value ...]
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
import sys
import time
from pathlib import Path

from textdiffusion.checkpoint import CheckpointError
from textdiffusion.config import PRESETS, ConfigError
from textdiffusion.data.corpus import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _positive(kind: type):
    def parse(value: str):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return v

    return parse


def cmd_train(args: argparse.Namespace) -> int:
    from textdiffusion.config import make_config
    from textdiffusion.methods import REGISTRY
    from textdiffusion.train import default_run_dir, resume_training, run_training

    if args.resume:
        if args.method or args.overrides or args.data or args.run_dir:
            raise ConfigError("--resume continues a run with its saved config; only --steps may be changed")
        summary = resume_training(Path(args.resume), progress=not args.no_progress, steps=args.steps)
    else:
        if not args.method:
            raise ConfigError(f"train needs --method ({' | '.join(sorted(REGISTRY))}) or --resume RUN_DIR")
        overrides = [item for group in args.overrides for item in group]
        if args.data:
            overrides.append(f"data.corpus={args.data}")
        if args.steps:
            overrides.append(f"train.steps={args.steps}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.device:
            overrides.append(f"train.device={args.device}")
        cfg = make_config(args.method, args.preset, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
        summary = run_training(cfg, run_dir, progress=not args.no_progress)
    _print_train_summary(summary)
    return 130 if summary["interrupted"] else 0


def _print_train_summary(summary: dict) -> None:
    rd = summary["run_dir"]
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


def _refuse_image_run(run_dir: str, command: str) -> None:
    from textdiffusion.checkpoint import read_json

    cfg = Path(run_dir) / "config.json"
    if cfg.exists() and read_json(cfg).get("config", {}).get("method", {}).get("name") == "image":
        raise ConfigError(f"{run_dir} is an image run; use `textdiffusion mnist {command} {run_dir}`")


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from textdiffusion.methods.base import SampleRequest
    from textdiffusion.runs import open_run
    from textdiffusion.viz import TerminalAnimation, TrajectoryRecorder

    overrides = [item for group in args.overrides for item in group]
    _refuse_image_run(args.run_dir, "sample")
    run = open_run(args.run_dir, weights=args.weights, device=args.device, overrides=overrides)
    req = SampleRequest(n=args.n, length=args.length or 0, prompt=args.prompt or "", infill=args.infill,
                        placeholder=args.placeholder, sampler=args.sampler or "", steps=args.steps or 0,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    callbacks = []
    if args.show:
        callbacks.append(TerminalAnimation(run.tokenizer, delay=args.delay))
    recorder = TrajectoryRecorder(run.tokenizer, args.placeholder) if args.trajectory else None
    if recorder:
        callbacks.append(recorder)

    def on_step(step, state, info):
        for cb in callbacks:
            cb(step, state, info)

    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    tic = time.perf_counter()
    with torch.no_grad():
        res = run.method.sample(run.model, req, gen, on_step if callbacks else None)
    seconds = time.perf_counter() - tic
    texts = [run.tokenizer.decode(row.tolist()) for row in res.ids.cpu()]
    if recorder:
        recorder.write(Path(args.trajectory), method=run.cfg.method.name, run=str(run.path),
                       sampler=res.info.get("sampler"), n=len(texts), length=res.ids.shape[1], nfe=res.nfe,
                       fixed=[row.nonzero().flatten().tolist() for row in res.fixed.cpu()],
                       final=texts)
    print(f"\n{'=' * 40}\n".join(texts))
    print(f"[{run.cfg.method.name} step {run.step}: {len(texts)} x {res.ids.shape[1]} chars, "
          f"sampler {res.info.get('sampler')}, {res.nfe:g} network evaluations per sample, {seconds:.2f}s]",
          file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from textdiffusion.evaluate import evaluate_run, format_table
    from textdiffusion.methods import get_method

    _refuse_image_run(args.run_dir, "eval")
    result = evaluate_run(args.run_dir, samples=args.samples, length=args.length or 0, sampler=args.sampler or "",
                          steps=args.steps or 0, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          seed=args.seed, val_windows=args.val_windows, device=args.device,
                          overrides=[item for group in args.overrides for item in group])
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
    args.method = None if args.resume else "image"
    if args.resume:
        return cmd_train(args)
    from textdiffusion.config import make_config
    from textdiffusion.train import default_run_dir, run_training

    overrides = [item for group in args.overrides for item in group]
    for flag, key in ((args.data, "data.corpus"), (args.steps, "train.steps"), (args.seed, "seed"),
                      (args.device, "train.device")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = make_config("image", args.preset, overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    summary = run_training(cfg, run_dir, progress=not args.no_progress)
    _print_train_summary(summary)
    return 130 if summary["interrupted"] else 0


def cmd_mnist_sample(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import check_digit, sample_images

    check_digit(args.digit)
    res = sample_images(args.run_dir, out=args.out, n=args.n or 0, digit=args.digit, sampler=args.sampler or "",
                        steps=args.steps or 0, eta=args.eta, guidance=args.guidance, seed=args.seed,
                        device=args.device, weights=args.weights, gif=not args.no_gif,
                        overrides=[item for group in args.overrides for item in group])
    for kind, path in res["files"].items():
        print(f"{kind}: {path}")
    print(f"[{res['n']} images, sampler {res['sampler']} {res['steps']} steps, {res['nfe']:g} network evaluations "
          f"per image, {res['seconds']:.2f}s]", file=sys.stderr)
    return 0


def cmd_mnist_eval(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import evaluate_images, format_eval

    row = evaluate_images(args.run_dir, samples=args.samples, sampler=args.sampler or "", steps=args.steps or 0,
                          eta=args.eta, guidance=args.guidance, seed=args.seed, device=args.device,
                          overrides=[item for group in args.overrides for item in group])
    print(format_eval(row))
    print(f"wrote {Path(args.run_dir) / 'eval.json'} (and appended to evals.jsonl)")
    return 0


def cmd_mnist_demo(args: argparse.Namespace) -> int:
    from textdiffusion.apps.mnist import run_demo

    return run_demo(steps=args.steps, data=args.data, run_dir=args.run_dir, preset=args.preset)


def _mnist_parser(sub) -> None:
    m = sub.add_parser("mnist", help="image diffusion on MNIST: train | sample | eval | demo")
    msub = m.add_subparsers(dest="mnist_command", required=True)
    t = msub.add_parser("train", help="train a DDPM U-Net (or --resume one)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model/trainer size (default cpu)")
    t.add_argument("--data", help="mnist (default: data dir or download), digits (offline 8x8), a mnist.npz "
                                  "or a directory of the four IDX files")
    t.add_argument("--steps", type=_positive(int))
    t.add_argument("--run-dir")
    t.add_argument("--seed", type=int)
    t.add_argument("--device")
    t.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="e.g. --set unet.base_channels=32 method.noise_schedule=cosine method.target=v")
    t.add_argument("--resume", metavar="RUN_DIR")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_mnist_train)

    s = msub.add_parser("sample", help="write a sample grid, a denoising strip and a GIF of the reverse process")
    s.add_argument("run_dir")
    s.add_argument("--out", help="output folder (default RUN/samples)")
    s.add_argument("--n", type=_positive(int), help="images (default 8 per digit, or 64 unconditional)")
    s.add_argument("--digit", type=int, help="generate only this digit (class-conditional runs)")
    s.add_argument("--sampler", choices=("ddpm", "ddim"))
    s.add_argument("--steps", type=_positive(int), help="network evaluations (<= the T of training)")
    s.add_argument("--eta", type=float, help="DDIM noise in [0, 1] (0 = deterministic)")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = plain conditional)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--no-gif", action="store_true")
    s.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="sampling options, e.g. --set method.clamp=false (no x0 clipping)")
    s.set_defaults(func=cmd_mnist_sample)

    e = msub.add_parser("eval", help="FID and class accuracy in a trained classifier's feature space")
    e.add_argument("run_dir")
    e.add_argument("--samples", type=_positive(int), default=1000)
    e.add_argument("--sampler", choices=("ddpm", "ddim"))
    e.add_argument("--steps", type=_positive(int))
    e.add_argument("--eta", type=float)
    e.add_argument("--guidance", type=float)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="sampling options, e.g. --set method.clamp=false (no x0 clipping)")
    e.set_defaults(func=cmd_mnist_eval)

    d = msub.add_parser("demo", help="train a small class-conditional model and write its samples (CPU minutes)")
    d.add_argument("--steps", type=_positive(int), help="training steps (default 1500)")
    d.add_argument("--data", default="mnist", help="mnist (falls back to the offline digits) or digits")
    d.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    d.add_argument("--run-dir")
    d.set_defaults(func=cmd_mnist_demo)


def build_parser() -> argparse.ArgumentParser:
    from textdiffusion.methods import REGISTRY

    p = argparse.ArgumentParser(prog="textdiffusion", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (or --resume one)")
    t.add_argument("--method", choices=sorted(REGISTRY), help="what to train")
    t.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model/trainer size (default cpu)")
    t.add_argument("--data", help="named corpus (tinyshakespeare), a UTF-8 file or a directory of .txt files")
    t.add_argument("--steps", type=_positive(int), help="optimizer steps (overrides the preset)")
    t.add_argument("--run-dir", help="where to write the run (default runs/METHOD-PRESET-TIME)")
    t.add_argument("--seed", type=int, help="random seed (default 1337)")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.n_layer=8 train.lr=2e-3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly where it left off")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--prompt", help="text the sample must start with")
    s.add_argument("--infill", help="text with placeholder characters to fill in, e.g. 'O ____ art thou'")
    s.add_argument("--placeholder", default="_", help="the character marking blanks in --infill (default _)")
    s.add_argument("--n", type=_positive(int), default=1, help="number of samples")
    s.add_argument("--length", type=_positive(int), help="characters per sample, prompt included (default: context)")
    s.add_argument("--steps", type=_positive(int), help="denoising steps (diffusion samplers)")
    s.add_argument("--sampler", help="ancestral | cached | confidence | topk (masked); ancestral (ar); "
                                     "ddim | ddpm | guided (embedding)")
    s.add_argument("--temperature", type=_positive(float), default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=_positive(float), default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--show", action="store_true", help="animate the denoising in the terminal (on stderr)")
    s.add_argument("--delay", type=float, default=0.03, help="seconds per frame of --show")
    s.add_argument("--trajectory", metavar="FILE", help="write every intermediate state as JSON")
    s.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA (default) or raw weights")
    s.add_argument("--device", default="auto")
    s.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="sampling options of the method, e.g. --set method.clamp=true method.eta=0.5")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="validation bits/char, sample quality and speed; writes RUN_DIR/eval.json")
    e.add_argument("run_dir")
    e.add_argument("--samples", type=_positive(int), default=64, help="number of samples to score (default 64)")
    e.add_argument("--length", type=_positive(int), help="characters per sample (default: context)")
    e.add_argument("--sampler")
    e.add_argument("--steps", type=_positive(int))
    e.add_argument("--temperature", type=_positive(float), default=1.0)
    e.add_argument("--top-k", type=int, default=0)
    e.add_argument("--top-p", type=_positive(float), default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--val-windows", type=int, default=0, help="validation windows to score (0 = all)")
    e.add_argument("--device", default="auto")
    e.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="sampling options of the method, e.g. --set method.clamp=true method.eta=0.5")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="train a small masked-diffusion model on Tiny Shakespeare and watch it write")
    d.add_argument("--steps", type=_positive(int), default=None, help="training steps (default 1500)")
    d.add_argument("--data", default="tinyshakespeare")
    d.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    d.add_argument("--run-dir")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("compare", help="compare runs: a self-contained HTML report, comparison.md and .json")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (text and image runs mix)")
    c.add_argument("--out", required=True, help="folder for report.html, comparison.md, comparison.json")
    c.add_argument("--samples", type=_positive(int), default=32,
                   help="samples per point of the quality-vs-speed sweep (default 32)")
    c.add_argument("--length", type=_positive(int), help="characters per sample (default: each run's context)")
    c.add_argument("--sweep", default="4,16,64,256",
                   help="comma-separated sampler step counts for the quality-vs-speed plot ('' = none)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--evaluate", action="store_true",
                   help="run `eval` on runs whose eval.json is missing or older than the checkpoint")
    c.add_argument("--refresh", action="store_true", help="recompute sweeps instead of reusing RUN/sweep.json")
    c.add_argument("--device", default="auto")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("serve", help="a local web page to sample and infill interactively, denoising streamed live")
    v.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="text run directories to offer")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--device", default="auto")
    v.add_argument("--max-steps", type=_positive(int), default=1000, help="largest step count a request may ask")
    v.add_argument("--max-concurrent", type=_positive(int), default=4, help="samplings running at once")
    v.set_defaults(func=cmd_serve)
    _mnist_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
