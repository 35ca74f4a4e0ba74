"""Speaker-labelled training and classifier-free guidance on text (issue 17): the labelled data, label dropout,
the guidance rule, and the one-line errors."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import block_sample_without_cache, train_tiny
from textdiffusion.api import load
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError
from textdiffusion.data.speakers import SPEECH_SEPARATOR, LabelledText, SpeakerStreams, split_speakers
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.guidance import free
from textdiffusion.methods import get_method
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.block import clip_variance
from textdiffusion.methods.configs import make_config
from textdiffusion.nn.transformer import KVCache


@pytest.fixture(scope="module")
def labelled_runs(tmp_path_factory, shakespeare):
    """Tiny masked, ar and block runs trained on speaker-labelled Tiny Shakespeare (a quarter of it, for speed)."""
    root = tmp_path_factory.mktemp("labelled")
    corpus = root / "plays.txt"
    corpus.write_text(shakespeare[: len(shakespeare) // 4], encoding="utf-8")
    for method in ("masked", "ar", "block"):
        train_tiny(method, corpus, root / method, steps=30, **{"data.labels": "speaker", "data.label_top": 4})
    return root


def test_speaker_streams_crop_within_one_speaker_in_proportion_to_speech(shakespeare):
    split = split_speakers(shakespeare[:300_000], top=3)
    tok = CharTokenizer.from_text(shakespeare)
    streams = SpeakerStreams(split.train, tok.encode_array)
    joined = [SPEECH_SEPARATOR.join(b) + SPEECH_SEPARATOR for b in split.train]
    batch = streams.random_windows(4000, 24, torch.Generator().manual_seed(0))
    for ids, label in zip(batch.ids[:200], batch.labels[:200], strict=True):
        assert tok.decode(ids.tolist()) in joined[int(label)]  # a window never crosses into another speaker
    share = torch.bincount(batch.labels, minlength=3).double() / 4000
    expected = streams.lengths.double() / streams.lengths.sum()
    assert torch.allclose(share, expected, atol=0.03)
    tiles = streams.tiled_windows(24)
    assert len(tiles) == int((streams.lengths // 24).sum())
    assert tok.decode(tiles.ids[0].tolist()) == joined[0][:24] and int(tiles.labels[-1]) == 2
    assert len(streams.tiled_windows(24, limit=10)) == 10


def test_label_dropout_replaces_a_fraction_and_draws_nothing_without_labels(shakespeare):
    cfg = make_config("masked", "tiny", ["data.labels=speaker", "data.label_top=4", "train.label_dropout=0.25"])
    method = get_method("masked").from_config(cfg, CharTokenizer.from_text(shakespeare))
    assert (method.num_labels, method.label_dropout) == (4, 0.25)
    gen = torch.Generator().manual_seed(1)
    dropped = method.drop_labels(torch.zeros(20000, dtype=torch.long), gen)
    assert abs(float((dropped == 4).double().mean()) - 0.25) < 0.02 and set(dropped.tolist()) == {0, 4}
    before = gen.get_state()
    assert method.drop_labels(None, gen) is None
    assert torch.equal(gen.get_state(), before)  # plain windows: the training draws are those of before


def test_the_guidance_rule():
    logits = torch.randn(6, 5, 7)
    cond, uncond = logits.log_softmax(-1).chunk(2)
    for w in (0.5, 2.0, 5.0):
        assert torch.allclose(free.combine(logits, w), uncond + w * (cond - uncond))


@pytest.mark.parametrize("method", ["masked", "ar", "block"])
def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional(labelled_runs, method, monkeypatch):
    model = load(labelled_runs / method, device="cpu")
    assert len(model.labels) == 4 and model.labels[0] == split_speakers(
        (labelled_runs / "plays.txt").read_text(encoding="utf-8")[: int(len((labelled_runs / "plays.txt").read_text(
            encoding="utf-8")) * 0.9)], top=4).speakers[0]
    options = {"n": 6, "length": 24, "seed": 5, "progress": False, "temperature": 1.0}
    name = model.labels[1]
    unconditional = model.generate(**options)
    conditional = model.generate(label=name, **options)
    assert model.generate(label=name, guidance=0.0, **options) == unconditional
    assert model.generate(label=name, guidance=1.0, **options) == conditional
    net = model.run.model  # the label reaches the network: the same input under a label and under "none"
    x = torch.randint(0, model.tokenizer.n_symbols, (1, 24), generator=torch.Generator().manual_seed(0)).repeat(2, 1)
    with torch.no_grad():
        out = net(x, labels=torch.tensor([1, 4]))
    assert not torch.allclose(out[0], out[1])
    assert len(conditional) == len(unconditional) == 6
    # any other w: both branches from one forward of a doubled batch, combined by the guidance rule
    seen: list[tuple[int, ...]] = []
    rule = free.combine

    def spy(logits: torch.Tensor, w: float) -> torch.Tensor:
        seen.append((logits.shape[0], w))
        return rule(logits, w)

    monkeypatch.setattr(free, "combine", spy)
    guided = model.generate(label=name.lower(), guidance=3.0, **options)  # names are case-insensitive
    assert seen and all(shape == (12, 3.0) for shape in seen) and all(len(t) == 24 for t in guided)


def test_labelled_validation_is_conditional_and_eval_unconditional(labelled_runs):
    model = load(labelled_runs / "masked", device="cpu")
    config = (labelled_runs / "masked" / "config.json").read_text(encoding="utf-8")
    assert '"labels": [' in config and '"label_held_out_speeches"' in config
    assert model.score("ROMEO is here").kind == "bound"  # plain text: the "no label" row


@pytest.mark.parametrize("method", ["masked", "block"])
@pytest.mark.parametrize(("ask", "message"), [
    ({"label": "HAMLET"}, "not one of this run's 4 labels; choose one of"),
    ({"label": "HAMLET", "guidance": 2.0}, "not one of this run's 4 labels; choose one of"),
    ({"guidance": 2.0}, "give --label NAME with --guidance"),
    ({"label": "x", "guidance": -1.0}, "guidance must be"),
])
def test_bad_requests_are_one_line(labelled_runs, method, ask, message):
    model = load(labelled_runs / method, device="cpu")
    with pytest.raises(ConfigError, match=message) as e:
        model.generate(progress=False, **ask)
    assert "\n" not in str(e.value)


def test_a_label_on_a_plain_run_and_labels_where_they_cannot_be(small_corpus, tmp_path, shakespeare):
    for method in ("masked", "block"):
        plain = train_tiny(method, small_corpus, tmp_path / method, steps=2)
        for ask in ({"label": "ROMEO"}, {"label": "ROMEO", "guidance": 3.0}):
            with pytest.raises(ConfigError, match="trained without labels") as e:
                load(plain.run_dir, device="cpu").generate(progress=False, **ask)
            assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="does not build; use ar, block, masked or uniform"):
        train_tiny("embedding", small_corpus, tmp_path / "embedding", steps=2, **{"data.labels": "speaker"})
    prose = tmp_path / "prose.txt"
    prose.write_text("no speakers here, only prose.\n" * 400, encoding="utf-8")
    with pytest.raises(DataError, match="no speeches with speaker headers"):
        train_tiny("masked", prose, tmp_path / "prose-run", steps=2, **{"data.labels": "speaker"})


def _guided_network(method, model, label: int, w: float):
    """The network of guided block sampling written out by hand: conditional and "no label" copies in one doubled
    forward, combined by the guidance rule."""

    def network(x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        labels = torch.cat((torch.full((m,), label), torch.full((m,), method.num_labels)))
        cond, uncond = model(torch.cat((x, x)), labels=labels).float().log_softmax(-1).chunk(2)
        return uncond + w * (cond - uncond)

    return network


def test_guided_block_sampling_holds_both_halves_in_one_cache(labelled_runs, monkeypatch):
    """Block guidance at w = 2.5: every forward (prefix, denoising steps, commits) is one doubled batch, the KV
    cache holds the conditional and the unconditional rows of each sequence, the cached sampler's row views read
    rows r and r + n, and the samples are exactly those of the cached sampler's ancestral twin and of a sampler
    that re-reads the whole prefix without a cache."""
    model = load(labelled_runs / "block", device="cpu")
    method, net, name = model.run.method, model.run.model, model.labels[2]
    n = 3

    def request(sampler: str, length: int = 32) -> SampleRequest:
        return SampleRequest(n=n, length=length, prompt="Now", sampler=sampler, label=name, guidance=2.5)

    views: list[torch.Tensor] = []
    rows = KVCache.rows
    monkeypatch.setattr(KVCache, "rows", lambda cache, index: views.append(index) or rows(cache, index))
    batches: list[int] = []
    hook = net.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        ancestral = method.sample(net, request("ancestral"), torch.Generator().manual_seed(7))
        cached = method.sample(net, request("cached"), torch.Generator().manual_seed(7))
    finally:
        hook.remove()
    assert torch.equal(cached.ids, ancestral.ids) and cached.nfe < ancestral.nfe
    assert views and all(len(v) % 2 == 0 and torch.equal(v[len(v) // 2:], v[: len(v) // 2] + n) for v in views)
    assert batches and all(b % 2 == 0 for b in batches) and 2 * n in batches
    assert ancestral.info["label"] == name and ancestral.info["guidance"] == 2.5
    with torch.no_grad():
        reference = block_sample_without_cache(method, request("ancestral"), torch.Generator().manual_seed(7),
                                               _guided_network(method, net, 2, 2.5))
    assert torch.equal(ancestral.ids, reference)
    # past the context the cache slides: the re-encoded prefix is doubled too, and w = 0 is still unconditional
    options = {"n": 2, "length": 80, "seed": 3, "progress": False, "sampler": "cached"}
    assert model.generate(label=name, guidance=0.0, **options) == model.generate(**options)
    assert all(len(text) == 80 for text in model.generate(label=name, guidance=4.0, **options))


def test_block_bound_of_labelled_windows_is_conditional(labelled_runs, monkeypatch):
    """Labelled windows get the conditional bound (each window's label on all its draws), plain windows the "no
    label" row's; the training loss takes labelled batches, and clip_variance plain windows of a labelled run."""
    model = load(labelled_runs / "block", device="cpu")
    method, net = model.run.method, model.run.model
    text = (labelled_runs / "plays.txt").read_text(encoding="utf-8")
    windows = torch.tensor(method.tok.encode(text[5000:5000 + 6 * 32])).view(6, 32)
    monkeypatch.setattr(method.cfg, "eval_time_samples", 4)
    plain = method.nll(net, windows, batch_size=8)

    def labelled(i: int) -> float:
        return method.nll(net, LabelledText(windows, torch.full((6,), i)), batch_size=8).nats_per_unit

    assert labelled(method.num_labels) == plain.nats_per_unit  # "no label" is what plain windows get
    by_label = [labelled(i) for i in range(method.num_labels)]
    assert all(math.isfinite(b) for b in by_label) and len(set(by_label)) == method.num_labels
    mixed = LabelledText(windows, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert math.isfinite(method.nll(net, mixed, batch_size=4).nats_per_unit)
    with torch.no_grad():
        loss = method.loss(net, mixed, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and math.isfinite(float(loss))
    (row,) = clip_variance(method, net, windows, [(0.0, 1.0)])
    assert math.isfinite(row["mean_nats"]) and math.isfinite(row["variance"])


@pytest.mark.slow
def test_guidance_moves_the_judges_accuracy_toward_the_requested_speaker(tmp_path, shakespeare_file):
    """A small `ar` run (tiny preset, 2,000 steps, 4 speakers; about 15 s): at w = 6 the speaker judge names the
    requested speaker clearly more often than without guidance. With guidance a no-op the two sets of samples
    would be identical (same seeds), so the test fails; 256 samples per w put the measured gap (0.23 -> 0.38
    when written) at about 3.5 standard errors, and the test asks for 2."""
    from textdiffusion.speaker_judge import SpeakerJudge

    corpus = shakespeare_file
    train_tiny("ar", corpus, tmp_path / "run", steps=2000,
               **{"data.labels": "speaker", "data.label_top": 4, "train.eval_every": 2000})
    model = load(tmp_path / "run", device="cpu")
    text = corpus.read_text(encoding="utf-8")
    judge = SpeakerJudge(split_speakers(text[: int(len(text) * 0.9)], top=4))
    assert judge.speakers == model.labels
    accuracy = {}
    for w in (0.0, 6.0):
        texts, labels = [], []
        for i, name in enumerate(model.labels):
            texts += model.generate(n=64, length=32, label=name, guidance=w, seed=i, progress=False)
            labels += [i] * 64
        accuracy[w] = judge.accuracy(texts, labels)
    pooled = (accuracy[0.0] + accuracy[6.0]) / 2
    z = (accuracy[6.0] - accuracy[0.0]) / math.sqrt(pooled * (1 - pooled) * 2 / 256)
    assert z > 2, accuracy
