"""The config package: an option is declared once (default, bound, meaning), a subclass that changes a default
keeps the rest of the declaration, and the package knows no method: it is handed a method's config class."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, fields

import pytest

from textdiffusion import config, errors
from textdiffusion.config import (
    GUIDANCE,
    SCALE,
    Choice,
    ConfigError,
    MethodConfig,
    Range,
    TrainConfig,
    describe_fields,
    option,
    option_of,
)
from textdiffusion.methods import REGISTRY
from textdiffusion.methods.base import TextMethodConfig, register
from textdiffusion.methods.bits import BitsConfig
from textdiffusion.methods.configs import make_config, method_config_class
from textdiffusion.methods.gaussian_config import GaussianConfig
from textdiffusion.methods.image import ImageConfig
from textdiffusion.methods.masked import MaskedConfig, MaskedDiffusion


def _field(cls: type, name: str):
    return next(f for f in fields(cls) if f.name == name)


def test_an_option_carries_its_default_bound_and_meaning():
    lr = _field(TrainConfig, "lr")
    assert lr.default == 1e-3
    assert option_of(lr).bound == Range(0.0, 1.0, lo_open=True)
    assert option_of(lr).doc.startswith("peak learning rate")
    assert not option_of(lr).sampling
    assert option_of(_field(ImageConfig, "guidance")).bound == GUIDANCE
    assert option_of(_field(ImageConfig, "guidance")).sampling


def test_a_subclass_that_changes_a_default_keeps_the_declaration():
    """``timesteps: int = 0`` in BitsConfig is GaussianConfig's option with another default, not a new one."""
    for cls, name, default in ((BitsConfig, "timesteps", 0), (BitsConfig, "noise_schedule", "cosine"),
                               (ImageConfig, "sampler", "ddpm"), (ImageConfig, "eval_time_samples", 4)):
        parent = GaussianConfig if name in {f.name for f in fields(GaussianConfig)} else MethodConfig
        assert _field(cls, name).default == default
        assert option_of(_field(cls, name)) == option_of(_field(parent, name)), (cls.__name__, name)
    assert {"sampler", "eval_time_samples", "clamp", "guidance"} <= set(ImageConfig.sampling_fields())
    # a new meaning is a new declaration: image's clamp says what it clips to
    assert option_of(_field(ImageConfig, "clamp")).doc != option_of(_field(GaussianConfig, "clamp")).doc


def test_a_new_default_is_still_checked_by_the_inherited_bound():
    @dataclass
    class Wider(MaskedConfig):
        confidence: float = 0.5
        extra: float = option(2.0, SCALE, "a scale of this config's own")

    assert option_of(_field(Wider, "confidence")).bound == Range(0.0, 1.0, lo_open=True)
    with pytest.raises(ConfigError, match=r"method\.confidence must be a number above 0 and at most 1, got 0\.0"):
        config.build_config(Wider, "tiny", ["method.confidence=0"])
    with pytest.raises(ConfigError, match=r"method\.extra must be"):
        config.build_config(Wider, "tiny", ["method.extra=0"])
    rows = {r.key: r for r in describe_fields(config.build_config(Wider, "tiny"))}
    assert rows["method.confidence"].doc == option_of(_field(MaskedConfig, "confidence")).doc
    assert rows["method.confidence"].sampling and rows["method.extra"].allowed == SCALE.describe()


def test_config_takes_the_class_and_the_registry_takes_the_name():
    for name in REGISTRY:
        assert make_config(name, "tiny").to_dict() == config.build_config(method_config_class(name), "tiny").to_dict()
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of ar, bits, block, embedding"):
        make_config("nope", "tiny")


def test_reading_a_config_uses_the_lookup_it_is_given():
    recorded = json.loads(make_config("masked", "tiny").to_json())
    asked: list[str] = []

    def lookup(name: str) -> type[MethodConfig]:
        asked.append(name)
        return MaskedConfig

    assert config.config_from_dict(recorded, lookup).to_dict() == recorded and asked == ["masked"]

    def nothing(name: str) -> type[MethodConfig]:
        raise ConfigError(f"no method {name} here")

    with pytest.raises(ConfigError, match="no method masked here"):
        config.config_from_dict(recorded, nothing)


def test_register_gives_the_config_its_samplers_and_checks_its_name():
    assert MaskedConfig.samplers == MaskedDiffusion.samplers
    with pytest.raises(ConfigError, match=r"method\.sampler must be one of ancestral, cached, confidence, topk"):
        make_config("masked", "tiny", ["method.sampler=ddim"])

    @dataclass
    class Misnamed(TextMethodConfig):
        name: str = "masked"

    toy = type("Toy", (MaskedDiffusion,), {"name": "toy-misnamed", "config_class": Misnamed})
    with pytest.raises(TypeError, match="give its name field the default 'toy-misnamed'"):
        register(toy)
    assert "toy-misnamed" not in REGISTRY and Misnamed.samplers == ()


def test_a_config_class_holds_only_what_it_declares():
    """The tables that once paralleled the fields are gone: nothing but the fields says what an option is."""
    for cls in {method_config_class(name) for name in REGISTRY} | {GaussianConfig, MethodConfig}:
        assert not {"bounds", "docs"} & {k for c in cls.__mro__ for k in vars(c)}, cls.__name__
    assert not {"FIELD_BOUNDS", "FIELD_DOCS", "METHOD_CONFIGS", "method_config_class"} & set(dir(config))
    assert isinstance(option_of(_field(MaskedConfig, "estimator")).bound, Choice)
    assert config.ConfigError is errors.ConfigError  # one class, wherever it is imported from


def test_the_config_package_imports_no_method_and_no_torch():
    code = ("import sys, textdiffusion.config\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('textdiffusion.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
