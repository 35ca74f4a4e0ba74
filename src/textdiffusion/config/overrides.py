"""How a config is made: the defaults, then a named preset, then the method's adjustments to that preset, then
``--set section.field=value`` strings; each layer overrides the one before, and the result is validated."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields
from typing import Any

from textdiffusion.config.options import field_type, show
from textdiffusion.config.presets import PRESETS
from textdiffusion.config.sections import SECTIONS, Config, MethodConfig
from textdiffusion.config.validation import validate
from textdiffusion.errors import ConfigError, did_you_mean


def _merge(cfg: Config, partial: dict[str, dict[str, Any]], strict: bool = True) -> None:
    """Set section fields from a partial dict. ``strict=False`` (the generic presets) skips method fields the
    method does not have: ``eval_time_samples`` means nothing to ``ar``."""
    for section, values in partial.items():
        target = getattr(cfg, section)
        known = {f.name for f in fields(target)}
        for k, v in values.items():
            if strict or k in known:
                setattr(target, k, v)


def build_config(method_config: type[MethodConfig], preset: str, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset <- the method's own adjustments to that preset <- ``--set`` overrides, for the method
    whose config class is ``method_config`` (:func:`textdiffusion.methods.configs.make_config` takes the method's
    name)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}"
                          f"{did_you_mean(preset, PRESETS)}")
    method_cfg = method_config()
    cfg = Config(preset=preset, method=method_cfg)
    _merge(cfg, PRESETS[preset], strict=False)
    _merge(cfg, method_cfg.presets.get(preset, {}))
    apply_overrides(cfg, overrides or [])
    return cfg


def _coerce(value: str, typ: Any, key: str) -> Any:
    """A ``--set`` string as the field's type. A whole number may be written 1e3 (not 1.5, nan or 1e999)."""
    typ = field_type(typ) or str
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={show(value)}: expected true or false")
    if typ is int:
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number.is_integer()):
            raise ConfigError(f"--set {key}={show(value)}: expected a whole number")
        return int(number)
    if typ is float:
        try:
            return float(value)  # nan and inf pass here and are refused, by field name, in validate
        except ValueError:
            raise ConfigError(f"--set {key}={show(value)}: expected a float such as 0.5 or 1e-3") from None
    return value


# Other names users bring from the papers and ports they know; ``--set`` accepts them as the field on the right.
FIELD_ALIASES = {"method.time_delta": "method.time_difference"}


def _canonical(item: str) -> str:
    key, sep, value = item.partition("=")
    key = key.strip()
    return FIELD_ALIASES.get(key, key) + sep + value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings, type-checked against the dataclass fields, then
    :func:`~textdiffusion.config.validate` the result."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. model.n_layer=8), got {show(item)}")
        key, value = _canonical(item).split("=", 1)
        value = value.strip()
        if key == "seed":
            cfg.seed = _coerce(value, int, key)
            continue
        if key == "method.name":
            raise ConfigError(f"--set method.name={show(value)}: the method is chosen with --method (its options "
                              f"come with it); --set would only relabel the run")
        if key == "preset":
            # a preset sets many fields at once; changing only its name would mislabel the run
            if value != cfg.preset:
                raise ConfigError(f"--set preset={show(value)}: the preset is chosen with --preset "
                                  f"({', '.join(PRESETS)}), which sets its fields; --set would only relabel the run")
            continue
        if "." not in key:
            raise ConfigError(f"--set key must look like section.field ({', '.join(cfg.sections())}) or seed, "
                              f"got {show(key)}")
        section_name, name = key.split(".", 1)
        section = getattr(cfg, section_name, None) if section_name in SECTIONS else None
        if section is None or not dataclasses.is_dataclass(section):
            raise ConfigError(f"--set {show(key)}: unknown section {show(section_name)}; use "
                              f"{', '.join(cfg.sections())}{did_you_mean(section_name, cfg.sections())}")
        if section_name not in cfg.sections():
            raise ConfigError(f"--set {key}: the {cfg.method.name} method does not use the {section_name} section; "
                              f"use {', '.join(cfg.sections())}")
        ftypes = {f.name: f.type for f in fields(section)}
        if name not in ftypes:
            owner = f"the {cfg.method.name} method" if section_name == "method" else section_name
            raise ConfigError(f"--set {show(key)}: unknown field {show(name)}; {owner} has "
                              f"{', '.join(sorted(ftypes))}{did_you_mean(name, ftypes)}")
        setattr(section, name, _coerce(value, ftypes[name], key))
    validate(cfg)
    return cfg


def override_keys(overrides: list[str]) -> dict[str, str]:
    """``--set`` items as {canonical key: raw value} (the last one wins, as when they are applied)."""
    out: dict[str, str] = {}
    for item in overrides:
        key, sep, value = _canonical(item).partition("=")
        if sep:
            out[key] = value.strip()
    return out


def apply_sampling_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``--set method.field=value`` for ``sample`` and ``eval``: only the method's sampling options (marked
    ``sampling`` on its config class) may change."""
    allowed = cfg.method.sampling_fields()
    for item in overrides:
        if "=" not in item:  # a malformed item, before it is judged as a key a trained run may not change
            raise ConfigError(f"--set expects key=value (e.g. method.temperature=0.8), got {show(item)}")
        key = _canonical(item).split("=", 1)[0]
        section, _, name = key.partition(".")
        if section != "method" or name not in allowed:
            raise ConfigError(f"--set {show(key)}: a trained {cfg.method.name} run can only change its sampling "
                              f"options (method.{', method.'.join(allowed)}); retrain to change anything else"
                              f"{did_you_mean(key, [f'method.{a}' for a in allowed])}")
    return apply_overrides(cfg, overrides)
