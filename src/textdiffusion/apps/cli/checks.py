"""Checks the commands share before any work: a flag and a ``--set`` of its field must agree, and a run of
the other kind (text or image) is pointed at its own command before anything is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiffusion.config import ConfigError, override_keys

# sampling flags and the method field each overrides; given both, they must agree (see check_flags_agree)
FLAG_FIELDS = {"temperature": "method.temperature", "top_k": "method.top_k", "top_p": "method.top_p",
               "sampler": "method.sampler", "steps": "method.sample_steps", "eta": "method.eta",
               "guidance": "method.guidance"}


def check_flags_agree(args: argparse.Namespace) -> None:
    """``sample``/``eval`` (text and mnist): a flag and a ``--set`` of the field it overrides that disagree
    are refused, rather than one of them silently losing (the flag wins when they agree or only it is given;
    the run's config, ``--set`` included, decides when the flag is not given)."""
    sampling = args.command in ("sample", "eval") or getattr(args, "mnist_command", None) in ("sample", "eval")
    if not sampling:
        return
    sets = override_keys(args.overrides)
    for attr, key in FLAG_FIELDS.items():
        flag, raw = getattr(args, attr, None), sets.get(key)
        if flag is None or raw is None:
            continue
        try:
            same = float(raw) == flag if isinstance(flag, (int, float)) else raw == flag
        except ValueError:
            continue  # not a number: apply_overrides says so, by field name
        if not same:
            raise ConfigError(f"--{attr.replace('_', '-')} {flag} and --set {key}={raw} disagree; give only one")


def is_image_method(name: str) -> bool:
    """Whether ``name`` is a registered method of the image family (what ``mnist`` trains and samples)."""
    from textdiffusion.methods import REGISTRY

    return name in REGISTRY and REGISTRY[name].family == "image"


def run_kind(run_dir: str | Path) -> tuple[str, str] | None:
    """``("image" | "text", method name)`` of the run in ``run_dir``, read from config.json alone (nothing is
    loaded); None when that cannot be told (no such run, an unreadable or unknown config), which is left to
    the command itself, whose error says what is wrong with the run."""
    from textdiffusion.checkpoint import recorded_method
    from textdiffusion.methods import REGISTRY

    name = recorded_method(Path(run_dir))
    cls = REGISTRY.get(name) if name else None
    if cls is None:
        return None
    return cls.family, name


def refuse_image_run(run_dir: str, command: str) -> None:
    """Point an image run at ``textdiffusion mnist`` before the text path tries (and fails) to open it."""
    kind = run_kind(run_dir)
    if kind and kind[0] == "image":
        raise ConfigError(f"{run_dir} is an image run; use `textdiffusion mnist {command} {run_dir}`")


def refuse_text_run(run_dir: str, command: str) -> None:
    """Point a text run at ``textdiffusion sample|eval|train`` before ``mnist`` builds its model."""
    kind = run_kind(run_dir)
    if kind and kind[0] == "text":
        raise ConfigError(f"{run_dir} is a text run (method {kind[1]}); use `textdiffusion {command} {run_dir}`")


def read_only_note(run_dir: str) -> str | None:
    """What ``eval`` says instead of "wrote eval.json" for an export, which it reads but never writes into."""
    from textdiffusion.checkpoint import is_export

    if is_export(run_dir):
        return f"{run_dir} is an export (read-only): the results above were not written into it"
    return None
