"""Block diffusion: the bound, the training layout and the KV-cached sampler checked against what they claim
to equal (autoregression at B = 1, masked diffusion at B = context, block-by-block forwards, no cache)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import block_sample_without_cache, tiny_config
from textdiffusion.config import ConfigError
from textdiffusion.diffusion.tokens import cross_entropy_per_token
from textdiffusion.methods import SampleRequest
from textdiffusion.runs import build
from textdiffusion.trainer import Trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare: str) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare[:60_000], encoding="utf-8")
    return path


def _trained(corpus: Path, run_dir: Path, steps: int = 30, **overrides):
    trainer = Trainer(tiny_config("block", corpus, steps, **overrides), run_dir, progress=False)
    trainer.train()
    return trainer.method, trainer.ema.model.eval(), trainer.val_windows[:8]


@pytest.fixture(scope="module")
def block4(corpus, tmp_path_factory):
    return _trained(corpus, tmp_path_factory.mktemp("runs") / "b4", **{"method.block_size": 4})


def test_b1_bound_is_the_exact_autoregressive_nll(corpus, tmp_path):
    """One token per block: with the count estimator every block's token is masked, so the bound is
    sum_i -log p(x_i | x_<i) of this very network, computed here one position at a time."""
    method, model, windows = _trained(corpus, tmp_path / "b1", 10, **{"method.block_size": 1,
                                                                    "method.estimator": "count"})
    bound = method.nll(model, windows)
    n, L = windows.shape
    mask = torch.full((n, 1), method.tok.mask_id)
    with torch.no_grad():
        exact = sum(float(cross_entropy_per_token(model(torch.cat((windows[:, :i], mask), 1))[:, -1:],
                                                  windows[:, i:i + 1]).double().sum()) for i in range(L))
    assert bound.kind == "bound" and bound.details["block_size"] == 1
    assert bound.nats_per_unit == pytest.approx(exact / (n * L), rel=1e-5)


def test_b_context_loss_is_masked_diffusion(corpus, tmp_path):
    """One block: the noisy half sees only itself, so the loss is masked diffusion's on the same weights,
    draws and windows."""
    method, model, windows = _trained(corpus, tmp_path / "bL", 5, **{"method.block_size": 32})
    masked_method, masked_model = build(tiny_config("masked", corpus), method.tok)
    masked_model.load_state_dict(model.state_dict())
    for estimator in ("time", "count"):
        method.cfg.estimator = masked_method.cfg.estimator = estimator
        with torch.no_grad():
            a = method.loss(model, windows, torch.Generator().manual_seed(4))
            b = masked_method.loss(masked_model.eval(), windows, torch.Generator().manual_seed(4))
        assert float(a) == pytest.approx(float(b), rel=1e-5), estimator


def test_one_paired_forward_equals_block_by_block_forwards(block4):
    method, model, windows = block4
    gen = torch.Generator().manual_seed(0)
    z = torch.where(torch.rand(windows.shape, generator=gen) < 0.5, method.tok.mask_id, windows)
    with torch.no_grad():
        paired = method._paired_logits(model, z, windows)
        B, L = method.B, windows.shape[1]
        for b in range(L // B):
            prefix_and_block = torch.cat((windows[:, :b * B], z[:, b * B:(b + 1) * B]), dim=1)
            alone = model(prefix_and_block)[:, -B:]
            torch.testing.assert_close(paired[:, b * B:(b + 1) * B], alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ancestral", "cached", "topk"])
def test_the_kv_cache_changes_nothing_but_the_work(block4, sampler):
    method, model, _ = block4
    positions = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: positions.append(args[0].numel()),
                                           with_kwargs=True)
    try:
        req = SampleRequest(n=3, length=32, prompt="KING", sampler=sampler)
        cached = method.sample(model, req, torch.Generator().manual_seed(7))
        with_cache = sum(positions)
        positions.clear()
        with torch.no_grad():
            reference = block_sample_without_cache(method, req, torch.Generator().manual_seed(7), model)
        without_cache = sum(positions)
    finally:
        hook.remove()
    assert torch.equal(cached.ids, reference)
    assert with_cache < without_cache  # token positions pushed through the network


def test_prompts_are_kept_and_length_goes_past_the_context(block4):
    method, model, _ = block4
    res = method.sample(model, SampleRequest(n=2, length=100, prompt="KING RICHARD"), torch.Generator().manual_seed(1))
    text = [method.tok.decode(r.tolist()) for r in res.ids]
    assert all(t.startswith("KING RICHARD") and len(t) == 100 for t in text)
    assert (res.ids != method.tok.mask_id).all()
    blocks = math.ceil((100 - 12) / 4)
    assert res.nfe < blocks * (4 + 1) + 8  # steps per block + one commit each, a few prefix re-encodings


def test_infill_within_a_block_works_and_across_blocks_is_refused(block4):
    method, model, _ = block4
    res = method.sample(model, SampleRequest(infill="KING RICH__D", length=20), torch.Generator().manual_seed(2))
    assert method.tok.decode(res.ids[0].tolist()).startswith("KING RICH") and res.ids[0, 11].item() == \
        method.tok.encode("D")[0]
    with pytest.raises(ConfigError, match="block never sees later ones"):
        method.sample(model, SampleRequest(infill="KI__ RICHARD"), torch.Generator())


@pytest.mark.parametrize("sets, message", [
    ({"method.block_size": 5}, "must divide model.context=32"),
    ({"method.block_size": 0}, "block_size must be a whole number from 1"),
    ({"method.clip_low": 0.6, "method.clip_high": 0.5}, "0 <= low <= high <= 1"),
    ({"method.clip_low": 0.0, "method.clip_high": 0.0}, "high > 0"),
    ({"method.time_conditioning": "true"}, "one noise level per block"),
])
def test_bad_settings_are_one_line_errors(corpus, tmp_path, sets, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config("block", corpus, 2, **sets), tmp_path / "bad", progress=False)


def test_clipped_times_change_training_but_not_the_bound(block4):
    method, model, windows = block4
    from textdiffusion.methods.block import clip_variance

    rows = clip_variance(method, model, windows, [(0.0, 1.0), (0.3, 0.8)])
    assert [r["clip_low"] for r in rows] == [0.0, 0.3] and all(r["variance"] >= 0 for r in rows)
    before = method.nll(model, windows).nats_per_unit
    unclipped = float(method.loss(model, windows, torch.Generator().manual_seed(0)))
    method.cfg.clip_low, method.cfg.clip_high = 0.3, 0.8
    try:
        assert method.nll(model, windows).nats_per_unit == before  # validation always integrates over [0, 1]
        assert float(method.loss(model, windows, torch.Generator().manual_seed(0))) != unclipped
    finally:
        method.cfg.clip_low, method.cfg.clip_high = 0.0, 1.0


def test_clipped_mask_rates_land_in_the_range(block4):
    method = block4[0]
    u = torch.linspace(0, 0.999, 1000)
    for estimator in ("time", "count"):
        method.cfg.estimator = estimator
        draws = method._draws(method.clip(u, 0.3, 0.8))
        if estimator == "count":  # B = 4: the counts whose rate k / 4 is in [0.3, 0.8] are 2 and 3
            assert set(draws.tolist()) == {2, 3}
        else:
            rates = 1 - method.schedule.alpha(draws)
            assert float(rates.min()) >= 0.3 - 1e-6 and float(rates.max()) <= 0.8 + 1e-6
    method.cfg.estimator = "time"
    assert torch.equal(method.clip(u, 0.0, 1.0), u)  # unclipped draws are untouched
