""""Adding a method is one file": a toy method defined and registered here, in the test file, goes through
train, sample, eval, compare and the live page's request check without any other module knowing of it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from textdiffusion.apps.cli import main
from textdiffusion.apps.compare import compare_runs
from textdiffusion.apps.serve import check_request, load_runs
from textdiffusion.methods.base import (
    REGISTRY,
    NLLResult,
    SampleRequest,
    SampleResult,
    TextMethod,
    TextMethodConfig,
    cross_entropy_per_token,
    filter_logits,
    gumbel_sample,
    register,
)


@dataclass
class UnigramConfig(TextMethodConfig):
    name: str = "toy-unigram"


class Unigram(TextMethod):
    """Every position predicted from an all-blank input: a unigram model per position. Positions are
    independent under it, so its likelihood is exact, and one forward pass samples a whole window."""

    name = "toy-unigram"
    config_class = UnigramConfig
    attention = "bidirectional"
    samplers = ("oneshot",)
    likelihood_kind = "exact"

    def _blank(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.tok.mask_id)

    def loss(self, model, x, generator):
        return cross_entropy_per_token(model(self._blank(x)), x).mean()

    @torch.no_grad()
    def nll(self, model, windows, batch_size=64):
        total = sum(float(cross_entropy_per_token(model(self._blank(c)), c).double().sum())
                    for c in windows.split(batch_size))
        chars = self.chars_in(windows)
        return NLLResult(nats_per_unit=total / chars, kind="exact", windows=len(windows), units=chars)

    def default_steps(self, length, sampler=""):
        return 1

    @torch.no_grad()
    def sample(self, model, req: SampleRequest, generator, on_step=None):
        sampler = self.check_sampler(req.sampler)
        state, fixed = self.prepare(req, next(model.parameters()).device)
        self.check_length(state.shape[1])
        if on_step:
            on_step(0, state.clone(), {"t": 1.0, "nfe": 0})
        logits = filter_logits(model(self._blank(state)), req.temperature, req.top_k, req.top_p)
        ids = torch.where(fixed, state, gumbel_sample(logits, generator))
        if on_step:
            on_step(1, ids.clone(), {"t": 0.0, "nfe": 1})
        return SampleResult(ids, 1.0, fixed, {"sampler": sampler, "steps": 1})


@pytest.fixture
def toy():
    register(Unigram)
    yield Unigram
    REGISTRY.pop(Unigram.name)


def test_a_method_defined_in_one_file_runs_everywhere(toy, small_corpus: Path, tmp_path: Path, capsys):
    run = tmp_path / "toy"
    assert main(["train", "--method", toy.name, "--preset", "tiny", "--data", str(small_corpus), "--steps", "30",
                 "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    record = json.loads((run / "config.json").read_text())["config"]["method"]
    assert record == {"name": toy.name, "sampler": "", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    final = json.loads((run / "final.json").read_text())
    assert final["val_kind"] == "exact" and 0 < final["val_bpc"] < 8

    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--prompt", "KING", "--length", "20", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.count("KING") == 2 and "sampler oneshot, 1 network evaluations" in err

    assert main(["eval", str(run), "--samples", "4", "--val-windows", "8", "--device", "cpu"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["method"] == toy.name and result["val"]["kind"] == "exact"
    assert result["samples"]["sampler"] == "oneshot" and result["speed"]["nfe_per_sample"] == 1.0

    paths = compare_runs([str(run)], tmp_path / "cmp", samples=4, sweep="", progress=False, device="cpu")
    comparison = json.loads(Path(paths["json"]).read_text())
    assert [r["method"] for r in comparison["runs"]] == [toy.name]
    assert toy.name in Path(paths["report"]).read_text()

    runs = load_runs([run], device="cpu")
    settings = check_request({"prompt": "KING", "length": "16"}, runs, max_steps=100)
    assert settings.steps == 1 and settings.req.sampler == "oneshot" and settings.initial.shape == (16,)
