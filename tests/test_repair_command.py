"""``textdiffusion repair``: the repaired text printed or written, and every bad input refused in one line."""

from __future__ import annotations

import pytest
import torch

from helpers import train_tiny
from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.corruption import make_channel


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    root = tmp_path_factory.mktemp("repair-command")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:30_000], encoding="utf-8")
    for method in ("ar", "masked", "embedding"):
        train_tiny(method, corpus, root / method, steps=2)
    return root


def noisy_copy(model, text: str, rate: float) -> str:
    ids = torch.tensor(model.tokenizer.encode(text))
    noisy, _ = make_channel("keyboard", rate, model.tokenizer).corrupt(ids, torch.Generator().manual_seed(0))
    return model.tokenizer.decode(noisy.tolist())


def test_the_command_prints_the_repair_or_writes_it(runs, shakespeare, tmp_path, capsys):
    model = load(runs / "masked")
    noisy = noisy_copy(model, shakespeare[-101:], 0.1)
    path = tmp_path / "noisy.txt"
    path.write_text(noisy, encoding="utf-8")
    expected = model.repair(noisy, rate=0.1, channel="keyboard", progress=False).text
    assert main(["repair", str(runs / "masked"), str(path), "--channel", "keyboard", "--rate", "0.1"]) == 0
    out, err = capsys.readouterr()
    assert out == expected
    assert "repairing 101 chars" in err and "in 6 windows" in err and "channel keyboard at rate 0.1" in err
    written = tmp_path / "mended.txt"
    assert main(["repair", str(runs / "masked"), str(path), "--channel", "keyboard", "--out", str(written),
                 "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and written.read_text(encoding="utf-8") == expected and "repairing" not in err


def test_the_command_refuses_in_one_line(runs, tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("First Citizen", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    odd = tmp_path / "odd.txt"
    odd.write_text("naïve ☃", encoding="utf-8")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (["repair", str(runs / "ar"), str(tmp_path / "missing.txt")], "missing.txt: no such file"),
        (["repair", str(runs / "ar"), str(empty)], "is empty; there is nothing to repair"),
        (["repair", str(runs / "ar"), str(latin)], "is not UTF-8 text"),
        (["repair", str(runs / "ar"), str(odd)], "vocabulary: 'ï', '☃'"),
        (["repair", str(runs / "embedding"), str(good)], "the embedding method cannot repair text"),
        (["repair", str(runs / "masked"), str(good), "--beam", "2"], "--beam applies to ar's noisy-channel"),
        (["repair", str(runs / "ar"), str(good), "--steps", "2"], "--steps applies to uniform's reverse process"),
        (["repair", str(runs / "ar"), str(good), "--out", str(tmp_path)], "is a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for rate in ("0", "1", "1.5", "nan"):
        with pytest.raises(SystemExit) as stop:
            main(["repair", str(runs / "ar"), str(good), "--rate", rate])
        assert stop.value.code == 2 and "--rate: must be" in capsys.readouterr().err


def test_the_commands_channels_are_the_librarys():
    from textdiffusion.apps.cli import repair as command
    from textdiffusion.corruption import CHANNELS
    from textdiffusion.methods.repairs import MAX_BEAM, MAX_CANDIDATES, MAX_GROUPS, MAX_STEPS

    assert command.CHANNELS == CHANNELS
    tops = {field: bound.hi for field, bound in command.SETTINGS.values()}
    assert tops == {"beam": MAX_BEAM, "candidates": MAX_CANDIDATES, "groups": MAX_GROUPS, "threshold": 1.0,
                    "steps": MAX_STEPS}


def test_a_dash_reads_the_noisy_text_from_standard_input(runs, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("First Citizen:\nBefore we proceed"))
    assert main(["repair", str(runs / "ar"), "-", "--no-progress", "--beam", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out) == len("First Citizen:\nBefore we proceed") and "[ar step 2: 32 chars in 1 window," in err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["repair", str(runs / "ar"), "-"]) == 2
    assert "error: standard input is empty; there is nothing to repair" in capsys.readouterr().err
