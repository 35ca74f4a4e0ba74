"""Every number, choice and type a run is made from is checked before anything is built.

Table-driven: each field of each section (and of every registered method's config) is pushed just past its
bound, given nan/inf, text, a list, a bool, and must come back as one ConfigError naming the field. Property
based: arbitrary ``--set`` strings and arbitrary ``config.json`` content either work or give a one-line
ConfigError; any other exception is a bug. The CLI's number flags use the same bounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textdiffusion.apps.cli import build_parser, main
from textdiffusion.checkpoint import CheckpointError, read_json
from textdiffusion.config import (
    PRESETS,
    ConfigError,
    Range,
    apply_overrides,
    apply_sampling_overrides,
    field_type,
    option_of,
)
from textdiffusion.methods import REGISTRY
from textdiffusion.methods.base import check_draw
from textdiffusion.methods.configs import config_from_dict, make_config
from textdiffusion.runs import available_devices, pick_device

METHODS = sorted(REGISTRY)


def _one_line_error(fn, *args: Any, field: str = "") -> str:
    """Run ``fn``; it must raise ConfigError with a one-line message (naming ``field`` when given)."""
    with pytest.raises(ConfigError) as e:
        fn(*args)
    message = str(e.value)
    assert "\n" not in message, message
    assert field in message, f"{field!r} not named in {message!r}"
    return message


def _sections(method: str) -> dict[str, Any]:
    """{section name: (dataclass instance, {field: its declared bound})} of the tiny config of ``method``."""
    cfg = make_config(method, "tiny")
    out = {}
    for name in cfg.sections():
        obj = getattr(cfg, name)
        out[name] = (obj, {f.name: option_of(f).bound for f in fields(obj)})
    return out


# ---- the declarations ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_field_has_a_plain_type_and_every_number_a_range(method):
    """A number declared without a Range would let nan or a typo through: every number must have one."""
    for section, (obj, bounds) in _sections(method).items():
        for f in fields(obj):
            key = f"{section}.{f.name}"
            typ = field_type(f.type)
            assert typ is not None, f"{key} has no plain type ({f.type!r})"
            if typ in (int, float):
                assert isinstance(bounds[f.name], Range), f"{key} is a number without a Range"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_of_every_method_is_valid_and_round_trips(method, preset):
    cfg = make_config(method, preset)
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again.to_dict() == cfg.to_dict()


def _past_bounds(bound: Range, integer: bool) -> list[float]:
    """Values just outside ``bound`` (one step for integers, a hair for floats), plus nan and inf for floats."""
    out: list[float] = [] if integer else [math.nan, math.inf, -math.inf]
    if bound.lo is not None:
        out.append(bound.lo if bound.lo_open else (bound.lo - 1 if integer else math.nextafter(bound.lo, -math.inf)))
    if bound.hi is not None:
        out.append(bound.hi if bound.hi_open else (bound.hi + 1 if integer else math.nextafter(bound.hi, math.inf)))
    return out


def _bad_values(method: str) -> list[tuple[str, Any]]:
    """(section.field, bad JSON value) for every field of ``method``'s tiny config. The first entries of each
    field are out of its range (or not a choice); the rest have the wrong type (see _SPELLED)."""
    cases = []
    for section, (obj, bounds) in _sections(method).items():
        for f in fields(obj):
            key, typ, bound = f"{section}.{f.name}", field_type(f.type), bounds.get(f.name)
            wrong_types: list[Any] = [None, [1], {"a": 1}]
            if typ in (int, float):
                wrong_types += ["abc", True]
                if typ is int:
                    wrong_types.append(2.5)
                assert isinstance(bound, Range)
                cases += [(key, v) for v in _past_bounds(bound, typ is int)]
            elif typ is bool:
                wrong_types += [1, "maybe"]
            elif typ is str:
                wrong_types += [3]
                if bound is not None:
                    cases.append((key, "bogus-word"))
            cases += [(key, v) for v in wrong_types]
    return cases


@pytest.mark.parametrize("method", METHODS)
def test_each_bad_value_in_config_json_is_one_line_naming_the_field(method):
    good = make_config(method, "tiny").to_dict()
    checked = 0
    for key, value in _bad_values(method):
        section, name = key.split(".")
        if key == "method.name":
            continue  # the name picks the class; see test_config_json_that_is_not_a_config
        d = json.loads(json.dumps(good))
        d[section][name] = value
        _one_line_error(config_from_dict, d, field=key)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("method", ["masked", "embedding", "image"])
def test_each_bad_value_set_on_the_command_line_is_one_line_naming_the_field(method):
    types = {f"{s}.{f.name}": field_type(f.type) for s, (obj, _) in _sections(method).items() for f in fields(obj)}
    checked = 0
    for key, value in _bad_values(method):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if value is None or isinstance(value, (list, dict)) or key == "method.name":
            continue  # not something a command line can spell
        if types[key] in (bool, str) and isinstance(value, int):
            continue  # on a command line "1" is true and "3" is a word
        _one_line_error(make_config, method, "tiny", [f"{key}={text}"], field=key)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("setting, field", [
    # the cases of issue 14, points 5 and 6
    ("seed=abc", "seed"), ("seed=1e23", "seed"), ("seed=-1", "seed"), ("seed=1.5", "seed"),
    ("preset=bogus", "preset"), ("train.compile=bogus", "train.compile"), ("train.amp=bogus", "train.amp"),
    ("train.warmup=-5", "train.warmup"), ("model.mlp_ratio=0", "model.mlp_ratio"), ("model.n_head=0", "model.n_head"),
    ("model.n_embd=-32", "model.n_embd"), ("model.n_layer=1e999", "model.n_layer"),
    ("model.n_layer=2.5", "model.n_layer"), ("train.lr=-1", "train.lr"), ("train.lr=nan", "train.lr"),
    ("train.lr=inf", "train.lr"), ("train.lr=1e30", "train.lr"), ("model.dropout=2", "model.dropout"),
    ("model.activation=foo", "model.activation"), ("train.device=meta", "train.device"),
    ("method.temperature=nan", "method.temperature"), ("method.top_p=2", "method.top_p"),
    ("method.top_p=nan", "method.top_p"), ("method.top_k=-1", "method.top_k"),
    # rules that tie fields together
    ("train.min_lr=0.1", "train.min_lr"), ("train.weight_decay=1000", "train.weight_decay"),
    ("model.n_head=3", "model.n_head"), ("method.sampler=beam", "method.sampler"), ("method.name=ar", "method.name"),
])
def test_issue_cases_are_one_line_errors(setting, field):
    _one_line_error(make_config, "masked", "tiny", [setting], field=field)


@pytest.mark.parametrize("method, setting, field", [
    ("image", "method.guidance=nan", "method.guidance"), ("image", "method.guidance=-1", "method.guidance"),
    ("image", "method.eta=2", "method.eta"), ("image", "unet.channel_mult=a,b", "unet.channel_mult"),
    ("image", "unet.heads=3", "unet.heads"), ("image", "method.sample_steps=5000", "method.sample_steps"),
    ("embedding", "method.embed_scale=0", "method.embed_scale"), ("bits", "method.bit_scale=-1", "method.bit_scale"),
    ("block", "method.block_size=0", "method.block_size"), ("block", "method.clip_high=0", "clip_high"),
    ("masked", "method.confidence=0", "method.confidence"), ("masked", "method.schedule=cosine", "method.schedule"),
    ("embedding", "method.guide_weight=1.5", "method.guide_weight"), ("ar", "method.temperature=0", "method.temp"),
])
def test_method_options_are_checked_by_their_config(method, setting, field):
    _one_line_error(make_config, method, "tiny", [setting], field=field)


def test_valid_values_keep_their_numbers():
    """The checks add no rounding: what is set is what is recorded (an int in a float field reads as float)."""
    cfg = make_config("masked", "tiny", ["train.lr=2e-3", "seed=1e3", "model.dropout=0", "train.min_lr=0"])
    assert (cfg.train.lr, cfg.seed, cfg.model.dropout, cfg.train.min_lr) == (2e-3, 1000, 0.0, 0.0)
    assert isinstance(cfg.model.dropout, float)
    d = cfg.to_dict()
    d["model"]["dropout"] = 0  # as a hand-written file may have it
    assert config_from_dict(d).model.dropout == 0.0


def test_sampling_overrides_are_checked_too():
    cfg = make_config("masked", "tiny")
    _one_line_error(apply_sampling_overrides, cfg, ["method.temperature=inf"], field="method.temperature")
    assert apply_sampling_overrides(make_config("masked", "tiny"), ["method.top_k=3"]).method.top_k == 3


# ---- config.json that is not a config ------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    [], None, "a string", 3, True,
    {"method": None}, {"method": []}, {"method": {"name": 5}}, {"method": {"name": "nope"}},
    {"method": {"name": "masked"}, "model": []}, {"method": {"name": "masked"}, "train": "fast"},
    {"method": {"name": "masked"}, "train": {"steps": None}}, {"method": {"name": "masked"}, "seed": "1"},
    {"method": {"name": "masked"}, "model": {"n_embd": "abc"}}, {"method": {"name": "masked"}, "preset": None},
    {"method": {"name": "masked"}, "model": {"n_layer": [[2]]}},
])
def test_config_json_that_is_not_a_config(content):
    _one_line_error(config_from_dict, content)


def _run_dir_with_config(tmp_path: Path, data: bytes) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(data)
    return run


@pytest.mark.parametrize("data", [b"[]", b"null", b'"text"', b"\xff\xfe not utf-8", b'{"config": []}',
                                  b'{"config": {"method": {"name": "masked"}, "model": {"n_embd": "abc"}}}'])
@pytest.mark.parametrize("command", [["sample"], ["eval"], ["mnist", "sample"]])
def test_a_broken_config_json_is_one_line_from_the_cli(tmp_path, capsys, data, command):
    run = _run_dir_with_config(tmp_path, data)
    assert main([*command, str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "config" in err


def test_read_json_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\x80\x81")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        read_json(path)


# ---- property tests -----------------------------------------------------------------------------------------
def _all_keys() -> list[str]:
    keys = {"seed", "preset", "method.time_delta"}
    for method in METHODS:
        for section, (obj, _) in _sections(method).items():
            keys |= {f"{section}.{f.name}" for f in fields(obj)}
    return sorted(keys)


NUMBERS = ["nan", "-nan", "inf", "-inf", "1e999", "-1e999", "1e23", "1e-400", "0", "-0", "1", "-1", "2.5", "1e3",
           "0x10", "1_000", "", " ", "true", "none", "9" * 400, "1e308", "2**63", "\n", "1,2,2", "auto", "cuda:7"]
keys = st.one_of(st.sampled_from(_all_keys()), st.text(max_size=20))
values = st.one_of(st.sampled_from(NUMBERS), st.text(max_size=20),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str))
settings_ = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.text(max_size=20)), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), overrides=settings_)
def test_any_set_works_or_is_a_one_line_config_error(method, overrides):
    try:
        cfg = make_config(method, "tiny", overrides)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert config_from_dict(json.loads(cfg.to_json())).to_dict() == cfg.to_dict()  # what was accepted reloads


@settings(max_examples=60, deadline=None)
@given(overrides=settings_)
def test_any_sampling_set_works_or_is_a_one_line_config_error(overrides):
    try:
        apply_sampling_overrides(make_config("masked", "tiny"), overrides)
    except ConfigError as e:
        assert "\n" not in str(e)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(content=json_values)
def test_any_json_as_config_works_or_is_a_one_line_config_error(content):
    try:
        config_from_dict(content)
    except ConfigError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(METHODS), data=st.data())
def test_any_edit_of_a_real_config_json_works_or_is_a_one_line_config_error(method, data):
    """Closer to a hand edit: one to three fields of a real config replaced by arbitrary JSON values."""
    d = make_config(method, "tiny").to_dict()
    for _ in range(data.draw(st.integers(1, 3))):
        section = data.draw(st.sampled_from(sorted(d)))
        if isinstance(d[section], dict):
            name = data.draw(st.sampled_from([*sorted(d[section]), "unknown"]))
            d[section][name] = data.draw(json_values)
        else:
            d[section] = data.draw(json_values)
    try:
        cfg = config_from_dict(d)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    apply_overrides(cfg, [])  # what loads is valid as it stands


# ---- the command line ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["sample", "R", "--temperature", "nan"], "--temperature"), (["sample", "R", "--temperature", "0"], "--temp"),
    (["sample", "R", "--temperature", "inf"], "--temperature"), (["sample", "R", "--temperature", "-1"], "--temp"),
    (["sample", "R", "--top-p", "2"], "--top-p"), (["sample", "R", "--top-p", "nan"], "--top-p"),
    (["sample", "R", "--top-p", "0"], "--top-p"), (["eval", "R", "--top-k", "-1"], "--top-k"),
    (["sample", "R", "--seed", "1e23"], "--seed"), (["sample", "R", "--seed", "-1"], "--seed"),
    (["sample", "R", "--seed", "abc"], "--seed"), (["train", "--method", "ar", "--seed", "1e23"], "--seed"),
    (["sample", "R", "--delay", "nan"], "--delay"), (["sample", "R", "--delay", "-1"], "--delay"),
    (["sample", "R", "--steps", "1000000000"], "--steps"), (["sample", "R", "--n", "inf"], "--n"),
    (["eval", "R", "--val-windows", "-1"], "--val-windows"),
    (["serve", "R", "--port", "-1"], "--port"), (["serve", "R", "--port", "99999"], "--port"),
    (["serve", "R", "--port", "nan"], "--port"),
    (["mnist", "sample", "R", "--guidance", "nan"], "--guidance"),
    (["mnist", "eval", "R", "--guidance", "-1"], "--guidance"),
    (["mnist", "sample", "R", "--guidance", "inf"], "--guidance"), (["mnist", "sample", "R", "--eta", "2"], "--eta"),
    (["mnist", "sample", "R", "--eta", "nan"], "--eta"), (["train", "--method", "ar", "--steps", "1e999"], "--steps"),
])
def test_bad_number_flags_are_argparse_usage_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
    assert argv[-1] in err  # the value is named (nan, inf, 2, ...)


NUMBER_FLAGS = [["sample", "R", "--temperature"], ["sample", "R", "--top-p"], ["eval", "R", "--top-k"],
                ["sample", "R", "--seed"], ["sample", "R", "--delay"], ["sample", "R", "--steps"],
                ["eval", "R", "--val-windows"], ["serve", "R", "--port"], ["mnist", "sample", "R", "--eta"],
                ["mnist", "eval", "R", "--guidance"], ["train", "--method", "ar", "--seed"], ["sample", "R", "--n"]]


@settings(max_examples=150, deadline=None)
@given(flag=st.sampled_from(NUMBER_FLAGS), value=values)
def test_any_number_flag_parses_or_is_a_usage_error(flag, value):
    """argparse's own error (exit 2, one line after the usage) or a value within the flag's range."""
    if value.startswith("-"):
        value = " " + value  # argparse would read "-1" as an option; a space keeps it the flag's value
    try:
        args = build_parser().parse_args([*flag, value])
    except SystemExit as e:
        assert e.code == 2
        return
    parsed = getattr(args, flag[-1].lstrip("-").replace("-", "_"))
    assert isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
    assert -(2**63) < parsed < 2**63 and math.isfinite(parsed)


def test_serve_refuses_a_port_out_of_range_from_python_too():
    from textdiffusion.apps.serve.app import _listen

    for port in (-1, 65536, 99999):
        _one_line_error(_listen, "127.0.0.1", port, field="--port")


def test_good_number_flags_parse():
    args = build_parser().parse_args(["sample", "R", "--temperature", "0.5", "--top-p", "1", "--top-k", "0",
                                      "--seed", "1e3", "--delay", "0"])
    assert (args.temperature, args.top_p, args.top_k, args.seed, args.delay) == (0.5, 1.0, 0, 1000, 0.0)
    args = build_parser().parse_args(["sample", "R"])  # unset: the run's config decides
    assert (args.temperature, args.top_k, args.top_p) == (None, None, None)
    assert build_parser().parse_args(["serve", "R", "--port", "0"]).port == 0


@pytest.mark.parametrize("argv", [
    ["sample", "R", "--temperature", "0.5", "--set", "method.temperature=0.7"],
    ["eval", "R", "--top-k", "3", "--set", "method.top_k=4"],
    ["sample", "R", "--top-p", "0.5", "--set", "method.top_p=0.9"],
    ["sample", "R", "--steps", "5", "--set", "method.sample_steps=6"],
    ["sample", "R", "--sampler", "topk", "--set", "method.sampler=cached"],
    ["mnist", "sample", "R", "--eta", "0.5", "--set", "method.eta=0"],
    ["mnist", "eval", "R", "--guidance", "2", "--set", "method.guidance=3"],
])
def test_a_flag_and_a_set_that_disagree_are_refused(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "disagree" in err and "\n" not in err


def test_the_token_draw_refuses_what_would_sample_silently_wrong():
    plain = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    for kw in ({"temperature": math.nan}, {"temperature": math.inf}, {"top_p": 2.0}, {"top_p": math.nan},
               {"top_k": -1}):
        flag = "--" + next(iter(kw)).replace("_", "-")
        _one_line_error(lambda kw=kw: check_draw(**{**plain, **kw}), field=flag)


# ---- devices -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["meta", "mps", "cuda:7", "tpu", "cuda:-1", "CPU", ""])
def test_a_device_this_machine_lacks_names_the_ones_it_has(name):
    if name in available_devices():
        pytest.skip(f"this machine has {name}")
    message = _one_line_error(pick_device, name)
    assert "cpu" in message and "--device" in message


def test_devices_this_machine_has_are_picked():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")


def test_a_device_typo_is_refused_at_train_time(capsys):
    assert main(["train", "--method", "ar", "--preset", "tiny", "--device", "meta"]) == 2
    assert "train.device must be" in capsys.readouterr().err


# ---- --set method.X takes effect when sampling ---------------------------------------------------------------
def test_sampling_set_changes_the_draw_and_eval_records_it(tmp_path, small_corpus, capsys):
    """``sample --set method.temperature`` used to be recorded and ignored: the flag's default of 1.0 won."""
    run = tmp_path / "run"
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(small_corpus), "--steps", "4",
                 "--run-dir", str(run), "--no-progress", "--device", "cpu",
                 "--set", "train.eval_every=4", "--set", "train.final_eval_windows=4"]) == 0
    capsys.readouterr()

    def sample(*extra: str) -> str:
        assert main(["sample", str(run), "--length", "24", "--seed", "3", "--device", "cpu", *extra]) == 0
        return capsys.readouterr().out

    plain, greedy = sample(), sample("--set", "method.top_k=1")
    assert greedy != plain
    assert sample("--top-k", "1") == greedy == sample("--top-k", "1", "--set", "method.top_k=1")
    assert sample("--set", "method.temperature=0.01") != plain

    assert main(["eval", str(run), "--samples", "2", "--val-windows", "2", "--device", "cpu",
                 "--set", "method.temperature=0.5", "--set", "method.top_p=0.9"]) == 0
    recorded = json.loads((run / "eval.json").read_text())["samples"]
    assert (recorded["temperature"], recorded["top_k"], recorded["top_p"]) == (0.5, 0, 0.9)
