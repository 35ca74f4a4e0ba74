"""A resolved config field by field, as ``textdiffusion config`` lists it: the value, what the option means and
what it may hold, all read from the option's declaration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from textdiffusion.config.options import Option, field_type, option_of
from textdiffusion.config.sections import Config


@dataclass(frozen=True)
class FieldInfo:
    """One field of a resolved config as ``textdiffusion config`` lists it."""

    key: str  # section.field, or seed / preset
    value: Any
    doc: str
    allowed: str  # what the field may hold ("" when anything of its type)
    sampling: bool  # may change on a trained run (``sample``/``eval --set``)


def describe_fields(cfg: Config) -> list[FieldInfo]:
    """Every field ``cfg`` records, section by section in :meth:`Config.sections` order, then seed and preset,
    with what it means and what it may hold."""
    rows: list[FieldInfo] = []
    for section in cfg.sections():
        obj = getattr(cfg, section)
        for f in fields(obj):
            opt = option_of(f)
            rows.append(FieldInfo(f"{section}.{f.name}", getattr(obj, f.name), opt.doc,
                                  _allowed(cfg, section, f, opt), opt.sampling))
    for f in cfg.run_options():
        opt = option_of(f)
        rows.append(FieldInfo(f.name, getattr(cfg, f.name), opt.doc, _allowed(cfg, "", f, opt), opt.sampling))
    return rows


def _allowed(cfg: Config, section: str, f: dataclasses.Field, opt: Option) -> str:
    """What a field may hold, in words: its bound, true or false, or the method's samplers."""
    typ = field_type(f.type)
    if opt.bound is not None:
        return opt.bound.describe(typ is int)
    if typ is bool:
        return "true or false"
    if section == "method" and f.name == "sampler":
        samplers = cfg.method.samplers
        return f"one of {', '.join(samplers)}, or empty" if samplers else ""
    return ""
