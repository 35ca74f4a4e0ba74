"""``textdiffusion demo``: the two-minute tour on a CPU.

Train a masked-diffusion model on Tiny Shakespeare at the ``cpu`` preset, then animate one sample being
denoised and print where the run lives, with the next commands to try.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from textdiffusion.data.corpus import DataError, resolve_corpus
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config
from textdiffusion.records import TrainSummary
from textdiffusion.runs import open_run
from textdiffusion.trainer import default_run_dir, run_training
from textdiffusion.viz import TerminalAnimation

DEMO_STEPS = 1500


def run_demo(steps: int | None = None, data: str = "tinyshakespeare", run_dir: str | None = None,
             preset: str = "cpu") -> int:
    try:
        resolve_corpus(data)
    except DataError as e:
        raise DataError(f"the demo needs its corpus: {e}") from None
    # a quicker final score than the full split (the demo is a tour; `textdiffusion eval` gives the full one)
    cfg = make_config("masked", preset, [f"data.corpus={data}", f"train.steps={steps or DEMO_STEPS}",
                                         "train.final_eval_windows=256"])
    rd = Path(run_dir) if run_dir else default_run_dir(cfg)
    print(f"Training a masked-diffusion model ({cfg.model.n_layer} layers, width {cfg.model.n_embd}) on {data} "
          f"for {cfg.train.steps} steps; Ctrl-C stops early and keeps the checkpoint.", file=sys.stderr)
    summary = run_training(cfg, rd)
    run = open_run(rd)
    print("\nDenoising one window, all positions start masked (░):\n", file=sys.stderr)
    gen = torch.Generator(device=run.device).manual_seed(0)
    req = SampleRequest(n=1, **run.method.decoding())
    res = run.method.sample(run.model, req, gen, TerminalAnimation(run.tokenizer, delay=0.05))
    print("\nSample:\n")
    print(run.tokenizer.decode(res.ids[0].tolist()))
    _print_next_steps(rd, summary)
    return 0


def _print_next_steps(rd: Path, summary: TrainSummary) -> None:
    """The demo's validation bound, where its run lives and the commands to try on it."""
    if summary.score is not None:
        print(f"\nvalidation: {summary.score.bits:.3f} bits/char on {summary.score.windows} windows "
              f"(an upper bound: the NELBO)", file=sys.stderr)
    print(f"\nrun directory: {rd}\n  more samples: textdiffusion sample {rd} --n 4 --show\n"
          f"  infilling:    textdiffusion sample {rd} --infill 'ROMEO:\\nO ____ art thou'\n"
          f"  evaluate:     textdiffusion eval {rd}", file=sys.stderr)
