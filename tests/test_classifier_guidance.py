"""Classifier guidance without retraining (issue 17): the noisy speaker classifier, its cache, and the three rules
(Taylor-approximated discrete guidance for masked, FUDGE for ar, Diffusion-LM's gradient steps for embedding)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import train_tiny
from textdiffusion.api import load
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError
from textdiffusion.guidance.classifier import CLASSIFIER_DIR, META_FILE, WEIGHTS_FILE, ClassifierRecipe, classifier_for
from textdiffusion.nn.text_classifier import ConvTextClassifier

METHODS = ("masked", "block", "ar", "embedding")
RECIPE = ClassifierRecipe(steps=100, batch_size=32, top=4)


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory, shakespeare):
    """Tiny runs trained *without* labels on a quarter of Tiny Shakespeare, each with its speaker classifier."""
    root = tmp_path_factory.mktemp("plain")
    corpus = root / "plays.txt"
    corpus.write_text(shakespeare[: len(shakespeare) // 4], encoding="utf-8")
    for method in METHODS:
        train_tiny(method, corpus, root / method, steps=30)
    return root


def _model(root, method):
    model = load(root / method, device="cpu")
    model.text_method.use_classifier(classifier_for(model.run, RECIPE, progress=False))
    return model


def test_token_classifier_reads_one_hot_rows_as_ids_and_causal_extension_is_exact():
    torch.manual_seed(0)
    x = torch.randint(0, 30, (3, 21))
    both = ConvTextClassifier(5, vocab_size=30)
    assert torch.allclose(both(x), both(torch.nn.functional.one_hot(x, 30).float()), atol=1e-5)
    causal = ConvTextClassifier(5, vocab_size=30, causal=True)
    full = causal(x)
    assert full.shape == (3, 21, 5)
    # a prefix's output depends on the prefix only, and FUDGE's running-sum extension reproduces it
    assert torch.allclose(causal(x[:, :7]), full[:, :7], atol=1e-5)
    r = causal.receptive_field
    for length in (1, 4, r, 21):
        total = causal.features(x[:, :length - 1]).sum(1) if length > 1 else torch.zeros(3, 256)
        step = causal.extend(x[:, max(0, length - r):length], total, length - 1)
        assert torch.allclose(step, full[:, length - 1], atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_scale_zero_is_the_unconditional_sampler_and_guidance_changes_the_samples(plain_runs, method):
    model = _model(plain_runs, method)
    plain = model.generate(n=4, length=24, seed=3, progress=False)
    zero = model.sample(n=4, length=24, seed=3, label="menenius", guidance=0, rule="classifier", progress=False)
    assert zero.texts == plain
    steered = model.sample(n=4, length=24, seed=3, label="MENENIUS", guidance=40, rule="classifier", progress=False)
    assert steered.texts != plain
    assert steered.sampler is not None and len(steered.texts) == 4


def _judged(model, texts, label):
    """The classifier's mean log p(label | clean text) (at the last prefix for a causal classifier)."""
    method, clf = model.text_method, model.text_method.classifier
    ids = torch.tensor([model.tokenizer.encode(t) for t in texts])
    if method.classifier_rule == "gradient":  # latents of the clean tokens, at the smallest noise level
        with torch.no_grad():
            x0 = model.run.model.table()[ids].float()
        logp = clf.log_prob(x0, label, torch.full((len(ids),), 1e-3))
    else:
        logp = clf.log_prob(ids, label)
    return float((logp[:, -1] if logp.dim() == 2 else logp).mean())


@pytest.mark.parametrize("method", METHODS)
def test_guidance_moves_samples_toward_what_the_classifier_calls_the_speaker(plain_runs, method):
    """Each rule must raise the classifier's belief in the requested speaker over the unguided samples of the same
    seed, for each of two speakers: a sampler that ignored the classifier draws the same texts (a gain of exactly
    0) and one that followed it the wrong way loses. (The sizes differ: on these 30-step runs with a 100-step
    classifier, ar and embedding gain 0.04-0.3 nats at w = 20, masked and block 0.006-0.02.)"""
    model = _model(plain_runs, method)
    names = model.text_method.classifier.names
    gains = []
    for label in range(2):
        base = model.generate(n=24, length=32, seed=5, progress=False)
        steered = model.generate(n=24, length=32, seed=5, label=names[label], guidance=20, rule="classifier",
                                 progress=False)
        gains.append(_judged(model, steered, label) - _judged(model, base, label))
    assert min(gains) > 0, gains


def test_classifier_is_cached_per_checkpoint_and_recipe_and_a_corrupt_cache_is_retrained(plain_runs, capsys):
    model = load(plain_runs / "masked", device="cpu")
    first = classifier_for(model.run, RECIPE, progress=False)
    folder = plain_runs / "masked" / CLASSIFIER_DIR
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["run_step"] == model.step and meta["recipe"]["steps"] == RECIPE.steps
    assert 0.0 <= meta["held_out_accuracy"] <= 1.0 and meta["speakers"] == list(first.names)
    again = classifier_for(model.run, RECIPE, progress=False)
    assert again.meta == first.meta  # read back, not retrained (the training time would differ)
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    classifier_for(model.run, RECIPE, progress=False)
    assert "retraining the speaker classifier" in capsys.readouterr().err
    assert json.loads((folder / META_FILE).read_text())["run_step"] == model.step


@pytest.mark.parametrize("request_, match", [
    ({"rule": "classifier"}, "give --label NAME"),
    ({"rule": "nonsense", "label": "MENENIUS"}, "unknown guidance rule 'nonsense'"),
    ({"rule": "classifier", "label": "HAMLET"}, "not one of the speaker classifier's 4 speakers"),
    ({"label": "MENENIUS", "guidance": 2}, "--guidance-rule classifier"),
])
def test_bad_requests_are_one_line_errors(plain_runs, request_, match):
    model = _model(plain_runs, "masked")
    with pytest.raises(ConfigError, match=match) as err:
        model.generate(n=1, length=8, progress=False, **request_)
    assert "\n" not in str(err.value)


def test_a_corpus_without_speakers_cannot_have_a_speaker_classifier(tmp_path):
    prose = tmp_path / "prose.txt"
    prose.write_text("no speakers here, only prose.\n" * 400, encoding="utf-8")
    train_tiny("masked", prose, tmp_path / "run", steps=2)
    model = load(tmp_path / "run", device="cpu")
    with pytest.raises(DataError, match="no speeches with speaker headers"):
        classifier_for(model.run, RECIPE, progress=False)


def test_cli_guidance_rule(plain_runs, capsys):
    from textdiffusion.apps.cli import main

    _model(plain_runs, "masked")  # the cached classifier the command reuses (any recipe, this checkpoint)
    code = main(["sample", str(plain_runs / "masked"), "--label", "MENENIUS", "--guidance", "0", "--guidance-rule",
                 "classifier", "--length", "16", "--seed", "2", "--no-progress"])
    steered = capsys.readouterr().out
    main(["sample", str(plain_runs / "masked"), "--length", "16", "--seed", "2", "--no-progress"])
    assert code == 0 and steered == capsys.readouterr().out  # scale 0 prints the unguided text
    with pytest.raises(SystemExit):
        main(["sample", str(plain_runs / "masked"), "--label", "MENENIUS", "--guidance-rule", "bayes"])


def test_the_model_trains_its_classifier_on_first_use_and_says_so(plain_runs, capsys):
    """(Last: it replaces the ar run's cached classifier.)"""
    import shutil

    shutil.rmtree(plain_runs / "ar" / CLASSIFIER_DIR, ignore_errors=True)
    model = load(plain_runs / "ar", device="cpu")
    clf = model.classifier(steps=5)
    assert "training the speaker classifier for classifier guidance (5 steps" in capsys.readouterr().err
    assert model.text_method.classifier is clf and clf.rule == "fudge"
    assert model.classifier().meta == clf.meta  # no recipe asked: the cached one serves
    assert "training" not in capsys.readouterr().err


def test_compare_draws_a_classifier_curve_for_a_run_with_a_cached_classifier(plain_runs, tmp_path):
    from textdiffusion.apps.compare import compare_runs

    _model(plain_runs, "masked")  # caches the classifier; the ar run below has none for its checkpoint
    (plain_runs / "embedding" / CLASSIFIER_DIR / META_FILE).unlink(missing_ok=True)
    compare_runs([str(plain_runs / "masked"), str(plain_runs / "embedding")], tmp_path, samples=4, sweep="",
                 guidance="0,4", progress=False)
    runs = json.loads((tmp_path / "comparison.json").read_text())["runs"]
    (curve,) = runs[0]["guidance"]
    assert curve["rule"] == "classifier" and len(curve["labels"]) == 4
    assert [p["w"] for p in curve["points"]] == [0.0, 4.0]
    assert all(p["rule"] == "classifier" and p["samples"] == 4 for p in curve["points"])
    assert not runs[1].get("guidance")  # no classifier, no curve: compare trains none
