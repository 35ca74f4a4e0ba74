from __future__ import annotations

import json

import pytest

from test_text_gif import gif_frames, mask_pixels
from textdiffusion.apps.cli import main
from textdiffusion.data import corpus as corpus_mod


def test_demo_trains_ar_adapts_it_animates_and_prints_both_runs(small_corpus, tmp_path, capsys):
    rd = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--steps", "20", "--data", str(small_corpus), "--run-dir", str(rd)]) == 0
    captured = capsys.readouterr()
    assert "step" in captured.err and "░" in captured.err  # the denoising animation
    assert f"runs: {rd / 'ar'} (ar), {rd / 'block'}" in captured.err
    assert "Sample (block diffusion):" in captured.out and "Sample (the ar model" in captured.out
    # 3/4 of the steps train ar; the rest adapt it, starting from its final weights
    ar_final = json.loads((rd / "ar" / "final.json").read_text())
    block_final = json.loads((rd / "block" / "final.json").read_text())
    assert ar_final["step"] == 15 and block_final["step"] == 5
    assert block_final["init_from"]["step"] == 15
    # the block run samples as the demo did: `sample` and `eval` on it get the same sampler and recipe
    config = json.loads((rd / "block" / "config.json").read_text())["config"]
    method = config["method"]
    assert (method["sampler"], method["block_size"], method["shift"], method["estimator"]) == \
        ("left_to_right", 4, True, "count")
    assert config["train"]["init_from"] == str(rd / "ar")
    # both validation numbers, the block run's exact one naming the sampler the demo drew with
    assert "validation, ar:" in captured.err and "(--sampler left_to_right)" in captured.err
    # the last line names the picture of the denoising: from all masked to the printed sample
    gif = rd / "block" / "samples" / "denoising.gif"
    assert captured.err.rstrip().splitlines()[-1] == f"the denoising: {gif}"
    pictures = gif_frames(gif)
    assert len(pictures) > 1 and len({p.shape for p in pictures}) == 1
    assert mask_pixels(pictures[0]) > 0.04 * pictures[0][..., 0].size and mask_pixels(pictures[-1]) == 0


def test_the_demo_splits_its_steps_and_refuses_too_few(capsys):
    from textdiffusion.apps.demo import demo_steps

    assert demo_steps(1500) == (1125, 375) and demo_steps(2) == (1, 1) and demo_steps(3) == (2, 1)
    assert main(["demo", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps 2 or more" in err


def test_demo_offline_says_how_to_provide_the_corpus(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path / "nothing-here"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(corpus_mod.urllib.request, "urlopen", offline)
    assert main(["demo", "--preset", "tiny", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "TEXTDIFFUSION_DATA" in err and "tinyshakespeare.txt" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--preset", "huge"]])
def test_demo_rejects_nonsense_flags(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", *bad])
    assert e.value.code == 2


def test_mnist_demo_falls_back_to_the_offline_digits(tmp_path, monkeypatch, capsys):
    from textdiffusion.data import images as images_mod

    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path / "empty"))

    def offline(url):
        raise OSError("no network")

    monkeypatch.setattr(images_mod, "_fetch", offline)
    rd = tmp_path / "mnist-demo"
    assert main(["mnist", "demo", "--preset", "tiny", "--steps", "10", "--run-dir", str(rd)]) == 0
    captured = capsys.readouterr()
    assert "offline fallback" in captured.err and "samples" in captured.out
    corpus = json.loads((rd / "config.json").read_text())["corpus"]
    assert corpus["name"] == "digits" and corpus["offline_fallback"] is True and corpus["image_size"] == 8
    for name in ("samples.png", "denoising.png", "reverse.gif"):
        assert (rd / "samples" / name).stat().st_size > 0
