"""Finding and reading a text corpus.

A corpus is a UTF-8 file, a directory of ``.txt`` files, or a *named* corpus. Named corpora are resolved
from a data directory (``$TEXTDIFFUSION_DATA``, default a user cache dir) and otherwise downloaded from
their canonical public URL, with the SHA-256 checked, so that every number in this project is computed on
byte-identical data.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from textdiffusion.files import write_bytes


class DataError(ValueError):
    """Bad or missing input data; the message names the problem and the fix."""


@dataclass(frozen=True)
class NamedCorpus:
    filename: str
    url: str
    sha256: str
    chars: int


NAMED_CORPORA: dict[str, NamedCorpus] = {
    "tinyshakespeare": NamedCorpus(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        chars=1_115_394,
    ),
}


def data_dir() -> Path:
    """``$TEXTDIFFUSION_DATA`` or ``~/.cache/textdiffusion`` (``$XDG_CACHE_HOME`` respected)."""
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


def _download(spec: NamedCorpus, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(spec.url, timeout=30) as r:
            payload = r.read()
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise DataError(
            f"could not download {spec.filename} ({type(e).__name__}: {e}); offline? download it from "
            f"{spec.url} and put it in {dest.parent} (or set TEXTDIFFUSION_DATA to its folder, "
            f"or pass --data /path/to/{spec.filename})"
        ) from None
    if hashlib.sha256(payload).hexdigest() != spec.sha256:
        raise DataError(f"downloaded {spec.filename} has the wrong sha256; fetch {spec.url} by hand")
    write_bytes(dest, payload)


def resolve_corpus(name_or_path: str, download: bool = True) -> Path:
    """Turn ``--data`` into a path: an existing file/dir, or a named corpus (data dir, then download)."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    key = name_or_path.lower()
    if key in NAMED_CORPORA:
        spec = NAMED_CORPORA[key]
        local = data_dir() / spec.filename
        if local.exists():
            digest = sha256_of(local)
            if digest != spec.sha256:
                raise DataError(
                    f"{local} is not the canonical {key} (sha256 {digest[:12]}… != {spec.sha256[:12]}…); "
                    f"delete it so it is downloaded again, or pass your file with --data PATH"
                )
            return local
        if not download:
            raise DataError(f"{key} not found in {local.parent}; set TEXTDIFFUSION_DATA to the folder holding "
                            f"{spec.filename} or download it from {spec.url}")
        _download(spec, local)
        return local
    names = ", ".join(NAMED_CORPORA)
    raise DataError(f"no such corpus file or directory: {name_or_path!r}; pass a path to a UTF-8 text file, "
                    f"a directory of .txt files, or a named corpus ({names})")


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it with "
                        f"`iconv -t UTF-8` or pass another file") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def load_corpus(name_or_path: str, download: bool = True) -> tuple[str, str]:
    """Return ``(text, source)`` where source is a human-readable description of where it came from."""
    return read_corpus(resolve_corpus(name_or_path, download=download))


def read_corpus(path: Path) -> tuple[str, str]:
    """Read a resolved corpus file or directory of ``.txt`` files: ``(text, source)``."""
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"directory {path} holds no .txt files; put UTF-8 .txt files in it or pass a file")
        text = "\n".join(_read_utf8(f) for f in files)
        source = f"{path} ({len(files)} .txt files)"
    else:
        text = _read_utf8(path)
        source = str(path)
    if not text.strip():
        raise DataError(f"corpus {source} is empty; pass a text file with content")
    return text, source
