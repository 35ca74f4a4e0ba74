"""Finding and reading a text corpus.

A corpus is a UTF-8 file, a directory of ``.txt`` files, or a *named* corpus. Named corpora are resolved
from the data folder (:func:`data_dir`) and otherwise downloaded from their canonical public URL, with the
SHA-256 checked, so that every number in this project is computed on byte-identical data.
"""

from __future__ import annotations

import hashlib
import os
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from textdiffusion.errors import DataError
from textdiffusion.files import write_bytes


@dataclass(frozen=True)
class NamedCorpus:
    filename: str  # the name a download is saved under
    url: str
    sha256: str
    chars: int
    #: other names the file is accepted under in the data folder: the name its link saves it as
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted file name, the one a download writes first."""
        return (self.filename, *self.aliases)

    @property
    def accepted(self) -> str:
        return accepted_names(self.names)

    def find(self, folder: Path) -> Path | None:
        return find_named(folder, self.names)


def accepted_names(names: tuple[str, ...]) -> str:
    """A file's accepted names for a message: ``tinyshakespeare.txt (or input.txt)``."""
    return names[0] + "".join(f" (or {alias})" for alias in names[1:])


def find_named(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The file in ``folder`` under the first of ``names`` present, or None."""
    return next((folder / name for name in names if path_exists(folder / name)), None)


NAMED_CORPORA: dict[str, NamedCorpus] = {
    "tinyshakespeare": NamedCorpus(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        chars=1_115_394,
        aliases=("input.txt",),
    ),
}


def data_dir() -> Path:
    """The data folder, where named data is looked for and downloaded to: ``$TEXTDIFFUSION_DATA``, else
    ``~/.cache/textdiffusion`` (``$XDG_CACHE_HOME`` respected). The one rule: the command line, the Python API,
    ``textdiffusion data`` and the test suite all call this."""
    env = os.environ.get("TEXTDIFFUSION_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "textdiffusion"


def cache_dir() -> Path:
    """Where derived artefacts (e.g. the evaluation classifier) are kept: ``$TEXTDIFFUSION_CACHE`` or
    ``~/.cache/textdiffusion``. Separate from the data directory, which may be read-only or shared."""
    env = os.environ.get("TEXTDIFFUSION_CACHE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "textdiffusion"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_exists(path: Path) -> bool:
    """``path.exists()``, but a folder on the way that may not be searched is a one-line DataError rather
    than a PermissionError traceback (``Path.exists`` only swallows "no such file")."""
    try:
        return path.exists()
    except OSError as e:
        raise _cannot_read(path, e) from None


def _download(spec: NamedCorpus, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(spec.url, timeout=30) as r:
            payload = r.read()
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise DataError(
            f"could not download {spec.filename} ({type(e).__name__}: {e}); offline? download it from "
            f"{spec.url} and put it in {dest.parent} as {spec.accepted}, or set TEXTDIFFUSION_DATA to the "
            f"folder that holds it (`train` also takes --data /path/to/{spec.filename})"
        ) from None
    if hashlib.sha256(payload).hexdigest() != spec.sha256:
        raise DataError(f"downloaded {spec.filename} has the wrong sha256; fetch {spec.url} by hand")
    write_bytes(dest, payload)


def resolve_corpus(name_or_path: str, download: bool = True) -> Path:
    """Turn ``--data`` into a path: an existing file/dir, or a named corpus (data dir, then download)."""
    p = Path(name_or_path).expanduser()
    if path_exists(p):
        return p
    key = name_or_path.lower()
    if key in NAMED_CORPORA:
        spec = NAMED_CORPORA[key]
        folder = data_dir()
        local = spec.find(folder)
        if local is not None:
            digest = _sha256_or_error(local)
            if digest != spec.sha256:
                raise DataError(
                    f"{local} is not the canonical {key} (sha256 {digest[:12]}… != {spec.sha256[:12]}…); "
                    f"delete it so it is downloaded again (`train` also takes your own file with --data PATH)"
                )
            return local
        local = folder / spec.filename
        if not download:
            raise DataError(f"{key} not found in {folder}; set TEXTDIFFUSION_DATA to the folder holding "
                            f"{spec.accepted}, or download it from {spec.url}")
        _download(spec, local)
        return local
    names = ", ".join(NAMED_CORPORA)
    raise DataError(f"no such corpus file or directory: {name_or_path!r}; pass a path to a UTF-8 text file, "
                    f"a directory of .txt files, or a named corpus ({names})")


#: the largest corpus read (all files of a directory together). Reading and tokenising holds about
#: MEMORY_PER_BYTE bytes per byte of text (the text, its ids as int64, the training split's copy), so the
#: limit is also at most the machine's memory divided by that
MAX_CORPUS_BYTES = 4 << 30
MEMORY_PER_BYTE = 20


def corpus_byte_limit() -> int:
    """The most bytes of text :func:`read_corpus` reads on this machine (see :data:`MAX_CORPUS_BYTES`)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform tells
        return MAX_CORPUS_BYTES
    return min(MAX_CORPUS_BYTES, memory // MEMORY_PER_BYTE)


def _cannot_read(path: Path, e: OSError) -> DataError:
    fix = ("give yourself read access (chmod u+r) or pass another file" if isinstance(e, PermissionError)
           else "check the path, or pass another file")
    return DataError(f"cannot read {path}: {e.strerror or e}; {fix}")


def _regular_file(path: Path) -> int:
    """The size of ``path``, refusing anything but a regular file: a device (``/dev/zero``), a pipe or a
    socket has no end to read to."""
    try:
        st = path.stat()
    except OSError as e:
        raise _cannot_read(path, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file (a device, pipe or socket); pass a UTF-8 text file or a "
                        f"directory of .txt files")
    return st.st_size


def human_bytes(n: int) -> str:
    """``n`` bytes for a message: 812 B, 58.6 KiB, 4.0 GiB."""
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def _check_size(total: int, what: str) -> None:
    limit = corpus_byte_limit()
    if total > limit:  # total may be a read cut at limit + 1 (a file that grew after its size was checked)
        size = f"{human_bytes(total)} of text, more than" if total > limit + 1 else "more text than"
        raise DataError(f"{what} holds {size} the {human_bytes(limit)} this machine can hold as a corpus (about "
                        f"{MEMORY_PER_BYTE} bytes of memory per byte); pass a smaller corpus, e.g. a sample of "
                        f"its files")


def _read_utf8(path: Path) -> str:
    limit = corpus_byte_limit()
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)  # never more than the limit, even from a file that grew since its stat
    except OSError as e:
        raise _cannot_read(path, e) from None
    _check_size(len(raw), str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it with "
                        f"`iconv -t UTF-8` or pass another file") from None


def load_corpus(name_or_path: str, download: bool = True) -> tuple[str, str]:
    """Return ``(text, source)`` where source is a human-readable description of where it came from."""
    return read_corpus(resolve_corpus(name_or_path, download=download))


def corpus_files(path: Path) -> list[Path]:
    """What a corpus path is read from: the file itself, or a directory's ``*.txt`` files (not its
    subdirectories) in sorted order; every one checked to be a regular file."""
    if not path.is_dir():
        _regular_file(path)
        return [path]
    try:
        files = sorted(f for f in path.glob("*.txt") if f.is_file())
    except OSError as e:
        raise _cannot_read(path, e) from None
    if not files:
        raise DataError(f"directory {path} holds no .txt files; put UTF-8 .txt files in it or pass a file")
    return files


def read_corpus(path: Path) -> tuple[str, str]:
    """Read a resolved corpus file or directory of ``.txt`` files: ``(text, source)``.

    Sizes are checked before anything is read (:func:`corpus_byte_limit`), so a corpus too large for memory
    is one clear error rather than a machine swapping to a halt."""
    files = corpus_files(path)
    sizes = [_regular_file(f) for f in files]
    _check_size(sum(sizes), str(path))
    if path.is_dir():
        text = "\n".join(_read_utf8(f) for f in files)
        source = f"{path} ({len(files)} .txt files)"
    else:
        text = _read_utf8(path)
        source = str(path)
    if not text.strip():
        raise DataError(f"corpus {source} is empty; pass a text file with content")
    return text, source


def corpus_fingerprint(path: Path) -> dict[str, str]:
    """What identifies a corpus on disk, for a run's config.json: its kind, its absolute path and a sha256.

    A file's sha256 is that of its bytes (for a named corpus, the canonical digest); a directory's is taken
    over its ``.txt`` files in sorted order, each contributing its name and its own sha256, so renaming,
    adding, removing or editing any file read changes it (and nothing else in the folder does)."""
    files = corpus_files(path)
    if not path.is_dir():
        return {"kind": "file", "path": str(path.resolve()), "sha256": _sha256_or_error(path)}
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode("utf-8", "surrogateescape") + b"\0" + _sha256_or_error(f).encode() + b"\n")
    return {"kind": "directory", "path": str(path.resolve()), "sha256": h.hexdigest()}


def _sha256_or_error(path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as e:
        raise _cannot_read(path, e) from None
