"""The CLI contract: spellings from the issue, output on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import pytest

from textdiffusion import __version__
from textdiffusion.apps.cli import build_parser, main
from textdiffusion.checkpoint import read_header
from textdiffusion.methods import REGISTRY, TextMethod
from textdiffusion.methods.image import ImageDiffusion


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    for method in ("ar", "masked"):
        code = main(["train", "--method", method, "--preset", "tiny", "--data", str(corpus), "--steps", "30",
                     "--run-dir", str(root / method), "--seed", "3", "--set", "train.eval_every=15",
                     "--no-progress"])
        assert code == 0
    return root


def test_train_records_the_overrides(runs):
    cfg = json.loads((runs / "masked" / "config.json").read_text())
    assert cfg["config"]["train"]["eval_every"] == 15 and cfg["seed"] == 3


def test_sample_prints_samples_to_stdout(runs, capsys):
    assert main(["sample", str(runs / "masked"), "--n", "2", "--prompt", "KING", "--length", "20",
                 "--sampler", "topk", "--steps", "5", "--temperature", "0.8", "--seed", "1"]) == 0
    out = capsys.readouterr().out.split("\n" + "=" * 40 + "\n")
    assert len(out) == 2 and all(s.startswith("KING") for s in out)


def test_sample_show_and_trajectory(runs, tmp_path, capsys):
    traj = tmp_path / "t.json"
    assert main(["sample", str(runs / "masked"), "--infill", "ROMEO:\nO ____ art thou", "--show", "--delay", "0",
                 "--trajectory", str(traj), "--steps", "4"]) == 0
    captured = capsys.readouterr()
    assert "step" in captured.err and "░" in captured.err  # frames with masked positions visible
    data = json.loads(traj.read_text())
    frames = data["frames"]
    assert frames[0]["masked"][0] == [9, 10, 11, 12] and frames[-1]["masked"][0] == []
    assert sum(f["changed"][0] for f in frames) == 4
    assert captured.out.strip().startswith("ROMEO:\nO ") and captured.out.strip().endswith(" art thou")


def test_ar_sample_and_resume_contract(runs, capsys):
    assert main(["sample", str(runs / "ar"), "--prompt", "First", "--length", "40", "--show", "--delay", "0"]) == 0
    assert capsys.readouterr().out.startswith("First")
    assert main(["train", "--resume", str(runs / "ar"), "--steps", "40", "--no-progress"]) == 0
    assert read_header(runs / "ar").step == 40
    assert json.loads((runs / "ar" / "config.json").read_text())["config"]["train"]["steps"] == 40
    assert main(["train", "--resume", str(runs / "ar"), "--no-progress"]) == 2  # nothing left to do


def test_eval_prints_a_table(runs, capsys):
    assert main(["eval", str(runs / "ar"), "--samples", "4", "--val-windows", "8"]) == 0
    out = capsys.readouterr().out
    assert "val bits/char" in out and "exact" in out and (runs / "ar" / "eval.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--method", "masked", "--preset", "tiny", "--data", "/no/such/file.txt"], "no such corpus"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "model.n_layers=3"], "unknown field 'n_layers'"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "train.lr=fast"], "expected a float"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "oops"], "key=value"),
    (["train", "--preset", "tiny"], "needs --method"),
    (["sample", "/no/such/run"], "does not exist"),
    # a mistyped name from a fixed set names the closest one
    (["train", "--method", "mask", "--preset", "tiny"], "unknown method 'mask'; choose one of ar, bits, block, "
                                                          "embedding, image, latent, masked, uniform; did you mean "
                                                          "'masked'?"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "train.lrr=1e-3"], "did you mean 'lr'?"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "trian.lr=1e-3"], "did you mean 'train'?"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "method.sampler=cahced"],
     "got 'cahced'; did you mean 'cached'?"),
    (["train", "--method", "masked", "--preset", "tiny", "--set", "data.tokenizer=bep"], "did you mean 'bpe'?"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err


def test_bad_sample_requests(runs, capsys):
    cases = [
        (["--prompt", "Ω"], "never seen"),
        (["--infill", "no blanks"], "placeholders"),
        (["--sampler", "beam"], "no sampler"),
        (["--length", "999999"], "more than 100,000 tokens"),
        (["--length", "99", "--overlap", "99"], "--overlap 99 must be between 1 and 31"),
    ]
    for extra, message in cases:
        assert main(["sample", str(runs / "masked"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_corrupt_checkpoint_is_one_line(runs, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs / "masked", broken)
    (broken / "checkpoint.safetensors").write_bytes(b"\x00" * 10)
    assert main(["sample", str(broken)]) == 2
    assert "damaged" in capsys.readouterr().err


def test_context_longer_than_corpus(tmp_path, capsys):
    tiny = tmp_path / "t.txt"
    tiny.write_text("a short corpus\n" * 2, encoding="utf-8")
    assert main(["train", "--method", "ar", "--preset", "tiny", "--data", str(tiny), "--run-dir",
                 str(tmp_path / "r")]) == 2
    assert "smaller context" in capsys.readouterr().err


def test_a_mistyped_sampler_or_sampling_option_names_the_closest(runs, capsys):
    assert main(["sample", str(runs / "masked"), "--sampler", "cahced"]) == 2
    assert ("no sampler 'cahced'; choose one of ancestral, cached, confidence, topk, left_to_right, remdm; did you "
            "mean 'cached'?") in capsys.readouterr().err
    assert main(["sample", str(runs / "masked"), "--set", "method.temprature=0.5"]) == 2
    assert capsys.readouterr().err.strip().endswith("did you mean 'method.temperature'?")
    assert main(["sample", str(runs / "masked"), "--sampler", "zzz"]) == 2  # nothing close: no guess
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--method", "masked", "--preset", "tin"],
     "argument --preset: invalid choice: 'tin' (choose from 'base', 'cpu', 'tiny'); did you mean 'tiny'?"),
    (["trian", "--method", "masked"], "argument COMMAND: invalid choice: 'trian' (choose from 'train', "),
])
def test_a_mistyped_choice_of_the_parser_names_the_closest(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "did you mean" in err


@pytest.mark.parametrize("argv", [
    ["train", "--method", "masked", "--preset", "tiny", "--set", "train.lr", "1e-3"],
    ["config", "--method", "masked", "--set", "train.lr", "1e-3", "--json"],
])
def test_a_setting_written_with_a_space_says_how_to_write_it(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --set takes KEY=VALUE as one word, got 'train.lr' then '1e-3'; write --set train.lr=1e-3\n"


def test_a_key_without_a_value_before_a_run_directory_is_left_to_the_config(runs, capsys):
    # the word after the key is a run directory, not a value: the config's own message answers
    assert main(["sample", "--set", "method.temperature", str(runs / "masked")]) == 2
    assert "--set expects key=value" in capsys.readouterr().err


def test_a_run_written_by_another_version_says_which_fields_it_ignores(tmp_path, capsys):
    import shutil
    import warnings

    from textdiffusion import load
    from textdiffusion.errors import ConfigWarning

    run = tmp_path / "newer"
    shutil.copytree(Path(__file__).parent / "data" / "runs-0.1.0" / "masked", run)
    argv = ["sample", str(run), "--n", "1", "--length", "8"]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err  # a run of 0.1.0 as it was: nothing ignored
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["train"]["ema_every"] = 2
    meta["config"]["extra"] = True
    meta["versions"]["textdiffusion"] = "9.0"
    (run / "config.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown again, although an earlier test may have shown it
        assert main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {run / 'config.json'} sets train.ema_every, extra, which textdiffusion "
                      f"{__version__} does not know (written by textdiffusion 9.0); they are ignored"]
    with pytest.warns(ConfigWarning, match="sets train.ema_every, extra"):
        load(run, device="cpu")


def test_set_takes_one_setting_so_a_run_directory_may_follow(runs, capsys):
    # `--set` used to swallow everything after it, so the run directory could not come last
    assert main(["sample", "--set", "method.sample_steps=3", str(runs / "masked"), "--length", "12",
                 "--sampler", "ancestral"]) == 0
    assert "3 network evaluations per sample" in capsys.readouterr().err
    # the older several-per-flag form still parses, with or without a positional after it
    args = build_parser().parse_args(["sample", "--set", "method.sample_steps=3", "method.confidence=0.5", "RUN",
                                      "--set", "method.eval_seed=1", "--n", "2"])
    assert args.run_dir == "RUN" and args.n == 2
    assert args.overrides == ["method.sample_steps=3", "method.confidence=0.5", "method.eval_seed=1"]
    args = build_parser().parse_args(["train", "--method", "ar", "--set", "train.lr=1e-3", "model.n_layer=2"])
    assert args.overrides == ["train.lr=1e-3", "model.n_layer=2"]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with single spaces


def test_help_lists_every_registered_sampler(capsys):
    text = {command: _help([command], capsys) for command in ("sample", "eval")}
    for name, cls in REGISTRY.items():
        if issubclass(cls, TextMethod):
            for help_text in text.values():
                assert f"{' | '.join(cls.samplers)} ({name})" in help_text
    assert "ddim | ddpm (bits)" in text["sample"]
    for command in ("sample", "eval"):
        assert f"--sampler {{{','.join(ImageDiffusion.samplers)}}}" in _help(["mnist", command], capsys)


def test_top_level_help_and_version(capsys):
    text = _help([], capsys)
    assert "parsing only" not in text and "Train, sample, evaluate and compare" in text
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"textdiffusion {__version__}"


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser of the command line with its subcommand path: the top level, each command, mnist's."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_argument_of_every_command_has_help():
    walked = list(_parsers(build_parser()))
    assert {p for p, _ in walked} >= {("train",), ("config",), ("mnist", "eval"), ("serve",)}
    for path, parser in walked:
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{' '.join(path)}: {action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):  # the command list: a line per command
                assert all(choice.help for choice in action._choices_actions), path
        assert parser.description, f"{' '.join(path)} has no description"
        assert "default: None" not in parser.format_help() and "default: []" not in parser.format_help()


def test_help_shows_defaults_and_examples(capsys):
    sample = _help(["sample"], capsys)
    assert "number of samples (default: 1)" in sample and "seed of the draw" in sample and "(default: 0)" in sample
    assert "(default: auto)" in sample and "examples:" in sample
    top = _help([], capsys)
    assert "examples:" in top and "textdiffusion config --method masked --preset cpu" in top
    train = _help(["train"], capsys)
    assert "(default: cpu, or the --config file's)" in train and "(default: 1337)" in train
    assert "tiny 60, cpu 2000, base 5000" in train  # the presets' steps, read from the presets


def test_mnist_eval_defaults_match_the_function_and_finish_quickly():
    from textdiffusion.image_evaluation import eval_steps, evaluate_images

    (parser,) = [p for path, p in _parsers(build_parser()) if path == ("mnist", "eval")]
    flags = {a.dest: a for a in parser._actions}
    default = inspect.signature(evaluate_images).parameters
    assert flags["samples"].default == default["samples"].default == 500
    assert flags["steps"].default is None and default["steps"].default == 0  # both mean eval_steps' default
    method = type("M", (), {"cfg": type("C", (), {"sample_steps": 0})(), "max_steps": 1000,
                            "default_steps": lambda self, length: 1000})()
    assert eval_steps(method) == 50 and eval_steps(method, 7) == 7
    method.max_steps = 20  # a shorter training grid caps the default
    assert eval_steps(method) == 20
    method.default_steps = lambda length: None  # a method whose step count is not a choice samples with its own
    assert eval_steps(method) == 0 and eval_steps(method, 7) == 7


def test_config_describes_every_field_of_every_method(capsys):
    from textdiffusion.config import describe_fields
    from textdiffusion.methods.configs import make_config

    for name in REGISTRY:
        cfg = make_config(name, "tiny")
        rows = describe_fields(cfg)
        flat = {f"{section}.{key}" for section, values in cfg.to_dict().items() if isinstance(values, dict)
                for key in values} | {"seed", "preset"}
        assert {r.key for r in rows} == flat
        undocumented = [r.key for r in rows if not r.doc.strip()]
        assert not undocumented, f"{name}: declare each with option(default, bound, doc): {undocumented}"
        assert main(["config", "--method", name, "--preset", "tiny"]) == 0
        out = capsys.readouterr().out
        assert all(r.key in out and r.doc in out for r in rows), name
    assert " * " in out  # sampling options are marked


def test_config_json_is_what_config_reads(tmp_path, capsys):
    from textdiffusion.methods.configs import config_from_dict, make_config, read_config_file

    assert main(["config", "--method", "masked", "--preset", "tiny", "--set", "model.n_layer=3", "--json"]) == 0
    text = capsys.readouterr().out
    expected = make_config("masked", "tiny", ["model.n_layer=3"]).to_dict()
    assert config_from_dict(json.loads(text)).to_dict() == expected
    path = tmp_path / "c.json"
    path.write_text(text)
    assert read_config_file(path).to_dict() == expected
    # a file is a starting point: --set applies on top, and `config --config` shows the result
    assert main(["config", "--config", str(path), "--set", "train.lr=0.002", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["train"]["lr"] == 0.002 and again["model"]["n_layer"] == 3


def test_train_from_a_runs_config_json(runs, tmp_path):
    source = runs / "masked"
    assert main(["train", "--config", str(source / "config.json"), "--run-dir", str(tmp_path / "copy"),
                 "--no-progress"]) == 0
    before = json.loads((source / "config.json").read_text())
    after = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert after["config"] == before["config"]  # data, seed, --set values: all from the file
    assert after["run_id"] != before["run_id"]  # what is the run's own is not copied
    assert main(["train", "--config", str(source / "config.json"), "--method", "masked", "--preset", "tiny",
                 "--steps", "2", "--seed", "9", "--run-dir", str(tmp_path / "short"), "--no-progress"]) == 0
    short = json.loads((tmp_path / "short" / "config.json").read_text())["config"]
    assert short["train"]["steps"] == 2 and short["seed"] == 9 and short["model"] == before["config"]["model"]


@pytest.mark.parametrize("content, argv, message", [
    (None, [], "no such file"),
    ('{"method": {"name": "masked"', [], "not valid JSON (Expecting"),
    ("[1, 2]", [], "holds a list, not a config object"),
    ('{"model": {}}', [], "no method section"),
    ('{"method": {"name": "nope"}}', [], "unknown method 'nope'"),
    ('{"method": {"name": "masked"}, "model": {"n_layers": 3}}', [], "unknown field model.n_layers"),
    ('{"method": {"name": "masked"}, "train": {"lrr": 3}}', [], "weight_decay; did you mean 'lr'?"),
    ('{"method": {"name": "masked"}, "trian": {}}', [], "unknown key 'trian'; a config has model, train, method, "
                                                        "data, seed, preset; did you mean 'train'?"),
    ('{"method": {"name": "masked"}, "unet": {}}', [], "does not use the unet section"),
    ('{"method": {"name": "masked"}, "extra": 1}', [], "unknown key 'extra'"),
    ('{"method": {"name": "masked"}, "model": {}}', [], "no train or data section"),
    ("RUN", ["--preset", "cpu"], "--preset cpu and --config"),
    ("RUN", ["--method", "ar"], "--method ar and --config"),
    ("RUN", ["--set", "model.n_layer=0"], "model.n_layer must be"),
])
def test_bad_config_files_are_one_line(runs, tmp_path, capsys, content, argv, message):
    path = tmp_path / "c.json"
    if content == "RUN":
        path = runs / "masked" / "config.json"
    elif content is not None:
        path.write_text(content)
    assert main(["train", "--config", str(path), *argv, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test_mnist_train_refuses_a_text_config_and_resume_refuses_a_new_config(runs, capsys):
    config = str(runs / "masked" / "config.json")
    assert main(["mnist", "train", "--config", config]) == 2
    assert "config of the text method masked; train it with `textdiffusion train --config" in capsys.readouterr().err
    assert main(["train", "--resume", str(runs / "masked"), "--config", config, "--seed", "0"]) == 2
    assert "only --steps may be changed, not --config, --seed" in capsys.readouterr().err


def test_messages_name_the_flag_of_the_command_at_hand(runs, capsys):
    # a device this machine lacks: the fix is --device, which sample/eval/serve have (not --set train.device)
    assert main(["sample", str(runs / "masked"), "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert "use --device auto" in err and "--set" not in err


@pytest.fixture
def another_image_method():
    """An image method registered under a name of its own (the built-in ``image`` under another name), removed
    again afterwards."""
    from dataclasses import dataclass

    from textdiffusion.methods.base import register
    from textdiffusion.methods.image import ImageConfig

    @dataclass
    class PixelsConfig(ImageConfig):
        name: str = "pixels"

    class Pixels(ImageDiffusion):
        name = "pixels"
        config_class = PixelsConfig

    register(Pixels)
    yield Pixels
    del REGISTRY["pixels"]


def test_mnist_takes_any_method_of_the_image_family(another_image_method, tmp_path, capsys):
    import textdiffusion

    run = tmp_path / "pixels"
    assert main(["mnist", "train", "--method", "pixels", "--preset", "tiny", "--data", "digits", "--steps", "2",
                 "--run-dir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["method"]["name"] == "pixels"
    assert main(["mnist", "sample", str(run), "--n", "4", "--steps", "3", "--no-gif", "--no-progress"]) == 0
    assert (run / "samples" / "samples.png").exists()
    assert isinstance(textdiffusion.load(run, device="cpu"), textdiffusion.ImageModel)
    assert main(["sample", str(run)]) == 2 and "use `textdiffusion mnist sample" in capsys.readouterr().err
    assert main(["config", "--method", "pixels", "--preset", "tiny"]) == 0
    assert "`textdiffusion mnist train --method pixels --preset tiny`" in capsys.readouterr().out
    assert main(["mnist", "train", "--method", "masked", "--run-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--method masked is a text method; train it with `textdiffusion train --method masked`" in err
    assert "\n" not in err and not (tmp_path / "m").exists()
