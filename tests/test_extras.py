"""The base install runs the demo and the core commands; a feature whose extra is missing says which extra to
install in one line. The packages are made unimportable here by putting None in ``sys.modules``, which is what
Python's import does for a package that is not installed, as far as the caller can tell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from textdiffusion.apps.cli import main
from textdiffusion.config import ConfigError
from textdiffusion.extras import MissingExtraError, require

#: the optional packages of each extra that the package itself imports
OPTIONAL = {"report": ("jinja2", "markupsafe"), "serve": ("starlette", "uvicorn"), "digits": ("sklearn",)}


def _uninstall(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_require_names_the_feature_the_packages_and_the_extra(monkeypatch):
    _uninstall(monkeypatch, "uvicorn")
    require(("json",), "serve", "nothing")  # present: no error
    with pytest.raises(MissingExtraError) as e:
        require(("json", "uvicorn"), "serve", "textdiffusion serve")
    message = str(e.value)
    assert message.startswith("textdiffusion serve needs uvicorn, which the base install leaves out")
    assert 'pip install "textdiffusion[serve]"' in message and 'pip install -e ".[serve]"' in message
    assert isinstance(e.value, ImportError) and isinstance(e.value, ConfigError) and "\n" not in message


def test_serve_without_its_extra_is_one_line(monkeypatch, capsys, tmp_path):
    _uninstall(monkeypatch, "starlette", "uvicorn")
    assert main(["serve", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: textdiffusion serve needs starlette and uvicorn") and "textdiffusion[serve]" in err


def test_compare_without_its_extra_is_one_line_before_any_work(monkeypatch, capsys, tmp_path):
    _uninstall(monkeypatch, "jinja2")
    assert main(["compare", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compare's report.html needs jinja2" in err and "textdiffusion[report]" in err
    assert not (tmp_path / "out").exists()


def test_digits_without_its_extra_is_one_line(monkeypatch, capsys, tmp_path):
    from textdiffusion.data.images import load_images

    _uninstall(monkeypatch, "sklearn", "sklearn.datasets")
    with pytest.raises(MissingExtraError, match=r'textdiffusion\[digits\]'):
        load_images("digits")
    code = main(["mnist", "train", "--data", "digits", "--preset", "tiny", "--run-dir", str(tmp_path / "run"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs sklearn" in err and "textdiffusion[digits]" in err


def _without_optional_packages(body: str, data: Path) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter in which every optional package of :data:`OPTIONAL` is uninstalled."""
    blocked = sorted(m for modules in OPTIONAL.values() for m in modules)
    code = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n{body}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TEXTDIFFUSION_DATA": str(data)})


def test_the_package_and_what_the_demo_runs_import_no_optional_package(shakespeare_file):
    body = ("import textdiffusion\nfrom textdiffusion import load, train, TextModel\n"
            "import textdiffusion.apps.demo, textdiffusion.trainer, textdiffusion.evaluate, textdiffusion.viz\n"
            "from textdiffusion.apps.cli import build_parser\nbuild_parser()\nprint('imported')\n")
    proc = _without_optional_packages(body, shakespeare_file.parent)
    assert proc.stdout.strip() == "imported", proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_demo_runs_without_any_optional_package(tmp_path, shakespeare_file):
    body = ("from textdiffusion.apps.cli import main\n"
            f"code = main(['demo', '--preset', 'tiny', '--steps', '2', '--run-dir', {str(tmp_path / 'demo')!r}])\n"
            "print('exit', code)\n")
    proc = _without_optional_packages(body, shakespeare_file.parent)
    assert proc.stdout.strip().endswith("exit 0"), proc.stdout + proc.stderr
