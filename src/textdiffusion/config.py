"""Configuration as plain data: dataclasses, named presets and ``--set key=value`` overrides.

A run is fully described by one :class:`Config`. It is written to ``config.json`` in the run directory,
so a run can be reproduced (or resumed) from that file alone. Presets are just partial dictionaries
merged over the defaults; nothing is hidden in module-level constants.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it as one line."""


# --------------------------------------------------------------------------------------------------
# What a field may hold. Every number and choice a config carries is checked by :func:`validate` against
# FIELD_BOUNDS (and each method config's ``bounds``), with its type, before anything is built: a value
# outside is a one-line error naming the field, the value and what is allowed, never a traceback later or a
# silent misrun. The CLI's flags use the same bounds, so a flag and the field it overrides agree.


def _show(value: Any) -> str:
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

# Shared by config fields and the CLI flags that override them.
SEED = Range(0, 2**63 - 1)  # a non-negative int64: torch's and numpy's generators all take it
# Below 1e-4 a logit gap of 0.01 already means odds of e^100 (greedy for every purpose); above 10 the draw is
# close to uniform. 10 is also the live page's limit.
TEMPERATURE = Range(1e-4, 10.0)
TOP_K = Range(0, 2**31 - 1)  # 0 = off; any k >= the vocabulary keeps every token
TOP_P = Range(0.0, 1.0, lo_open=True)  # 1 = off; 0 would keep nothing
ETA = Range(0.0, 1.0)  # DDIM's noise: 0 deterministic, 1 DDPM's variance
# classifier-free guidance: 0 unconditional, 1 plain conditional, > 1 sharper; papers stop near 10, and a huge
# scale overflows eps to inf, which the final clamp would hide as a saturated image
GUIDANCE = Range(0.0, 100.0)
# More denoising steps than any window or training grid here has positions, so more would only repeat work;
# a typo of 10**9 would allocate gigabytes for the time grid alone.
MAX_SAMPLE_STEPS = 100_000
SAMPLE_STEPS = Range(0, MAX_SAMPLE_STEPS)  # 0 = the method's default
EVAL_TIME_SAMPLES = Range(1, 100_000)
PROBABILITY = Range(0.0, 1.0)
DROPOUT = Range(0.0, 1.0, hi_open=True)  # a rate of 1 would drop everything
NONNEGATIVE = Range(0.0, None)
POSITIVE = Range(0.0, None, lo_open=True)
LOSS_WEIGHT = Range(0.0, 1000.0)  # a term's weight in the loss: far above 1 it is the loss, and may overflow
SCALE = Range(0.0, 100.0, lo_open=True)  # a signal scale against unit noise: at 100 the noise is already moot
DEVICE = Pattern(r"auto|cpu|cuda(:[0-9]+)?|mps", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class ModelConfig:
    """Shape of the one transformer backbone (see :mod:`textdiffusion.nn.transformer`)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    context: int = 64
    mlp_ratio: int = 4
    activation: str = "gelu"  # gelu | silu
    tie_embeddings: bool = False  # output head reuses the input embedding rows of the ordinary symbols
    dropout: float = 0.0
    rope_base: float = 10000.0
    positions: str = "rope"  # rope | none (no positional information at all: only for reproducing a failure)


@dataclass
class TrainConfig:
    """The one trainer's knobs (see :mod:`textdiffusion.trainer`)."""

    steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    data_shards: int = 1  # independent data/noise streams per batch; torchrun with N processes makes it N
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    eval_every: int = 250
    eval_windows: int = 256
    final_eval_windows: int = 0  # 0 = the whole validation split
    final_eval_raw: bool = False  # also score the raw (non-EMA) weights at the end
    sample_every_eval: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: str = "auto"  # auto (on for CUDA) | on | off
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    threads: int = 0  # CPU threads; 0 leaves torch's default
    time_budget_s: float = 0.0  # > 0: also stop (and score) once this many seconds of training are spent
    log_every: int = 50  # a "train" row in metrics.jsonl every N steps (loss, lr, grad norm, speed); 0 = none
    logger: str = ""  # "" (metrics.jsonl only) | tensorboard | wandb | trackio: also send every row there
    label_dropout: float = 0.1  # labelled data: fraction of labels replaced by "none" (classifier-free guidance)


def sampling(default: Any) -> Any:
    """A method option that only steers sampling: ``sample``/``eval --set`` may change it on a trained run.

    Every other option shaped the network or its training and is fixed once the run exists. The mark lives
    on the field itself, so a method's config class is the one place that says which is which."""
    return field(default=default, metadata={"sampling": True})


@dataclass
class MethodConfig:
    """The options every method has. Each method declares a subclass next to its code (``MaskedConfig`` in
    ``methods/masked.py``, ...) with its own fields, so a run's ``config.json`` records only what its method
    reads. ``presets`` are the method's adjustments on top of a named preset, each one measured."""

    name: str = ""
    sampler: str = sampling("")  # "" = the method's default

    # per preset: {section: {field: value}} merged after the preset itself (see make_config)
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    # the network section the method builds from: "model" (the transformer) or "unet"
    network: ClassVar[str] = "model"
    # field -> what it may hold (see Range, Choice); each class adds its own fields' bounds, and
    # :meth:`field_bounds` merges them along the class hierarchy. :func:`validate` enforces them, with the
    # field types, before :meth:`check` runs, so ``check`` is left with the rules that tie fields together.
    bounds: ClassVar[dict[str, Bound]] = {}
    # field -> what it means, in a line (``textdiffusion config`` prints it beside the value); merged along the
    # class hierarchy like ``bounds`` (:meth:`field_docs`), so a subclass that only changes a default keeps
    # its parent's text. A test asserts every field of every registered method has one.
    docs: ClassVar[dict[str, str]] = {
        "name": "the method (chosen with --method, fixed once the run exists)",
        "sampler": "default sampler of sample and eval (empty = the method's first)",
    }

    def check(self) -> None:
        """Raise :class:`ConfigError` for a combination of values the method cannot use (called by
        :func:`validate` after every field passed its type and :attr:`bounds`)."""

    @classmethod
    def sampling_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("sampling"))

    @classmethod
    def _merged(cls, table: str) -> dict[str, Any]:
        """The class-level dict ``table`` merged along the hierarchy, a subclass's entries overriding its
        parents'."""
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get(table, {}))
        return merged

    @classmethod
    def field_bounds(cls) -> dict[str, Bound]:
        """The bounds of every field, a subclass's own overriding its parents'."""
        return cls._merged("bounds")

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """What every field means, a subclass's own text overriding its parents'."""
        return cls._merged("docs")


# Method name -> its config class; filled by ``textdiffusion.methods.base.register``.
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of a registered method (importing the built-in methods on first use)."""
    if not METHOD_CONFIGS:
        importlib.import_module("textdiffusion.methods")  # registers every built-in method
    if name not in METHOD_CONFIGS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHOD_CONFIGS))}")
    return METHOD_CONFIGS[name]


# The single method section of textdiffusion 0.1.0, field by field: a run written then records every field of
# every method. Loading such a run keeps its method's fields and drops the rest, which that method never read.
LEGACY_METHOD_FIELDS = frozenset({
    "name", "schedule", "sigma_max", "antithetic", "estimator", "time_conditioning", "eval_time_samples",
    "eval_seed", "confidence", "sampler", "sample_steps", "temperature", "top_k", "top_p", "embeddings",
    "embed_dim", "embed_norm", "embed_scale", "noise_schedule", "timesteps", "target", "decoder",
    "rounding_weight", "x0_ce_weight", "self_condition", "clamp", "eta", "time_difference", "guide_run",
    "guide_weight", "bit_scale", "probs_mse_weight", "guidance",
})


def method_config_from_dict(d: dict[str, Any]) -> MethodConfig:
    """A method section read back from ``config.json``: the method's own fields are kept; fields of the
    0.1.0 union that the method does not have are dropped (it never read them); anything else is refused,
    because it may be an option this version would silently ignore."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise ConfigError("the method section of config.json has no method name; the file is not a textdiffusion "
                          "config")
    cls = method_config_class(d["name"])
    cfg = cls()
    own = {f.name for f in fields(cls)}
    for key, value in d.items():
        if key in own:
            setattr(cfg, key, value)
        elif key not in LEGACY_METHOD_FIELDS:
            raise ConfigError(f"config.json sets method.{key}, which the {cls().name} method does not have "
                              f"(written by another version, or edited); remove the field to use the run")
    return cfg


@dataclass
class UNetConfig:
    """Shape of the image denoiser (see :mod:`textdiffusion.nn.unet`); only the ``image`` method reads it."""

    base_channels: int = 32
    channel_mult: str = "1,2,2"  # width multiplier per resolution; each level after the first halves H and W
    num_res_blocks: int = 1  # residual blocks per level (the up path has one more, for the extra skip)
    attention: bool = True  # self-attention at the lowest resolution (the middle block always has it)
    heads: int = 4
    dropout: float = 0.1
    groups: int = 8  # group-norm groups (reduced to a divisor of the width where needed)
    class_conditional: bool = True  # learn p(x | digit) as well as p(x), for classifier-free guidance
    label_dropout: float = 0.1  # fraction of training labels replaced by "no label" (Ho & Salimans 2022)


# What `train.logger` may name ("" = none); textdiffusion.loggers has one backend per other word.
LOGGERS = ("", "tensorboard", "wandb", "trackio")

# What `data.labels` may name ("" = plain text); textdiffusion.data.speakers reads "speaker".
LABEL_KINDS = ("", "speaker")

# What `data.tokenizer` may name (see textdiffusion.data.tokenizer.make_tokenizer).
TOKENIZER_KINDS = ("char", "bpe", "wordpiece")
BPE_MIN_VOCAB = 256  # a byte-level BPE starts from all 256 bytes, so it can never be smaller


@dataclass
class DataConfig:
    corpus: str = "tinyshakespeare"
    val_fraction: float = 0.1
    tokenizer: str = "char"  # char | bpe (byte-level, trained on the training split) | wordpiece (MiniLM's)
    vocab_size: int = 512  # BPE vocabulary size (bytes + merges); only read by tokenizer=bpe
    labels: str = ""  # "" (plain text) | speaker: train on speech bodies labelled by their speaker (data/speakers.py)
    label_top: int = 8  # with labels=speaker: the most-spoken speakers that become labels


@dataclass
class Config:
    """A whole run. ``method`` is the method's own config class; only the network section the method builds
    from (``model`` for the transformer, ``unet`` for images) is recorded beside it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    preset: str = "cpu"
    seed: int = 1337

    def sections(self) -> tuple[str, ...]:
        """The sections this run uses: the trainer, the data, the method and its one network."""
        return (self.method.network, "train", "method", "data")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: asdict(getattr(self, name)) for name in self.sections()}
        return {**out, "preset": self.preset, "seed": self.seed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "config.json", fix: str = "edit the file back or retrain") -> Config:
        """Read back a recorded config (see :func:`method_config_from_dict` for runs of 0.1.0), checked as
        a ``--set`` would be: a hand-edited or damaged ``config.json`` is a one-line error here, before any
        network is built from it, not a TypeError deep inside the build. ``source`` and ``fix`` name the file
        and the remedy in that error (:func:`read_config_file` reads other files than a run's own)."""
        if not isinstance(d, dict):
            raise ConfigError(f"config.json's 'config' is {_kind(d)}, not an object; the file is not a textdiffusion "
                              f"config (restore it or retrain)")
        cfg = cls(method=method_config_from_dict(d.get("method") or {}))
        missing = [name for name in cfg.sections() if name not in d]
        if missing:  # a run records every section it uses; defaults in place of a lost one would be a silent guess
            raise ConfigError(f"config.json has no {' or '.join(repr(m) for m in missing)} section; restore the file "
                              f"or retrain")
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
            elif key in ("preset", "seed"):
                setattr(cfg, key, value)
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e} ({fix})") from None
        return cfg


def _kind(value: Any) -> str:
    """What a JSON value is, for a message: "null", "a list", "a string", ..."""
    if value is None:
        return "null"
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


SECTIONS = ("model", "train", "method", "data", "unet")


# --------------------------------------------------------------------------------------------------
# Presets. `cpu` is the shape nanoGPT suggests for a CPU run of shakespeare_char, `base` is the shape of
# nanoGPT's shakespeare_char (and tiny-diffusion), so numbers compare one to one.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32},
        "train": {"steps": 60, "batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "eval_every": 30,
                  "eval_windows": 32, "final_eval_windows": 64, "ema_decay": 0.9, "log_every": 10},
        "method": {"eval_time_samples": 4},
    },
    "cpu": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "context": 64},
        "train": {"steps": 2000, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup": 100,
                  "eval_every": 250, "eval_windows": 128, "ema_decay": 0.99},
    },
    "base": {
        "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "context": 256, "dropout": 0.2},
        "train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-4, "warmup": 100,
                  "eval_every": 500, "ema_decay": 0.999},
    },
}

def _merge(cfg: Config, partial: dict[str, dict[str, Any]], strict: bool = True) -> None:
    """Set section fields from a partial dict. ``strict=False`` (the generic presets) skips method fields the
    method does not have: ``eval_time_samples`` means nothing to ``ar``."""
    for section, values in partial.items():
        target = getattr(cfg, section)
        known = {f.name for f in fields(target)}
        for k, v in values.items():
            if strict or k in known:
                setattr(target, k, v)


def make_config(method: str, preset: str, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset <- the method's own adjustments to that preset <- ``--set`` overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    method_cfg = method_config_class(method)()
    cfg = Config(preset=preset, method=method_cfg)
    _merge(cfg, PRESETS[preset], strict=False)
    _merge(cfg, method_cfg.presets.get(preset, {}))
    apply_overrides(cfg, overrides or [])
    return cfg


def read_config_file(path: str | Path) -> Config:
    """The config a new run starts from with ``train --config FILE``: a run's ``config.json`` (its config sits
    under ``"config"``, beside the versions and the corpus record) or a bare config as ``textdiffusion config
    --json`` prints it. Checked as strictly as ``--set``: a section or field this version does not have is
    refused by name (:meth:`Config.from_dict` alone skips them in the network and trainer sections), a section
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
        raise ConfigError(f"{where}: cannot read it ({e.strerror or e}); check the path and its permissions") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the "
                          f"file") from None
    if isinstance(d, dict) and isinstance(d.get("config"), dict):  # a run's config.json
        d = d["config"]
    if not isinstance(d, dict):
        raise ConfigError(f"{where} holds {_kind(d)}, not a config object; pass a run's config.json or a file "
                          f"written by `textdiffusion config --json`")
    method = d.get("method")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ConfigError(f"{where} has no method section with a name; it is not a textdiffusion config "
                          f"(`textdiffusion config --json` writes one)")
    method_cls = method_config_class(method["name"])
    uses = Config(method=method_cls()).sections()
    for key, value in d.items():
        if key in TOP_LEVEL:
            continue
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown key {_show(key)}; a config has {', '.join((*uses, *TOP_LEVEL))}")
        if key not in uses:
            raise ConfigError(f"{where}: the {method['name']} method does not use the {key} section; remove it")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: the {key} section is {_kind(value)}, not an object; fix the file")
        own = {f.name for f in fields(method_cls if key == "method" else type(getattr(Config(), key)))}
        # fields of 0.1.0's single method section are tolerated, as in a run's own config.json
        unknown = sorted(set(value) - own - (LEGACY_METHOD_FIELDS if key == "method" else set()))
        if unknown:
            owner = f"the {method['name']} method" if key == "method" else key
            raise ConfigError(f"{where}: unknown field {key}.{unknown[0]}; {owner} has {', '.join(sorted(own))}")
    missing = [key for key in uses if key not in d]
    if missing:
        raise ConfigError(f"{where} has no {' or '.join(missing)} section; a config records every section its "
                          f"method uses (`textdiffusion config --json` writes one)")
    return Config.from_dict(d, source=where, fix="fix the file")


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


def _coerce(value: str, typ: Any, key: str) -> Any:
    """A ``--set`` string as the field's type. A whole number may be written 1e3 (not 1.5, nan or 1e999)."""
    typ = field_type(typ) or str
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={_show(value)}: expected true or false")
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
            raise ConfigError(f"--set {key}={_show(value)}: expected a whole number")
        return int(number)
    if typ is float:
        try:
            return float(value)  # nan and inf pass here and are refused, by field name, in validate
        except ValueError:
            raise ConfigError(f"--set {key}={_show(value)}: expected a float such as 0.5 or 1e-3") from None
    return value


# Other names users bring from the papers and ports they know; ``--set`` accepts them as the field on the right.
FIELD_ALIASES = {"method.time_delta": "method.time_difference"}


def _canonical(item: str) -> str:
    key, sep, value = item.partition("=")
    key = key.strip()
    return FIELD_ALIASES.get(key, key) + sep + value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings, type-checked against the dataclass fields, then
    :func:`validate` the result."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. model.n_layer=8), got {_show(item)}")
        key, value = _canonical(item).split("=", 1)
        value = value.strip()
        if key == "seed":
            cfg.seed = _coerce(value, int, key)
            continue
        if key == "method.name":
            raise ConfigError(f"--set method.name={_show(value)}: the method is chosen with --method (its options "
                              f"come with it); --set would only relabel the run")
        if key == "preset":
            # a preset sets many fields at once; changing only its name would mislabel the run
            if value != cfg.preset:
                raise ConfigError(f"--set preset={_show(value)}: the preset is chosen with --preset "
                                  f"({', '.join(PRESETS)}), which sets its fields; --set would only relabel the run")
            continue
        if "." not in key:
            raise ConfigError(f"--set key must look like section.field ({', '.join(cfg.sections())}) or seed, "
                              f"got {_show(key)}")
        section_name, name = key.split(".", 1)
        section = getattr(cfg, section_name, None) if section_name in SECTIONS else None
        if section is None or not dataclasses.is_dataclass(section):
            raise ConfigError(f"--set {_show(key)}: unknown section {_show(section_name)}; use "
                              f"{', '.join(cfg.sections())}")
        if section_name not in cfg.sections():
            raise ConfigError(f"--set {key}: the {cfg.method.name} method does not use the {section_name} section; "
                              f"use {', '.join(cfg.sections())}")
        ftypes = {f.name: f.type for f in fields(section)}
        if name not in ftypes:
            owner = f"the {cfg.method.name} method" if section_name == "method" else section_name
            raise ConfigError(f"--set {_show(key)}: unknown field {_show(name)}; {owner} has "
                              f"{', '.join(sorted(ftypes))}")
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
    """``--set method.field=value`` for ``sample`` and ``eval``: only the method's sampling fields (marked with
    :func:`sampling` on its config class) may change."""
    allowed = cfg.method.sampling_fields()
    for item in overrides:
        key = _canonical(item).split("=", 1)[0]
        section, _, name = key.partition(".")
        if section != "method" or name not in allowed:
            raise ConfigError(f"--set {_show(key)}: a trained {cfg.method.name} run can only change its sampling "
                              f"options (method.{', method.'.join(allowed)}); retrain to change anything else")
    return apply_overrides(cfg, overrides)


# --------------------------------------------------------------------------------------------------
# The table :func:`validate` enforces, section by section (each method config carries its own ``bounds``).
WINDOWS = Range(0, 10**9)  # 0 = all of the validation split

FIELD_BOUNDS: dict[str, dict[str, Bound]] = {
    "model": {
        "n_layer": Range(1, 1024),
        "n_head": Range(1, 4096),
        "n_embd": Range(1, 65536),  # GPT-3 is 12288 wide; far wider is a typo that allocates hundreds of GB
        "context": Range(1, 2**20),
        "mlp_ratio": Range(1, 64),
        "activation": Choice(("gelu", "silu")),
        "dropout": DROPOUT,
        "rope_base": Range(1.0, 1e12, lo_open=True),  # RoPE's frequencies base^(-2i/d) must fall with i
        "positions": Choice(("rope", "none")),
    },
    "train": {
        "steps": Range(1, 10**9),
        "batch_size": Range(1, 2**20),
        "grad_accum": Range(1, 2**16),
        "data_shards": Range(1, 2**16),
        "lr": Range(0.0, 1.0, lo_open=True),  # an AdamW step moves each weight by about lr: above 1 is noise
        "min_lr": Range(0.0, 1.0),
        "warmup": Range(0, 10**9),
        "weight_decay": NONNEGATIVE,
        "beta1": Range(0.0, 1.0, hi_open=True),
        "beta2": Range(0.0, 1.0, hi_open=True),
        "grad_clip": NONNEGATIVE,  # 0 = off
        "ema_decay": Range(0.0, 1.0, hi_open=True),
        "eval_every": Range(1, 10**9),
        "eval_windows": WINDOWS,
        "final_eval_windows": WINDOWS,
        "device": DEVICE,
        "compile": Choice(("auto", "on", "off")),
        "amp": Choice(("auto", "bf16", "off")),
        "threads": Range(0, 4096),  # 0 = torch's default
        "time_budget_s": NONNEGATIVE,  # 0 = no budget
        "log_every": Range(0, 10**9),  # 0 = no train rows (the evaluation rows are written regardless)
        "logger": Choice(LOGGERS),
        "label_dropout": Range(0.0, 1.0, hi_open=True),
    },
    "data": {
        "val_fraction": Range(0.0, 1.0, lo_open=True, hi_open=True),
        "tokenizer": Choice(TOKENIZER_KINDS),
        "vocab_size": Range(1, 2**20),
        "labels": Choice(LABEL_KINDS),
        "label_top": Range(2, 4096),
    },
    "unet": {
        "base_channels": Range(1, 4096),
        "num_res_blocks": Range(1, 64),
        "heads": Range(1, 4096),
        "dropout": DROPOUT,
        "groups": Range(1, 4096),
        "label_dropout": PROBABILITY,
    },
}
TOP_LEVEL: dict[str, tuple[type, Bound]] = {"seed": (int, SEED), "preset": (str, Choice(tuple(PRESETS)))}
# str fields with no table entry: read where they are used (a corpus is found or not by the data loader,
# a guide run is opened), or checked by a rule of their own in validate (channel_mult, the sampler)
FREE_TEXT = frozenset({"data.corpus", "unet.channel_mult", "method.name", "method.sampler", "method.guide_run"})


# --------------------------------------------------------------------------------------------------
# What each field means, in one line: ``textdiffusion config`` prints it beside the value and the bound. The
# method sections carry their own (``MethodConfig.docs``); tests/test_cli.py checks every field has a line.
FIELD_DOCS: dict[str, dict[str, str]] = {
    "model": {
        "n_layer": "transformer blocks",
        "n_head": "attention heads per block (n_embd / n_head must be even, for the rotary embeddings)",
        "n_embd": "width of the residual stream",
        "context": "tokens per training window: the length samples default to",
        "mlp_ratio": "hidden width of each MLP, as a multiple of n_embd",
        "activation": "the MLP's nonlinearity",
        "tie_embeddings": "the output head reuses the input embedding rows of the ordinary symbols",
        "dropout": "dropout rate while training (attention and MLP outputs)",
        "rope_base": "base of the rotary position frequencies",
        "positions": "rope, or none: no positional information at all (only to reproduce that failure)",
    },
    "train": {
        "steps": "optimizer steps to train for",
        "batch_size": "training windows (or images) per micro-batch and data shard",
        "grad_accum": "micro-batches whose gradients add up to one optimizer step",
        "data_shards": "independent data and noise streams per step; torchrun with N processes makes it N",
        "lr": "peak learning rate (AdamW), reached after the warm-up",
        "min_lr": "learning rate at the end of the cosine decay",
        "warmup": "steps of linear warm-up from 0 to lr",
        "weight_decay": "AdamW's decoupled weight decay",
        "beta1": "AdamW's decay of the gradient average",
        "beta2": "AdamW's decay of the squared-gradient average",
        "grad_clip": "clip the gradient norm to this (0 = no clipping)",
        "ema_decay": "decay of the moving average of the weights that evaluation and sampling use",
        "ema_warmup": "let the average forget the random initial weights quickly (decay ramps up over the "
                      "first steps)",
        "eval_every": "score the validation windows, write samples and checkpoint every this many steps",
        "eval_windows": "validation windows scored at each evaluation (0 = all)",
        "final_eval_windows": "validation windows scored once training ends (0 = the whole split)",
        "final_eval_raw": "also score the raw (not averaged) weights at the end",
        "sample_every_eval": "write a few samples to RUN/samples at each evaluation",
        "device": "where to train: auto (a GPU when there is one), cpu, cuda, cuda:N or mps",
        "compile": "torch.compile the network: auto (on CUDA), on or off",
        "amp": "mixed precision: auto (bf16 on CUDA), bf16 or off",
        "threads": "CPU threads torch may use (0 = torch's default)",
        "time_budget_s": "above 0: stop (and score) once this many seconds of training are spent",
        "log_every": "append a train row (loss, lr, gradient norm, throughput) to metrics.jsonl every this many "
                     "steps (0 = none)",
        "logger": "also send every metrics row and the config to tensorboard, wandb or trackio (offline or local; "
                  "\"\" = none)",
        "label_dropout": "with labelled data: the fraction of training labels replaced by 'none', so one network "
                         "learns p(x | label) and p(x) for classifier-free guidance",
    },
    "data": {
        "corpus": "text: tinyshakespeare, a UTF-8 file or a directory of .txt files; images: mnist, digits or a "
                  "path to mnist.npz",
        "val_fraction": "the corpus's last fraction, held out for validation",
        "tokenizer": "char, bpe (byte-level, trained on the training split) or wordpiece (MiniLM's)",
        "vocab_size": "BPE vocabulary size, bytes and merges (only data.tokenizer=bpe reads it)",
        "labels": "speaker: train on speech bodies labelled by who speaks, for sample --label NAME --guidance W "
                  "(\"\" = plain text)",
        "label_top": "with data.labels=speaker: how many of the most-spoken speakers become labels",
    },
    "unet": {
        "base_channels": "channels at the full resolution",
        "channel_mult": "width multiplier per resolution level; each level after the first halves H and W",
        "num_res_blocks": "residual blocks per level (the up path has one more, for the skip connection)",
        "attention": "self-attention at the lowest resolution (the middle block always has it)",
        "heads": "attention heads",
        "dropout": "dropout rate in the residual blocks while training",
        "groups": "group-norm groups (reduced to a divisor of the width where needed)",
        "class_conditional": "learn p(image | digit) as well as p(image), for --digit and guidance",
        "label_dropout": "fraction of training labels replaced by 'no label' (classifier-free guidance)",
    },
}
TOP_LEVEL_DOCS = {
    "seed": "random seed of the initial weights, the data order and the training noise",
    "preset": "the named size this config started from (a label; the fields above are what counts)",
}


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
    with what it means (:data:`FIELD_DOCS`, the method's :meth:`~MethodConfig.field_docs`) and what it may
    hold. A field without a line gets an empty one here (tests/test_cli.py fails on it, so none ships)."""
    rows: list[FieldInfo] = []
    for section in cfg.sections():
        obj = getattr(cfg, section)
        if section == "method":
            docs, bounds, sampling = obj.field_docs(), obj.field_bounds(), set(obj.sampling_fields())
        else:
            docs, bounds, sampling = FIELD_DOCS[section], FIELD_BOUNDS.get(section, {}), set()
        for f in fields(obj):
            rows.append(FieldInfo(f"{section}.{f.name}", getattr(obj, f.name), docs.get(f.name, ""),
                                  _allowed(cfg, section, f, bounds.get(f.name)), f.name in sampling))
    for key, (typ, bound) in TOP_LEVEL.items():
        rows.append(FieldInfo(key, getattr(cfg, key), TOP_LEVEL_DOCS[key], bound.describe(typ is int), False))
    return rows


def _allowed(cfg: Config, section: str, f: dataclasses.Field, bound: Bound | None) -> str:
    """What a field may hold, in words: its bound, true or false, or the method's samplers."""
    typ = field_type(f.type)
    if bound is not None:
        return bound.describe(typ is int)
    if typ is bool:
        return "true or false"
    if section == "method" and f.name == "sampler":
        method = importlib.import_module("textdiffusion.methods.base").REGISTRY.get(cfg.method.name)
        return f"one of {', '.join(method.samplers)}, or empty" if method is not None else ""
    return ""


def check_value(name: str, value: Any, typ: type | None, bound: Bound | None) -> Any:
    """``value`` if it is a ``typ`` within ``bound``, else a :class:`ConfigError` naming the field, the value
    and what is allowed. A bool is not a number here, and an int read for a float field becomes a float."""
    integer = typ is int
    allowed = f"; it must be {bound.describe(integer)}" if bound is not None else ""
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {_show(value)}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be {bound.describe(True) if bound else 'a whole number'}, got {_show(value)}")
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be {bound.describe() if bound else 'a number'}, got {_show(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond any float
            raise ConfigError(f"{name}={_show(value)} is out of range{allowed}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be {bound.describe() if bound else 'a finite number'}, got {value}")
    if typ is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be {bound.describe() if bound else 'a string'}, got {_show(value)}")
    if bound is not None and not bound.allows(value):
        raise ConfigError(f"{name} must be {bound.describe(integer)}, got {_show(value)}")
    return value


def check_section(obj: Any, prefix: str, bounds: dict[str, Bound]) -> None:
    """Every field of a config dataclass against its annotated type and ``bounds`` (normalised in place:
    an int in a float field becomes a float, so the run's record reads the same as one written by us)."""
    for f in fields(obj):
        setattr(obj, f.name, check_value(f"{prefix}.{f.name}", getattr(obj, f.name), field_type(f.type),
                                         bounds.get(f.name)))


def channel_levels(text: str) -> tuple[int, ...]:
    """``unet.channel_mult`` as its per-level multipliers (1..64 each, 1..8 levels)."""
    parts = text.replace(" ", "").split(",")
    if not text.strip() or not all(p.isdigit() and 1 <= int(p) <= 64 for p in parts) or len(parts) > 8:
        raise ConfigError(f"unet.channel_mult must be 1 to 8 comma-separated whole numbers from 1 to 64 like 1,2,2, "
                          f"got {_show(text)}")
    return tuple(int(p) for p in parts)


def validate(cfg: Config) -> None:
    """Check every field this run records (types, :data:`FIELD_BOUNDS`, the method's ``bounds``), then the
    rules that tie fields together, then the method's own :meth:`MethodConfig.check`. Called on every config
    before anything is built from it: after ``--set``, on reading ``config.json`` and by the trainer."""
    for key, (typ, bound) in TOP_LEVEL.items():
        setattr(cfg, key, check_value(key, getattr(cfg, key), typ, bound))
    for section in cfg.sections():
        obj = getattr(cfg, section)
        check_section(obj, section, type(obj).field_bounds() if section == "method" else FIELD_BOUNDS[section])
    sections = cfg.sections()
    if "model" in sections:
        m = cfg.model
        if m.n_embd % m.n_head:
            raise ConfigError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
        if (m.n_embd // m.n_head) % 2:
            raise ConfigError("the head width (n_embd / n_head) must be even for rotary embeddings")
    if "unet" in sections:
        u = cfg.unet
        channel_levels(u.channel_mult)
        if u.base_channels % u.heads:
            raise ConfigError(f"unet.base_channels={u.base_channels} must be divisible by unet.heads={u.heads}")
    t = cfg.train
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr={t.min_lr:g} is above train.lr={t.lr:g}, so the schedule would rise as it "
                          f"decays; set train.min_lr <= train.lr")
    if t.lr * t.weight_decay >= 1.0:
        raise ConfigError(f"train.lr * train.weight_decay = {t.lr * t.weight_decay:g} must be below 1 (AdamW scales "
                          f"every weight by 1 - lr * weight_decay each step); lower train.weight_decay")
    if cfg.data.tokenizer == "bpe" and cfg.data.vocab_size < BPE_MIN_VOCAB:
        raise ConfigError(f"data.vocab_size must be >= {BPE_MIN_VOCAB} for a byte-level BPE (it starts from the "
                          f"256 bytes), got {cfg.data.vocab_size}")
    _check_method_name(cfg)
    _check_sampler(cfg)
    cfg.method.check()


def _check_method_name(cfg: Config) -> None:
    """``method.name`` is the method whose config class this is: an edited name would build another method
    from these options (``ar`` from masked diffusion's), sampling garbage with exit 0."""
    name = cfg.method.name
    known = METHOD_CONFIGS.get(name) or (method_config_class(name) if name else None)
    if known is not type(cfg.method):
        raise ConfigError(f"method.name={_show(name)} does not match its options, which are "
                          f"{type(cfg.method).__name__}'s; the method is chosen with --method, when the run is trained")


def _check_sampler(cfg: Config) -> None:
    """``method.sampler`` names one of the method's samplers (or is "" for its default), checked now rather
    than when the trainer first draws samples, minutes into the run."""
    sampler = cfg.method.sampler
    base = importlib.import_module("textdiffusion.methods.base")
    method = base.REGISTRY.get(cfg.method.name)
    if sampler and method is not None and sampler not in method.samplers:
        raise ConfigError(f"method.sampler must be one of {', '.join(method.samplers)} (or empty for the "
                          f"{cfg.method.name} method's default), got {_show(sampler)}")
