"""``textdiffusion data``: put the named data where every command and the tests look for it, and say so."""

from __future__ import annotations

import argparse
import sys

from textdiffusion.apps.cli.flags import command

EPILOG = """\
The data folder is $TEXTDIFFUSION_DATA, else ~/.cache/textdiffusion: commands read named data
(--data tinyshakespeare, --data mnist) from it and the tests require it. Tiny Shakespeare is accepted as
tinyshakespeare.txt or input.txt (the name its link saves it as).

examples:
  textdiffusion data                                  # download what is missing, check what is there
  TEXTDIFFUSION_DATA=~/data textdiffusion data --check   # offline: only check the files you put there"""


def add(sub: argparse._SubParsersAction) -> None:
    d = command(sub, "data", "download Tiny Shakespeare and MNIST into the data folder, or check the ones there",
                epilog=EPILOG)
    d.add_argument("--check", action="store_true",
                   help="only check the files there, never download (default: download what is missing)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check (and fetch) every file, then print the folder and each file's state; anything wrong is one line
    naming every fix instead. What is being downloaded shows on a terminal only, so a log reads the same."""
    from textdiffusion.data.corpus import data_dir
    from textdiffusion.data.folder import KNOWN, check, explain, fetch
    from textdiffusion.errors import DataError

    folder = data_dir()
    states = []
    for file in KNOWN:
        if not args.check and file.find(folder) is None and sys.stderr.isatty():
            print(f"downloading {file.title} from {file.url} ...", file=sys.stderr, flush=True)
        states.append(check(file, folder) if args.check else fetch(file, folder))
    if not all(state.ok for state in states):
        raise DataError(explain(folder, states))
    print(f"data folder: {folder}")
    for state in states:
        done = "downloaded" if state.downloaded else "present"
        print(f"  {state.file.title:<17} {state.path}  {done}, sha256 checked")
    return 0
