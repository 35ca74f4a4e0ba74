"""Analog-bit diffusion (``--method bits``): codes, decoding, softmax factorisation, conditioning."""

from __future__ import annotations

import pytest
import torch

from helpers import train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.bits import bit_codes, bits_to_ids, n_bits
from textdiffusion.methods.configs import make_config
from textdiffusion.runs import build, open_run


@pytest.mark.parametrize("vocab", [2, 3, 5, 65, 100, 256, 257, 30522])
def test_bit_codes_round_trip_for_any_vocabulary(vocab):
    codes = bit_codes(vocab, scale=0.7)
    assert codes.shape == (vocab, n_bits(vocab)) and torch.allclose(codes.abs(), torch.tensor(0.7))
    assert torch.equal(bits_to_ids(codes), torch.arange(vocab))
    noisy = codes + (0.3 * torch.randn(codes.shape, generator=torch.Generator().manual_seed(0))).clamp(-0.5, 0.5)
    assert torch.equal(bits_to_ids(noisy), torch.arange(vocab))  # small noise never crosses 0


def _bits(vocab_text: str = "abcde", **sets):
    cfg = make_config("bits", "tiny", [f"{k}={v}" for k, v in sets.items()])
    return build(cfg, CharTokenizer.from_text(vocab_text))


def test_invalid_patterns_snap_to_the_nearest_symbol_and_are_counted():
    method, model = _bits()  # 5 symbols in 3 bits: patterns 5, 6, 7 name nothing
    x = torch.tensor([[[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]]])  # 7 (invalid), 3, 4
    ids, info = method.final_ids(model, x)
    assert ids.tolist() == [[3, 3, 4]]  # 111 -> 011 (one bit away; 100 is two away)
    assert info["invalid_id_rate"] == pytest.approx(1 / 3)


def test_softmax_factorisation_averages_the_codes():
    method, model = _bits(**{"method.target": "probs"})
    x_t = torch.randn(2, 6, 3)
    out, x0_hat, _ = method.denoise(model, x_t, torch.full((2,), 0.5), None)
    assert out.shape == (2, 6, 5)  # V logits per position, straight from the backbone
    assert torch.allclose(x0_hat, out.float().softmax(-1) @ method.codes, atol=1e-6)
    x = torch.randint(0, 5, (3, 8))
    terms = method.loss_terms(model, x, torch.Generator().manual_seed(0))
    loss = method.loss(model, x, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(terms["ce"].item())  # cross-entropy on the symbol only, by default
    loss.backward()
    assert torch.isfinite(loss)
    method.cfg.probs_mse_weight = 2.0  # optionally plus the bit MSE
    both = method.loss(model, x, torch.Generator().manual_seed(0))
    assert both.item() == pytest.approx((terms["ce"] + 2.0 * terms["mse"]).item(), rel=1e-5)


def test_self_conditioning_feeds_the_previous_estimate():
    _, model = _bits(**{"method.self_condition": "true"})
    assert model.backbone.input.proj.in_features == 2 * 3
    x_t, t = torch.randn(1, 6, 3), torch.full((1,), 0.5)
    with torch.no_grad():
        a = model(x_t, t, torch.zeros_like(x_t))
        b = model(x_t, t, torch.ones_like(x_t))
        c = model(x_t, t, None)
    assert not torch.allclose(a, b) and torch.equal(a, c)  # None means "no estimate yet" = zeros


def test_asymmetric_intervals_shift_the_target_time():
    method, _ = _bits(**{"method.time_difference": "2"})
    times = method.make_sampler("ddim", 10).times()
    assert times[0] == (1.0, pytest.approx(0.7))
    assert times[-1][1] == 0.0


def test_time_delta_is_accepted_as_the_papers_name_for_time_difference():
    cfg = make_config("bits", "tiny", ["method.time_delta=5"])
    assert cfg.method.time_difference == 5.0


def test_bits_preset_is_bit_diffusions_recipe():
    cfg = make_config("bits", "cpu")
    assert (cfg.method.timesteps, cfg.method.noise_schedule, cfg.method.self_condition) == (0, "cosine", True)


def test_infilled_positions_are_preserved_exactly(small_corpus, tmp_path):
    trainer = train_tiny("bits", small_corpus, tmp_path / "run", steps=10)
    run = open_run(tmp_path / "run", device="cpu")
    for sampler in ("ddim", "ddpm"):
        req = SampleRequest(n=3, infill="ROMEO:\nO ____ art thou, ___?", sampler=sampler, steps=6)
        res = run.method.sample(run.model, req, torch.Generator().manual_seed(0))
        state, fixed = run.method.prepare(req, torch.device("cpu"))
        assert torch.equal(res.ids[fixed], state[fixed])
        assert "invalid_id_rate" in res.info
    assert trainer.model.embed is None  # the code table is fixed, never trained


def test_cli_train_sample_eval(small_corpus, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", "--method", "bits", "--preset", "tiny", "--data", str(small_corpus), "--steps", "10",
                 "--run-dir", str(run), "--no-progress", "--set", "method.target=probs", "method.bit_scale=0.5"]) == 0
    assert main(["sample", str(run), "--prompt", "ROMEO:", "--steps", "5", "--sampler", "ddpm"]) == 0
    assert main(["eval", str(run), "--samples", "4", "--steps", "5", "--val-windows", "4"]) == 0
    out = capsys.readouterr().out
    assert "invalid-id rate" in out and "upper bound" in out
    assert main(["train", "--method", "bits", "--preset", "tiny", "--data", str(small_corpus),
                 "--set", "method.bit_scale=0"]) == 2
    assert "bit_scale must be a number above 0" in capsys.readouterr().err
