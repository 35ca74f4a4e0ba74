from __future__ import annotations

import pytest
import torch

from textdiffusion.config import ModelConfig
from textdiffusion.nn.transformer import KVCache, Transformer

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=16)


def _model(attention: str, time: bool = False) -> Transformer:
    torch.manual_seed(0)
    return Transformer(CFG, vocab_size=11, out_dim=8, attention=attention, time_conditioning=time).eval()


def test_output_shape():
    y = _model("causal")(torch.randint(0, 11, (3, 16)))
    assert y.shape == (3, 16, 8)


def test_causal_outputs_ignore_the_future_and_bidirectional_do_not():
    x = torch.randint(0, 11, (1, 16))
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % 11
    causal, bidir = _model("causal"), _model("bidirectional")
    with torch.no_grad():
        a, b = causal(x), causal(x2)
        assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
        assert not torch.allclose(a[:, 10:], b[:, 10:])
        c, d = bidir(x), bidir(x2)
        assert not torch.allclose(c[:, :10], d[:, :10])


def test_kv_cache_matches_full_forward():
    model = _model("causal")
    x = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        full = model(x)
        cache = KVCache.empty(CFG.n_layer, CFG.context)
        pieces = [model(x[:, :5], cache=cache)]
        pieces += [model(x[:, i:i + 1], cache=cache) for i in range(5, 12)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_kv_cache_refuses_to_overflow():
    model = _model("causal")
    cache = KVCache.empty(CFG.n_layer, 4)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
        assert cache.full
        with pytest.raises(ValueError, match="at most 4"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_time_conditioning_starts_as_identity_and_then_matters():
    plain, timed = _model("bidirectional"), _model("bidirectional", time=True)
    timed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randint(0, 11, (2, 16))
    t = torch.tensor([0.1, 0.9])
    with torch.no_grad():
        assert torch.allclose(plain(x), timed(x, t), atol=1e-6)  # adaLN-Zero
        for block in timed.blocks:
            block.modulation.weight.normal_(0, 0.5)
        assert not torch.allclose(timed(x, t), timed(x, t.flip(0)))
    with pytest.raises(ValueError, match="pass t"):
        timed(x)


def test_unknown_attention_mode():
    with pytest.raises(ValueError, match="unknown attention mode"):
        Transformer(CFG, 11, attention="sideways")


def test_base_preset_has_about_10_7M_parameters():
    from textdiffusion.methods.configs import make_config

    cfg = make_config("ar", "base")
    n = Transformer(cfg.model, vocab_size=68, out_dim=65).num_parameters()
    assert 10.5e6 < n < 10.9e6


def test_labels_condition_every_position_and_leave_unlabelled_models_as_they_were():
    torch.manual_seed(0)
    plain = Transformer(CFG, vocab_size=11, out_dim=8, attention="causal")
    torch.manual_seed(0)
    labelled = Transformer(CFG, vocab_size=11, out_dim=8, attention="causal", num_labels=3).eval()
    # the label table is created after everything else: the shared parameters start identical
    shared = {k: v for k, v in labelled.state_dict().items() if not k.startswith("label.")}
    assert shared.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())
    x = torch.randint(0, 11, (4, 16))
    with torch.no_grad():
        a = labelled(x, labels=torch.tensor([0, 1, 2, 3]))  # 3 = no label
        b = labelled(x, labels=torch.tensor([1, 1, 2, 3]))
        # a different label changes that row from the first position on (the causal model sees it at once)
        assert not torch.allclose(a[0, 0], b[0, 0])
        assert torch.allclose(a[1:], b[1:])
        # with the KV cache the label is added to every new position, as in the full forward
        cache = KVCache.empty(CFG.n_layer, CFG.context)
        labels = torch.tensor([0, 1, 2, 3])
        pieces = [labelled(x[:, :5], cache=cache, labels=labels)]
        pieces += [labelled(x[:, i:i + 1], cache=cache, labels=labels) for i in range(5, 16)]
    assert torch.allclose(torch.cat(pieces, dim=1), a, atol=1e-5)
    with pytest.raises(ValueError, match="pass labels"):
        labelled(x)
    with pytest.raises(ValueError, match="has no labels"):
        plain(x, labels=labels)
