"""One-line errors that name the real cause and a fix that works.

Each case here once printed a message that blamed something else: a run given as a file was said not to exist
(or sent its user to check the free disk space), a run whose checkpoint was deleted was told to resume (which
refuses it), an unreadable checkpoint was called damaged, a name too long for the file system was a matter of
permissions. The tests assert the new message exactly and that the old diagnosis is gone. The permission cases
need a process that permissions bind: when the suite runs as root, those commands run in a child that drops
the capabilities that let root read anything (``setpriv``, as ``benchmarks/hostile.py`` does).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from textdiffusion.apps.cli import main
from textdiffusion.data.batches import TextData
from textdiffusion.errors import DataError, os_error_message

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
OLD_GUESS = "check the path, its permissions and the free disk space"


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shakespeare) -> Path:
    """A tiny masked run of two steps with an evaluation row, so its records show training."""
    root = tmp_path_factory.mktemp("diagnosis")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(corpus), "--steps", "2",
                 "--run-dir", str(root / "run"), "--no-progress", "--set", "train.eval_every=1", "--set",
                 "train.eval_windows=2", "--set", "train.final_eval_windows=2"]) == 0
    return root / "run"


@pytest.mark.parametrize("argv", [
    ["sample", "{f}"], ["eval", "{f}"], ["train", "--resume", "{f}"], ["mnist", "sample", "{f}"],
    ["compare", "{f}", "--out", "{tmp}/cmp"], ["serve", "{f}"], ["export", "{f}", "{tmp}/exp"],
])
def test_a_run_given_as_a_file_is_named_as_one(run, tmp_path, capsys, argv):
    config = run / "config.json"
    assert main([a.format(f=config, tmp=tmp_path) for a in argv]) == 2
    line = error_line(capsys)
    assert line == f"error: {config} is a file, not a run directory; pass the folder that holds it: {run}"
    assert "does not exist" not in line and OLD_GUESS not in line


def test_a_file_that_is_no_run_names_the_folder_train_prints(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert main(["sample", str(notes)]) == 2
    assert error_line(capsys) == (f"error: {notes} is a file, not a run directory; pass the folder `textdiffusion "
                                  f"train` or `textdiffusion mnist train` printed (it holds config.json)")


@pytest.mark.parametrize("argv, fix", [
    (["compare", "{run}", "--out", "{tmp}/cmp"], "leave the run out"),
    (["export", "{run}", "{tmp}/exp"], "export another run"),
    (["train", "--resume", "{run}"], "train a new run"),
])
def test_a_deleted_checkpoint_is_not_sent_to_resume(run, tmp_path, capsys, argv, fix):
    """The old advice (``train --resume``, "resume or finish it") fails: resume refuses the same run."""
    lost = tmp_path / "lost"
    shutil.copytree(run, lost)
    (lost / "checkpoint.safetensors").unlink()
    assert main([a.format(run=lost, tmp=tmp_path) for a in argv]) == 2
    line = error_line(capsys)
    assert line == (f"error: {lost} has no checkpoint.safetensors, but its records show training beyond step 0: "
                    f"the checkpoint was deleted or moved; restore it, or {fix}")
    assert "before its first" not in line and "resume it with" not in line


def test_a_run_that_stopped_before_its_first_save_is_still_sent_to_resume(run, tmp_path, capsys):
    young = tmp_path / "young"
    young.mkdir()
    shutil.copy(run / "config.json", young / "config.json")
    assert main(["compare", str(young), "--out", str(tmp_path / "cmp")]) == 2
    assert error_line(capsys) == (f"error: {young} has no checkpoint (training stopped before its first save); "
                                  f"resume it with `textdiffusion train --resume {young}` or leave it out")


def test_a_set_item_without_equals_is_a_syntax_error_on_a_trained_run(run, capsys):
    for command in ("sample", "eval"):
        assert main([command, str(run), "--set", "temperature"]) == 2
        line = error_line(capsys)
        assert line == "error: --set expects key=value (e.g. method.temperature=0.8), got 'temperature'"
        assert "can only change its sampling options" not in line


def test_compare_names_a_config_without_a_method_name(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    meta = json.loads((broken / "config.json").read_text())
    del meta["config"]["method"]["name"]
    (broken / "config.json").write_text(json.dumps(meta))
    assert main(["compare", str(broken), "--out", str(tmp_path / "cmp")]) == 2
    line = error_line(capsys)
    assert line == (f"error: {broken / 'config.json'} records no method name; it was not written by textdiffusion, "
                    f"or was edited: restore it or retrain")
    assert "'?'" not in line


def test_a_name_too_long_is_not_a_permission_or_disk_problem(run, tmp_path, capsys):
    out = tmp_path / ("a" * 300 + ".txt")
    assert main(["sample", str(run), "--n", "1", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert line == (f"error: a name in {out} is too long for the file system (304 bytes; most allow 255); pick a "
                    f"shorter name")
    assert OLD_GUESS not in line


def test_config_given_a_symlink_loop_says_so(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["train", "--config", str(loop), "--run-dir", str(tmp_path / "r")]) == 2
    assert error_line(capsys) == (f"error: --config {loop}: {loop} is a symbolic link loop (a link that leads "
                                  f"back to itself); fix or remove the link")


def test_a_corpus_too_short_for_any_context_offers_only_a_longer_one():
    data = TextData.from_text("x")
    with pytest.raises(DataError) as e:
        data.check_window(32)
    assert str(e.value) == ("the training split has 0 characters but one training window needs 32; use a longer "
                            "corpus (no context fits an empty split)")


def test_the_context_offered_for_a_short_corpus_fits():
    data = TextData.from_text("a short corpus\n" * 2)
    with pytest.raises(DataError, match=r"--set model.context=(\d+) fits both splits") as e:
        data.check_window(32)
    data.check_window(int(e.value.args[0].split("model.context=")[1].split()[0]))  # the offered one passes


def test_os_errors_are_diagnosed_by_their_errno(tmp_path):
    """The cause comes from the errno; a temporary file of an atomic write is shown as the file it was for."""
    tmp = tmp_path / ".metrics.jsonl.q44mh3ax.tmp"
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", str(tmp))) == (
        f"no space left on the disk that holds {tmp_path / 'metrics.jsonl'} (No space left on device); free some "
        f"space and run it again")
    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/x")) == (
        "/mnt/x is on a read-only file system; pick a place on a writable disk")
    blocker = tmp_path / "f"
    blocker.write_text("")
    assert os_error_message(OSError(errno.ENOTDIR, "Not a directory", str(blocker / "a" / "b"))) == (
        f"{blocker} is a file, not a folder, so {blocker / 'a' / 'b'} cannot exist; fix the path")
    assert os_error_message(OSError(errno.ENOENT, "No such file", str(tmp_path / "gone"))) == (
        f"{tmp_path / 'gone'} does not exist; check the path")


# ---- permissions: in a process they bind ---------------------------------------------------------------
_COMMANDS = """
import contextlib, io, json, sys
from textdiffusion.apps.cli import main
lines = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        main(argv)
    lines.append(err.getvalue().strip().splitlines()[-1])
print(json.dumps(lines))
"""


def _unprivileged(*argvs: list[str]) -> list[str]:
    """The last stderr line of each command, run in one child process that file permissions bind."""
    if ROOT and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to bind")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*(NOBODY if ROOT else []), sys.executable, "-c", _COMMANDS,
                           json.dumps([[str(a) for a in argv] for argv in argvs])],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_permissions_name_what_may_not_be_read_or_written(run, tmp_path):
    unreadable_ckpt, unreadable_config, closed, read_only = (tmp_path / n for n in ("ckpt", "config", "closed", "ro"))
    for copy in (unreadable_ckpt, unreadable_config, closed, read_only):
        shutil.copytree(run, copy)
    (unreadable_ckpt / "checkpoint.safetensors").chmod(0)
    (unreadable_config / "config.json").chmod(0)
    closed.chmod(0)
    read_only.chmod(0o555)
    try:
        lines = _unprivileged(["sample", unreadable_ckpt, "--n", "1"], ["sample", unreadable_config, "--n", "1"],
                              ["train", "--method", "masked", "--preset", "tiny", "--run-dir", closed],
                              ["train", "--resume", read_only, "--steps", "3", "--no-progress"])
    finally:
        closed.chmod(0o755)
        read_only.chmod(0o755)
    ckpt, config = unreadable_ckpt / "checkpoint.safetensors", unreadable_config / "config.json"
    assert lines == [
        f"error: cannot read {ckpt} (permission denied); give yourself read access (chmod u+r {ckpt})",
        f"error: cannot read {config} (permission denied); give yourself read access (chmod u+r {config})",
        f"error: cannot open the folder {closed} (permission denied); give yourself access (chmod u+rx {closed})",
        f"error: cannot write in {read_only} (permission denied), where resuming saves its checkpoint and records; "
        f"make it writable (chmod u+w {read_only}), or resume a copy of the run",
    ]
    assert not any("damaged" in ln or OLD_GUESS in ln or "weights.safetensors" in ln or ".tmp" in ln for ln in lines)


@pytest.mark.parametrize("argv", [["sample"], ["mnist", "sample"], ["mnist", "eval"], ["eval"]])
def test_a_missing_run_names_both_trainers_that_print_one(tmp_path, capsys, argv):
    assert main([*argv, str(tmp_path / "nope")]) == 2
    assert error_line(capsys) == (f"error: run directory {tmp_path / 'nope'} does not exist; pass the directory "
                                  f"`textdiffusion train` or `textdiffusion mnist train` printed (it holds "
                                  f"config.json)")
