"""Gaussian diffusion on embeddings (``--method embedding``): options, decoding, samplers, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers import tiny_config, train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import CheckpointError
from textdiffusion.config import ConfigError
from textdiffusion.data.batches import TextData
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config
from textdiffusion.methods.embedding import EmbeddingDiffusion
from textdiffusion.nn.transformer import Transformer
from textdiffusion.runs import build, open_run


def _method(text: str = "abcdefgh ", **sets):
    cfg = make_config("embedding", "tiny", [f"{k}={v}" for k, v in sets.items()])
    return build(cfg, CharTokenizer.from_text(text))


@pytest.mark.parametrize("decoder", ["cosine", "l2"])
@pytest.mark.parametrize("norm", ["fixed", "none"])
def test_clean_embeddings_round_trip_exactly(decoder, norm):
    method, model = _method(**{"method.decoder": decoder, "method.embed_norm": norm})
    ids = torch.arange(method.tok.n_symbols).repeat(3, 1)
    assert torch.equal(method.decode(model, model.table()[ids]), ids)


def test_rounding_head_learns_to_decode_clean_embeddings(small_corpus, tmp_path):
    """Trained end to end, the head decodes clean embeddings of real text; untrained, it is at chance."""
    cfg = tiny_config("embedding", small_corpus, 60, **{"method.decoder": "head", "train.lr": 1e-2})
    from textdiffusion.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    method, model = trainer.method, trainer.model
    ids = trainer.data.val_ids[:2000]

    def accuracy() -> float:
        with torch.no_grad():
            return float((method.decode(model, model.table()[ids]) == ids).float().mean())

    assert accuracy() < 0.2
    trainer.train()
    assert accuracy() > 0.95


@pytest.mark.parametrize("target", ["eps", "x0", "v", "probs"])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sqrt"])
def test_loss_is_finite_and_differentiable(target, schedule):
    method, model = _method(**{"method.target": target, "method.noise_schedule": schedule,
                               "method.self_condition": "true"})
    x = torch.randint(0, method.tok.n_symbols, (4, 16))
    loss = method.loss(model, x, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.embed.grad is not None and model.embed.grad.abs().sum() > 0


def test_positions_none_makes_the_backbone_permutation_equivariant():
    cfg = make_config("embedding", "tiny", ["model.positions=none"])
    net = Transformer(cfg.model, 0, out_dim=8, attention="bidirectional", time_conditioning=True, input_dim=8)
    x = torch.randn(2, 10, 8)
    perm = torch.randperm(10)
    t = torch.full((2,), 0.5)
    assert (net(x, t)[:, perm] - net(x[:, perm], t)).abs().max() < 1e-6
    rope = Transformer(make_config("embedding", "tiny").model, 0, out_dim=8, attention="bidirectional",
                       time_conditioning=True, input_dim=8)
    # a freshly initialised block barely changes the residual stream, so the effect is small but real
    assert (rope(x, t)[:, perm] - rope(x[:, perm], t)).abs().max() > 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare):
    corpus = tmp_path_factory.mktemp("corpus") / "small.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, extra in {"emb": {"method.self_condition": "true"},
                        "ar": {}}.items():
        method = "ar" if name == "ar" else "embedding"
        train_tiny(method, corpus, root / name, steps=30, **extra)
        runs[name] = root / name
    return runs


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_keep_prompt_and_infill(trained, sampler):
    run = open_run(trained["emb"], device="cpu")
    g = torch.Generator().manual_seed(0)
    res = run.method.sample(run.model, SampleRequest(n=2, length=24, prompt="ROMEO:", sampler=sampler, steps=8), g)
    assert res.ids.shape == (2, 24) and res.nfe == 8
    assert all(run.tokenizer.decode(row.tolist()).startswith("ROMEO:") for row in res.ids)
    res = run.method.sample(run.model, SampleRequest(n=1, infill="O ____ art thou", sampler=sampler, steps=5), g)
    text = run.tokenizer.decode(res.ids[0].tolist())
    assert text.startswith("O ") and text.endswith(" art thou") and len(text) == 15


def test_clamping_and_ddim_steps_are_sampling_options(trained):
    run = open_run(trained["emb"], device="cpu",
                   overrides=["method.clamp=true", "method.eta=0.5", "method.time_difference=0.5"])
    assert run.cfg.method.clamp and run.cfg.method.eta == 0.5
    res = run.method.sample(run.model, SampleRequest(n=2, steps=4), torch.Generator().manual_seed(1))
    assert res.info["clamp"] and res.nfe == 4
    with pytest.raises(ConfigError, match="only change its sampling options"):
        open_run(trained["emb"], device="cpu", overrides=["method.embed_dim=8"])


def test_guided_sampling_interpolates_between_plan_and_ar(trained):
    """Greedy decoding makes both ends checkable: w = 1 is the plan's own rounding, w = 0 the ar model's
    greedy text, whatever the plan."""
    ar = open_run(trained["ar"], device="cpu")
    greedy = ar.method.sample(ar.model, SampleRequest(n=2, length=20, top_k=1), torch.Generator().manual_seed(5))

    def guided(w: float) -> torch.Tensor:
        run = open_run(trained["emb"], device="cpu",
                       overrides=[f"method.guide_run={trained['ar']}", f"method.guide_weight={w}"])
        req = SampleRequest(n=2, length=20, sampler="guided", steps=6, top_k=1)
        return run.method.sample(run.model, req, torch.Generator().manual_seed(3)).ids

    plan_only = open_run(trained["emb"], device="cpu").method
    run = open_run(trained["emb"], device="cpu")
    plain = plan_only.sample(run.model, SampleRequest(n=2, length=20, sampler="ddim", steps=6),
                             torch.Generator().manual_seed(3)).ids
    assert torch.equal(guided(1.0), plain)
    assert torch.equal(guided(0.0), greedy.ids)


def test_guided_needs_an_ar_run(trained):
    run = open_run(trained["emb"], device="cpu")
    with pytest.raises(ConfigError, match="needs a trained ar run"):
        run.method.sample(run.model, SampleRequest(sampler="guided", steps=2), torch.Generator())
    with pytest.raises(ConfigError, match="it must be ar"):  # checked when the run (and its guide) is opened
        open_run(trained["emb"], device="cpu", overrides=[f"method.guide_run={trained['emb']}"])
    missing = Path(trained["emb"]).parent / "no-such-run"
    with pytest.raises(CheckpointError, match=rf"^method.guide_run={re.escape(str(missing))}: run directory .* does "
                                              rf"not exist"):  # the option that named the path is said
        open_run(trained["emb"], device="cpu", overrides=[f"method.guide_run={missing}"])


def test_validation_reports_a_bound_whose_terms_match_independent_estimates(trained):
    """The VDM bound's prior term against the closed-form KL(q(z_1 | w) || N(0, I)) of the embeddings, and its
    reconstruction term (one draw of z_{t_min} per position) against a 256-draw Monte Carlo estimate of
    E[-log p(w | z_{t_min})] through the rounding head. A wrong time, noise level, embedding scale or
    per-character normalisation in either term shows here; the three terms add up to the total by
    construction, so their sum is not checked."""
    run = open_run(trained["emb"], device="cpu")
    data = TextData.from_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20,
                              run.tokenizer)
    windows = TextData.tiled_windows(data.train_ids, 32, 4)
    res = run.method.nll(run.model, windows)
    d = res.details
    assert res.kind == "bound" and res.units == 4 * 32
    assert d["denoising_mse"] > 0 and "rounding_ce_per_token" in d and d["embed_mean_norm"] > 0

    method, model = run.method, run.model
    assert method.decoder == "head"  # the default: p(w | z_0) is the rounding head
    with torch.no_grad():
        x0 = model.table()[windows].double()
        a1 = method.schedule.alpha_bar(torch.tensor(1.0)).double()
        q1 = torch.distributions.Normal(a1.sqrt() * x0, (1.0 - a1).sqrt())
        prior = torch.distributions.kl_divergence(q1, torch.distributions.Normal(0.0, 1.0)).sum() / res.units
        # the bound sums in float32, where 1 - abar(1) rounds by up to 2^-25 per dimension: the tolerance
        assert d["prior_nats_per_char"] == pytest.approx(float(prior), rel=0, abs=x0.shape[-1] * 2**-25)

        a0 = method.schedule.alpha_bar(torch.tensor(method.t_min))
        noise = torch.randn((256, *x0.shape), generator=torch.Generator().manual_seed(1))
        z0 = a0.sqrt() * x0.float() + (1.0 - a0).sqrt() * noise
        logp = torch.log_softmax(model.head(z0 / a0.sqrt()).double(), dim=-1)
        nll = -logp.gather(-1, windows.expand(256, -1, -1).unsqueeze(-1)).squeeze(-1)  # (draw, window, position)
    expected = float(nll.mean())
    # the bound's estimate averages one draw per position, ours 256: four times the sum of both standard errors
    within = float(nll.var(dim=0).mean().sqrt())  # the spread of -log p(w | z_0) over draws at one position
    tolerance = 4 * within * (1 / windows.numel() ** 0.5 + 1 / nll.numel() ** 0.5)
    assert abs(d["reconstruction_nats_per_char"] - expected) < tolerance, (d["reconstruction_nats_per_char"], expected)
    assert d["diffusion_nats_per_char"] > 0


@pytest.mark.parametrize("sets, message", [
    ({"method.embeddings": "pretrained"}, "add --set data.tokenizer=wordpiece"),
    ({"method.decoder": "knn"}, "method.decoder must be one of"),
    ({"method.noise_schedule": "quadratic"}, "method.noise_schedule must be one of"),
    ({"method.target": "score"}, "method.target must be one of"),
])
def test_incompatible_options_are_clear_errors(sets, message):
    with pytest.raises(ConfigError, match=message):
        _method(**sets)


def test_too_many_sampling_steps_is_a_clear_error(trained):
    run = open_run(trained["emb"], device="cpu")
    with pytest.raises(ConfigError, match="exceed the 2000 steps"):
        run.method.sample(run.model, SampleRequest(steps=5000), torch.Generator())


def test_cli_train_sample_eval(small_corpus, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", "--method", "embedding", "--preset", "tiny", "--data", str(small_corpus), "--steps", "20",
                 "--run-dir", str(run), "--no-progress", "--set", "method.target=probs",
                 "method.noise_schedule=cosine", "method.timesteps=0"]) == 0
    assert main(["sample", str(run), "--n", "2", "--steps", "5", "--set", "method.clamp=true"]) == 0
    assert main(["eval", str(run), "--samples", "4", "--steps", "5", "--val-windows", "4"]) == 0
    out = capsys.readouterr().out
    assert "upper bound" in out and "judge perplexity" in out
    assert main(["sample", str(run), "--set", "method.target=eps"]) == 2
    assert "only change its sampling options" in capsys.readouterr().err


def test_pretrained_minilm_embeddings_train_frozen(small_corpus, tmp_path):
    cfg = tiny_config("embedding", small_corpus, steps=2, **{"data.tokenizer": "wordpiece",
                                                              "method.embeddings": "pretrained",
                                                              "method.decoder": "cosine",
                                                              "method.embed_norm": "none"})
    from textdiffusion.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "pre", progress=False)
    assert trainer.model.embed is None and tuple(trainer.model.frozen.shape) == (30522, 384)
    trainer.train()
    run = open_run(tmp_path / "pre", device="cpu")
    assert torch.equal(run.model.frozen, trainer.model.frozen)  # re-read from the package, not the checkpoint
    res = run.method.sample(run.model, SampleRequest(n=1, length=8, steps=3), torch.Generator())
    assert res.ids.shape == (1, 8) and int(res.ids.max()) < 30522
    assert isinstance(run.method, EmbeddingDiffusion)


def test_bpe_tokens_train_sample_and_score_per_character(small_corpus, tmp_path):
    trainer = train_tiny("embedding", small_corpus, tmp_path / "bpe", steps=4,
                         **{"data.tokenizer": "bpe", "data.vocab_size": 300})
    assert trainer.data.tokenizer.kind == "bpe"
    run = open_run(tmp_path / "bpe", device="cpu")
    res = run.method.sample(run.model, SampleRequest(n=2, length=16, prompt="ROMEO:", steps=3), torch.Generator())
    assert all(run.tokenizer.decode(row.tolist()).startswith("ROMEO:") for row in res.ids)
    windows = TextData.tiled_windows(trainer.data.val_ids, 32, 3)
    nll = run.method.nll(run.model, windows)
    # bits per *character*: BPE windows of 32 tokens hold more than 32 characters
    assert nll.units == sum(len(run.tokenizer.decode(w.tolist())) for w in windows) > 3 * 32


def test_gradient_rule_climbs_the_classifier_held_by_the_fluency_term():
    """Diffusion-LM's control step on a classifier with a constant gradient g (log p(c | y) = g . y): the ascent
    on w g . y - ||y - x_s||^2 / 2 (1 - abar_s) has its maximum at x_s + (1 - abar_s) w g, and each step of size
    STEP_SIZE (1 - abar_s) closes that fraction of the remaining way, so STEPS steps reach 1 - (1 - STEP_SIZE)^STEPS
    of it. Known positions stay at the proposal."""
    from textdiffusion.diffusion.gaussian import make_noise_schedule
    from textdiffusion.guidance.gradient import STEP_SIZE, STEPS, gradient_steer

    g = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))

    class ConstantGradient:
        def gradient(self, y: torch.Tensor, label: int, t: torch.Tensor) -> torch.Tensor:
            assert label == 1 and torch.equal(t, torch.full((2,), 0.3))
            return g

    schedule = make_noise_schedule("sqrt")
    fixed = torch.zeros(2, 5, dtype=torch.bool)
    fixed[:, 0] = True
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    steered = gradient_steer(ConstantGradient(), schedule, 1, 4.0, 2, fixed)(x, 0.3)
    var = 1.0 - float(schedule.alpha_bar(torch.tensor(0.3)))
    reached = 1.0 - (1.0 - STEP_SIZE) ** STEPS
    assert torch.equal(steered[:, 0], x[:, 0])
    assert torch.allclose(steered[:, 1:], x[:, 1:] + reached * var * 4.0 * g[:, 1:], atol=1e-6)
