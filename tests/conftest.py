"""Shared fixtures. Tests read Tiny Shakespeare and MNIST from the library's data folder (``$TEXTDIFFUSION_DATA``,
else ``~/.cache/textdiffusion``; ``textdiffusion data`` fills it, ``required_data.py`` says what happens when a
file is missing) and write everything else under pytest's tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from required_data import FILES, REQUIRE, data_file, data_folder, explain, problems, required

os.environ.setdefault("TEXTDIFFUSION_DATA", str(data_folder()))


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop before running anything when a selected test needs data the folder lacks: one line with the fix,
    instead of a suite that looks green while half of it skips (``TEXTDIFFUSION_REQUIRE_DATA=0`` opts out)."""
    if not required():
        return
    uses = [set(getattr(item, "fixturenames", ())) for item in items]
    names = [name for name, (fixture, _) in FILES.items() if any(fixture in used for used in uses)]
    if not names:
        return
    folder = data_folder()
    found = problems(folder, names)
    if found:
        needing = sum(1 for used in uses if used & {FILES[name][0] for name in found})
        it = "them" if len(found) > 1 else "it"
        raise pytest.UsageError(f"{explain(folder, found)} ({needing} of the {len(items)} selected tests "
                                f"need {it}; {REQUIRE}=0 skips those tests instead)")


@pytest.fixture(scope="session")
def shakespeare_file() -> Path:
    """Tiny Shakespeare in the data folder (``tinyshakespeare.txt`` or ``input.txt``): every test that reads the
    corpus depends on this fixture."""
    return data_file("tinyshakespeare.txt")


@pytest.fixture(scope="session")
def shakespeare(shakespeare_file: Path) -> str:
    return shakespeare_file.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def mnist_file() -> Path:
    """``mnist.npz`` in the data folder: every test that reads real MNIST depends on this fixture."""
    return data_file("mnist.npz")


@pytest.fixture
def small_corpus(tmp_path: Path, shakespeare: str) -> Path:
    """The first 60k characters of Tiny Shakespeare as a file: big enough to learn from in seconds."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare[:60_000], encoding="utf-8")
    return path


def markov_text(n: int, seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """A stationary 4-state Markov chain over 'abcd' with its transition matrix and stationary law."""
    P = np.array([[0.70, 0.10, 0.10, 0.10],
                  [0.10, 0.10, 0.70, 0.10],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.05, 0.05, 0.05, 0.85]])
    evals, evecs = np.linalg.eig(P.T)
    pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
    pi = pi / pi.sum()
    rng = np.random.default_rng(seed)
    states = np.empty(n, dtype=np.int64)
    states[0] = rng.choice(4, p=pi)
    u = rng.random(n)
    cum = P.cumsum(1)
    for i in range(1, n):
        states[i] = np.searchsorted(cum[states[i - 1]], u[i])
    return "".join("abcd"[s] for s in states), P, pi


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session's page tests (see tests/browser.py)."""
    from browser import start_chromium

    driver = start_chromium()
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
