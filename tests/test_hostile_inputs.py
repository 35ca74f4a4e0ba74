"""Inputs a careless or hostile user can hand the command line, each of which must end in a one-line error or a
bounded wait: JSON nested past any stack, run paths that are symlink loops, text the terminal cannot encode,
directory names that are not UTF-8, networks too large for the machine. (The live page's timeouts are tested
in test_serve.py, beside the server they bound.) ``benchmarks/hostile.py`` runs the same families across
every command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textdiffusion.apps.cli import _failed_allocation, main
from textdiffusion.json_reading import MAX_DEPTH, JSONProblem, parse_json
from textdiffusion.network_size import check_network_fits, count_parameters, device_memory

SRC = Path(__file__).resolve().parents[1] / "src"
DEEP = "[" * 10_000 + "]" * 10_000  # past the interpreter's recursion limit: json raises RecursionError
SHALLOWER = "[" * 500 + "]" * 500  # parses, then overflows the first recursive reader


@pytest.fixture(scope="module")
def run(tmp_path_factory, shakespeare_file: Path) -> Path:
    """A `masked` run of two tiny steps, trained through the command line."""
    root = tmp_path_factory.mktemp("hostile")
    target = root / "masked"
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(shakespeare_file), "--run-dir",
                 str(target), "--no-progress", "--set", "train.steps=2", "--set", "train.eval_windows=2",
                 "--set", "train.final_eval_windows=2"]) == 0
    return target


def copy_run(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- JSON nested past the stack ------------------------------------------------------------------------
@pytest.mark.parametrize("text", [DEEP, SHALLOWER, '{"a": ' * 5000 + "1" + "}" * 5000])
def test_json_nested_too_deeply_is_a_problem_not_a_recursion_error(text):
    with pytest.raises(JSONProblem, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_json(text)


def test_json_as_deep_as_the_limit_and_huge_numbers():
    """The limit is exactly MAX_DEPTH containers; an integer of 5,000 digits (a ValueError in json) and bytes
    that are not UTF-8 are problems too; a float too large is infinity, as json reads it."""
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(JSONProblem, match="nested more"):
        parse_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(JSONProblem, match="thousands of digits"):
        parse_json("1" * 5000)
    with pytest.raises(JSONProblem, match="not valid JSON"):
        parse_json('{"a": ')
    assert parse_json("1e999") == float("inf")


COMMANDS = {
    "sample": lambda r, out: ["sample", str(r), "--n", "1"],
    "eval": lambda r, out: ["eval", str(r), "--samples", "1", "--val-windows", "1"],
    "compare": lambda r, out: ["compare", str(r), "--out", str(out), "--no-progress", "--sweep="],
    "serve": lambda r, out: ["serve", str(r), "--port", "0"],
    "resume": lambda r, out: ["train", "--resume", str(r), "--steps", "4", "--no-progress"],
    "config": lambda r, out: ["config", "--config", str(r / "config.json")],
    "train --config": lambda r, out: ["train", "--config", str(r / "config.json"), "--run-dir", str(out)],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("nesting", [DEEP, SHALLOWER])
def test_a_deeply_nested_config_json_is_one_line_everywhere(run, tmp_path, capsys, command, nesting):
    copy = copy_run(run, tmp_path)
    meta = json.loads((copy / "config.json").read_text())
    text = json.dumps(meta)[:-1] + f', "extra": {nesting}}}'
    (copy / "config.json").write_text(text)
    err = one_line_error(capsys, main(COMMANDS[command](copy, tmp_path / "out")))
    assert "config.json is nested more than" in err


@pytest.mark.parametrize("name", ["tokenizer.json", "final.json", "metrics.jsonl"])
def test_other_run_files_nested_too_deeply(run, tmp_path, capsys, name):
    """tokenizer.json is needed, so it is an error naming it; final.json and a metrics line are records a
    reader can do without: the comparison (which reads all three) is still made."""
    copy = copy_run(run, tmp_path)
    (copy / name).write_text(DEEP + "\n")
    rc = main(["compare", str(copy), "--out", str(tmp_path / "out"), "--no-progress", "--sweep=", "--samples=1"])
    if name == "tokenizer.json":
        assert "tokenizer.json is corrupt (nested more than" in one_line_error(capsys, rc)
    else:
        assert rc == 0, capsys.readouterr().err


# ---- symbolic link loops ---------------------------------------------------------------------------------
def _loop(tmp_path: Path) -> Path:
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    return loop


READERS = {
    "sample": lambda r, tmp: ["sample", str(r), "--n", "1"],
    "eval": lambda r, tmp: ["eval", str(r), "--samples", "1"],
    "compare": lambda r, tmp: ["compare", str(r), "--out", str(tmp / "out"), "--no-progress"],
    "serve": lambda r, tmp: ["serve", str(r), "--port", "0"],
    "resume": lambda r, tmp: ["train", "--resume", str(r), "--no-progress"],
    "mnist sample": lambda r, tmp: ["mnist", "sample", str(r)],
    "mnist eval": lambda r, tmp: ["mnist", "eval", str(r)],
    "mnist resume": lambda r, tmp: ["mnist", "train", "--resume", str(r), "--no-progress"],
}


@pytest.mark.parametrize("command", READERS)
def test_a_run_path_that_is_a_symlink_loop_is_named(tmp_path, capsys, command):
    loop = _loop(tmp_path)
    err = one_line_error(capsys, main(READERS[command](loop, tmp_path)))
    assert f"{loop}" in err and "symbolic link loop" in err


def test_compare_names_the_loop_among_real_runs(run, tmp_path, capsys):
    """pathlib's resolve() raises RuntimeError on a loop; compare deduplicates its runs without it."""
    loop = _loop(tmp_path)
    err = one_line_error(capsys, main(["compare", str(run), str(loop), "--out", str(tmp_path / "o"),
                                       "--no-progress"]))
    assert err == f"error: {loop} is a symbolic link loop (a link that leads back to itself); fix or remove the link"


@pytest.mark.parametrize("argv", [["train", "--method", "masked", "--preset", "tiny", "--run-dir", "LOOP"],
                                  ["compare", "RUN", "--out", "LOOP", "--no-progress"],
                                  ["sample", "RUN", "--n", "1", "--trajectory", "LOOP"]])
def test_an_output_path_that_is_a_symlink_loop_is_named(run, tmp_path, capsys, argv):
    loop = _loop(tmp_path)
    argv = [str(loop) if a == "LOOP" else str(run) if a == "RUN" else a for a in argv]
    err = one_line_error(capsys, main(argv))
    assert f"{loop} is a symbolic link loop" in err


# ---- text the terminal cannot encode -----------------------------------------------------------------------
def _cli(*argv: str, encoding: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m textdiffusion ARGV`` under the C locale with stdout and stderr in ``encoding``."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": encoding,
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "textdiffusion", *argv], capture_output=True, env=env,
                          cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_text_the_terminal_cannot_encode_prints_escaped(tmp_path, encoding):
    """An em dash and an emoji in a printed value: escaped as \\u2014 and \\U0001f600, exit 0."""
    done = _cli("config", "--method", "masked", "--preset", "tiny", "--set", "data.corpus=a—b😀.txt",
                encoding=encoding, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert rb"a\u2014b\U0001f600.txt" in done.stdout and b"Traceback" not in done.stderr


@pytest.mark.slow  # a subprocess that imports torch and scores: ~10-20 s; the config case above is the fast twin
def test_eval_table_prints_under_an_ascii_terminal(run, tmp_path):
    """eval's table holds an em dash: it raised UnicodeEncodeError after the scoring was done."""
    copy = copy_run(run, tmp_path)
    done = _cli("eval", str(copy), "--samples", "1", "--val-windows", "1", encoding="ascii", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"\\u2014" in done.stdout and b"Traceback" not in done.stderr
    assert (copy / "eval.json").is_file()


# ---- names that are not UTF-8 --------------------------------------------------------------------------
NOT_UTF8 = os.fsdecode(b"run\xff")  # what Python makes of the byte: a lone surrogate


def test_a_name_that_is_not_utf8_prints_under_strict_utf8(tmp_path):
    done = _cli("config", "--method", "masked", "--preset", "tiny", "--set", f"data.corpus={NOT_UTF8}.txt",
                encoding="utf-8", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert rb"run\udcff.txt" in done.stdout


def test_a_run_dir_that_is_not_utf8_is_refused_before_training(tmp_path, capsys, shakespeare_file):
    """safetensors opens UTF-8 paths only: such a run would train and then never load."""
    target = tmp_path / NOT_UTF8
    err = one_line_error(capsys, main(["train", "--method", "masked", "--preset", "tiny", "--data",
                                       str(shakespeare_file), "--run-dir", str(target), "--no-progress"]))
    assert "run\\xff has a name that is not valid UTF-8" in err and not target.exists()


@pytest.mark.parametrize("command", ["sample", "eval", "compare", "serve", "resume"])
def test_a_run_renamed_to_a_name_that_is_not_utf8_is_named(run, tmp_path, capsys, command):
    copy = copy_run(run, tmp_path, NOT_UTF8)
    err = one_line_error(capsys, main(COMMANDS[command](copy, tmp_path / "out")))
    assert f"run directory {tmp_path}/run\\xff has a name that is not valid UTF-8" in err


def test_a_corpus_whose_name_is_not_utf8_trains_and_resumes(tmp_path, shakespeare):
    """config.json records the corpus path: the undecodable byte is written as JSON's \\udcff escape, so the
    file stays UTF-8 and a resume finds the same file."""
    corpus = tmp_path / f"{NOT_UTF8}.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    run_dir = tmp_path / "r"
    args = ["--no-progress", "--set", "train.eval_windows=2", "--set", "train.final_eval_windows=2"]
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(corpus), "--run-dir",
                 str(run_dir), "--steps", "2", *args]) == 0
    raw = (run_dir / "config.json").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    assert b"run\\udcff.txt" in raw
    recorded = json.loads(raw)["corpus"]["path"]  # relative to the run, so a shared run names no local folder
    assert recorded == f"../{NOT_UTF8}.txt" and (run_dir / recorded).resolve() == corpus.resolve()
    assert main(["train", "--resume", str(run_dir), "--steps", "3", "--no-progress"]) == 0


# ---- networks too large for the machine --------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["train", "--method", "masked", "--set", "model.n_embd=65536",
                                   "--set", "model.n_layer=64"],
                                  ["mnist", "train", "--data", "digits", "--set", "unet.base_channels=4096"]])
def test_a_network_too_large_is_refused_before_it_is_built(tmp_path, capsys, shakespeare_file, argv):
    """Counted on the meta device: one line with the parameter count and the bytes, no run directory made."""
    argv = [*argv, "--preset", "tiny", "--run-dir", str(tmp_path / "big"), "--no-progress"]
    if argv[0] == "train":
        argv += ["--data", str(shakespeare_file)]
    err = one_line_error(capsys, main(argv))
    assert re.search(r"the network would have [\d,]{13,} parameters: [\d,.]+ GiB of fp32 weights, [\d,.]+ GiB to "
                     r"train .* more than the [\d,.]+ GiB of memory the (cpu|cuda) has", err), err
    assert not (tmp_path / "big").exists()


def test_the_estimate_counts_exactly_and_draws_nothing():
    """The meta build counts what the real one makes, and leaves the seeded stream where it was (a run's
    initial weights come from it)."""
    def network() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2, bias=False))

    torch.manual_seed(0)
    expected = torch.randn(4)
    torch.manual_seed(0)
    assert count_parameters(network) == 3 * 5 + 5 + 5 * 2
    assert torch.equal(torch.randn(4), expected)
    memory = device_memory(torch.device("cpu"))
    assert memory is not None and memory > 2**28
    check_network_fits(network, torch.device("cpu"))  # 30 parameters fit anywhere


def test_an_allocation_that_fails_anyway_is_one_line(tmp_path, capsys, shakespeare_file, monkeypatch):
    """Past the estimate (activations, other processes) torch's allocator raises RuntimeError; the CLI reports
    it with the size asked for."""
    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 51539607552 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("textdiffusion.trainer.build", fail)
    err = one_line_error(capsys, main(["train", "--method", "masked", "--preset", "tiny", "--data",
                                       str(shakespeare_file), "--run-dir", str(tmp_path / "r"), "--no-progress"]))
    assert err.startswith("error: out of memory (an allocation of 48.0 GiB failed); ask for less"), err
    assert _failed_allocation(RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")) == \
        "an allocation of 20.00 GiB failed"
    assert _failed_allocation(RuntimeError("size mismatch for weight")) is None
