"""The data folder: the files the toolkit reads by name, each one's state there, and fetching what is missing.

Named data (``--data tinyshakespeare``, ``--data mnist``) lives in one folder, :func:`~.corpus.data_dir`
(``$TEXTDIFFUSION_DATA``, else ``~/.cache/textdiffusion``). The command line reads it, ``textdiffusion data``
fills it, and the test suite imports this module to check it, so there is one rule and not one per caller.
Every file is checked by content (the corpus's sha256, MNIST's array digests), whatever its name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from textdiffusion.data.corpus import NAMED_CORPORA, DataError, _download, accepted_names, find_named, sha256_of
from textdiffusion.data.images import MNIST_NPZ_URL, _download_mnist, is_canonical_mnist, load_mnist_npz


@dataclass(frozen=True)
class KnownFile:
    """A data file the toolkit reads by name: the names it is accepted under and where it comes from."""

    title: str  # for messages: "Tiny Shakespeare"
    names: tuple[str, ...]  # accepted file names; a download writes the first
    url: str
    problem: Callable[[Path], str | None]  # what is wrong with a file's content and the fix; None: canonical
    download: Callable[[Path], object]  # fetch it (checked) into the given path

    @property
    def accepted(self) -> str:
        return accepted_names(self.names)

    def find(self, folder: Path) -> Path | None:
        return find_named(folder, self.names)


@dataclass(frozen=True)
class FileState:
    """What the data folder holds of one known file."""

    file: KnownFile
    path: Path | None  # the file found or downloaded; None when missing
    problem: str | None = None  # "is missing", "has the wrong sha256 ...", why a download failed
    downloaded: bool = False

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def label(self) -> str:
        """The file's name in a message: the one found, else every accepted one."""
        return self.path.name if self.path is not None else self.file.accepted


_SHAKESPEARE = NAMED_CORPORA["tinyshakespeare"]


def _shakespeare_problem(path: Path) -> str | None:
    try:
        digest = sha256_of(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None if digest == _SHAKESPEARE.sha256 else "has the wrong sha256 (not Tiny Shakespeare: delete it)"


def _mnist_problem(path: Path) -> str | None:
    try:
        data = load_mnist_npz(path)
    except DataError:
        return "is not a readable MNIST .npz (delete it)"
    return None if is_canonical_mnist(data) else "has the wrong sha256 (not canonical MNIST: delete it)"


SHAKESPEARE = KnownFile("Tiny Shakespeare", _SHAKESPEARE.names, _SHAKESPEARE.url, _shakespeare_problem,
                        lambda dest: _download(_SHAKESPEARE, dest))


#: MNIST as the Keras ``mnist.npz`` (the library also reads the four IDX files; the tests and the download
#: use this one file)
MNIST = KnownFile("MNIST", ("mnist.npz",), MNIST_NPZ_URL, _mnist_problem, _download_mnist)

#: every file ``textdiffusion data`` puts in the data folder
KNOWN: tuple[KnownFile, ...] = (SHAKESPEARE, MNIST)


def check(file: KnownFile, folder: Path) -> FileState:
    """The state of ``file`` in ``folder``, its content checked; never downloads."""
    path = file.find(folder)
    if path is None:
        return FileState(file, None, "is missing")
    return FileState(file, path, file.problem(path))


def fetch(file: KnownFile, folder: Path) -> FileState:
    """:func:`check`, then a download (sha256-checked) if the file is missing. A file present with the wrong
    content is left alone: it is the user's, and the state says to delete it."""
    state = check(file, folder)
    if state.path is not None:
        return state
    dest = folder / file.names[0]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        file.download(dest)
    except (DataError, OSError) as e:
        # both downloaders word a network failure "could not download ...", other failures (a copy with the
        # wrong sha256, a folder not writable) in their first clause
        why = str(e).split(";")[0]
        why = "offline?" if why.startswith("could not download") else " ".join(why.split())
        return FileState(file, None, f"is missing and could not be downloaded ({why})")
    return FileState(file, dest, None, downloaded=True)


def explain(folder: Path, states: Sequence[FileState]) -> str:
    """One line: what is wrong in ``folder`` and every way to fix it (download, the URLs, another folder)."""
    bad = [s for s in states if not s.ok]
    what = ", ".join(f"{s.label} {s.problem}" for s in bad)
    get = " and ".join(f"{s.file.names[0]} from {s.file.url}" for s in bad)
    them = "them" if len(bad) > 1 else "it"
    where = f"the data folder {folder}" + ("" if folder.is_dir() else " (which does not exist)")
    return (f"{where} is incomplete: {what}; run `textdiffusion data` online to download {them}, or put {get} "
            f"there, or set TEXTDIFFUSION_DATA to a folder that holds {them}")
