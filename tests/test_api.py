"""The Python API (``textdiffusion.load`` / ``train``, TextModel, ImageModel): what it returns, that it gives
exactly what the command line gives for a seed, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import textdiffusion
from textdiffusion import CheckpointError, ConfigError, DataError, ImageModel, TextModel
from textdiffusion.apps.cli import main

REPO = Path(__file__).resolve().parents[1]
OLD_RUNS = Path(__file__).resolve().parent / "data" / "runs-0.1.0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare) -> Path:
    """Tiny ar and masked runs trained through ``textdiffusion.train`` (settings in both keyword forms)."""
    root = tmp_path_factory.mktemp("api")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    for method in ("ar", "masked"):
        model = textdiffusion.train(method=method, preset="tiny", steps=30, data=corpus, seed=3,
                                    run_dir=root / method, progress=False, train={"eval_every": 15},
                                    **{"train.lr": 2e-3})
        assert isinstance(model, TextModel) and model.step == 30 and model.summary.step == 30
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A tiny class-conditional image run on scikit-learn's offline 8x8 digits."""
    rd = tmp_path_factory.mktemp("api-image") / "image"
    model = textdiffusion.train(method="image", preset="tiny", data="digits", steps=4, run_dir=rd, progress=False,
                                train={"eval_every": 4})
    assert isinstance(model, ImageModel) and model.conditional and model.classes == 10 and model.image_size == 8
    return rd


def _cli_texts(capsys, argv: list[str]) -> tuple[list[str], str]:
    assert main(argv) == 0
    captured = capsys.readouterr()
    return captured.out.rstrip("\n").split("\n" + "=" * 40 + "\n"), captured.err


# ---- the package -------------------------------------------------------------------------------------------
def test_import_is_light_and_exports_resolve():
    code = "import sys, textdiffusion\nprint('torch' in sys.modules, textdiffusion.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", textdiffusion.__version__]
    for name in textdiffusion.__all__:
        assert getattr(textdiffusion, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        textdiffusion.nope  # noqa: B018


def test_train_is_the_api_function_whatever_was_imported_first():
    code = ("from textdiffusion.trainer import Trainer\nimport textdiffusion\n"
            "from textdiffusion.api import train\n"
            "print(textdiffusion.train is train, 'torch' in __import__('sys').modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]


# ---- text: the same texts as the command line and as 0.1.0 -------------------------------------------------
def test_generate_gives_the_cli_texts(runs, capsys):
    model = textdiffusion.load(runs / "masked", device="cpu")
    args = ["--n", "3", "--prompt", "KING", "--length", "20", "--sampler", "topk", "--steps", "5",
            "--temperature", "0.8", "--seed", "4"]
    cli, err = _cli_texts(capsys, ["sample", str(runs / "masked"), *args])
    api = model.generate(prompt="KING", n=3, length=20, sampler="topk", steps=5, temperature=0.8, seed=4)
    assert api == cli and all(t.startswith("KING") and len(t) == 20 for t in api)
    assert "3 x 20 chars, sampler topk, 5 network evaluations per sample" in err
    ar = textdiffusion.load(runs / "ar", device="cpu")
    cli, _ = _cli_texts(capsys, ["sample", str(runs / "ar"), "--prompt", "First", "--length", "40", "--top-p",
                                 "0.9", "--seed", "2"])
    assert ar.generate(prompt="First", length=40, top_p=0.9, seed=2) == cli
    assert ar.generate(prompt="First", length=40, top_p=0.9, seed=3) != cli  # the seed decides


def test_generate_gives_what_0_1_0_gave():
    expected = json.loads((OLD_RUNS / "samples.json").read_text())
    for method, sampler, steps in (("ar", "", 0), ("masked", "confidence", 6), ("embedding", "ddim", 6),
                                   ("bits", "ddpm", 6)):
        model = textdiffusion.load(OLD_RUNS / method, device="cpu")
        assert model.generate(n=2, length=24, sampler=sampler, steps=steps, seed=11) == expected[method], method
    images = textdiffusion.load(OLD_RUNS / "image", device="cpu").generate(digits=[1, 2, 3], sampler="ddim",
                                                                            steps=5, guidance=2.0, seed=11)
    assert hashlib.sha256(images.pixels.tobytes()).hexdigest() == expected["image"]


def test_sample_says_how_the_texts_were_made(runs):
    model = textdiffusion.load(runs / "masked", device="cpu")
    res = model.sample("RO", n=2, length=12, steps=4, seed=1)
    assert res.texts == model.generate("RO", n=2, length=12, steps=4, seed=1)
    assert (res.sampler, res.steps, res.nfe, res.length, res.fixed, res.seed) == ("ancestral", 4, 4.0, 12, [0, 1], 1)
    seen = []
    model.sample("RO", length=12, steps=4, on_step=lambda step, ids, info: seen.append((step, tuple(ids.shape))))
    assert seen == [(i, (1, 12)) for i in range(5)]


def test_plan_checks_without_sampling(runs):
    model = textdiffusion.load(runs / "masked", device="cpu")
    plan = model.plan(infill="ab__c", n=3)
    assert (plan.length, plan.sampler, plan.batches, plan.request.n) == (5, model.default_sampler, 1, 3)
    assert model.plan(length=16, steps=7).steps == 7 and model.plan(length=16).steps == model.plan().steps // 2
    ar = textdiffusion.load(runs / "ar", device="cpu")
    assert ar.plan(length=300).steps is None  # one evaluation per token, past the context


def test_one_options_object_is_the_keywords(runs):
    model = textdiffusion.load(runs / "masked", device="cpu")
    opts = textdiffusion.TextOptions(n=2, length=12, steps=4, seed=1)
    by_keywords = model.generate("RO", n=2, length=12, steps=4, seed=1)
    assert model.generate("RO", options=opts) == by_keywords
    assert model.sample("RO", options=opts).texts == by_keywords
    assert model.generate("RO", options=opts, seed=2) == model.generate("RO", n=2, length=12, steps=4, seed=2)
    assert model.plan("RO", options=opts, steps=3).steps == 3 and model.plan("RO", options=opts).request.n == 2
    with model.stream("RO", options=opts) as stream:
        frames = list(stream)
    assert frames[-1].texts == by_keywords
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.n = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="options must be a TextOptions, got dict"):
        model.generate("RO", options={"n": 2})


def test_plan_trains_no_classifier_and_says_what_the_sampling_will(runs, tmp_path, capsys):
    from textdiffusion.guidance.classifier import CLASSIFIER_DIR, ClassifierRecipe, classifier_for

    run = tmp_path / "masked"
    shutil.copytree(runs / "masked", run)
    model = textdiffusion.load(run, device="cpu")
    request = {"rule": "classifier", "label": "MENENIUS", "length": 8, "seed": 4}
    assert model.plan(**request).classifier == "train"
    assert not (run / CLASSIFIER_DIR).exists() and model.text_method.classifier is None
    assert model.plan(length=8).classifier == ""

    quick = ClassifierRecipe(steps=3, batch_size=8, top=4)
    model.classifier = lambda progress=True: TextModel.classifier(model, steps=quick.steps, progress=progress)
    first = model.sample(**request, progress=False)  # the sampling trains it, then checks the label against it
    assert (run / CLASSIFIER_DIR).exists() and model.text_method.classifier is not None

    again = textdiffusion.load(run, device="cpu")  # a cached classifier is read by the plan, never retrained
    classifier_for(again.run, quick, progress=False)  # (the cache holds the quick recipe's)
    again = textdiffusion.load(run, device="cpu")
    capsys.readouterr()
    assert again.plan(**request).classifier == "ready"
    assert "training" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not one of the speaker classifier's"):
        again.plan(rule="classifier", label="NOBODY AT ALL", length=8)
    assert len(first.texts) == 1


def test_infill_fills_the_blanks_only(runs):
    model = textdiffusion.load(runs / "masked", device="cpu")
    filled = model.infill("ROMEO:\nO ____ art thou", n=2, steps=4, seed=5)
    assert len(filled) == 2 and all(t.startswith("ROMEO:\nO ") and t.endswith(" art thou") for t in filled)
    assert model.infill("a**b", placeholder="*", seed=5) == model.sample(infill="a**b", placeholder="*",
                                                                       seed=5).texts
    with pytest.raises(ConfigError, match="only continues a prompt"):
        textdiffusion.load(runs / "ar", device="cpu").infill("ROMEO: ____")


def test_load_takes_sampling_options_as_keywords_or_set_strings(runs):
    by_keyword = textdiffusion.load(runs / "masked", device="cpu", temperature=0.5, sample_steps=3)
    by_string = textdiffusion.load(runs / "masked", device="cpu",
                                   overrides=["method.temperature=0.5", "method.sample_steps=3"])
    assert by_keyword.config.method.temperature == 0.5 and by_keyword.plan().steps == 3
    assert by_keyword.generate(n=2, seed=1) == by_string.generate(n=2, seed=1)
    assert by_keyword.generate(n=2, seed=1) != textdiffusion.load(runs / "masked", device="cpu").generate(n=2, seed=1)
    with pytest.raises(ConfigError, match="can only change its sampling options"):
        textdiffusion.load(runs / "masked", schedule="linear")
    model = textdiffusion.load(runs / "masked", device="cpu", weights="model")
    assert model.weights == "model" and model.device.type == "cpu" and model.method == "masked"
    assert model.samplers[0] == "ancestral" and model.context == 32 and model.supports_infill
    assert model.parameters > 0 and model.tokenizer.kind == "char" and model.likelihood_kind == "bound"
    assert "TextModel(masked, step 30" in repr(model)


# ---- streaming ---------------------------------------------------------------------------------------------
def test_stream_yields_every_step_and_ends_in_the_sampled_texts(runs):
    model = textdiffusion.load(runs / "masked", device="cpu")
    stream = model.stream("RO", n=2, length=10, steps=4, seed=9)
    frames = list(stream)
    assert [f.step for f in frames] == [0, 1, 2, 3, 4] and [f.t for f in frames] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert frames[0].texts == ["RO________"] * 2 and frames[0].masked == [list(range(2, 10))] * 2
    assert frames[-1].masked == [[], []] and frames[-1].texts == stream.result.texts
    assert [sum(f.changed[i] for f in frames) for i in range(2)] == [8, 8]  # each blank written once
    assert stream.result.texts == model.generate("RO", n=2, length=10, steps=4, seed=9)
    assert frames[-1].text == frames[-1].texts[0] and stream.frames == 5
    # a sampler that reports no initial state still starts with it, at t = 1
    emb = textdiffusion.load(OLD_RUNS / "embedding", device="cpu")
    frames = list(emb.stream(infill="a__b", steps=3, seed=1, mask_char="?"))
    assert (frames[0].step, frames[0].t, frames[0].nfe, frames[0].text) == (0, 1.0, 0, "a??b")
    assert len(frames) == 4 and frames[-1].text == emb.infill("a__b", steps=3, seed=1)[0]
    with pytest.raises(ConfigError, match="read once"):
        iter(stream).__next__()


def test_stopping_a_stream_stops_its_sampler(runs):
    model = textdiffusion.load(runs / "ar", device="cpu")
    with model.stream("F", length=200, seed=1) as stream:
        for frame in stream:
            assert frame.step == 0
            break
    assert stream.result is None
    assert not [t for t in threading.enumerate() if t.name == "textdiffusion-stream"]
    with pytest.raises(ConfigError, match="one batch"):
        model.stream(n=10**6)


# ---- likelihood and evaluation -----------------------------------------------------------------------------
def test_score_is_labelled_and_deterministic(runs, shakespeare):
    ar = textdiffusion.load(runs / "ar", device="cpu")
    text = shakespeare[100_000:100_100]  # 100 characters: three windows of 32 and a rest of 4
    score = ar.score(text)
    assert score.kind == "exact" and score.label == "exact" and (score.chars, score.windows) == (100, 4)
    assert 0 < score.bits_per_char < 8 and score == ar.score(text)
    assert str(score).endswith("bits/char (exact, 100 chars)")
    masked = textdiffusion.load(runs / "masked", device="cpu").score(text)
    assert masked.kind == "bound" and "upper bound" in str(masked)
    assert masked.nats_per_char == pytest.approx(masked.bits_per_char * 0.6931471805599453)
    with pytest.raises(DataError, match="never seen"):
        ar.score("Ω")
    with pytest.raises(ConfigError, match="non-empty"):
        ar.score("")


def test_block_scores_whole_blocks_only():
    from textdiffusion.data.tokenizer import CharTokenizer
    from textdiffusion.methods.configs import make_config
    from textdiffusion.runs import build

    method, _ = build(make_config("block", "tiny", ["method.block_size=4"]), CharTokenizer.from_text("abc"))
    method.check_score_window(8)
    with pytest.raises(ConfigError, match="whole blocks of 4 tokens"):
        method.check_score_window(6)


def test_evaluate_gives_what_the_eval_command_writes(runs, capsys):
    model = textdiffusion.load(runs / "ar", device="cpu")
    api = model.evaluate(samples=4, val_windows=8, seed=1)
    assert main(["eval", str(runs / "ar"), "--samples", "4", "--val-windows", "8", "--seed", "1"]) == 0
    capsys.readouterr()
    cli = json.loads((runs / "ar" / "eval.json").read_text())
    assert api.to_json() == {**cli, "speed": api.to_json()["speed"]}  # the same record, but for its timing
    assert api.val.kind == "exact" and api.samples.n == 4
    with pytest.raises(ConfigError, match="scores the EMA weights"):
        textdiffusion.load(runs / "ar", device="cpu", weights="model").evaluate(samples=4)


# ---- images ------------------------------------------------------------------------------------------------
def test_image_generate_returns_pixels_and_pillow_images(image_run):
    model = textdiffusion.load(image_run, device="cpu")
    assert isinstance(model, ImageModel)
    chosen = model.generate(digits=[3, 1, 4], sampler="ddim", steps=3, seed=2)
    assert chosen.pixels.shape == (3, 8, 8) and chosen.pixels.dtype == np.uint8 and chosen.labels == [3, 1, 4]
    assert (chosen.sampler, chosen.steps, len(chosen), chosen[0].shape) == ("ddim", 3, 3, (8, 8))
    same = model.generate(digits=[3, 1, 4], sampler="ddim", steps=3, seed=2)
    assert np.array_equal(same.pixels, chosen.pixels)  # the seed decides
    sevens = model.generate(digits=7, n=5, sampler="ddim", steps=2)
    assert sevens.labels == [7] * 5 and len(sevens) == 5
    balanced = model.generate(sampler="ddim", steps=2)
    assert balanced.labels == list(range(10))
    pictures = balanced.pil()
    assert len(pictures) == 10 and pictures[0].size == (8, 8) and pictures[0].mode == "L"
    assert balanced.grid(scale=2).size == (2 * (10 * 10 + 2), 2 * (10 + 2))


def test_image_generate_draws_what_mnist_sample_draws(image_run):
    from textdiffusion.apps.mnist import _draw_layout, _layout
    from textdiffusion.data.images import to_pixels

    model = textdiffusion.load(image_run, device="cpu")
    layout = _layout(model.image_method, 20, None, 10)  # mnist sample's digit-major labels, two per digit
    drawn, _, _ = _draw_layout(model.run, layout, torch.Generator().manual_seed(5), False, sampler="ddpm",
                               steps=4, eta=None, guidance=2.0)
    api = model.generate(digits=layout.labels, sampler="ddpm", steps=4, guidance=2.0, seed=5)
    assert np.array_equal(api.pixels, to_pixels(drawn).numpy()) and api.guidance == 2.0 and api.nfe == 8.0


def test_image_stream_ends_in_the_generated_images(image_run):
    model = textdiffusion.load(image_run, device="cpu")
    stream = model.stream(digits=[0, 9], sampler="ddim", steps=3, seed=4)
    frames = list(stream)
    assert [f.step for f in frames] == [0, 1, 2, 3] and frames[0].t == 1.0
    assert frames[0].images.shape == (2, 8, 8) and frames[-1].predicted.dtype == np.uint8
    drawn = model.generate(digits=[0, 9], sampler="ddim", steps=3, seed=4)
    assert np.array_equal(stream.result.pixels, drawn.pixels) and stream.result.labels == [0, 9]


def test_image_evaluate_gives_the_mnist_eval_numbers(image_run, tmp_path, monkeypatch):
    from textdiffusion.data.images import load_images
    from textdiffusion.image_evaluation import _data_key, evaluate_images
    from textdiffusion.image_metrics import classifier_for, train_classifier

    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path))  # a quick classifier, so nothing trains for minutes
    data = load_images("digits")
    quick = lambda: train_classifier(data.x_train, data.y_train, data.x_test, data.y_test,  # noqa: E731
                                     steps=10, batch_size=64, progress=False)
    classifier_for(_data_key(data), quick, tmp_path / "classifiers", {"note": "test"})
    model = textdiffusion.load(image_run, device="cpu")
    api = model.evaluate(samples=20, sampler="ddim", steps=3, progress=False)
    cli = evaluate_images(image_run, samples=20, sampler="ddim", steps=3, progress=False)
    assert (api.fid, api.class_accuracy, api.samples) == (cli.fid, cli.class_accuracy, 20)
    assert json.loads((image_run / "eval.json").read_text()) == cli.to_json()  # the record is the file


# ---- training ----------------------------------------------------------------------------------------------
def test_train_records_its_settings_and_returns_the_model(runs):
    cfg = json.loads((runs / "masked" / "config.json").read_text())
    assert cfg["config"]["train"]["eval_every"] == 15 and cfg["config"]["train"]["lr"] == 2e-3
    assert cfg["seed"] == 3 and cfg["config"]["train"]["steps"] == 30


def test_an_interrupted_training_raises_with_the_call_that_resumes(monkeypatch, tmp_path):
    import textdiffusion.trainer as train_module
    from textdiffusion.records import TrainSummary

    monkeypatch.setattr(train_module, "run_training", lambda cfg, rd, progress: TrainSummary(
        str(rd), step=7, steps=60, elapsed=1.0, interrupted=True, out_of_time=False, rate=10.0, unit="chars"))
    with pytest.raises(KeyboardInterrupt, match=r"step 7 of 60 .*if_exists='resume'\) continues it") as e:
        textdiffusion.train(method="masked", preset="tiny", run_dir=tmp_path / "r")
    assert "--resume" not in str(e.value)


def _quick(corpus: Path, run_dir: Path, **kw):
    """A 4-step tiny run: enough for a checkpoint and a final score, in a second or two."""
    return textdiffusion.train(method="ar", preset="tiny", data=corpus, run_dir=run_dir, progress=False,
                               **{"steps": 4, "train.eval_every": 2, "train.final_eval_windows": 4, **kw})


def test_train_on_an_existing_run_refuses_resumes_or_replaces(small_corpus, tmp_path):
    run = tmp_path / "r"
    first = _quick(small_corpus, run)
    run_id = json.loads((run / "config.json").read_text())["run_id"]
    with pytest.raises(ConfigError) as e:  # the default: refuse, the Python way
        _quick(small_corpus, run)
    _one_line(e, "already holds a run", "if_exists='resume'", "if_exists='replace'")
    assert "--" not in str(e.value)
    # resume: a finished run is loaded as it is, nothing is trained or written
    stamp = (run / "checkpoint.safetensors").stat().st_mtime_ns
    again = _quick(small_corpus, run, if_exists="resume")
    assert again.step == 4 and again.summary.score == first.summary.score
    assert (run / "checkpoint.safetensors").stat().st_mtime_ns == stamp
    # resume with more steps continues the run; with other settings it is refused
    longer = _quick(small_corpus, run, if_exists="resume", steps=6)
    assert longer.step == 6 and longer.summary.step == 6
    assert json.loads((run / "config.json").read_text())["run_id"] == run_id
    with pytest.raises(ConfigError) as e:
        _quick(small_corpus, run, if_exists="resume", steps=6, train={"lr": 1e-2})
    _one_line(e, "other settings", "train.lr", "if_exists='replace'")
    with pytest.raises(ConfigError) as e:
        _quick(small_corpus, run, if_exists="resume", steps=5)
    _one_line(e, "already at step 6, past steps=5")
    # replace: a new run in its place
    fresh = _quick(small_corpus, run, if_exists="replace")
    assert fresh.step == 4 and json.loads((run / "config.json").read_text())["run_id"] != run_id


def test_replace_deletes_nothing_but_a_run(small_corpus, tmp_path):
    from textdiffusion.run_lock import RunLock

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for how in ("error", "resume", "replace"):
        with pytest.raises(ConfigError) as e:
            _quick(small_corpus, folder, if_exists=how)
        _one_line(e, "is not empty (notes.txt) and holds no run", "deletes nothing but a run")
    (folder / "config.json").write_text('{"not": "a run"}')
    for how in ("resume", "replace"):
        with pytest.raises(ConfigError) as e:
            _quick(small_corpus, folder, if_exists=how)
        _one_line(e, "config.json that textdiffusion did not write")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "notes.txt"]
    run = tmp_path / "r"
    _quick(small_corpus, run)
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(ConfigError) as e:
        _quick(small_corpus, link, if_exists="replace")
    _one_line(e, "is a symbolic link")
    with RunLock(run):  # a run being trained elsewhere is neither continued nor replaced
        for how in ("resume", "replace"):
            with pytest.raises(ConfigError) as e:
                _quick(small_corpus, run, if_exists=how)
            _one_line(e, "being trained by another process")
    assert (run / "checkpoint.safetensors").is_file()
    with pytest.raises(ConfigError) as e:
        _quick(small_corpus, run, if_exists="overwrite")
    _one_line(e, "if_exists must be 'error', 'resume' or 'replace'")


# ---- bad input: one line each ------------------------------------------------------------------------------
def _one_line(excinfo: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


def test_bad_input_is_one_line(runs, image_run, tmp_path):
    with pytest.raises(CheckpointError) as e:
        textdiffusion.load(tmp_path / "no-such-run")
    _one_line(e, "does not exist")
    image = textdiffusion.load(image_run, device="cpu")
    with pytest.raises(ConfigError) as e:
        image.generate(prompt="ROMEO:")
    _one_line(e, "prompt= does not apply", "an image run", "digits=")
    masked = textdiffusion.load(runs / "masked", device="cpu")
    with pytest.raises(ConfigError) as e:
        masked.generate(digits=[1])
    _one_line(e, "digits= does not apply", "a text run")
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        masked.generate(temprature=0.5)
    with pytest.raises(ConfigError) as e:
        textdiffusion.load(runs / "ar", device="cpu").stream(infill="a_b")
    _one_line(e, "only continues a prompt")
    cases = [
        (lambda: masked.generate(sampler="beam"), ["no sampler 'beam'", "ancestral"]),
        (lambda: masked.generate(n=0), ["n must be a whole number"]),
        (lambda: masked.generate(n=True), ["n must be a whole number"]),
        (lambda: masked.generate(temperature=0), ["temperature must be a number from 0.0001"]),
        (lambda: masked.generate(seed=-1), ["seed must be a whole number"]),
        (lambda: masked.generate(length=10**6), ["--length 1000000 is more than 100,000 tokens"]),
        (lambda: masked.generate(length=999, overlap=32), ["--overlap 32 must be between 1 and 31"]),
        (lambda: masked.generate(prompt="Ω"), ["never seen"]),
        (lambda: masked.generate(n=10**7), ["n 10000000 is more than 1,000,000"]),
        (lambda: masked.infill("no blanks"), ["placeholders"]),
        (lambda: masked.stream(mask_char="ab"), ["one character"]),
        (lambda: textdiffusion.load(runs / "masked", device="nope"), ["unknown device 'nope'"]),
        (lambda: textdiffusion.load(runs / "masked", weights="best"), ["'ema' or 'model'"]),
        (lambda: image.generate(digits=[1, 2], n=3), ["2 digits but n=3"]),
        (lambda: image.generate(digits=[12]), ["digit 12 is not a class"]),
        (lambda: image.generate(sampler="euler"), ["no sampler 'euler'"]),
        (lambda: image.generate(eta=2.0), ["eta must be a number from 0 to 1"]),
        (lambda: textdiffusion.train(method="masked", preset="tiny", lr=1e-3), ["train={'lr': 2e-3}"]),
        (lambda: textdiffusion.train(method="nope", preset="tiny"), ["unknown method 'nope'"]),
        (lambda: textdiffusion.train(method="masked", preset="tiny", model={"n_layers": 2}),
         ["unknown field 'n_layers'"]),
    ]
    for call, parts in cases:
        with pytest.raises((ConfigError, DataError, CheckpointError)) as e:
            call()
        _one_line(e, *parts)


# ---- the README's example ----------------------------------------------------------------------------------
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, shakespeare, capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## From Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert code.count("\n") <= 8 and 'preset="tiny"' in code  # short, and seconds to run
    monkeypatch.chdir(tmp_path)  # the example writes runs/quick here
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("['ROMEO:") and "art thou" in printed[-2] and "bits/char (upper bound" in printed[-1]
    exec(compile(code, "README.md", "exec"), {})  # a second run of the script loads the run and prints the same
    assert capsys.readouterr().out.splitlines() == printed
    assert (tmp_path / "runs" / "quick" / "final.json").exists()
    shutil.rmtree(tmp_path / "runs")
