"""The data files the test suite reads, how they are checked, and what a missing one does.

About half the tests read Tiny Shakespeare or MNIST from ``$TEXTDIFFUSION_DATA`` (default ``../shared/data``
beside the checkout). A suite that skipped them silently would look green while testing half of the package,
so a missing or wrong file is an error unless the user opts out:

- ``TEXTDIFFUSION_REQUIRE_DATA`` unset or ``1`` (CI sets ``1``, so an inherited opt-out cannot turn its
  failures into skips): when a collected test needs data, pytest stops at collection with one line naming the
  folder, the files and where to get them (``conftest.pytest_collection_modifyitems``).
- ``TEXTDIFFUSION_REQUIRE_DATA=0``: the tests that need a missing file skip, and say which file.

Run as a script (``python tests/required_data.py``, as ``.ci/run`` does before linting and testing), it checks
the folder and exits 1 with the same one line on stderr, so CI fails in seconds rather than after minutes.

The contents are checked by the library's own definitions of canonical data (the corpus's sha256, MNIST's
array digests), so this file holds no second copy of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE = "TEXTDIFFUSION_REQUIRE_DATA"


def data_folder() -> Path:
    """Where the tests read data from: ``$TEXTDIFFUSION_DATA``, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("TEXTDIFFUSION_DATA") or REPO.parent / "shared" / "data").expanduser()


def required() -> bool:
    """False only when the user opted out with ``TEXTDIFFUSION_REQUIRE_DATA=0``."""
    return os.environ.get(REQUIRE, "1").strip() != "0"


def _shakespeare_problem(path: Path) -> str | None:
    from textdiffusion.data.corpus import NAMED_CORPORA, sha256_of

    if sha256_of(path) != NAMED_CORPORA["tinyshakespeare"].sha256:
        return "has the wrong sha256"
    return None


def _mnist_problem(path: Path) -> str | None:
    from textdiffusion.data.images import is_canonical_mnist, load_mnist_npz
    from textdiffusion.errors import DataError

    try:
        data = load_mnist_npz(path)
    except DataError:
        return "is not a readable MNIST .npz"
    return None if is_canonical_mnist(data) else "has the wrong sha256 (its arrays are not canonical MNIST)"


def _urls() -> dict[str, str]:
    from textdiffusion.data.corpus import NAMED_CORPORA
    from textdiffusion.data.images import MNIST_NPZ_URL

    return {"tinyshakespeare.txt": NAMED_CORPORA["tinyshakespeare"].url, "mnist.npz": MNIST_NPZ_URL}


#: file name -> the fixture that hands it to tests (every test reading the file depends on that fixture,
#: directly or through another one) and the check of its contents (None when it is canonical)
FILES: dict[str, tuple[str, Callable[[Path], str | None]]] = {
    "tinyshakespeare.txt": ("shakespeare_file", _shakespeare_problem),
    "mnist.npz": ("mnist_file", _mnist_problem),
}


def problems(folder: Path, names: Iterable[str] = tuple(FILES)) -> dict[str, str]:
    """Each of the required files ``names`` that ``folder`` lacks or holds wrong, with what is wrong with it."""
    found: dict[str, str] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            found[name] = "is missing"
        else:
            problem = FILES[name][1](path)
            if problem:
                found[name] = problem
    return found


def explain(folder: Path, found: dict[str, str], names: Iterable[str] = tuple(FILES)) -> str:
    """One line: what is wrong in ``folder`` and how to fix it (where to download each file)."""
    urls = _urls()
    get = " and ".join(f"{name} from {urls[name]}" for name in found)
    holds = " and ".join(names)
    if not folder.is_dir():
        return (f"the test data folder {folder} does not exist; create it with {get}, or set TEXTDIFFUSION_DATA "
                f"to a folder that holds {holds}")
    what = ", ".join(f"{name} {problem}" for name, problem in found.items())
    return (f"the test data in {folder} is incomplete: {what}; download {get} into it, or set "
            f"TEXTDIFFUSION_DATA to a folder that holds {holds}")


def data_file(name: str) -> Path:
    """The path of the required file ``name`` for a fixture: a missing file fails the test with the fix, or,
    when the user opted out with ``TEXTDIFFUSION_REQUIRE_DATA=0``, skips it."""
    folder = data_folder()
    path = folder / name
    if not path.is_file():
        message = explain(folder, {name: "is missing"}, [name])
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
