"""What an option is: a dataclass field that states its default, what it may hold and what it means, at once.

    lr: float = option(1e-3, Range(0.0, 1.0, lo_open=True), "peak learning rate (AdamW), reached after the warm-up")

The bound (:class:`Range`, :class:`Choice`, :class:`Pattern`, or None for anything of the field's type) is what
:func:`check_value` enforces on every value before anything is built from it; the line of text is what
``textdiffusion config`` prints beside the value; ``sampling=True`` marks an option that only steers sampling,
which ``sample``/``eval --set`` may change on a trained run. Nothing else declares them: the validation, the
``config`` listing and the CLI flags that override a field all read the declaration.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from textdiffusion.errors import ConfigError, did_you_mean


def show(value: Any) -> str:
    """A value as it goes into a one-line message: repr (a newline stays escaped), cut to a sane length;
    None as config.json spells it."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(v: float) -> str:
    """A bound as people write it: 1024, 0.5, 0.0001, 1e12, 10**9, 2**20, 2**63-1."""
    if isinstance(v, int) and abs(v) >= 10**5:
        for base in (2, 10):
            k = round(math.log(abs(v) + 1, base))
            if v == base**k:
                return f"{base}**{k}"
            if v == base**k - 1:
                return f"{base}**{k}-1"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:g}".replace("e+", "e")


@dataclass(frozen=True)
class Range:
    """An interval of numbers, each end closed or open; a ``None`` end is unbounded. Whatever the ends, a
    number must be finite: nan and inf are refused wherever a number is read."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self, integer: bool = False) -> str:
        kind = "a whole number" if integer else "a number"
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            return f"{kind} from {_num(self.lo)} to {_num(self.hi)}"
        parts = []
        if self.lo is not None:
            parts.append(("above " if self.lo_open else ">= ") + _num(self.lo))
        if self.hi is not None:
            parts.append(("below " if self.hi_open else "at most ") + _num(self.hi))
        return " ".join([kind, " and ".join(parts)]) if parts else f"a finite {kind[2:]}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words."""

    options: tuple[str, ...]

    def allows(self, value: str) -> bool:
        return value in self.options

    def describe(self, integer: bool = False) -> str:
        return "one of " + ", ".join(o or '""' for o in self.options)  # an empty option is shown as ""


@dataclass(frozen=True)
class Pattern:
    """A word of a given shape (a regular expression), e.g. a device name."""

    regex: str
    example: str

    def allows(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None

    def describe(self, integer: bool = False) -> str:
        return self.example


Bound = Range | Choice | Pattern


@dataclass(frozen=True)
class Option:
    """What :func:`option` records on a field, beside its default."""

    bound: Bound | None  # None: anything of the field's type (a bool, or a word read where it is used)
    doc: str  # what the option means, in a line
    sampling: bool = False  # only steers sampling: may change on a trained run


_KEY = "textdiffusion.option"  # where a field's metadata holds its Option


def option(default: Any, bound: Bound | None, doc: str, *, sampling: bool = False) -> Any:
    """A config field with its default, what it may hold and what it means (see the module's docstring).

    Every option except a mark that only steers sampling shaped the network or its training and is fixed once
    the run exists; ``sampling=True`` says which is which, on the field itself."""
    return dataclasses.field(default=default, metadata={_KEY: Option(bound, doc, sampling)})


_UNDECLARED = Option(None, "")


def option_of(f: dataclasses.Field) -> Option:
    """The declaration of a field; a field made without :func:`option` has no bound and no text."""
    return f.metadata.get(_KEY, _UNDECLARED)


def keep_inherited_options(cls: type) -> None:
    """Let a subclass give an inherited option a new default by plain assignment (``timesteps: int = 0``),
    keeping the parent's bound, text and sampling mark: a new default is not a new option. Call it from
    ``__init_subclass__``, which runs before ``@dataclass`` reads the class body."""
    inherited: dict[str, dataclasses.Field] = {}
    for base in reversed(cls.__mro__[1:]):
        inherited.update(getattr(base, "__dataclass_fields__", {}))
    for name in vars(cls).get("__annotations__", {}):
        parent = inherited.get(name)
        value = vars(cls).get(name, dataclasses.MISSING)
        if parent is None or _KEY not in parent.metadata or value is dataclasses.MISSING:
            continue
        if not isinstance(value, dataclasses.Field):
            setattr(cls, name, dataclasses.field(default=value, metadata=parent.metadata))


_TYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str}


def field_type(typ: Any) -> type | None:
    """The plain type (int, float, bool or str) a dataclass field is annotated with, or None for anything else.
    Annotations are strings here (postponed evaluation); ``X | None`` counts as X."""
    if isinstance(typ, str):
        parts = [p.strip() for p in typ.split("|") if p.strip() != "None"]
        return _TYPE_NAMES.get(parts[0]) if len(parts) == 1 else None
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        typ = args[0] if len(args) == 1 else None
    return typ if typ in (int, float, bool, str) else None


def check_value(name: str, value: Any, typ: type | None, bound: Bound | None) -> Any:
    """``value`` if it is a ``typ`` within ``bound``, else a :class:`ConfigError` naming the field, the value
    and what is allowed. A bool is not a number here, and an int read for a float field becomes a float."""
    integer = typ is int
    allowed = f"; it must be {bound.describe(integer)}" if bound is not None else ""
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {show(value)}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be {bound.describe(True) if bound else 'a whole number'}, got {show(value)}")
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be {bound.describe() if bound else 'a number'}, got {show(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond any float
            raise ConfigError(f"{name}={show(value)} is out of range{allowed}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be {bound.describe() if bound else 'a finite number'}, got {value}")
    if typ is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be {bound.describe() if bound else 'a string'}, got {show(value)}")
    if bound is not None and not bound.allows(value):
        hint = did_you_mean(value, bound.options) if isinstance(bound, Choice) else ""
        raise ConfigError(f"{name} must be {bound.describe(integer)}, got {show(value)}{hint}")
    return value


def check_options(obj: Any, prefix: str) -> None:
    """Every field of a config dataclass against its annotated type and declared bound (normalised in place:
    an int in a float field becomes a float, so the run's record reads the same as one written by us)."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(f"{prefix}{f.name}", getattr(obj, f.name), field_type(f.type),
                                         option_of(f).bound))
