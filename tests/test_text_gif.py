"""viz/text_gif.py: a text trajectory drawn as an animated GIF, checked by decoding the GIF (frames, size, the
grey of the masked positions), never by reading the letters back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.viz import TrajectoryRecorder
from textdiffusion.viz.text_gif import MASK, TextFrame, frames_of, render, save_denoising_gif


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")).astype(np.int32))
        return out


def mask_pixels(picture: np.ndarray) -> int:
    """Pixels of exactly the masked positions' grey (the caption's anti-aliased edges are never this flat
    grey over a whole block, and a block is far bigger than the stray pixels that match)."""
    return int((np.abs(picture - np.array(MASK)).sum(-1) <= 6).sum())


def recorded(text: str, order: list[int]) -> TrajectoryRecorder:
    """A trajectory that reveals ``text`` one position per step in ``order``, as a masked sampler would."""
    tok = CharTokenizer.from_text(text)
    target = torch.tensor([tok.encode(text)])
    state = torch.full_like(target, tok.mask_id)
    rec = TrajectoryRecorder(tok, keep_states=True)
    rec(0, state.clone(), {"t": 1.0})
    for step, k in enumerate(order, 1):
        state[0, k] = target[0, k]
        rec(step, state.clone(), {"t": 1 - step / len(order)})
    return rec


def test_gif_goes_from_all_masked_to_the_final_text(tmp_path):
    text = "ROMEO:\nO she doth teach the torches"
    order = list(np.random.default_rng(0).permutation(len(text)))
    frames = frames_of(recorded(text, order), max_frames=12)
    assert len(frames) == 12 and frames[0].step == 0 and frames[-1].step == len(text)
    assert len(frames[0].masked) == len(text) and not frames[-1].masked and frames[-1].text == text
    path = save_denoising_gif(frames, tmp_path / "d.gif", columns=16)
    pictures = gif_frames(path)
    expected = render(frames, columns=16)
    assert len(pictures) == 12 and all(p.shape[:2] == (expected[0].height, expected[0].width) for p in pictures)
    masked = [mask_pixels(p) for p in pictures]
    # every position starts as a grey block; the blocks go as the text appears, and none is left at the end
    assert masked[0] > 0.04 * pictures[0][..., 0].size
    assert all(a >= b for a, b in itertools.pairwise(masked)) and masked[-1] == 0
    # the last picture is the finished text as drawn, up to the GIF's palette
    final = np.asarray(expected[-1]).astype(np.int32)
    assert np.abs(pictures[-1] - final).mean() < 3


def test_masked_blocks_grow_with_the_text_and_wrap_at_the_columns():
    short = render([TextFrame(0, "_" * 40, frozenset(range(40)))], columns=40)[0]
    long = render([TextFrame(0, "_" * 120, frozenset(range(120)))], columns=40)[0]
    assert long.width == short.width and long.height > short.height  # three rows of 40, not one of 120
    assert mask_pixels(np.asarray(long).astype(np.int32)) == pytest.approx(
        3 * mask_pixels(np.asarray(short).astype(np.int32)), rel=0.02)


def test_no_frames_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="TrajectoryRecorder"):
        save_denoising_gif([], tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_sample_gif_draws_the_first_samples_denoising(small_corpus, tmp_path, capsys):
    from helpers import train_tiny
    from textdiffusion.apps.cli import main

    run = tmp_path / "run"
    train_tiny("masked", small_corpus, run, steps=2)
    gif = tmp_path / "d.gif"
    assert main(["sample", str(run), "--n", "2", "--steps", "6", "--prompt", "RO", "--gif", str(gif),
                 "--no-progress"]) == 0
    assert f"the denoising: {gif}" in capsys.readouterr().err
    pictures = gif_frames(gif)
    masked = [mask_pixels(p) for p in pictures]
    assert len(pictures) == 7 and masked[0] > 0 and masked[-1] == 0  # the start and the 6 steps
    # more samples than one batch holds cannot be recorded: refused before the run is sampled
    assert main(["sample", str(run), "--n", "100000", "--gif", str(tmp_path / "e.gif")]) == 2
    assert "use --n <=" in capsys.readouterr().err and not (tmp_path / "e.gif").exists()
