"""Configuration as plain data: dataclasses, named presets and ``--set key=value`` overrides.

A run is fully described by one :class:`Config`. It is written to ``config.json`` in the run directory,
so a run can be reproduced (or resumed) from that file alone. Presets are just partial dictionaries
merged over the defaults; nothing is hidden in module-level constants.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it as one line."""


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
    """The one trainer's knobs (see :mod:`textdiffusion.train`)."""

    steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
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

    def check(self) -> None:
        """Raise :class:`ConfigError` for a value the method cannot use (called by :func:`validate`)."""

    @classmethod
    def sampling_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata.get("sampling"))


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


# What `data.tokenizer` may name (see textdiffusion.data.tokenizer.make_tokenizer).
TOKENIZER_KINDS = ("char", "bpe", "wordpiece")
BPE_MIN_VOCAB = 256  # a byte-level BPE starts from all 256 bytes, so it can never be smaller


@dataclass
class DataConfig:
    corpus: str = "tinyshakespeare"
    val_fraction: float = 0.1
    tokenizer: str = "char"  # char | bpe (byte-level, trained on the training split) | wordpiece (MiniLM's)
    vocab_size: int = 512  # BPE vocabulary size (bytes + merges); only read by tokenizer=bpe


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
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Read back a recorded config (see :func:`method_config_from_dict` for runs of 0.1.0)."""
        if not isinstance(d, dict):
            raise ConfigError("config.json's 'config' is not an object; the file is not a textdiffusion config")
        cfg = cls(method=method_config_from_dict(d.get("method") or {}))
        for key, value in d.items():
            if key in SECTIONS and key != "method" and isinstance(value, dict):
                section = getattr(cfg, key)
                known = {f.name for f in fields(section)}
                for k, v in value.items():
                    if k in known:
                        setattr(section, k, v)
            elif key in ("preset", "seed"):
                setattr(cfg, key, value)
        return cfg


SECTIONS = ("model", "train", "method", "data", "unet")


# --------------------------------------------------------------------------------------------------
# Presets. `cpu` is the shape nanoGPT suggests for a CPU run of shakespeare_char, `base` is the shape of
# nanoGPT's shakespeare_char (and tiny-diffusion), so numbers compare one to one.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32},
        "train": {"steps": 60, "batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "eval_every": 30,
                  "eval_windows": 32, "final_eval_windows": 64, "ema_decay": 0.9},
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


def _coerce(value: str, typ: Any, key: str) -> Any:
    if isinstance(typ, str):  # postponed annotations
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, str)
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    try:
        if typ is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(float(value)) if "e" in value.lower() else int(value)
        if typ is float:
            return float(value)
    except ValueError:
        raise ConfigError(f"--set {key}={value}: expected a {typ.__name__}") from None
    return value


# Other names users bring from the papers and ports they know; ``--set`` accepts them as the field on the right.
FIELD_ALIASES = {"method.time_delta": "method.time_difference"}


def _canonical(item: str) -> str:
    key, sep, value = item.partition("=")
    key = key.strip()
    return FIELD_ALIASES.get(key, key) + sep + value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings, type-checked against the dataclass fields."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. model.n_layer=8), got {item!r}")
        key, value = _canonical(item).split("=", 1)
        if key in ("seed", "preset"):
            setattr(cfg, key, int(value) if key == "seed" else value)
            continue
        if "." not in key:
            raise ConfigError(f"--set key must look like section.field ({', '.join(cfg.sections())}), got {key!r}")
        section_name, name = key.split(".", 1)
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section) or section_name not in SECTIONS:
            raise ConfigError(f"--set {key}: unknown section {section_name!r}; use {', '.join(cfg.sections())}")
        if section_name not in cfg.sections():
            raise ConfigError(f"--set {key}: the {cfg.method.name} method does not use the {section_name} section; "
                              f"use {', '.join(cfg.sections())}")
        ftypes = {f.name: f.type for f in fields(section)}
        if name not in ftypes:
            owner = f"the {cfg.method.name} method" if section_name == "method" else section_name
            raise ConfigError(f"--set {key}: unknown field {name!r}; {owner} has {', '.join(sorted(ftypes))}")
        setattr(section, name, _coerce(value.strip(), ftypes[name], key))
    validate(cfg)
    return cfg


def apply_sampling_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``--set method.field=value`` for ``sample`` and ``eval``: only the method's sampling fields (marked with
    :func:`sampling` on its config class) may change."""
    allowed = cfg.method.sampling_fields()
    for item in overrides:
        key = _canonical(item).split("=", 1)[0]
        section, _, name = key.partition(".")
        if section != "method" or name not in allowed:
            raise ConfigError(f"--set {key}: a trained {cfg.method.name} run can only change its sampling options "
                              f"(method.{', method.'.join(allowed)}); retrain to change anything else")
    return apply_overrides(cfg, overrides)


def validate(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
    if (m.n_embd // m.n_head) % 2:
        raise ConfigError("the head width (n_embd / n_head) must be even for rotary embeddings")
    for name, value in (("model.n_layer", m.n_layer), ("model.context", m.context),
                        ("train.steps", t.steps), ("train.batch_size", t.batch_size),
                        ("train.grad_accum", t.grad_accum), ("train.eval_every", t.eval_every)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if m.positions not in ("rope", "none"):
        raise ConfigError(f"model.positions must be rope or none, got {m.positions!r}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.data.tokenizer not in TOKENIZER_KINDS:
        raise ConfigError(f"data.tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {cfg.data.tokenizer!r}")
    if cfg.data.tokenizer == "bpe" and cfg.data.vocab_size < BPE_MIN_VOCAB:
        raise ConfigError(f"data.vocab_size must be >= {BPE_MIN_VOCAB} for a byte-level BPE (it starts from the "
                          f"256 bytes), got {cfg.data.vocab_size}")
    cfg.method.check()
