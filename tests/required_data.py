"""The data files the test suite reads, how they are checked, and what a missing one does.

About half the tests read Tiny Shakespeare or MNIST from the library's data folder
(:func:`textdiffusion.data.corpus.data_dir`: ``$TEXTDIFFUSION_DATA``, else ``~/.cache/textdiffusion``), the
folder ``textdiffusion data`` fills and every command reads. A suite that skipped them silently would look green
while testing half of the package, so a missing or wrong file is an error unless the user opts out:

- ``TEXTDIFFUSION_REQUIRE_DATA`` unset or ``1`` (CI sets ``1``, so an inherited opt-out cannot turn its
  failures into skips): when a collected test needs data, pytest stops at collection with one line naming the
  folder, the files and how to get them (``conftest.pytest_collection_modifyitems``).
- ``TEXTDIFFUSION_REQUIRE_DATA=0``: the tests that need a missing file skip, and say which file.

Tests never download. Run as a script (``python tests/required_data.py``), it checks the folder and exits 1
with the same one line on stderr. The folder, the accepted names and the content checks are the library's
(:mod:`textdiffusion.data.folder`), so this file holds no second copy of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from textdiffusion.data.corpus import data_dir
from textdiffusion.data.folder import MNIST, SHAKESPEARE, FileState, KnownFile, check
from textdiffusion.data.folder import explain as explain_folder

REQUIRE = "TEXTDIFFUSION_REQUIRE_DATA"


def data_folder() -> Path:
    """Where the tests read data from: the library's data folder."""
    return data_dir()


def required() -> bool:
    """False only when the user opted out with ``TEXTDIFFUSION_REQUIRE_DATA=0``."""
    return os.environ.get(REQUIRE, "1").strip() != "0"


#: file name -> the fixture that hands it to tests (every test reading the file depends on that fixture,
#: directly or through another one) and the library's description of it
FILES: dict[str, tuple[str, KnownFile]] = {
    "tinyshakespeare.txt": ("shakespeare_file", SHAKESPEARE),
    "mnist.npz": ("mnist_file", MNIST),
}


def problems(folder: Path, names: Iterable[str] = tuple(FILES)) -> dict[str, FileState]:
    """Each of the required files ``names`` that ``folder`` lacks or holds wrong, with its state."""
    states = {name: check(FILES[name][1], folder) for name in names}
    return {name: state for name, state in states.items() if not state.ok}


def explain(folder: Path, found: dict[str, FileState]) -> str:
    """One line: what is wrong in ``folder`` and how to fix it (``textdiffusion data``, the URLs)."""
    return explain_folder(folder, list(found.values()))


def data_file(name: str) -> Path:
    """The path of the required file ``name`` for a fixture (under any name the library accepts): a missing
    file fails the test with the fix, or, when the user opted out with ``TEXTDIFFUSION_REQUIRE_DATA=0``, skips
    it."""
    folder = data_folder()
    path = FILES[name][1].find(folder)
    if path is None:
        message = explain(folder, problems(folder, [name]))
        if required():
            pytest.fail(message, pytrace=False)
        pytest.skip(f"{message} (skipped: {REQUIRE}=0)")
    return path


def main() -> int:
    folder = data_folder()
    found = problems(folder)
    if found:
        print(f"error: {explain(folder, found)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
