"""``textdiffusion repair``: a noisy text file put right by a trained run (:meth:`textdiffusion.api.TextModel.repair`).

A command of its own rather than ``sample --repair``: it reads a file and writes the same text mended, and none of
sampling's flags (a prompt, --n, --length, a sampler, guidance) mean anything to it, while its own (the channel,
its rate, each family's setting) mean nothing to sampling."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textdiffusion.apps.cli.checks import refuse_image_run
from textdiffusion.apps.cli.flags import DEVICE_HELP, RUN_DIR_HELP, command, number
from textdiffusion.config import SEED, ConfigError, Range

CHANNELS = ("uniform", "keyboard")  # textdiffusion.corruption.CHANNELS, named here so --help needs no torch
RATE = Range(0.0, 1.0, lo_open=True, hi_open=True)
# the settings each family reads: flag -> (RepairRequest field, range)
SETTINGS = {"--beam": ("beam", Range(1, 64)), "--candidates": ("candidates", Range(1, 1024)),
            "--groups": ("groups", Range(1, 64)), "--threshold": ("threshold", RATE),
            "--steps": ("steps", Range(1, 100_000))}


def add(sub: argparse._SubParsersAction) -> None:
    r = command(sub, "repair", "put right the characters a noisy channel changed in a text file",
                "Repair FILE, a text in which a fraction of the characters were replaced (typos, OCR slips), with "
                "a trained run, and print it (or write it to --out). uniform starts its reverse process at the "
                "noise level the rate matches; masked and block mask the characters least likely clean and fill "
                "them; ar decodes its prior times the channel with a beam. Any length: past the context, window "
                "after window. docs/where-diffusion-wins.md compares them.",
                "examples:\n  textdiffusion repair runs/ar noisy.txt --rate 0.1 --channel keyboard\n"
                "  textdiffusion repair runs/masked noisy.txt --out mended.txt\n"
                "  textdiffusion repair runs/uniform noisy.txt --rate 0.05 --steps 4")
    r.add_argument("run_dir", help=RUN_DIR_HELP)
    r.add_argument("file", help="the noisy text, UTF-8 (- reads standard input)")
    r.add_argument("--rate", type=number(float, RATE), default=0.1,
                   help="the fraction of characters believed changed, between 0 and 1")
    r.add_argument("--channel", choices=CHANNELS, default="uniform",
                   help="how characters were changed: uniform (into any other character) or keyboard (into a "
                        "neighbouring key, the other case, or an OCR lookalike)")
    r.add_argument("--out", metavar="FILE", help="write the repaired text to this file instead of stdout")
    r.add_argument("--beam", type=number(int, SETTINGS["--beam"][1]),
                   help="ar: prefixes the noisy-channel beam keeps (default: 4)")
    r.add_argument("--candidates", type=number(int, SETTINGS["--candidates"][1]),
                   help="ar: characters tried per position, the likeliest under the prior plus the one read "
                        "(default: 8)")
    r.add_argument("--groups", type=number(int, SETTINGS["--groups"][1]),
                   help="masked, block: disjoint groups of positions masked in turn to score every character "
                        "(default: 8)")
    r.add_argument("--threshold", type=number(float, SETTINGS["--threshold"][1]),
                   help="masked, block: mask every character less likely clean than this probability, instead of "
                        "the --rate's share of them")
    r.add_argument("--steps", type=number(int, SETTINGS["--steps"][1]),
                   help="uniform: reverse steps from the matched noise level to clean text (default: 1)")
    r.add_argument("--seed", type=number(int, SEED), default=0, help="seed of the draws a repairer makes")
    r.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="ema: the moving average of the weights, which eval scores; model: the raw weights")
    r.add_argument("--device", default="auto", help=DEVICE_HELP)
    r.add_argument("--no-progress", action="store_true", help="no progress bar (the text still prints)")
    r.set_defaults(func=run)


def read_noisy(file: str) -> str:
    """The text to repair, refused in one line when it is missing, a folder, not UTF-8 or empty."""
    if file == "-":
        text = sys.stdin.read()
    else:
        path = Path(file)
        if not path.exists():
            raise ConfigError(f"{file}: no such file; give the path of the noisy text (or - for standard input)")
        if not path.is_file():
            raise ConfigError(f"{file} is not a file; give the path of the noisy text")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{file} is not UTF-8 text; convert it (e.g. iconv -t UTF-8) and try again") from None
    if not text:
        raise ConfigError(f"{'standard input' if file == '-' else file} is empty; there is nothing to repair")
    return text


def run(args: argparse.Namespace) -> int:
    from textdiffusion import limits
    from textdiffusion.api import TextModel, load
    from textdiffusion.files import write_text

    out = limits.check_output_file(args.out, "--out") if args.out else None
    text = read_noisy(args.file)
    refuse_image_run(args.run_dir, "repair")
    model = load(args.run_dir, device=args.device, weights=args.weights)
    if not isinstance(model, TextModel):
        raise ConfigError(f"{args.run_dir} is an image run; repair takes a text run (ar, masked, block or uniform)")
    given = {field: getattr(args, flag[2:]) for flag, (field, _) in SETTINGS.items() if getattr(args, flag[2:])}
    res = model.repair(text, rate=args.rate, channel=args.channel, seed=args.seed, progress=not args.no_progress,
                       **given)
    if out is not None:
        write_text(out, res.text)
    else:
        sys.stdout.write(res.text)
        sys.stdout.flush()
    where = f", written to {out}" if out else ""
    print(f"[{model.method} step {model.step}: {len(text):,} chars in {res.windows} window"
          f"{'s' if res.windows != 1 else ''}, {res.changed:,} changed ({res.changed / len(text):.1%}); channel "
          f"{args.channel} at rate {args.rate:g}, {res.seconds:.2f}s{where}]", file=sys.stderr)
    return 0
