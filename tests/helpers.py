"""Small builders shared by the tests (tiny preset, in-process, no progress bars)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from textdiffusion.config import Config
from textdiffusion.diffusion.tokens import TokenDraw
from textdiffusion.methods.configs import make_config
from textdiffusion.trainer import Trainer


def tiny_config(method: str, corpus: Path | str, steps: int = 40, **overrides: object) -> Config:
    sets = [f"data.corpus={corpus}", f"train.steps={steps}"] + [f"{k}={v}" for k, v in overrides.items()]
    return make_config(method, "tiny", sets)


def train_tiny(method: str, corpus: Path | str, run_dir: Path, steps: int = 40, **overrides: object) -> Trainer:
    trainer = Trainer(tiny_config(method, corpus, steps, **overrides), run_dir, progress=False)
    trainer.train()
    return trainer


def assert_same_weights(a: Path | str, b: Path | str) -> None:
    """Two runs' checkpoints hold the same tensors, bit for bit, in the raw weights and the EMA: what a run
    stopped and resumed must end with, against one trained whole."""
    from textdiffusion.checkpoint import read_group

    for group in ("model", "ema"):
        x, y = read_group(Path(a), group)[0], read_group(Path(b), group)[0]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), group


def metric_rows(run_dir: Path | str, kind: str = "eval") -> list[dict]:
    """A run's ``metrics.jsonl`` rows of one kind: "eval" (the evaluation rows, which carry no "kind") or
    "train" (the ``train.log_every`` rows)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind", "eval") == kind]


def block_sample_without_cache(method, req, generator: torch.Generator,
                               network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Block diffusion's reference sampler: no KV cache, every denoising step runs ``network`` on the whole clean
    prefix followed by the noisy block (``network(x)`` -> logits for every position of ``x``)."""
    state, fixed = method.prepare(req, torch.device("cpu"))
    steps = req.steps or method.default_steps(state.shape[1])
    sampler = method.discrete_sampler(req.sampler or "ancestral", steps, TokenDraw(req.temperature, req.top_k,
                                                                                 req.top_p))
    for start in range(0, state.shape[1], method.B):
        end = min(start + method.B, state.shape[1])
        if not (state[:, start:end] == method.tok.mask_id).any():
            continue

        def forward(z, t, rows=None, prefix=state[:, :start]):
            x = torch.cat((prefix if rows is None else prefix[rows], z), dim=1)
            return network(x)[:, -z.shape[1]:]

        block = method._from_prior(state[:, start:end], fixed[:, start:end], generator)
        state[:, start:end], _ = sampler.run(forward, block, block == method.tok.mask_id, generator)
    return state


def benchmark_module(name: str, module_name: str = ""):
    """``benchmarks/NAME.py`` imported as a module (the benchmarks are scripts, not a package), registered in
    ``sys.modules`` as ``module_name`` (default: NAME) so its dataclasses resolve their own annotations."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    module_name = module_name or name
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
