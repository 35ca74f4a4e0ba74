"""``textdiffusion data``: puts Tiny Shakespeare and MNIST where every command and the tests look (the library's
data folder), checks what is there, and offline names the folder, the accepted names and the URLs in one line.
Nothing here reaches the network: the downloaders are replaced by fakes that serve the canonical files or fail."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from textdiffusion.apps.cli import main
from textdiffusion.data import corpus as corpus_mod
from textdiffusion.data import images as images_mod
from textdiffusion.data.corpus import NAMED_CORPORA
from textdiffusion.data.images import MNIST_NPZ_URL

CORPUS_URL = NAMED_CORPORA["tinyshakespeare"].url


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail as it does without a network; the list records what was asked for."""
    asked: list[str] = []

    def fail(url, *a, **k):
        asked.append(getattr(url, "full_url", url))
        raise OSError("network unreachable")

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", fail)
    monkeypatch.setattr(images_mod, "_fetch", fail)
    return asked


def _online(monkeypatch: pytest.MonkeyPatch, shakespeare_file: Path, mnist_file: Path) -> None:
    """Serve the canonical files from the test data folder, as their URLs would."""

    def urlopen(url, *a, **k):
        assert url == CORPUS_URL
        return io.BytesIO(shakespeare_file.read_bytes())

    def fetch(url):
        assert url == MNIST_NPZ_URL
        return mnist_file.read_bytes()

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(images_mod, "_fetch", fetch)


def test_offline_with_the_files_absent_is_one_line_naming_folder_names_and_urls(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "data"
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(folder))
    asked = _offline(monkeypatch)
    assert main(["data"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"error: the data folder {folder}")
    assert "tinyshakespeare.txt (or input.txt) is missing and could not be downloaded (offline?)" in err
    assert CORPUS_URL in err and MNIST_NPZ_URL in err and "TEXTDIFFUSION_DATA" in err
    assert CORPUS_URL in asked and MNIST_NPZ_URL in asked


def test_downloads_what_is_missing_checked_into_the_data_folder(tmp_path, monkeypatch, capsys, shakespeare_file,
                                                                mnist_file):
    folder = tmp_path / "data"
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(folder))
    _online(monkeypatch, shakespeare_file, mnist_file)
    assert main(["data"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"data folder: {folder}"
    assert out[1].split() == ["Tiny", "Shakespeare", str(folder / "tinyshakespeare.txt"), "downloaded,", "sha256",
                              "checked"]
    assert out[2].split() == ["MNIST", str(folder / "mnist.npz"), "downloaded,", "sha256", "checked"]
    assert (folder / "tinyshakespeare.txt").read_bytes() == shakespeare_file.read_bytes()
    _offline(monkeypatch)  # a second run finds both and downloads nothing
    assert main(["data"]) == 0
    assert capsys.readouterr().out.count("present, sha256 checked") == 2


def test_local_files_are_checked_under_either_corpus_name(tmp_path, monkeypatch, capsys, shakespeare_file,
                                                          mnist_file):
    (tmp_path / "input.txt").write_bytes(shakespeare_file.read_bytes())
    (tmp_path / "mnist.npz").symlink_to(mnist_file)
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    asked = _offline(monkeypatch)
    assert main(["data", "--check"]) == 0 and main(["data"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'input.txt'}  present, sha256 checked" in out and asked == []


def test_a_wrong_file_is_named_and_left_alone(tmp_path, monkeypatch, capsys, mnist_file):
    (tmp_path / "input.txt").write_text("another char-rnn corpus", encoding="utf-8")
    (tmp_path / "mnist.npz").symlink_to(mnist_file)
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    asked = _offline(monkeypatch)
    assert main(["data"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "input.txt has the wrong sha256 (not Tiny Shakespeare: delete it)" in err
    assert "mnist.npz" not in err.split(";")[0]  # only what is wrong is named as wrong
    assert (tmp_path / "input.txt").read_text(encoding="utf-8") == "another char-rnn corpus" and asked == []


def test_check_never_downloads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    asked = _offline(monkeypatch)
    assert main(["data", "--check"]) == 2
    err = capsys.readouterr().err
    assert asked == [] and "tinyshakespeare.txt (or input.txt) is missing, mnist.npz is missing;" in err
