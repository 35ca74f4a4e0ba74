"""docs/quickstart.ipynb: valid nbformat 4 with its outputs stripped, and every code cell runs, in order, in one
fresh namespace inside a temporary directory, as a kernel would run them (no Jupyter needed: the JSON is
read directly). The notebook trains at the ``tiny`` preset, so this takes seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def cells(kind: str) -> list[dict[str, Any]]:
    return [c for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == kind]


def run_cells(code: list[dict[str, Any]], namespace: dict[str, Any]) -> None:
    for i, cell in enumerate(code):
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{NOTEBOOK.name}, code cell {i + 1}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"code cell {i + 1} of {NOTEBOOK.name} raised {type(e).__name__}: {e}\n{source}")


def test_notebook_is_nbformat_4_with_outputs_stripped():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and isinstance(nb["metadata"], dict)
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert set(kinds) == {"markdown", "code"} and kinds[0] == "markdown"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        assert isinstance(cell["source"], list) and all(isinstance(line, str) for line in cell["source"])
        assert isinstance(cell["metadata"], dict)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_runs_top_to_bottom_on_the_tiny_preset(shakespeare_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cells("code")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    run_cells(code, namespace)
    run = tmp_path / "runs" / "quickstart-tiny"
    assert namespace["PRESET"] == "tiny" and (run / "final.json").exists() and (run / "eval.json").exists()
    assert namespace["first"] == namespace["later"]  # the loaded run samples as the trained one did
    assert len(namespace["frames"]) == 9 and not namespace["frames"][-1].masked[0]  # topk, 8 steps: 9 frames
    assert (run / "samples" / "quickstart.gif").stat().st_size > 0
    # run again, as a user reopening the notebook would: the run is loaded, not trained a second time
    again: dict[str, Any] = {"__name__": "__main__"}
    run_cells(code[:2], again)
    assert again["model"].step == namespace["model"].step and again["model"].summary is not None
