"""Configuration as plain data: dataclasses of options, named presets and ``--set key=value`` overrides.

A run is fully described by one :class:`Config`, written to ``config.json`` in the run directory. Each option
is declared once, with its default, what it may hold and what it means (:func:`option`); nothing is hidden in
module-level constants. The package knows no method: a method's config class (a :class:`MethodConfig`) is
passed in, and :mod:`textdiffusion.methods.registry` finds it by the method's name. It imports no torch, so
``textdiffusion --help`` stays fast.

    options.py      option(), Range / Choice / Pattern, checking one value against its declaration
    ranges.py       the bounds several options and flags share (seed, temperature, top-k, ...)
    sections.py     ModelConfig, TrainConfig, DataConfig, UNetConfig, MethodConfig, and Config, the run
    presets.py      the named sizes
    validation.py   validate: every option, then the rules that tie options together
    overrides.py    build_config: defaults <- preset <- the method's adjustments <- --set
    reading.py      a config back from JSON: config.json (also 0.1.0's) and train --config files
    describe.py     the field-by-field listing of ``textdiffusion config``
"""

from textdiffusion.config.describe import FieldInfo, describe_fields
from textdiffusion.config.options import (
    Bound,
    Choice,
    Option,
    Pattern,
    Range,
    check_options,
    check_value,
    field_type,
    option,
    option_of,
)
from textdiffusion.config.overrides import (
    FIELD_ALIASES,
    apply_overrides,
    apply_sampling_overrides,
    build_config,
    override_keys,
)
from textdiffusion.config.presets import PRESETS
from textdiffusion.config.ranges import (
    DEVICE,
    DROPOUT,
    ETA,
    EVAL_TIME_SAMPLES,
    GUIDANCE,
    LOSS_WEIGHT,
    MAX_SAMPLE_STEPS,
    NONNEGATIVE,
    POSITIVE,
    PROBABILITY,
    SAMPLE_STEPS,
    SCALE,
    SEED,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    WINDOWS,
)
from textdiffusion.config.reading import (
    LEGACY_METHOD_FIELDS,
    ConfigClassOf,
    config_from_dict,
    method_config_from_dict,
    read_config_file,
)
from textdiffusion.config.sections import (
    BPE_MIN_VOCAB,
    LABEL_KINDS,
    LOGGERS,
    SECTIONS,
    TOKENIZER_KINDS,
    Config,
    DataConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    UNetConfig,
)
from textdiffusion.config.validation import channel_levels, validate
from textdiffusion.errors import ConfigError

__all__ = [
    "BPE_MIN_VOCAB", "DEVICE", "DROPOUT", "ETA", "EVAL_TIME_SAMPLES", "FIELD_ALIASES", "GUIDANCE", "LABEL_KINDS",
    "LEGACY_METHOD_FIELDS", "LOGGERS", "LOSS_WEIGHT", "MAX_SAMPLE_STEPS", "NONNEGATIVE", "POSITIVE", "PRESETS",
    "PROBABILITY", "SAMPLE_STEPS", "SCALE", "SECTIONS", "SEED", "TEMPERATURE", "TOKENIZER_KINDS", "TOP_K", "TOP_P",
    "WINDOWS", "Bound", "Choice", "Config", "ConfigClassOf", "ConfigError", "DataConfig", "FieldInfo",
    "MethodConfig", "ModelConfig", "Option", "Pattern", "Range", "TrainConfig", "UNetConfig", "apply_overrides",
    "apply_sampling_overrides", "build_config", "channel_levels", "check_options", "check_value",
    "config_from_dict", "describe_fields", "field_type", "method_config_from_dict", "option", "option_of",
    "override_keys", "read_config_file", "validate",
]
