"""What a run records so that it can leave this machine: no absolute local paths.

A run directory, an export and a comparison report are meant to be copied, mailed and published. An absolute
path in them (``/home/ada/data/corpus.txt``) means nothing to whoever receives them, shows the sender's file
system and stops being true as soon as a folder moves. So what is written names places in a form that travels:

* the data folder (``TEXTDIFFUSION_DATA``) as the symbol ``$TEXTDIFFUSION_DATA``: a named corpus is
  ``$TEXTDIFFUSION_DATA/tinyshakespeare.txt``, found again on any machine through its own data folder (its
  sha256 says whether it is the same text);
* a corpus of one's own by its path relative to the run directory, which finds it from any working directory
  as long as the run and its data keep their places relative to each other;
* a run, a report or any other path by its path relative to the working directory when it lies inside it,
  else by its name alone;
* a command line with each of its absolute paths written the same way.

Runs written before this recorded absolute paths; readers still accept them (:func:`resolve_recorded`).
The module imports no torch: the records and the command line's help use it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

DATA_SYMBOL = "$TEXTDIFFUSION_DATA"  # the data folder, in what a run records


def shareable_path(path: str | Path, base: str | Path | None = None) -> str:
    """``path`` as it may be shown to someone else: a relative path as given, an absolute one relative to
    ``base`` (the working directory) when it lies inside it, else its name alone."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    try:
        root = os.path.abspath(base if base is not None else os.getcwd())
    except OSError:  # the working directory was removed: nothing lies inside it
        return Path(text).name or "."
    full = os.path.normpath(text)
    if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(full, root)
    return Path(full).name or "."


def shareable_argv(argv: list[str]) -> list[str]:
    """A command line that may be recorded: the program by its name (``textdiffusion``; ``python -m
    textdiffusion`` runs ``__main__.py``), every absolute path in an argument (``/x/run`` or
    ``data.corpus=/x/c.txt``) by :func:`shareable_path`."""
    if not argv:
        return []
    program = Path(argv[0]).name
    out = ["textdiffusion" if program in ("__main__.py", "textdiffusion") else program]
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if os.path.isabs(arg):
            out.append(shareable_path(arg))
        elif sep and os.path.isabs(value):
            out.append(f"{key}={shareable_path(value)}")
        else:
            out.append(arg)
    return out


_COMMAND: ContextVar[list[str] | None] = ContextVar("textdiffusion_command", default=None)


@contextlib.contextmanager
def command_line(argv: list[str]) -> Iterator[None]:
    """Within this block, a run started records ``argv`` as the command that made it: the command line
    sets it, as :func:`~textdiffusion.apps.cli.main` may be called with arguments that are not ``sys.argv``."""
    token = _COMMAND.set(list(argv))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def recorded_command() -> list[str]:
    """The command line a new run records (config.json's ``argv``), made shareable: the one
    :func:`command_line` set, else the process's own (a Python script that trains)."""
    return shareable_argv(_COMMAND.get() or sys.argv)


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as it is shown away from the run (an export): ``data.corpus`` given as an absolute path
    is written by :func:`shareable_path`. (The run's own config.json keeps it as given: ``train --config``
    and resume read it there.)"""
    data = config.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("corpus"), str) or not os.path.isabs(data["corpus"]):
        return config
    return {**config, "data": {**data, "corpus": shareable_path(data["corpus"])}}


def _data_folder() -> Path:
    from textdiffusion.data.corpus import data_dir

    return data_dir().resolve()


def _recorded_location(path: str, run_dir: Path) -> str:
    """Where a run records its data: in the data folder by symbol, elsewhere relative to the run directory."""
    full = Path(path).resolve()
    try:
        return f"{DATA_SYMBOL}/{full.relative_to(_data_folder()).as_posix()}"
    except ValueError:
        return os.path.relpath(full, Path(run_dir).resolve())


def run_corpus_record(record: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The corpus record of a data source (its ``record()``: kind, sha256, sizes and an absolute ``path``) as
    a run writes it into config.json (and image.json): the path, and the ``source`` that names it, made
    portable. A record without a path (the built-in digits) is returned as it is."""
    out = dict(record)
    path = out.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        return out
    location = _recorded_location(path, Path(run_dir))
    out["path"] = location
    source = out.get("source")
    if isinstance(source, str):
        head, sep, tail = source.partition(" (")  # "DIR (3 .txt files)"
        if os.path.isabs(head):
            out["source"] = location + sep + tail
    return out


def resolve_recorded(path: str, run_dir: str | Path | None) -> Path | None:
    """The place a recorded data path names on this machine: an absolute path (runs of earlier versions) as
    it is, ``$TEXTDIFFUSION_DATA/...`` in this machine's data folder, a relative path from the run directory;
    None when it cannot be told (a relative path and no run directory)."""
    if os.path.isabs(path):
        return Path(path)
    if path.startswith(DATA_SYMBOL + "/"):
        return _data_folder() / path[len(DATA_SYMBOL) + 1:]
    if run_dir is None:
        return None
    return Path(run_dir) / path


def public_corpus_record(record: dict[str, Any]) -> dict[str, Any]:
    """A corpus record as it is shown away from its run (an export, a comparison report): the data by name,
    sha256 and sizes. A path relative to the run directory says nothing there and is dropped; an absolute one
    (earlier versions) becomes its name."""
    out = dict(record)
    path = out.get("path")
    if isinstance(path, str) and not path.startswith(DATA_SYMBOL + "/"):
        del out["path"]
    if isinstance(out.get("source"), str):
        out["source"] = public_source(out["source"])
    return out


def public_source(source: str) -> str:
    """A data source's description (``/x/c.txt``, ``../d (3 .txt files)``) as shown away from its run: a
    path that is absolute, or relative to the run directory, by its name."""
    head, sep, tail = source.partition(" (")
    if os.path.isabs(head) or head.startswith(".."):
        return Path(head).name + sep + tail
    return source
