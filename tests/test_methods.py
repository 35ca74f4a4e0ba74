from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import markov_text
from helpers import tiny_config, train_tiny
from textdiffusion.config import ConfigError
from textdiffusion.data import TextData
from textdiffusion.diffusion.tokens import filter_logits, gumbel_sample
from textdiffusion.methods.base import SampleRequest, check_draw
from textdiffusion.methods.requests import check_length
from textdiffusion.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare):
    """One tiny ar and one tiny masked model on 60k characters, trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "small.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    return {m: train_tiny(m, corpus, root / m, steps=150) for m in ("ar", "masked")}


@pytest.mark.parametrize("method", ["ar", "masked"])
def test_loss_decreases(method, small_corpus, tmp_path):
    trainer = Trainer(tiny_config(method, small_corpus, steps=80), tmp_path / method, progress=False)
    before = trainer.evaluate(trainer.val_windows, trainer.model).nats_per_unit
    trainer.train()
    after = trainer.evaluate(trainer.val_windows, trainer.model).nats_per_unit
    assert after < before - 0.5, (before, after)


def _window_entropy(P: np.ndarray, pi: np.ndarray, L: int) -> float:
    """Entropy (nats) of L consecutive symbols of the stationary chain, per symbol."""
    h0 = -(pi * np.log(pi)).sum()
    rate = -(pi[:, None] * P * np.log(P)).sum()
    return (h0 + (L - 1) * rate) / L


def _true_nll(windows: torch.Tensor, P: np.ndarray, pi: np.ndarray) -> float:
    """-log p(window) / L under the true chain, on exactly the windows the model is scored on."""
    x = windows.numpy()
    nll = -np.log(pi[x[:, 0]]) - np.log(P[x[:, :-1], x[:, 1:]]).sum(1)
    return float(nll.sum() / x.size)


@pytest.mark.parametrize("schedule, estimator", [("loglinear", "time"), ("linear", "time"), ("loglinear", "count")])
def test_masked_nelbo_is_an_upper_bound_on_the_true_entropy(schedule, estimator, tmp_path):
    corpus, P, pi = _markov_corpus(tmp_path)
    trainer = Trainer(tiny_config("masked", corpus, steps=200, **{"method.schedule": schedule,
                                                                  "method.estimator": estimator,
                                                                  "method.eval_time_samples": 8}),
                      tmp_path / "run", progress=False)
    trainer.train()
    L = trainer.method.window
    windows = TextData.tiled_windows(trainer.data.val_ids, L)
    floor = _true_nll(windows, P, pi)  # the best any model can do on these windows, in expectation
    assert abs(floor - _window_entropy(P, pi, L)) < 0.03  # and it is close to the analytic entropy
    res = trainer.evaluate(windows, trainer.model)
    assert res.kind == "bound"
    assert res.nats_per_unit >= floor - 3 * res.details["stderr_nats"], (res.nats_per_unit, floor)
    # and the model did learn: the bound is far below a uniform guess over four symbols
    assert res.nats_per_unit < math.log(4) - 0.1


def test_ar_exact_likelihood_respects_the_same_floor(tmp_path):
    corpus, P, pi = _markov_corpus(tmp_path)
    ar = Trainer(tiny_config("ar", corpus, steps=200), tmp_path / "ar", progress=False)
    ar.train()
    windows = TextData.tiled_windows(ar.data.val_ids, ar.method.window)
    floor = _true_nll(windows, P, pi)
    exact = ar.evaluate(windows, ar.model).nats_per_unit
    assert floor - 0.01 <= exact < floor + 0.15


def _markov_corpus(tmp_path):
    text, P, pi = markov_text(200_000, seed=1)  # 20k validation characters keep the floor's noise small
    corpus = tmp_path / "markov.txt"
    corpus.write_text(text, encoding="utf-8")
    return corpus, P, pi


def test_time_and_count_estimators_agree(trained):
    """Two unbiased estimators of one NELBO: t sampled with weight w(t), or t integrated out in closed form."""
    tr = trained["masked"]
    windows = TextData.tiled_windows(tr.data.val_ids, tr.method.window, 200)
    tr.method.cfg.eval_time_samples = 16
    try:
        by_time = tr.method.nll(tr.ema.model, windows)
        tr.method.cfg.estimator = "count"
        by_count = tr.method.nll(tr.ema.model, windows)
    finally:
        tr.method.cfg.estimator, tr.method.cfg.eval_time_samples = "time", 4
    se = (by_time.details["stderr_nats"] ** 2 + by_count.details["stderr_nats"] ** 2) ** 0.5
    assert abs(by_time.nats_per_unit - by_count.nats_per_unit) < 4 * se
    assert by_count.details["stderr_nats"] < by_time.details["stderr_nats"]


def test_count_estimator_needs_a_schedule_that_masks_everything(small_corpus):
    with pytest.raises(ConfigError, match="alpha"):
        Trainer(tiny_config("masked", small_corpus, **{"method.estimator": "count", "method.schedule": "linear"}),
                "unused", progress=False)


def test_masked_nelbo_estimate_is_deterministic(trained):
    tr = trained["masked"]
    a = tr.evaluate(tr.val_windows).nats_per_unit
    b = tr.evaluate(tr.val_windows).nats_per_unit
    assert a == b


def _sample(trainer, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return trainer.method.sample(trainer.ema.model, SampleRequest(**kw), g)


@pytest.mark.parametrize("method", ["ar", "masked"])
def test_prompt_is_kept_exactly(trained, method):
    tr = trained[method]
    res = _sample(tr, n=3, prompt="KING RICHARD", length=30)
    texts = [tr.data.tokenizer.decode(r.tolist()) for r in res.ids]
    assert all(t.startswith("KING RICHARD") and len(t) == 30 for t in texts)
    assert int(res.fixed[0].sum()) == len("KING RICHARD")


@pytest.mark.parametrize("sampler", ["ancestral", "cached", "confidence", "topk"])
def test_infill_holds_known_characters_and_fills_every_blank(trained, sampler):
    tr = trained["masked"]
    template = "ROMEO:\nO ____ art thou? Ro__o!"
    res = _sample(tr, n=4, infill=template, sampler=sampler, steps=8)
    for row in res.ids:
        text = tr.data.tokenizer.decode(row.tolist())
        assert len(text) == len(template)
        assert all(a == b for a, b in zip(text, template, strict=True) if b != "_")
        assert tr.data.tokenizer.mask_id not in row.tolist()
    # a configurable placeholder
    res = _sample(tr, n=1, infill="To be, or not to **", placeholder="*")
    assert tr.data.tokenizer.decode(res.ids[0].tolist()).startswith("To be, or not to ")


def test_cached_sampler_is_identical_with_fewer_network_calls(trained):
    tr = trained["masked"]
    plain = _sample(tr, seed=3, n=2, sampler="ancestral", steps=200)
    cached = _sample(tr, seed=3, n=2, sampler="cached", steps=200)
    assert torch.equal(plain.ids, cached.ids)
    assert cached.nfe < plain.nfe
    # a row is re-encoded only after a step that revealed something in it: at most once per position
    assert cached.nfe <= tr.method.window + 1


@pytest.mark.parametrize("sampler", ["confidence", "topk"])
def test_parallel_decoders_finish_within_the_step_budget(trained, sampler):
    tr = trained["masked"]
    res = _sample(tr, n=3, sampler=sampler, steps=4)
    assert res.nfe <= 4
    assert tr.data.tokenizer.mask_id not in res.ids.flatten().tolist()


def test_sampling_is_reproducible_given_the_seed(trained):
    for tr in trained.values():
        assert torch.equal(_sample(tr, seed=5, n=2).ids, _sample(tr, seed=5, n=2).ids)


def test_ar_generates_past_its_context(trained):
    tr = trained["ar"]
    length = 3 * tr.method.window + 5
    res = _sample(tr, n=2, length=length, prompt="First")
    assert res.ids.shape == (2, length) and res.nfe == length - len("First")


def test_clear_errors_for_impossible_requests(trained):
    ar, masked = trained["ar"], trained["masked"]
    with pytest.raises(ConfigError, match="bidirectional"):
        _sample(ar, infill="a _ b")
    with pytest.raises(ConfigError, match="exceeds the model's context"):  # a method that neither slides nor chains
        check_length(masked.method.window + 1, masked.method.tok, masked.method.window, "toy", False)
    assert _sample(masked, length=masked.method.window + 1).ids.shape[1] == masked.method.window + 1  # chained
    with pytest.raises(ConfigError, match="no sampler"):
        _sample(masked, sampler="beam")
    with pytest.raises(ConfigError, match="nothing is left"):
        _sample(masked, prompt="x" * 40, length=20)
    with pytest.raises(ConfigError, match="placeholders"):
        _sample(masked, infill="no blanks here")
    from textdiffusion.data import DataError

    with pytest.raises(DataError, match="never seen"):
        _sample(masked, prompt="Ω")


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.5))
    assert kept.tolist() == [[True, False, False, False]]
    with pytest.raises(ConfigError):
        check_draw(0, 0, 1.0)
    with pytest.raises(ConfigError, match="top-k"):
        check_draw(1.0, -1, 1.0)


@pytest.mark.parametrize("method", ["ar", "masked"])
def test_likelihoods_are_per_character_for_multi_character_tokens(method, small_corpus, tmp_path):
    """With BPE a 32-token window holds more than 32 characters; the denominator must be characters."""
    from textdiffusion.data.batches import TextData

    trainer = train_tiny(method, small_corpus, tmp_path / method, steps=2,
                         **{"data.tokenizer": "bpe", "data.vocab_size": 300})
    windows = TextData.tiled_windows(trainer.data.val_ids, 32, 4)
    res = trainer.method.nll(trainer.model, windows)
    assert res.units == sum(len(trainer.data.tokenizer.decode(w.tolist())) for w in windows) > windows.numel()


def test_the_categorical_draw_follows_the_distribution_in_float64():
    """Gumbel-max in float64 (Zheng et al. 2024): frequencies match softmax(logits), and the uniforms behind
    the noise are float64 (float32's cap on the Gumbel noise, about 16.6, would truncate rare tokens)."""
    logits = torch.tensor([0.0, -1.0, -3.0]).expand(200_000, 3)
    counts = torch.bincount(gumbel_sample(logits, torch.Generator().manual_seed(0)), minlength=3).double()
    expected = torch.softmax(logits[0].double(), -1) * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    drawn = gumbel_sample(torch.zeros(1, 8), a)
    u = torch.rand((1, 8), generator=b, dtype=torch.float64)
    assert drawn.item() == int(u.argmax())  # -log(-log u) is increasing: the largest float64 uniform wins
