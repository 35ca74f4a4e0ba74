"""The command line: one module per subcommand, each holding its flags beside the handler that uses them.

    textdiffusion train --method METHOD [--preset P | --config FILE] [--set KEY=VALUE]... | --resume RUN_DIR
    textdiffusion sample RUN_DIR [--prompt T | --infill T] [--n N] [--sampler S] [--steps K] [--show] ...
    textdiffusion eval RUN_DIR [--samples N]
    textdiffusion config --method METHOD [--preset P] [--set KEY=VALUE]... [--json]
    textdiffusion demo | compare RUN_DIR... --out DIR | serve RUN_DIR... | export RUN_DIR OUT
    textdiffusion mnist train|sample|eval|demo ...
    textdiffusion data [--check]
    textdiffusion repair RUN_DIR FILE [--rate P] [--channel uniform|keyboard] [--out FILE]

Each command module (:mod:`.train`, :mod:`.sample`, :mod:`.evaluate`, :mod:`.config`, :mod:`.demo`,
:mod:`.compare`, :mod:`.serve`, :mod:`.mnist`) has ``add(sub)``, which declares the command's flags, and the
handler the flags go to. :mod:`.flags` holds what several parsers share, :mod:`.checks` the checks several
handlers make before any work. Building the parser imports no torch, so ``--help`` answers at once
(tests/test_layout.py checks it): method and sampler names come from :mod:`textdiffusion.catalogue`, the user
errors from :mod:`textdiffusion.errors`, and each handler imports what it needs when it runs. Every flag has a
help line that says its default (tests/test_cli.py walks every parser), and the top level and each command
show examples.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import io
import os
import re
import sys
import warnings

from textdiffusion.apps.cli import compare, config, data, demo, evaluate, export, mnist, repair, sample, serve, train
from textdiffusion.apps.cli.checks import check_flags_agree
from textdiffusion.apps.cli.flags import HelpFormatter
from textdiffusion.catalogue import IMAGE_METHODS, TEXT_METHODS
from textdiffusion.config import ConfigError
from textdiffusion.errors import CheckpointError, ConfigWarning, DataError, did_you_mean, os_error_message
from textdiffusion.files import symlink_loop_message
from textdiffusion.sharing import command_line

USER_ERRORS = (ConfigError, DataError, CheckpointError)


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


_KEY_VALUE = re.compile(r"\s*[A-Za-z_][\w.]*\s*=")
_KEY = re.compile(r"[A-Za-z_][\w]*\.[\w.]+")  # section.field, with no value


def _refuse_spaced_setting(argv: list[str]) -> None:
    """``--set train.lr 1e-3`` (a space for the ``=``) would leave ``1e-3`` to argparse, which answers with the
    top-level usage; say instead how the setting is written. A word after the key that names an existing
    path is a positional (a run directory), not a value, and is left to the config's own message."""
    for i in range(len(argv) - 2):
        if argv[i] == "--":
            return
        key, value = argv[i + 1], argv[i + 2]
        if argv[i] == "--set" and _KEY.fullmatch(key) and not value.startswith("--") and not os.path.exists(value):
            raise ConfigError(f"--set takes KEY=VALUE as one word, got {key!r} then {value!r}; write --set "
                              f"{key}={value}")


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
        try:
            _refuse_spaced_setting(args)
        except ConfigError as e:
            self.exit(2, f"error: {e}\n")
        return super().parse_known_args(_one_setting_per_flag(args), namespace)

    def _check_value(self, action, value):
        """argparse's check of a choice (a preset, a command), with the closest choice named for a typo."""
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(value, [str(c) for c in action.choices])
            if hint:
                choices = ", ".join(map(repr, action.choices))
                raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {choices}){hint}")
        super()._check_value(action, value)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A :class:`~textdiffusion.errors.ConfigWarning` as one line, ``warning: ...``, like the errors; any other
    warning as Python shows it."""
    if issubclass(category, ConfigWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def build_parser() -> argparse.ArgumentParser:
    from textdiffusion import __version__

    p = _Parser(prog="textdiffusion", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"textdiffusion {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    for command in (train, sample, evaluate, config, demo, compare, serve, export, mnist, data, repair):
        command.add(sub)
    return p


#: error handlers that already write every character somehow
_ESCAPING = ("backslashreplace", "namereplace", "xmlcharrefreplace", "replace", "ignore")


def _print_anything() -> None:
    """Make stdout and stderr escape what they cannot encode, so printing never ends a command.

    Under ``LC_ALL=C`` with ``PYTHONIOENCODING=ascii`` (or any locale whose encoding lacks a character) a
    sample or table holding ``—`` or an emoji raised UnicodeEncodeError after the work was done; a run
    directory whose name is not UTF-8 reaches Python as a lone surrogate, which even UTF-8 cannot encode
    strictly. Such characters now print as ``\\u2014`` and ``\\udcff``; everything else prints as before."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or stream.errors in _ESCAPING:
            continue
        utf = codecs.lookup(stream.encoding).name.startswith("utf")
        if stream.errors == "strict" or not utf:  # UTF-8 with surrogateescape writes everything already
            stream.reconfigure(errors="backslashreplace")


_ALLOCATION = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes|out of memory\. tried to "
                         r"allocate ([\d.]+ [KMGT]?i?B)", re.IGNORECASE)


def _failed_allocation(e: RuntimeError) -> str | None:
    """What an allocator's error says was asked for ("an allocation of 48.0 GiB failed"), or None when ``e`` is
    not an out-of-memory error."""
    text = str(e)
    found = _ALLOCATION.search(text)
    if found and found.group(1):
        return f"an allocation of {int(found.group(1)) / 2**30:,.1f} GiB failed"
    if found:
        return f"an allocation of {found.group(2)} failed"
    if type(e).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return "an allocation failed"
    return None


def main(argv: list[str] | None = None) -> int:
    _print_anything()
    with warnings.catch_warnings():  # the one-line warnings last as long as the command
        warnings.showwarning = _show_warning
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not getattr(args, "torchrun", False):  # only training runs under torchrun
            from textdiffusion.distributed import refuse_world

            refuse_world(args.command if args.command != "mnist" else f"mnist {args.mnist_command}")
        check_flags_agree(args)
        with command_line(["textdiffusion", *(sys.argv[1:] if argv is None else argv)]):  # what a run records
            return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; ask for less (a smaller --n, --length, --samples or preset)", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's allocators raise RuntimeError (torch.OutOfMemoryError on a GPU)
        tried = _failed_allocation(e)
        if tried is None:
            raise
        print(f"error: out of memory ({tried}); ask for less (a smaller model, --n, --length, --samples or "
              f"preset)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped reading (`textdiffusion config | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 141
    except OSError as e:  # the machine, not the input: a full disk, a permission, a vanished file
        if e.errno == errno.ELOOP:  # a path the user gave, not the machine
            print(f"error: {symlink_loop_message(e.filename or 'a path')}", file=sys.stderr)
            return 2
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the trainer's says which checkpoint is intact
        print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
