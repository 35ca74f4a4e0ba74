"""Where a file a command writes goes. On request (``--trajectory``, ``--gif``, reports), a symbolic link is
written through to its target and stays a link; a file the package keeps in a run replaces a link with its own
file, so a run copied as links never writes into the original. A name that is not a regular file (a folder, a
device, a named pipe) is refused in one line either way."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from helpers import train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.errors import ConfigError
from textdiffusion.files import write_text
from textdiffusion.limits import check_output_file, check_output_folder


def test_a_write_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "data" / "target.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "t.json"
    link.symlink_to(Path("data") / "target.json")  # relative, as `ln -s` makes them
    write_text(link, "new", through_links=True)
    assert link.is_symlink() and os.readlink(link) == str(Path("data") / "target.json")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["target.json"]  # no temporary left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "t.json"]


def test_a_chain_of_links_and_a_dangling_link_write_the_final_target(tmp_path):
    final = tmp_path / "final.txt"
    (tmp_path / "b").symlink_to(final)  # dangling: the write creates what it leads to
    (tmp_path / "a").symlink_to(tmp_path / "b")
    write_text(tmp_path / "a", "x", through_links=True)
    assert final.read_text() == "x" and (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


def test_a_file_the_package_keeps_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    target = tmp_path / "original.json"
    target.write_text("original")
    link = tmp_path / "copy.json"
    link.symlink_to(target)
    write_text(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert target.read_text() == "original"


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "link to a fifo"])
def test_a_name_that_is_not_a_regular_file_is_never_replaced(tmp_path, kind):
    path = tmp_path / "out"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to a fifo":
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    else:
        path = Path("/dev/null")
    before = os.lstat(path)
    with pytest.raises(ConfigError, match="which writing a file there would replace; pick a file name"):
        write_text(path, "x", through_links=True)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    if kind != "device":
        left = sorted(p.name for p in tmp_path.iterdir())  # and no temporary left beside it
        assert left == (["out", "pipe"] if kind == "link to a fifo" else ["out"])


def test_the_output_check_refuses_a_device_and_a_fifo_and_follows_links(tmp_path):
    with pytest.raises(ConfigError, match=r"^--trajectory /dev/null is a device, which writing"):
        check_output_file("/dev/null", "--trajectory")
    os.mkfifo(tmp_path / "p")
    with pytest.raises(ConfigError, match="is a named pipe"):
        check_output_file(tmp_path / "p", "--out")
    (tmp_path / "gone").symlink_to(tmp_path / "missing" / "t.json")
    with pytest.raises(ConfigError, match="missing does not exist"):  # the folder where the bytes would go
        check_output_file(tmp_path / "gone", "--trajectory")


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, shakespeare_file):
    run = tmp_path_factory.mktemp("runs") / "masked"
    train_tiny("masked", shakespeare_file, run, steps=2)
    return run


def test_sample_trajectory_and_out_through_links_and_onto_devices(masked_run, tmp_path, capsys):
    target, out = tmp_path / "target.json", tmp_path / "samples.jsonl"
    target.write_text("old")
    out.write_text("old")
    (tmp_path / "t.json").symlink_to(target)
    (tmp_path / "o.jsonl").symlink_to(out)
    rc = main(["sample", str(masked_run), "--n", "2", "--length", "16", "--no-progress",
               "--trajectory", str(tmp_path / "t.json"), "--out", str(tmp_path / "o.jsonl")])
    assert rc == 0
    assert (tmp_path / "t.json").is_symlink() and (tmp_path / "o.jsonl").is_symlink()
    assert json.loads(target.read_text())["format"] == "textdiffusion-trajectory/1"
    assert len(out.read_text().splitlines()) == 2
    capsys.readouterr()
    for flag in ("--trajectory", "--gif"):  # replaced at the end: a device would become a file
        assert main(["sample", str(masked_run), "--n", "1", "--length", "16", flag, "/dev/null"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {flag} /dev/null is a device, which writing a file there would replace; pick a " \
                      f"file name"
    # --out streams into the file as samples come, so a device or a pipe it may write to is fine
    assert main(["sample", str(masked_run), "--n", "1", "--length", "16", "--no-progress", "--out", "/dev/null"]) == 0
    assert "written to /dev/null" in capsys.readouterr().err
    assert Path("/dev/null").is_char_device()


def test_a_run_copied_as_links_never_writes_into_the_original(masked_run, tmp_path, capsys):
    import shutil

    original = tmp_path / "original"
    shutil.copytree(masked_run, original)
    before = {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()}
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in original.iterdir():
        if p.is_file():
            (copy / p.name).symlink_to(p)
    assert main(["train", "--resume", str(copy), "--steps", "3", "--no-progress"]) == 0
    assert main(["eval", str(copy), "--samples", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()} == before
    assert not (copy / "ckpt.safetensors").is_symlink()


def test_compare_refuses_a_report_name_that_is_not_a_file_before_measuring(masked_run, tmp_path, capsys,
                                                                           monkeypatch):
    import textdiffusion.apps.compare as compare_module

    out = tmp_path / "cmp"
    out.mkdir()
    os.mkfifo(out / "report.html")
    monkeypatch.setattr(compare_module, "_read_runs", lambda *a, **k: pytest.fail("measured before refusing"))
    assert main(["compare", str(masked_run), "--out", str(out), "--samples", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --out {out / 'report.html'} is a named pipe (FIFO), which "
                                               f"writing a file there would replace; pick a file name")
    assert stat.S_ISFIFO(os.lstat(out / "report.html").st_mode)


def test_an_output_folder_refuses_a_file_name_that_is_a_device_link(tmp_path):
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "samples.png").symlink_to("/dev/null")
    with pytest.raises(ConfigError, match=r"^--out .*samples\.png is a device"):
        check_output_folder(out, "--out", ("samples.png",))
