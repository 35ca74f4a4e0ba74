"""The CLI contract: spellings from the issue, output on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import json

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
        (["--length", "999"], "exceeds the model's context"),
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
