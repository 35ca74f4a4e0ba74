"""``textdiffusion demo``: the two-minute tour on a CPU.

At the budget a laptop has, a diffusion model trained from scratch writes character soup; the cheapest recipe
that makes it write words is to train an autoregressive model for most of the budget and then turn it into a
block-diffusion model (the recipe search in docs/adaptation.md). So the demo trains ``ar`` on Tiny Shakespeare
at the ``cpu`` preset, adapts it to ``block`` (``train.init_from``), animates one sample being denoised, leaves
that denoising as a GIF in the run directory (a terminal animation is gone once it scrolls away; a picture can
be opened, shared and put in a page), prints the ``ar`` model's sample beside the diffusion model's, and
prints where both runs live with the next commands to try.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError, resolve_corpus
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config
from textdiffusion.records import TrainSummary
from textdiffusion.runs import open_run
from textdiffusion.trainer import run_training
from textdiffusion.viz import TerminalAnimation, TrajectoryRecorder
from textdiffusion.viz.text_gif import frames_of, save_denoising_gif

DEMO_STEPS = 1500
# The share of the training steps spent on the autoregressive start; the rest adapts it to block diffusion.
AR_SHARE = 0.75
# How the demo adapts and samples, recorded in the block run's config so that `sample` and `eval` on it do the
# same (measured by benchmarks/demo_recipe.py, BENCHMARKS.md): blocks of 4 characters, the mask count drawn
# uniformly (the count estimator), the network's input moved one place as ar's was (the shift), and one
# character revealed per step, left to right inside each block: the sampler whose likelihood is exact.
DEMO_RECIPE = ("method.block_size=4", "method.estimator=count", "method.shift=true")
DEMO_SAMPLING = ("method.sampler=left_to_right",)
# a quicker final score than the full split (the demo is a tour; `textdiffusion eval` gives the full one)
DEMO_SCORE = ("train.final_eval_windows=256",)


def demo_steps(total: int) -> tuple[int, int]:
    """``total`` training steps -> (the ar run's, the adaptation's); each gets at least one."""
    if total < 2:
        raise ConfigError(f"the demo trains two runs (ar, then block from it) and needs --steps 2 or more, "
                          f"got {total}")
    ar_steps = min(total - 1, max(1, round(total * AR_SHARE)))
    return ar_steps, total - ar_steps


def run_demo(steps: int | None = None, data: str = "tinyshakespeare", run_dir: str | None = None,
             preset: str = "cpu") -> int:
    ar_steps, block_steps = demo_steps(steps or DEMO_STEPS)
    try:
        resolve_corpus(data)
    except DataError as e:
        raise DataError(f"the demo needs its corpus: {e}") from None
    root = Path(run_dir) if run_dir else Path("runs") / f"demo-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    ar_dir, rd = root / "ar", root / "block"
    corpus = (f"data.corpus={data}",)
    ar_cfg = make_config("ar", preset, [*corpus, f"train.steps={ar_steps}", *DEMO_SCORE])
    print(f"1/2  Training an autoregressive model (ar: {ar_cfg.model.n_layer} layers, width {ar_cfg.model.n_embd}) "
          f"on {data} for {ar_steps} steps: diffusion models here learn fastest from its weights. Ctrl-C stops "
          f"early and keeps the checkpoint.", file=sys.stderr)
    ar_summary = run_training(ar_cfg, ar_dir)
    if ar_summary.interrupted:
        return _stopped(ar_dir)
    cfg = make_config("block", preset, [*corpus, f"train.steps={block_steps}", f"train.init_from={ar_dir}",
                                        *DEMO_RECIPE, *DEMO_SAMPLING, *DEMO_SCORE])
    print(f"\n2/2  Turning it into a block-diffusion model for {block_steps} steps (train --init-from): each block "
          f"of {cfg.method.block_size} characters is denoised from all masks, blocks left to right.",
          file=sys.stderr)
    summary = run_training(cfg, rd)
    if summary.interrupted:
        return _stopped(rd)
    run = open_run(rd)
    print(f"\nDenoising one window, one character per step, left to right inside each block of "
          f"{cfg.method.block_size}; every position starts masked (░):\n", file=sys.stderr)
    gen = torch.Generator(device=run.device).manual_seed(0)
    req = SampleRequest(n=1, **run.method.decoding())
    animation = TerminalAnimation(run.tokenizer, delay=0.02)
    recorder = TrajectoryRecorder(run.tokenizer, keep_states=True)

    def on_step(step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
        animation(step, state, info)
        recorder(step, state, info)

    res = run.method.sample(run.model, req, gen, on_step)
    print("\nSample (block diffusion):\n")
    print(run.tokenizer.decode(res.ids[0].tolist()))
    print("\nSample (the ar model it started from, same seed):\n")
    print(_ar_sample(ar_dir))
    gif = save_denoising_gif(frames_of(recorder), rd / "samples" / "denoising.gif", columns=run.cfg.model.context)
    _print_next_steps(ar_dir, ar_summary, rd, summary)
    print(f"\nthe denoising: {gif}", file=sys.stderr)
    return 0


def _ar_sample(ar_dir: Path) -> str:
    run = open_run(ar_dir)
    gen = torch.Generator(device=run.device).manual_seed(0)
    res = run.method.sample(run.model, SampleRequest(n=1, **run.method.decoding()), gen)
    return run.tokenizer.decode(res.ids[0].tolist())


def _stopped(rd: Path) -> int:
    print(f"\nstopped; the run is kept: textdiffusion train --resume {rd} finishes it", file=sys.stderr)
    return 130


def _print_next_steps(ar_dir: Path, ar: TrainSummary, rd: Path, summary: TrainSummary) -> None:
    """Both validation numbers, where the runs live and the commands to try on them."""
    if ar.score is not None:
        print(f"\nvalidation, ar:    {ar.score.bits:.3f} bits/char on {ar.score.windows} windows (exact)",
              file=sys.stderr)
    if summary.score is not None:
        print(f"validation, block: {_block_score(summary)}", file=sys.stderr)
    print(f"\nruns: {ar_dir} (ar), {rd} (block diffusion, started from it)\n"
          f"  more samples: textdiffusion sample {rd} --n 4 --show\n"
          f"  infilling:    textdiffusion sample {rd} --infill 'ROMEO:\\nO ____ art thou'\n"
          f"  side by side: textdiffusion compare {ar_dir} {rd}\n"
          f"  evaluate:     textdiffusion eval {rd}", file=sys.stderr)


def _block_score(summary: TrainSummary) -> str:
    """The bound, and the exact number of the demo's sampler where the final score has one."""
    score = summary.score
    assert score is not None
    line = f"{score.bits:.3f} bits/char on {score.windows} windows (an upper bound: the NELBO)"
    if score.exact is not None:
        line += (f"; {score.exact.bits:.3f} exact on {score.exact.windows} windows, the likelihood of the "
                 f"sampler the demo used (--sampler {score.exact.sampler})")
    return line
