"""Configuration as plain data: dataclasses, named presets and ``--set key=value`` overrides.

A run is fully described by one :class:`Config`. It is written to ``config.json`` in the run directory,
so a run can be reproduced (or resumed) from that file alone. Presets are just partial dictionaries
merged over the defaults; nothing is hidden in module-level constants.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any


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


@dataclass
class MethodConfig:
    """Method-specific options. Every method reads only the fields it knows about."""

    name: str = "masked"
    # masked diffusion (MDLM)
    schedule: str = "loglinear"  # loglinear | linear
    sigma_max: float = 10.0  # for the linear (in sigma) schedule
    antithetic: bool = True
    estimator: str = "time"  # time (sample t, weight w(t)) | count (t integrated out: uniform mask count)
    time_conditioning: bool = False
    eval_time_samples: int = 16
    eval_seed: int = 1234
    confidence: float = 0.9  # threshold of the `confidence` sampler
    # sampling defaults
    sampler: str = ""  # "" = the method's default
    sample_steps: int = 0  # 0 = the method's default (sequence length for masked)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Gaussian diffusion on embeddings (Diffusion-LM line); see methods/embedding.py
    embeddings: str = "learned"  # learned (jointly with the denoiser) | pretrained (frozen MiniLM table)
    embed_dim: int = 64  # width of the learned embedding space (the pretrained table has its own: 384)
    embed_norm: str = "fixed"  # fixed (every row rescaled to norm sqrt(dim) * embed_scale) | none
    embed_scale: float = 1.0  # per-coordinate RMS of a fixed-norm embedding, relative to the unit noise
    noise_schedule: str = "sqrt"  # linear | cosine | sqrt
    timesteps: int = 2000  # T of the discrete process; 0 = continuous time
    target: str = "x0"  # eps | x0 | v | probs (decoder distribution -> expected embedding, trained by CE)
    decoder: str = "head"  # cosine | l2 | head (a learned softmax rounding head)
    rounding_weight: float = 1.0  # Diffusion-LM's rounding term -log p(w | x_0)
    x0_ce_weight: float = 0.0  # cross-entropy of the decoder on the *predicted* x0 at every t
    self_condition: bool = False  # Chen et al. 2022: feed the previous x0 estimate back in
    clamp: bool = False  # snap x0_hat to its nearest embedding at every sampling step
    eta: float = 0.0  # DDIM noise (ddim sampler only; ddpm is eta = 1)
    time_difference: float = 0.0  # asymmetric time intervals (Chen et al. 2022), in steps
    guide_run: str = ""  # guided sampler: the `ar` run whose logits are mixed with the plan's
    guide_weight: float = 0.5  # guided sampler: weight w of the diffusion plan (0 = pure ar)
    # analog bits (Bit Diffusion); shares the Gaussian options above
    bit_scale: float = 1.0  # bits are written as {-bit_scale, +bit_scale}
    probs_mse_weight: float = 0.0  # target=probs: add this times the MSE of the averaged x0 to the cross-entropy
    # image diffusion (MNIST); shares the Gaussian options above
    guidance: float = 1.0  # classifier-free guidance scale w: eps = eps_uncond + w (eps_cond - eps_uncond)


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
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    preset: str = "cpu"
    seed: int = 1337

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        for key, value in d.items():
            if key in SECTIONS:
                section = getattr(cfg, key)
                known = {f.name for f in fields(section)}
                for k, v in value.items():
                    if k in known:  # tolerate fields from newer versions
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

# Per-method adjustments on top of a preset, each one measured (see BENCHMARKS.md).
METHOD_PRESETS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # Bit Diffusion's own recipe: continuous time, cosine schedule, self-conditioning (Chen et al. 2022)
    **{("bits", p): {"method": {"timesteps": 0, "noise_schedule": "cosine", "self_condition": True}}
       for p in ("tiny", "cpu", "base")},
    # DDPM on MNIST (Ho et al. 2020): linear betas, T = 1000, eps-prediction; the U-Net shapes are sized
    # for each preset's machine (cpu: ~0.3 M parameters, minutes on a laptop; base: a GPU run)
    **{("image", p): {
        "data": {"corpus": "mnist"},
        "method": {"noise_schedule": "linear", "timesteps": 1000, "target": "eps", "sampler": "ddpm",
                   "eval_time_samples": 4, "clamp": True},  # clamp = clip x0_hat to the pixel range
        "train": {"weight_decay": 0.0, **extra_train},
        "unet": unet,
    } for p, unet, extra_train in (
        ("tiny", {"base_channels": 8, "channel_mult": "1,2", "heads": 2, "groups": 4, "dropout": 0.0},
         {"batch_size": 16, "final_eval_windows": 32}),
        ("cpu", {"base_channels": 16, "channel_mult": "1,2,2", "heads": 4, "groups": 8, "dropout": 0.0},
         {"steps": 4000, "batch_size": 64, "lr": 2e-3, "min_lr": 2e-4, "warmup": 200, "eval_every": 500,
          "eval_windows": 256, "final_eval_windows": 2000, "ema_decay": 0.995}),
        ("base", {"base_channels": 64, "channel_mult": "1,2,2", "num_res_blocks": 2, "heads": 4, "groups": 32,
                  "dropout": 0.1},
         {"steps": 20000, "batch_size": 128, "lr": 2e-4, "min_lr": 2e-5, "warmup": 500, "eval_every": 2000,
          "eval_windows": 512, "final_eval_windows": 0, "ema_decay": 0.9995}),
    )},
}


def _merge(cfg: Config, partial: dict[str, dict[str, Any]]) -> None:
    for section, values in partial.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)


def make_config(method: str, preset: str, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset <- method-specific preset <- ``--set`` overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = Config(preset=preset)
    cfg.method.name = method
    _merge(cfg, PRESETS[preset])
    _merge(cfg, METHOD_PRESETS.get((method, preset), {}))
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
            raise ConfigError(f"--set key must look like section.field ({', '.join(SECTIONS)}), got {key!r}")
        section_name, name = key.split(".", 1)
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise ConfigError(f"--set {key}: unknown section {section_name!r}; use {', '.join(SECTIONS)}")
        ftypes = {f.name: f.type for f in fields(section)}
        if name not in ftypes:
            raise ConfigError(
                f"--set {key}: unknown field {name!r}; {section_name} has {', '.join(sorted(ftypes))}"
            )
        setattr(section, name, _coerce(value.strip(), ftypes[name], key))
    validate(cfg)
    return cfg


# Method fields that only steer sampling, so `sample`/`eval --set` may change them on a trained run; every
# other field shaped the network or its training and is fixed once the run exists.
SAMPLING_FIELDS = ("sampler", "sample_steps", "temperature", "top_k", "top_p", "confidence", "clamp", "eta",
                   "time_difference", "guide_run", "guide_weight", "eval_time_samples", "eval_seed", "guidance")


def apply_sampling_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``--set method.field=value`` for ``sample`` and ``eval``: only :data:`SAMPLING_FIELDS` may change."""
    for item in overrides:
        key = _canonical(item).split("=", 1)[0]
        section, _, name = key.partition(".")
        if section != "method" or name not in SAMPLING_FIELDS:
            raise ConfigError(f"--set {key}: a trained run can only change sampling options "
                              f"(method.{', method.'.join(SAMPLING_FIELDS)}); retrain to change anything else")
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
