"""Shared fixtures. Tests read Tiny Shakespeare from ``$TEXTDIFFUSION_DATA`` (default ``../shared/data``
beside the checkout, as in CI) and write everything else under pytest's tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TEXTDIFFUSION_DATA", str(REPO.parent / "shared" / "data"))


def shakespeare_path() -> Path:
    return Path(os.environ["TEXTDIFFUSION_DATA"]) / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def shakespeare() -> str:
    path = shakespeare_path()
    if not path.exists():
        pytest.skip(f"Tiny Shakespeare not found at {path}; set TEXTDIFFUSION_DATA")
    return path.read_text(encoding="utf-8")


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
