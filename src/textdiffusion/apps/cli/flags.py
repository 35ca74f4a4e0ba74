"""What the subcommands' parsers share: number types that say their range, the help formatter, and the flags
and help texts several commands take. Torch-free, so ``--help`` answers at once."""

from __future__ import annotations

import argparse
import math

from textdiffusion.catalogue import TEXT_METHODS
from textdiffusion.config import MAX_SAMPLE_STEPS, SEED, TEMPERATURE, TOP_K, TOP_P, Range

# the CLI's own number ranges (the ones that override config fields are imported with them)
# the CLI's own number ranges (the ones that override config fields are imported with them)
STEPS = Range(1, MAX_SAMPLE_STEPS)  # denoising steps of one sampling

TRAIN_STEPS = Range(1, 10**9)  # as train.steps

PORT = Range(0, 65535)  # 0 = any free port (the one taken is printed)

DELAY = Range(0.0, 60.0)  # seconds per frame of --show

VAL_WINDOWS = Range(0, 10**9)  # 0 = the whole validation split


def number(kind: type, bound: Range):
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


def positive(kind: type):
    """An argparse type for a count or size: a finite ``kind`` above 0 (an int below 2**31, so no count
    overflows a tensor's index before the code that uses it can say it is too large)."""
    return number(kind, Range(0, 2**31 - 1 if kind is int else None, lo_open=True))


DEFAULT_PRESET = "cpu"

PRESET_HELP = ("model and trainer size: tiny (seconds, for tests), cpu (nanoGPT's CPU shape, minutes), base "
                "(nanoGPT's shakespeare_char shape, a GPU)")

DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda, cuda:N or mps"


class HelpFormatter(argparse.HelpFormatter):
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


def command(sub: argparse._SubParsersAction, name: str, help: str, description: str = "",
            epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand whose own --help starts with what it does (``help`` is the line the command list shows)."""
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                          epilog=epilog or None, formatter_class=HelpFormatter)


def add_set(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


SET_HELP = ("change a sampling option of the run's method, one per --set, e.g. --set method.clamp=true --set "
             "method.eta=0.5 (`textdiffusion config` lists them, marked *)")

RUN_DIR_HELP = "a run directory, as `train` wrote it (it holds config.json and checkpoint.safetensors)"


def add_decoding(parser: argparse.ArgumentParser) -> None:
    """How text samples are drawn, shared by ``sample`` and ``eval`` so the two score the same thing."""
    # None = the run's own method.temperature / top_k / top_p (as trained, or changed with --set)
    parser.add_argument("--temperature", type=number(float, TEMPERATURE),
                        help="sharpen (< 1) or flatten (> 1) the token draw (default: the run's method.temperature, "
                             "1 unless set)")
    parser.add_argument("--top-k", type=number(int, TOP_K),
                        help="draw from the k likeliest tokens only, 0 = all (default: the run's method.top_k, 0)")
    parser.add_argument("--top-p", type=number(float, TOP_P),
                        help="nucleus: draw from the likeliest tokens holding this much probability, 1 = all "
                             "(default: the run's method.top_p, 1)")
    parser.add_argument("--seed", type=number(int, SEED), default=0,
                        help="seed of the draw: the same seed, run and flags give the same samples")


def text_sampler_help() -> str:
    """Each text method's samplers, read from the registry so a new method or sampler shows up unasked."""
    groups = [f"{' | '.join(samplers)} ({name})" for name, samplers in sorted(TEXT_METHODS.items())]
    return "; ".join(groups) + "; the first listed is the default unless the run's config names another"
