"""``textdiffusion demo``: the two-minute tour on a CPU.

Train a masked-diffusion model on Tiny Shakespeare at the ``cpu`` preset, then animate one sample being
denoised, leave that denoising as a GIF in the run directory (a terminal animation is gone once it scrolls
away; a picture can be opened, shared and put in a page) and print where the run lives, with the next
commands to try.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from textdiffusion.data.corpus import DataError, resolve_corpus
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config
from textdiffusion.records import TrainSummary
from textdiffusion.runs import open_run
from textdiffusion.trainer import default_run_dir, run_training
from textdiffusion.viz import TerminalAnimation, TrajectoryRecorder
from textdiffusion.viz.text_gif import frames_of, save_denoising_gif

DEMO_STEPS = 1500
# How the demo run samples, recorded in its config so that `sample` and `eval` on it do the same. After 1500
# steps the model is weak (about 3.6 bits/char): ancestral sampling, which reveals positions in random
# order, writes character soup (judge perplexity ~190, 20% real words); revealing the likeliest tokens
# first in 16 steps writes mostly words (judge perplexity ~17, 60% real words) while repeating itself
# little, measured on 32 samples of a 2000-step `cpu` run (docs/masked-diffusion.md).
DEMO_SAMPLING = ("method.sampler=confidence", "method.sample_steps=16")


def run_demo(steps: int | None = None, data: str = "tinyshakespeare", run_dir: str | None = None,
             preset: str = "cpu") -> int:
    try:
        resolve_corpus(data)
    except DataError as e:
        raise DataError(f"the demo needs its corpus: {e}") from None
    # a quicker final score than the full split (the demo is a tour; `textdiffusion eval` gives the full one)
    cfg = make_config("masked", preset, [f"data.corpus={data}", f"train.steps={steps or DEMO_STEPS}",
                                         "train.final_eval_windows=256", *DEMO_SAMPLING])
    rd = Path(run_dir) if run_dir else default_run_dir(cfg)
    print(f"Training a masked-diffusion model ({cfg.model.n_layer} layers, width {cfg.model.n_embd}) on {data} "
          f"for {cfg.train.steps} steps; Ctrl-C stops early and keeps the checkpoint.", file=sys.stderr)
    summary = run_training(cfg, rd)
    run = open_run(rd)
    print(f"\nDenoising one window in {run.cfg.method.sample_steps} steps, likeliest characters first; all "
          f"positions start masked (░):\n", file=sys.stderr)
    gen = torch.Generator(device=run.device).manual_seed(0)
    req = SampleRequest(n=1, **run.method.decoding())
    animation = TerminalAnimation(run.tokenizer, delay=0.05)
    recorder = TrajectoryRecorder(run.tokenizer, keep_states=True)

    def on_step(step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
        animation(step, state, info)
        recorder(step, state, info)

    res = run.method.sample(run.model, req, gen, on_step)
    print("\nSample:\n")
    print(run.tokenizer.decode(res.ids[0].tolist()))
    gif = save_denoising_gif(frames_of(recorder), rd / "samples" / "denoising.gif", columns=run.cfg.model.context)
    _print_next_steps(rd, summary)
    print(f"\nthe denoising: {gif}", file=sys.stderr)
    return 0


def _print_next_steps(rd: Path, summary: TrainSummary) -> None:
    """The demo's validation bound, where its run lives and the commands to try on it."""
    if summary.score is not None:
        print(f"\nvalidation: {summary.score.bits:.3f} bits/char on {summary.score.windows} windows "
              f"(an upper bound: the NELBO)", file=sys.stderr)
    print(f"\nrun directory: {rd}\n  more samples: textdiffusion sample {rd} --n 4 --show\n"
          f"  infilling:    textdiffusion sample {rd} --infill 'ROMEO:\\nO ____ art thou'\n"
          f"  evaluate:     textdiffusion eval {rd}", file=sys.stderr)
