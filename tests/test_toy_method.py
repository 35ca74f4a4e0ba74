""""Adding a method is one file": a toy method defined and registered here, in the test file, goes through
train, sample, eval, compare and the live page's request check without any other module knowing of it. A second
toy, whose noise is random symbols rather than [MASK], writes only its draw loop: the sampling template and the
shared discrete sampler do the rest. A third, of the image family (a table of pixel levels, no Gaussian process),
goes through ``mnist train``, ``mnist sample`` and ``mnist eval``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from textdiffusion.apps.cli import main
from textdiffusion.apps.compare import compare_runs
from textdiffusion.apps.serve import check_request, load_runs
from textdiffusion.data.images import ImageBatch, ImageSpec, load_images
from textdiffusion.diffusion.discrete import DiscreteSampler
from textdiffusion.diffusion.tokens import TokenDraw, cross_entropy_per_token, filter_logits, gumbel_sample
from textdiffusion.image_evaluation import _data_key
from textdiffusion.image_metrics import classifier_for, train_classifier
from textdiffusion.methods.base import (
    REGISTRY,
    Method,
    MethodConfig,
    NLLResult,
    SampleRequest,
    SampleResult,
    TextMethod,
    TextMethodConfig,
    register,
)
from textdiffusion.methods.image import LEVELS, ImageRequest, ImageResult


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


# ---- a toy whose noise is not [MASK] ----------------------------------------------------------------------------
@dataclass
class ScrambleConfig(TextMethodConfig):
    name: str = "toy-scramble"


def _alpha(t: torch.Tensor) -> torch.Tensor:
    """The linear schedule: a position is still clean at time t with probability 1 - t."""
    return 1.0 - t


class Scramble(TextMethod):
    r"""Diffusion whose noise is a *random symbol*: at time t each position is, with probability t, overwritten by
    a uniformly drawn symbol, and the network (told t, never which positions were hit) predicts the clean text.

    The overwritten positions and their symbols are the latent; the symbols carry nothing about x, so the bound is
    masked diffusion's NELBO with w(t) = -alpha'(t) / (1 - alpha(t)) = 1 / t, and the prior KL is 0 (at t = 1 every
    position holds a uniform symbol). The sampler tracks which positions are still unknown; their contents are
    random symbols, which the shared discrete sampler never looks at."""

    name = "toy-scramble"
    config_class = ScrambleConfig
    attention = "bidirectional"
    samplers = ("ancestral", "topk")
    likelihood_kind = "bound"

    @property
    def time_conditioning(self) -> bool:
        return True

    def _scramble(self, x: torch.Tensor, t: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        hit = torch.rand(x.shape, generator=generator, device=x.device) < t[:, None]
        noise = torch.randint(0, self.tok.n_symbols, x.shape, generator=generator, device=x.device)
        return torch.where(hit, noise, x), hit

    def _terms(self, model, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-window w(t) * the cross-entropy summed over the overwritten positions (nats)."""
        t = torch.rand(x.shape[0], generator=generator, device=x.device).clamp_min(1e-3)
        z, hit = self._scramble(x, t, generator)
        return (cross_entropy_per_token(model(z, t), x) * hit).sum(-1) / t

    def loss(self, model, x, generator):
        return self._terms(model, x, generator).mean() / x.shape[1]

    @torch.no_grad()
    def nll(self, model, windows, batch_size=64):
        gen = torch.Generator().manual_seed(0)
        terms = torch.cat([self._terms(model, c.repeat(4, 1), gen) for c in windows.split(batch_size)])
        chars = self.chars_in(windows)
        return NLLResult(nats_per_unit=float(terms.double().sum()) / 4 / chars, kind="bound", windows=len(windows),
                         units=chars)

    def default_steps(self, length, sampler=""):
        return length

    def draw(self, model, forward, state, fixed, plan, generator, on_step):
        unknown = ~fixed
        noise = torch.randint(0, self.tok.n_symbols, state.shape, generator=generator, device=state.device)
        state = torch.where(unknown, noise, state)  # the prior: a random symbol at every position to write
        if on_step:
            on_step(0, state.clone(), {"t": 1.0, "nfe": 0})
        sampler = DiscreteSampler(plan.sampler, plan.steps, plan.tokens, alpha=_alpha)
        return sampler.run(lambda z, t, rows=None: forward(z, t), state, unknown, generator, on_step)

    def sample_info(self, plan):
        return {"steps": plan.steps}


@pytest.fixture
def scramble():
    register(Scramble)
    yield Scramble
    REGISTRY.pop(Scramble.name)


def test_a_method_whose_noise_is_not_mask_reuses_the_discrete_sampler(scramble, small_corpus: Path, tmp_path: Path,
                                                                      capsys):
    run = tmp_path / "scramble"
    assert main(["train", "--method", scramble.name, "--preset", "tiny", "--data", str(small_corpus), "--steps",
                 "30", "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["val_kind"] == "bound" and 0 < final["val_bpc"] < 20

    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--prompt", "KING", "--length", "24", "--steps", "6",
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.count("KING") == 2 and "sampler ancestral" in err

    from textdiffusion.api import load

    model = load(run, device="cpu")
    method, net = model.run.method, model.run.model
    states: list[torch.Tensor] = []
    req = SampleRequest(n=3, infill="KING _____ said ____", sampler="topk", steps=4)
    result = method.sample(net, req, torch.Generator().manual_seed(1), lambda i, s, info: states.append(s))
    assert result.info == {"sampler": "topk", "steps": 4} and result.nfe == 4 and len(states) == 5
    assert torch.equal(result.ids[result.fixed], states[0][result.fixed])  # the template's text is kept
    assert not (result.ids == method.tok.mask_id).any()  # no [MASK] anywhere: random symbols, then text
    assert not any((s == method.tok.mask_id).any() for s in states)


def test_the_discrete_sampler_fills_exactly_the_unknown_positions_whatever_they_hold():
    """A forward that always predicts symbol 3: every unknown position becomes 3 within the steps, whatever noise
    it held (here symbol 0, which is also a known position's value), and no known position changes."""
    state = torch.zeros(2, 8, dtype=torch.long)
    unknown = torch.zeros(2, 8, dtype=torch.bool)
    unknown[:, 2:6] = True

    def forward(z, t, rows=None):
        return torch.full((*z.shape, 5), -30.0).index_fill(-1, torch.tensor([3]), 0.0)

    for rule in ("ancestral", "cached", "confidence", "topk"):
        sampler = DiscreteSampler(rule, 4, TokenDraw(top_k=1), alpha=_alpha)
        filled, nfe = sampler.run(forward, state, unknown, torch.Generator().manual_seed(0))
        assert torch.equal(filled[unknown], torch.full((8,), 3)) and torch.equal(filled[~unknown], state[~unknown])
        assert 0 < nfe <= 4


# ---- a toy of the image family --------------------------------------------------------------------------------
@dataclass
class PixelTableConfig(MethodConfig):
    name: str = "toy-pixels"

    network = "unet"  # the image family's network section; this toy builds its own table instead


class _Table(torch.nn.Module):
    """Logits of each pixel's 256 levels, one table per class."""

    def __init__(self, classes: int, pixels: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(classes, pixels, LEVELS))


class PixelTable(Method[ImageRequest, ImageResult]):
    """Every pixel an independent categorical over its 256 levels given the class: an exact likelihood per
    pixel dimension, and one draw per image. Nothing but this class and its config knows it exists."""

    name = "toy-pixels"
    config_class = PixelTableConfig
    samplers = ("independent",)
    likelihood_kind = "exact"
    unit = "dim"
    family = "image"
    command = "textdiffusion mnist"

    def __init__(self, cfg: PixelTableConfig, spec: ImageSpec):
        self.cfg, self.spec = cfg, spec

    @classmethod
    def from_config(cls, cfg, vocab):
        return cls(cfg.method, vocab)

    conditional = True

    @property
    def window(self) -> int:
        return self.spec.size

    def build_model(self) -> torch.nn.Module:
        return _Table(self.spec.num_classes, self.spec.channels * self.spec.size ** 2)

    def _nats(self, model, batch: ImageBatch) -> torch.Tensor:
        """-log p(pixel | class), (B, pixels)."""
        return cross_entropy_per_token(model.logits[batch.labels], batch.images.flatten(1).long())

    def loss(self, model, x, generator):
        return self._nats(model, x).mean()

    @torch.no_grad()
    def nll(self, model, windows, batch_size=64, progress=None):
        nats = self._nats(model, windows).double()
        return NLLResult(nats_per_unit=float(nats.mean()), kind="exact", windows=nats.shape[0], units=nats.numel(),
                         unit="dim")

    def training_samples(self) -> ImageRequest:
        return ImageRequest(n=self.spec.num_classes, labels=list(range(self.spec.num_classes)))

    @torch.no_grad()
    def sample(self, model, req: ImageRequest, generator, on_step=None):
        self.check_sampler(req.sampler)
        labels = torch.tensor(req.labels if req.labels is not None else [i % self.spec.num_classes
                                                                         for i in range(req.n)])
        levels = gumbel_sample(model.logits[labels.to(model.logits.device)], generator)
        side = self.spec.size
        images = levels.view(req.n, self.spec.channels, side, side).float() / 127.5 - 1.0
        if on_step:
            on_step(0, torch.zeros_like(images), torch.zeros_like(images), {"t": 1.0})
            on_step(1, images, images, {"t": 0.0})
        return ImageResult(images, labels, 1.0, {"sampler": "independent", "steps": 1})


@pytest.fixture
def pixel_table():
    register(PixelTable)
    yield PixelTable
    REGISTRY.pop(PixelTable.name)


def test_a_toy_image_method_runs_through_the_mnist_commands(pixel_table, tmp_path: Path, monkeypatch, capsys):
    run = tmp_path / "pixels"
    assert main(["mnist", "train", "--method", pixel_table.name, "--preset", "tiny", "--data", "digits", "--steps",
                 "20", "--run-dir", str(run), "--no-progress", "--device", "cpu"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["val_kind"] == "exact" and 0 < final["val_bpd"] < 8  # 8 bits: the uniform table it started as
    assert (run / "samples" / "step_000020.png").exists()

    out = tmp_path / "drawn"
    assert main(["mnist", "sample", str(run), "--n", "6", "--digit", "4", "--out", str(out), "--no-gif",
                 "--no-progress", "--device", "cpu"]) == 0
    assert {p.name for p in out.iterdir()} >= {"samples.png"}

    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path))  # the FID classifier's cache
    data = load_images("digits")
    quick = lambda: train_classifier(data.x_train, data.y_train, data.x_test, data.y_test,  # noqa: E731
                                     steps=20, batch_size=64, progress=False)
    classifier_for(_data_key(data), quick, tmp_path / "classifiers", {"note": "test"})
    capsys.readouterr()
    assert main(["mnist", "eval", str(run), "--samples", "20", "--no-progress", "--device", "cpu"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["sampler"] == "independent" and result["samples"] == 20 and result["fid"] >= 0
    assert 0.0 <= result["class_accuracy"] <= 1.0 and "independent 1 steps, 20 samples" in capsys.readouterr().out
