"""Every registered text method through every surface: the Python API, `compare`, the live page's sampling
service and the guidance refusals. The methods are read from the registry, so a method added in one file is
held to the same surfaces without an edit here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from helpers import train_tiny
from textdiffusion.api import load
from textdiffusion.apps.compare import compare_runs
from textdiffusion.config import ConfigError
from textdiffusion.methods import REGISTRY, TextMethod

# the built-in text methods (a test's own toy methods register elsewhere and leave again)
TEXT = sorted(name for name, cls in REGISTRY.items()
              if issubclass(cls, TextMethod) and cls.__module__.startswith("textdiffusion.methods."))
LENGTH = 16
STEPS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare) -> Path:
    root = tmp_path_factory.mktemp("every-method")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    for method in TEXT:
        train_tiny(method, corpus, root / method, steps=6, **{"train.eval_every": 6, "train.final_eval_windows": 4,
                                                             "train.final_exact_windows": 0})
    return root


def steps_of(model) -> int:
    """STEPS for a sampler that takes a step count, 0 for one that writes a token per evaluation (ar)."""
    return 0 if model.text_method.default_steps(LENGTH) is None else STEPS


def test_the_registry_holds_the_documented_text_methods():
    assert {"ar", "masked", "embedding", "bits", "block"} <= set(TEXT)


@pytest.mark.parametrize("method", TEXT)
def test_the_api_loads_samples_and_scores_it(runs, method):
    model = load(runs / method, device="cpu")
    assert model.method == method and model.likelihood_kind == REGISTRY[method].likelihood_kind
    steps = steps_of(model)
    drawn = model.sample(n=2, length=LENGTH, steps=steps, seed=5, progress=False)
    assert len(drawn.texts) == 2 and all(len(t) == LENGTH for t in drawn.texts)
    assert drawn.texts == model.generate(n=2, length=LENGTH, steps=steps, seed=5, progress=False)  # the seed decides
    score = model.score("ROMEO:\nO Romeo, Romeo! wherefore art thou Romeo?")
    assert score.kind == REGISTRY[method].likelihood_kind and score.bits_per_char > 0
    assert score.label == ("upper bound" if score.kind == "bound" else "exact")
    assert model.score("ROMEO:\nO Romeo, Romeo! wherefore art thou Romeo?") == score


@pytest.mark.parametrize("method", TEXT)
def test_guidance_toward_a_speaker_of_a_plain_run_is_refused_in_one_line(runs, method):
    model = load(runs / method, device="cpu")
    with pytest.raises(ConfigError) as refused:
        model.generate(n=1, length=LENGTH, steps=steps_of(model), label="ROMEO", guidance=2.0, progress=False)
    assert "\n" not in str(refused.value) and "label" in str(refused.value)
    # a noisy classifier steers a plain run: the plan says it will train one, or the method refuses in one line
    try:
        plan = model.plan(n=1, length=LENGTH, steps=steps_of(model), label="ROMEO", guidance=2.0, rule="classifier")
    except ConfigError as refusal:
        assert "\n" not in str(refusal) and "classifier" in str(refusal)
    else:
        assert plan.classifier == "train"


@pytest.mark.parametrize("method", TEXT)
def test_the_live_page_streams_it_to_the_end(runs, method):
    from textdiffusion.apps.serve import SamplingService, check_request, load_runs

    served = load_runs([runs / method], device="cpu")
    service = SamplingService(served, max_steps=1000, max_concurrent=1)
    settings = check_request({"run": method, "length": LENGTH, "steps": STEPS, "seed": 2}, served, max_steps=1000)
    # a sampler without a step count takes one step per character, whatever "steps" says

    async def read() -> list[tuple[str, dict]]:
        return [event async for event in service.start(settings).events()]

    try:
        events = asyncio.run(read())
    finally:
        service.shutdown()
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "done" and "frame" in names
    assert len(events[-1][1]["text"]) == LENGTH


def test_compare_shows_every_method_with_its_likelihood_labelled(runs, tmp_path):
    out = tmp_path / "report"
    compare_runs([str(runs / m) for m in TEXT], out, samples=2, sweep="2", progress=False, guidance="none")
    data = json.loads((out / "comparison.json").read_text())
    by = {r["method"]: r for r in data["runs"]}
    assert set(by) == set(TEXT)
    for method in TEXT:
        assert by[method]["val"]["kind"] == REGISTRY[method].likelihood_kind, method
        assert by[method]["val"]["unit"] == "bits/char"
    table = (out / "comparison.md").read_text()
    for method in TEXT:
        assert method in table
