"""A config read back from JSON: a run's ``config.json`` (of this version or of 0.1.0) or a file ``train
--config`` starts from, checked as strictly as ``--set``.

The method section names its method, and only the registry of methods knows which config class that is; the
functions here receive that lookup (``config_class``: a name -> its config class, a one-line
:class:`~textdiffusion.errors.ConfigError` for an unknown name) and know no method themselves.
:mod:`textdiffusion.methods.registry` passes its own and offers the same functions by name alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from textdiffusion.config.options import show
from textdiffusion.config.sections import SECTIONS, Config, MethodConfig
from textdiffusion.config.validation import validate
from textdiffusion.errors import ConfigError, ConfigWarning, did_you_mean, os_error_message
from textdiffusion.json_reading import JSONProblem, parse_json

# a method's name -> its config class; raises ConfigError for a name no method has
ConfigClassOf = Callable[[str], type[MethodConfig]]

# The single method section of textdiffusion 0.1.0, field by field: a run written then records every field of
# every method. Loading such a run keeps its method's fields and drops the rest, which that method never read.
LEGACY_METHOD_FIELDS = frozenset({
    "name", "schedule", "sigma_max", "antithetic", "estimator", "time_conditioning", "eval_time_samples",
    "eval_seed", "confidence", "sampler", "sample_steps", "temperature", "top_k", "top_p", "embeddings",
    "embed_dim", "embed_norm", "embed_scale", "noise_schedule", "timesteps", "target", "decoder",
    "rounding_weight", "x0_ce_weight", "self_condition", "clamp", "eta", "time_difference", "guide_run",
    "guide_weight", "bit_scale", "probs_mse_weight", "guidance",
})


def _kind(value: Any) -> str:
    """What a JSON value is, for a message: "null", "a list", "a string", ..."""
    if value is None:
        return "null"
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def method_config_from_dict(d: Any, config_class: ConfigClassOf) -> MethodConfig:
    """A method section read back from ``config.json``: the method's own fields are kept; fields of the
    0.1.0 union that the method does not have are dropped (it never read them); anything else is refused,
    because it may be an option this version would silently ignore."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise ConfigError("the method section of config.json has no method name; the file is not a textdiffusion "
                          "config")
    cls = config_class(d["name"])
    cfg = cls()
    own = {f.name for f in fields(cls)}
    for key, value in d.items():
        if key in own:
            setattr(cfg, key, value)
        elif key not in LEGACY_METHOD_FIELDS:
            raise ConfigError(f"config.json sets method.{key}, which the {cls().name} method does not have "
                              f"(written by another version, or edited); remove the field to use the run")
    return cfg


def config_from_dict(d: Any, config_class: ConfigClassOf, source: str = "config.json",
                     fix: str = "edit the file back or retrain") -> Config:
    """Read back a recorded config (see :func:`method_config_from_dict` for runs of 0.1.0), checked as a
    ``--set`` would be: a hand-edited or damaged ``config.json`` is a one-line error here, before any network
    is built from it, not a TypeError deep inside the build. ``source`` and ``fix`` name the file and the
    remedy in that error (:func:`read_config_file` reads other files than a run's own)."""
    if not isinstance(d, dict):
        raise ConfigError(f"config.json's 'config' is {_kind(d)}, not an object; the file is not a textdiffusion "
                          f"config (restore it or retrain)")
    cfg = Config(method=method_config_from_dict(d.get("method") or {}, config_class))
    missing = [name for name in cfg.sections() if name not in d]
    if missing:  # a run records every section it uses; defaults in place of a lost one would be a silent guess
        raise ConfigError(f"config.json has no {' or '.join(repr(m) for m in missing)} section; restore the file "
                          f"or retrain")
    run_options = {f.name for f in Config.run_options()}
    for key, value in d.items():
        if key in SECTIONS and key != "method":
            if not isinstance(value, dict):
                raise ConfigError(f"config.json's {key} section is {_kind(value)}, not an object; restore the "
                                  f"file or retrain")
            section = getattr(cfg, key)
            known = {f.name for f in fields(section)}
            for k, v in value.items():
                if k in known:
                    setattr(section, k, v)
        elif key in run_options:
            setattr(cfg, key, value)
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e} ({fix})") from None
    return cfg


def ignored_fields(d: Any) -> list[str]:
    """The fields of a recorded config that this version does not know and :func:`config_from_dict` therefore
    skips (``"train.new_option"``, or a top-level key): a run written by a later version, or an edited one. The
    method section is not among them: a method field this version lacks is refused there, since it may change
    what the method computes."""
    if not isinstance(d, dict):
        return []
    run_options = {f.name for f in Config.run_options()}
    out: list[str] = []
    for key, value in d.items():
        if key in SECTIONS and key != "method" and isinstance(value, dict):
            known = {f.name for f in fields(type(getattr(Config(), key)))}
            out += [f"{key}.{name}" for name in value if name not in known]
        elif key not in SECTIONS and key not in run_options:
            out.append(str(key))
    return out


def warn_ignored_fields(path: Path, meta: dict[str, Any]) -> None:
    """Say, as one :class:`~textdiffusion.errors.ConfigWarning`, which fields of the run's ``config.json``
    (``meta``) this version ignores, and which version wrote it: a run is still read (old runs keep loading),
    but not silently as if the fields were not there."""
    from textdiffusion import __version__

    ignored = ignored_fields(meta.get("config"))
    if not ignored:
        return
    versions = meta.get("versions")
    writer = versions.get("textdiffusion") if isinstance(versions, dict) else None
    origin = (f"written by textdiffusion {writer}" if isinstance(writer, str) and writer != __version__
              else "edited, or written by another version")
    shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
    warnings.warn(f"{path} sets {shown}, which textdiffusion {__version__} does not know ({origin}); "
                  f"{'it is' if len(ignored) == 1 else 'they are'} ignored", ConfigWarning, stacklevel=3)


def read_config_file(path: str | Path, config_class: ConfigClassOf) -> Config:
    """The config a new run starts from with ``train --config FILE``: a run's ``config.json`` (its config sits
    under ``"config"``, beside the versions and the corpus record) or a bare config as ``textdiffusion config
    --json`` prints it. Checked as strictly as ``--set``: a section or field this version does not have is
    refused by name (:func:`config_from_dict` alone skips them in the network and trainer sections), a section
    the method uses must be there, and every value is then validated."""
    where = f"--config {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file; pass a run's config.json or a file written by "
                          f"`textdiffusion config --json`") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; pass the file itself, e.g. {Path(path) / 'config.json'}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text; pass a JSON config") from None
    except OSError as e:
        raise ConfigError(f"{where}: {os_error_message(e)}") from None
    try:
        d = parse_json(text)
    except JSONProblem as e:
        raise ConfigError(f"{where} is {e}; fix the file") from None
    if isinstance(d, dict) and isinstance(d.get("config"), dict):  # a run's config.json
        d = d["config"]
    if not isinstance(d, dict):
        raise ConfigError(f"{where} holds {_kind(d)}, not a config object; pass a run's config.json or a file "
                          f"written by `textdiffusion config --json`")
    method = d.get("method")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ConfigError(f"{where} has no method section with a name; it is not a textdiffusion config "
                          f"(`textdiffusion config --json` writes one)")
    method_cls = config_class(method["name"])
    uses = Config(method=method_cls()).sections()
    run_options = tuple(f.name for f in Config.run_options())
    for key, value in d.items():
        if key in run_options:
            continue
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown key {show(key)}; a config has {', '.join((*uses, *run_options))}"
                              f"{did_you_mean(key, (*uses, *run_options))}")
        if key not in uses:
            raise ConfigError(f"{where}: the {method['name']} method does not use the {key} section; remove it")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: the {key} section is {_kind(value)}, not an object; fix the file")
        own = {f.name for f in fields(method_cls if key == "method" else type(getattr(Config(), key)))}
        # fields of 0.1.0's single method section are tolerated, as in a run's own config.json
        unknown = sorted(set(value) - own - (LEGACY_METHOD_FIELDS if key == "method" else set()))
        if unknown:
            owner = f"the {method['name']} method" if key == "method" else key
            raise ConfigError(f"{where}: unknown field {key}.{unknown[0]}; {owner} has {', '.join(sorted(own))}"
                              f"{did_you_mean(unknown[0], own)}")
    missing = [key for key in uses if key not in d]
    if missing:
        raise ConfigError(f"{where} has no {' or '.join(missing)} section; a config records every section its "
                          f"method uses (`textdiffusion config --json` writes one)")
    return config_from_dict(d, config_class, source=where, fix="fix the file")
