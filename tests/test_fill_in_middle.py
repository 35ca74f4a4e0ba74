"""ar with fill-in-the-middle: the PSM rearrangement, its training batch, the infill it draws, its refusals, and the
exact likelihood of a middle given both sides."""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import train_tiny
from textdiffusion.apps.cli import main
from textdiffusion.config import ConfigError, ModelConfig
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods import get_method
from textdiffusion.methods.ar import ARConfig
from textdiffusion.methods.fill_in_middle import Sentinels, kept_lengths, psm, room
from textdiffusion.methods.requests import SampleRequest
from textdiffusion.methods.spans import span_mask

SMALL = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=12)
S = Sentinels(100, 101, 102)


def ar(fim_rate: float = 0.5, chars: str = "abcdefg", context: int = 12):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=context)
    method = get_method("ar")(ARConfig(fim_rate=fim_rate), cfg, CharTokenizer(list(chars)))
    return method, method.build_model().eval()


def test_psm_puts_prefix_suffix_then_middle_and_cuts_the_far_context():
    x = torch.arange(10)[None].repeat(3, 1)
    a, b = torch.tensor([2, 0, 5]), torch.tensor([5, 10, 5])
    seq, middle = psm(x, a, b, S, carry=8)
    assert seq.tolist() == [[100, 0, 1, 101, 5, 6, 7, 102, 2, 3, 4],  # the suffix's far end (8, 9) cut
                            [100, 101, 102, 0, 1, 2, 3, 4, 5, 6, 7],  # a middle longer than the room: cut at its end
                            [100, 1, 2, 3, 4, 101, 5, 6, 7, 8, 102]]  # no middle: the context nearest the cut kept
    assert [seq[i][middle[i]].tolist() for i in range(3)] == [[2, 3, 4], list(range(8)), []]
    whole, _ = psm(x, a, b, S, carry=20)
    assert whole[0].tolist() == [100, 0, 1, 101, 5, 6, 7, 8, 9, 102, 2, 3, 4]


def test_kept_lengths_fill_the_room_nearest_the_middle_first():
    g = torch.Generator().manual_seed(0)
    for L, carry in ((10, 8), (10, 12), (30, 7)):
        cuts = torch.randint(0, L + 1, (200, 2), generator=g).sort(1).values
        a, b = cuts[:, 0], cuts[:, 1]
        kl, km, kr = kept_lengths(a, b, L, carry)
        assert ((kl + km + kr) == min(L, carry)).all()
        assert (km == (b - a).clamp(max=carry)).all() and (kl <= a).all() and (kr <= L - b).all()
        # a side is short of half the spare room only when it has nothing more to give
        spare = carry - km
        assert ((kl >= (spare + 1) // 2) | (kl == a)).all() and ((kr >= spare // 2) | (kr == L - b)).all()


@torch.no_grad()
def test_without_fim_the_loss_and_the_network_are_as_before():
    method, model = ar(fim_rate=0.0)
    x = torch.randint(0, 7, (4, 12), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    loss = method.loss(model, x, g)
    assert torch.equal(g.get_state(), before)  # no draw: existing runs train exactly as they did
    bos = torch.full((4, 1), method.tok.bos_id)
    plain = torch.nn.functional.cross_entropy(model(torch.cat((bos, x[:, :-1]), 1)).flatten(0, 1), x.flatten())
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)
    assert model.input.embed.num_embeddings == method.tok.vocab_size and not method.supports_infill


@torch.no_grad()
def test_a_fim_batch_rearranges_a_fraction_and_never_targets_a_sentinel():
    method, model = ar(fim_rate=0.5)
    assert model.input.embed.num_embeddings == method.tok.vocab_size + 3 and method.supports_infill
    x = torch.randint(0, 7, (400, 12), generator=torch.Generator().manual_seed(1))
    inputs, targets, scored = method._fim_batch(x, torch.Generator().manual_seed(2))
    fim = inputs[:, 0] == method.fim.pre
    assert 0.4 < float(fim.float().mean()) < 0.6
    assert inputs.shape == x.shape and (targets < method.tok.n_symbols).all()
    assert ((inputs[fim] == method.fim.suf).sum(1) == 1).all()
    assert ((inputs[fim] == method.fim.mid).sum(1) <= 1).all()  # [MID] is the last token, a target, when the middle
    # is empty
    assert (scored[fim].sum(1) == 10).all() and (scored[~fim] == 1).all()  # the two sentinel targets unscored
    assert torch.equal(inputs[~fim][:, 1:], x[~fim][:, :-1])
    loss = method.loss(model, x, torch.Generator().manual_seed(2))
    ce = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="none")
    assert float(loss) == pytest.approx(float((ce * scored.flatten()).sum() / scored.sum()), rel=1e-5)
    # validation stays the plain left-to-right NLL of untransformed windows
    bos = torch.full((400, 1), method.tok.bos_id)
    plain = torch.nn.functional.cross_entropy(model(torch.cat((bos, x[:, :-1]), 1)).flatten(0, 1), x.flatten())
    assert method.nll(model, x).nats_per_unit == pytest.approx(float(plain), rel=1e-5)


@torch.no_grad()
def test_an_infill_writes_the_middle_as_a_left_to_right_model_would_without_a_cache():
    method, model = ar()
    req = SampleRequest(n=2, infill="abc____fg", top_k=1)
    out = method.sample(model, req, torch.Generator().manual_seed(0))
    text = [method.tok.decode(row.tolist()) for row in out.ids]
    assert all(t.startswith("abc") and t.endswith("fg") and len(t) == 9 for t in text)
    assert out.nfe == 4  # the prefill, then one forward per character after the first
    enc = method.tok.encode
    seq = [method.fim.pre, *enc("abc"), method.fim.suf, *enc("fg"), method.fim.mid]
    for _ in range(4):  # greedy, every step from scratch
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert text[0][3:7] == method.tok.decode(seq[-4:])


def test_an_infill_longer_than_the_context_drops_the_far_context():
    method, model = ar(context=12)
    out = method.sample(model, SampleRequest(infill="abcdefg" * 3 + "___" + "gfedcba" * 2, top_k=1),
                        torch.Generator().manual_seed(0))
    assert method.tok.decode(out.ids[0].tolist()).startswith("abcdefg" * 3) and out.ids.shape[1] == 38


def test_blank_requests_an_ar_cannot_fill_are_refused_in_one_line():
    plain, model = ar(fim_rate=0.0)
    with pytest.raises(ConfigError, match=r"method\.fim_rate=0\.5") as e:
        plain.sample(model, SampleRequest(infill="ab__cd"), torch.Generator())
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"method\.fim_rate"):
        plain.span_nll(model, torch.zeros(1, 12, dtype=torch.long), span_mask(torch.tensor([3]), 2, 12))
    method, model = ar()
    with pytest.raises(ConfigError, match="2 separate runs of '_'"):
        method.sample(model, SampleRequest(infill="a_b_c"), torch.Generator())
    with pytest.raises(ConfigError, match="at most 10"):
        method.sample(model, SampleRequest(infill="a" + "_" * 11 + "b"), torch.Generator())
    with pytest.raises(ConfigError, match="--guidance-rule free"):  # FUDGE's classifier reads prefixes only
        method.prepare(SampleRequest(infill="ab__cd", rule="classifier"), torch.device("cpu"))
    # blanks at the end only are a prompt: continued left to right, past the context too
    out = method.sample(model, SampleRequest(infill="ab" + "_" * 20), torch.Generator().manual_seed(0))
    assert out.ids.shape == (1, 22)


@torch.no_grad()
def test_span_nll_is_the_sum_of_the_middle_log_probs_and_a_distribution():
    method, model = ar(chars="abc", context=8)
    x = torch.randint(0, 3, (3, 8), generator=torch.Generator().manual_seed(0))
    starts = torch.tensor([0, 3, 5])
    result = method.span_nll(model, x, span_mask(starts, 2, 8), batch_size=2)
    assert result.kind == "exact" and result.units == 6
    for w in range(3):
        a, b = int(starts[w]), int(starts[w]) + 2
        left, right = x[w, :a].tolist(), x[w, b:].tolist()
        keep = room(8) - 2  # 4 context characters fit: nearest the middle, each side up to half when it can
        kl = min(len(left), max(keep - len(right), (keep + 1) // 2))
        seq = [method.fim.pre, *left[len(left) - kl:], method.fim.suf, *right[:keep - kl], method.fim.mid]
        want = 0.0
        for tok in x[w, a:b].tolist():
            want -= float(model(torch.tensor([seq]))[0, -1].double().log_softmax(-1)[tok])
            seq.append(tok)
        assert float(result.nats[w]) == pytest.approx(want, rel=1e-5)
    end = span_mask(torch.tensor([6, 6, 6]), 2, 8)  # nothing after the blank: the plain left-to-right NLL
    bos = torch.full((3, 1), method.tok.bos_id)
    plain = torch.nn.functional.cross_entropy(model(torch.cat((bos, x[:, :-1]), 1)).flatten(0, 1), x.flatten(),
                                              reduction="none").view(3, 8)
    assert method.span_nll(model, x, end).nats.tolist() == pytest.approx(plain[:, 6:].sum(1).tolist(), rel=1e-5)
    every = torch.tensor([[0, 1, *pair, 2, 0, 1, 2] for pair in itertools.product(range(3), repeat=2)])
    nats = method.span_nll(model, every, span_mask(torch.full((9,), 2), 2, 8)).nats
    assert float(torch.exp(-nats).sum()) == pytest.approx(1.0, abs=1e-6)


def test_a_fim_run_trains_infills_and_keeps_its_plain_validation(small_corpus, tmp_path, capsys):
    train_tiny("ar", small_corpus, tmp_path / "fim", steps=4, **{"method.fim_rate": 0.5})
    assert main(["sample", str(tmp_path / "fim"), "--infill", "ROMEO:____ thou", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "ROMEO:" in out and " thou" in out
    train_tiny("ar", small_corpus, tmp_path / "plain", steps=1)
    assert main(["sample", str(tmp_path / "plain"), "--infill", "RO__O"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method.fim_rate" in err


def test_an_ar_score_key_recorded_before_fim_still_names_its_score(monkeypatch):
    """method.fim_rate=0 trains as every ar run did before the option: final.json's key must read the same with
    the field as without it (or `eval` would score such a run again); a fill-in-the-middle run changes it."""
    from helpers import tiny_config
    from textdiffusion.config import Config
    from textdiffusion.final_score import settings_digest

    cfg = tiny_config("ar", "x")
    cpu = torch.device("cpu")
    now = settings_digest(cfg, cpu, 64)
    to_dict = Config.to_dict

    def before_the_option(self):
        d = to_dict(self)
        del d["method"]["fim_rate"]
        return d

    monkeypatch.setattr(Config, "to_dict", before_the_option)
    assert settings_digest(cfg, cpu, 64) == now
    monkeypatch.undo()
    cfg.method.fim_rate = 0.5
    assert settings_digest(cfg, cpu, 64) != now
