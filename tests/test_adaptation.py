"""The recipes for a start from an ``ar`` run: the shift (``method.shift``) and attention-mask annealing
(``method.anneal_steps``), checked against what they claim: ar's conditionals at step 0, the method's own mask at
step N, the block sampler's cache, an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from textdiffusion.checkpoint import read_group
from textdiffusion.diffusion.adaptation import shift_inputs, shift_segment
from textdiffusion.methods import SampleRequest
from textdiffusion.nn.transformer import attention_bias
from textdiffusion.runs import build
from textdiffusion.trainer import Trainer, resume_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, shakespeare: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(shakespeare[:30_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ar(tmp_path_factory: pytest.TempPathFactory, corpus: Path):
    """A briefly trained ar network, its method and a few validation windows."""
    trainer = Trainer(tiny_config("ar", corpus, steps=20, **{"train.eval_every": 20}),
                      tmp_path_factory.mktemp("ar") / "ar", progress=False)
    trainer.train()
    return trainer.method, trainer.ema.model.eval(), trainer.val_windows[:6]


def _diffusion_on_ar_weights(method_name: str, ar, corpus: Path, **sets: object):
    """The named method with ar's weights, built like a train.init_from run (the same network tensors)."""
    ar_method, ar_model, _ = ar
    method, model = build(tiny_config(method_name, corpus, **sets), ar_method.tok)
    model.load_state_dict(ar_model.state_dict())
    return method, model.eval()


def test_shift_inputs_read_the_token_before_and_blocks_start_clean():
    z = torch.tensor([[10, 99, 12, 99, 99, 15]])  # 99: a mask
    x = torch.tensor([[10, 11, 12, 13, 14, 15]])
    assert shift_inputs(z, x, 0).tolist() == [[0, 10, 99, 12, 99, 99]]
    assert shift_inputs(z, x, 0, block=2).tolist() == [[0, 10, 11, 12, 13, 99]]  # positions 0, 2, 4 read x
    assert shift_inputs(z, x, 0, block=1).tolist() == [[0, 10, 11, 12, 13, 14]]  # B = 1: ar's input
    assert shift_segment(z[:, 2:5], x[:, 1]).tolist() == [[11, 12, 99]]


@pytest.mark.parametrize("method_name", ["masked", "block"])
def test_with_the_shift_step_0_of_annealing_is_ars_conditionals(method_name, ar, corpus):
    """From ar's weights, at step 0 of annealing (the causal mask) the shifted denoiser's logit at i is ar's
    p(x_i | x_<i) on clean windows, at every position; the method's own mask, or no shift, gives other logits."""
    ar_method, ar_model, windows = ar
    n, L = windows.shape
    method, model = _diffusion_on_ar_weights(method_name, ar, corpus, **{"method.shift": True,
                                                                         "method.anneal_steps": 10})
    with torch.no_grad():
        expected = ar_method._forward(ar_model, ar_method._inputs(windows))
        method.at_training_step(0)
        gen = torch.Generator().manual_seed(0)
        if method_name == "masked":
            causal = method.training_mask(n, L, gen, windows.device)
            got = method._forward(model, windows, None, None, causal)
            full = method._forward(model, windows, None)
        else:
            causal = method.training_mask(n, L, gen, windows.device, paired=True)
            got = method._paired_logits(model, windows, windows, None, causal)
            full = method._paired_logits(model, windows, windows)
        method.cfg.shift = False
        causal = method.training_mask(n, L, gen, windows.device, paired=method_name == "block")
        unshifted = (method._forward(model, windows, None, None, causal) if method_name == "masked"
                     else method._paired_logits(model, windows, windows, None, causal))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert (full - expected).abs().max() > 1e-3
    assert (unshifted - expected).abs().max() > 1e-3


def test_block_1_with_the_shift_is_ar_exactly(ar, corpus):
    """B = 1 with the shift reads ar's input at every position: its bound (count estimator: every block masked)
    and its exact NLL are ar's exact NLL on the same weights."""
    ar_method, ar_model, windows = ar
    method, model = _diffusion_on_ar_weights("block", ar, corpus, **{"method.shift": True, "method.block_size": 1,
                                                                     "method.estimator": "count"})
    expected = ar_method.nll(ar_model, windows).nats_per_unit
    assert method.nll(model, windows).nats_per_unit == pytest.approx(expected, rel=1e-5)
    assert method.exact_nll(model, windows).nats_per_unit == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method_name", ["masked", "block"])
def test_annealing_starts_causal_and_ends_at_the_methods_mask(method_name, ar, corpus):
    _, _, windows = ar
    n, L = windows.shape
    method, _ = _diffusion_on_ar_weights(method_name, ar, corpus, **{"method.anneal_steps": 10})
    paired = method_name == "block"
    q = 2 * L if paired else L
    positions = torch.arange(L).repeat(2 if paired else 1)
    target = attention_bias(method.attention, q, q, torch.device("cpu"), getattr(method, "B", 1), paired)[0]
    target = torch.ones(q, q, dtype=torch.bool) if target is None else target
    causal = target & (positions[None, :] <= positions[:, None])

    def mask_at(step: int) -> torch.Tensor | None:
        method.at_training_step(step)
        return method.training_mask(n, L, torch.Generator().manual_seed(step), windows.device, paired)

    assert torch.equal(mask_at(0), causal.expand(n, 1, q, q))
    half = mask_at(5)
    assert torch.equal(half & target, half) and torch.equal(half & causal, causal.expand_as(half))
    share = (half & ~causal).sum() / (n * (target & ~causal).sum())
    assert 0.4 < float(share) < 0.6  # half of the non-causal entries the method allows
    assert mask_at(10) is None and mask_at(11) is None  # the method's own mask, no draws


def test_without_annealing_training_draws_no_mask(ar, corpus):
    method, _ = _diffusion_on_ar_weights("masked", ar, corpus)
    method.at_training_step(0)
    assert method.training_mask(2, 8, torch.Generator(), torch.device("cpu")) is None


def test_a_resume_mid_annealing_is_exact(corpus, tmp_path):
    def cfg(anneal: int = 8):
        return tiny_config("masked", corpus, steps=12, **{"method.shift": True, "method.anneal_steps": anneal,
                                                          "train.eval_every": 12})

    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    Trainer(cfg(), tmp_path / "parts", progress=False).train(stop_at=5)
    resume_training(tmp_path / "parts", progress=False)
    Trainer(cfg(0), tmp_path / "switched", progress=False).train()
    whole, parts = read_group(tmp_path / "whole", "model")[0], read_group(tmp_path / "parts", "model")[0]
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    switched = read_group(tmp_path / "switched", "model")[0]
    assert not all(torch.equal(whole[k], switched[k]) for k in whole)  # annealing changed the training
    recorded = json.loads((tmp_path / "whole" / "config.json").read_text())["config"]["method"]
    assert recorded["shift"] is True and recorded["anneal_steps"] == 8


@pytest.mark.parametrize("sampler", ["ancestral", "cached"])
def test_the_shifted_block_sampler_reads_what_training_reads(ar, corpus, sampler):
    """The KV-cached block sampler with the shift draws what a sampler without a cache draws when every step
    runs the network on the whole sequence so far moved one place right behind BOS (training's layout)."""
    from helpers import block_sample_without_cache

    method, model = _diffusion_on_ar_weights("block", ar, corpus, **{"method.shift": True, "method.block_size": 4})
    req = SampleRequest(n=3, length=32, prompt="First", sampler=sampler)
    cached = method.sample(model, req, torch.Generator().manual_seed(7))
    bos = torch.tensor(method.tok.bos_id)

    def shifted(x: torch.Tensor) -> torch.Tensor:
        return model(shift_segment(x, bos.expand(x.shape[0])))

    with torch.no_grad():
        reference = block_sample_without_cache(method, req, torch.Generator().manual_seed(7), shifted)
        plain = block_sample_without_cache(method, req, torch.Generator().manual_seed(7), model)
    assert torch.equal(cached.ids, reference)
    assert not torch.equal(cached.ids, plain)


@pytest.mark.parametrize("method_name", ["masked", "block"])
def test_the_joint_objective_adds_the_ar_reading_and_reports_its_exact_nll(method_name, ar, corpus):
    """With ar_weight, the loss is the diffusion loss plus that times the network's ar cross-entropy (causal, clean,
    shifted), and the bound's details carry the exact NLL of that ar reading: ar's own on ar's weights."""
    ar_method, ar_model, windows = ar
    joint, model = _diffusion_on_ar_weights(method_name, ar, corpus, **{"method.shift": True,
                                                                        "method.ar_weight": 0.5})
    plain, _ = _diffusion_on_ar_weights(method_name, ar, corpus, **{"method.shift": True})
    with torch.no_grad():
        both = joint.loss(model, windows, torch.Generator().manual_seed(3))
        alone = plain.loss(model, windows, torch.Generator().manual_seed(3))
        ar_loss = ar_method.loss(ar_model, windows, torch.Generator())
    assert float(both) == pytest.approx(float(alone) + 0.5 * float(ar_loss), rel=1e-5)
    bound = joint.nll(model, windows)
    assert bound.kind == "bound"
    assert bound.details["ar_nats_per_char"] == pytest.approx(ar_method.nll(ar_model, windows).nats_per_unit,
                                                              rel=1e-5)
    assert "ar_nats_per_char" not in plain.nll(model, windows).details


def test_the_joint_objective_without_the_shift_is_refused_in_one_line(corpus):
    from textdiffusion.config import ConfigError

    with pytest.raises(ConfigError, match=r"method\.ar_weight .* set method\.shift=true"):
        Trainer(tiny_config("masked", corpus, **{"method.ar_weight": 1.0}), corpus.parent / "r", progress=False)


def test_masked_with_the_shift_reads_every_token_of_the_window(ar, corpus):
    """Masked diffusion reads [BOS, z]: the window's last token (known text at the end of an infill) still
    informs the other positions."""
    _, _, windows = ar
    method, model = _diffusion_on_ar_weights("masked", ar, corpus, **{"method.shift": True})
    z = windows.clone()
    z[:, :-1] = method.tok.mask_id
    other = z.clone()
    other[:, -1] = (z[:, -1] + 1) % method.tok.n_symbols
    with torch.no_grad():
        a, b = method._forward(model, z, None), method._forward(model, other, None)
    assert a.shape == (*windows.shape, method.tok.n_symbols)
    assert (a - b).abs().max() > 1e-4


def test_a_run_trained_before_the_recipes_existed_still_opens(corpus, tmp_path):
    """A checkpoint whose recorded config lacks the recipe fields was trained as their defaults behave: it opens;
    a config.json that claims a recipe it was not trained with is still refused by the field."""
    import dataclasses

    from textdiffusion.checkpoint import read_header
    from textdiffusion.runs import check_checkpoint_config

    cfg = tiny_config("masked", corpus, steps=1)
    Trainer(cfg, tmp_path / "r", progress=False).train()
    header = read_header(tmp_path / "r")
    for name in ("shift", "anneal_steps", "ar_weight"):
        del header.config["method"][name]
    check_checkpoint_config(header, cfg)
    claimed = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, shift=True))
    with pytest.raises(Exception, match=r"method\.shift: None in the checkpoint, True in config\.json"):
        check_checkpoint_config(header, claimed)
