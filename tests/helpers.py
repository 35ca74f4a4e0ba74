"""Small builders shared by the tests (tiny preset, in-process, no progress bars)."""

from __future__ import annotations

import json
from pathlib import Path

from textdiffusion.config import Config, make_config
from textdiffusion.trainer import Trainer


def tiny_config(method: str, corpus: Path | str, steps: int = 40, **overrides: object) -> Config:
    sets = [f"data.corpus={corpus}", f"train.steps={steps}"] + [f"{k}={v}" for k, v in overrides.items()]
    return make_config(method, "tiny", sets)


def train_tiny(method: str, corpus: Path | str, run_dir: Path, steps: int = 40, **overrides: object) -> Trainer:
    trainer = Trainer(tiny_config(method, corpus, steps, **overrides), run_dir, progress=False)
    trainer.train()
    return trainer


def metric_rows(run_dir: Path | str, kind: str = "eval") -> list[dict]:
    """A run's ``metrics.jsonl`` rows of one kind: "eval" (the evaluation rows, which carry no "kind") or
    "train" (the ``train.log_every`` rows)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind", "eval") == kind]
