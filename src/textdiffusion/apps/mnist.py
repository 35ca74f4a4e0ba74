"""``textdiffusion mnist ...``: image diffusion, run through the same trainer and run directories as text.

Training is :func:`textdiffusion.trainer.run_training` with an image method; this module adds what is
particular to showing pictures: writing sample grids, denoising strips and GIFs (:func:`sample_images`),
printing the scores of :func:`textdiffusion.image_evaluation.evaluate_images` (:func:`format_eval`) and the
offline-capable demo (:func:`run_demo`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiffusion import limits
from textdiffusion.checkpoint import is_export
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError
from textdiffusion.image_evaluation import image_method, labels_for, open_image_run
from textdiffusion.methods.configs import make_config
from textdiffusion.methods.image import ImageDiffusion, ImageRequest
from textdiffusion.records import ImageEval, TrainSummary
from textdiffusion.runs import LoadedRun
from textdiffusion.viz.images import ReverseProcessRecorder, save_grid

DEMO_STEPS = 1500


@dataclass
class _Layout:
    """How a batch of samples is drawn and laid out: its size and labels, the grid's rows, the strip's samples."""

    n: int
    labels: list[int] | None
    nrow: int  # images per grid row
    row_labels: list[str] | None  # a caption per grid row (one row per digit)
    strip: list[int]  # the samples shown in the denoising strip and the GIF


def _layout(method: ImageDiffusion, n: int, digit: int | None, strip_rows: int) -> _Layout:
    k = method.spec.num_classes
    if not method.conditional or digit is not None:
        n = n or 64
        return _Layout(n, labels_for(method, n, digit), 8, None, list(range(min(strip_rows, n))))
    n = n or 8 * k
    per_row = n // k
    # one row per digit: order the batch digit-major, and let the strip show the first sample of each row,
    # so its rows are different digits
    return _Layout(n, sorted(labels_for(method, n, None) or []), per_row, [str(d) for d in range(k)],
                   [d * per_row for d in range(min(strip_rows, k))])


SAMPLE_FILES = ("samples.png", "denoising.png", "reverse.gif")


def sample_images(run_dir: str | Path, out: str | Path | None = None, n: int = 0, digit: int | None = None,
                  sampler: str = "", steps: int = 0, eta: float | None = None, guidance: float | None = None,
                  seed: int = 0, device: str = "auto", weights: str = "ema", strip_rows: int = 10,
                  gif: bool = True, overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate and write ``samples.png`` (a row per digit for a class-conditional model), ``denoising.png``
    (x_t at evenly spaced t for the first ``strip_rows`` samples) and ``reverse.gif`` into ``out``.

    The images are drawn in batches (:func:`~textdiffusion.limits.image_batch_size`: 500 at 28x28), so
    ``n`` is bounded by the grid (:data:`~textdiffusion.limits.MAX_IMAGE_GRID`), not by memory; a request
    of one batch draws what it always drew. The output folder is checked before any sampling."""
    if n:
        limits.check_count(n, limits.MAX_IMAGE_GRID, "--n", "the most one sample grid holds",
                           "for scores over more samples use `textdiffusion mnist eval --samples N`")
    run = open_image_run(run_dir, weights=weights, device=device, overrides=overrides)
    method = image_method(run)
    if not out and is_export(run.path):
        raise ConfigError(f"{run_dir} is an export, which stays read-only: pass --out FOLDER for the pictures")
    out_dir = Path(out) if out else run.path / "samples"
    limits.check_output_folder(out_dir, "--out" if out else "the samples folder", SAMPLE_FILES)
    layout = _layout(method, n, digit, strip_rows)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    tic = time.perf_counter()
    images, recorder, res = _draw_layout(run, layout, gen, progress, sampler=sampler, steps=steps, eta=eta,
                                         guidance=guidance)
    seconds = time.perf_counter() - tic
    chosen = bool(out)  # pictures in a folder the user named are written through links there; the run's own are not
    written = {"grid": str(save_grid(images, out_dir / "samples.png", nrow=layout.nrow,
                                     row_labels=layout.row_labels, through_links=chosen)),
               "strip": str(recorder.save_strip(out_dir / "denoising.png", through_links=chosen))}
    if gif:
        written["gif"] = str(recorder.save_gif(out_dir / "reverse.gif", nrow=len(layout.strip),
                                               through_links=chosen))
    return {"n": layout.n, "seconds": seconds, "seconds_per_image": seconds / layout.n, "nfe": res.nfe, **res.info,
            "files": written}


def _draw_layout(run: LoadedRun, layout: _Layout, gen: torch.Generator, progress: bool,
                 **request: Any) -> tuple[torch.Tensor, ReverseProcessRecorder, Any]:
    """The layout's images drawn batch after batch, with a progress bar on stderr over the denoising steps of
    every batch (a 1,000-step DDPM grid is one batch of minutes): the images (on the CPU), the reverse process
    of the strip's samples, and the last batch's result (sampler info and NFE, the same for every batch). Only
    batches holding a strip sample are recorded."""
    from textdiffusion.progress import progress_bar

    method = image_method(run)
    parts = limits.batches(layout.n, limits.image_batch_size(method.spec.size))
    steps = request.get("steps") or method.default_steps(0, method.check_sampler(request.get("sampler", "")))
    images, recorders, res = [], [], None
    with progress_bar(total=(steps or 0) * len(parts) or None, unit="step", disable=not progress,
                      leave=False, desc=f"drawing {layout.n:,} images") as bar:
        for start, count in parts:
            local = [i - start for i in layout.strip if start <= i < start + count]
            recorder = ReverseProcessRecorder(indices=local) if local else None

            def on_step(step: int, x_t: torch.Tensor, x0_hat: torch.Tensor, info: dict[str, Any],
                        recorder: ReverseProcessRecorder | None = recorder) -> None:
                if recorder is not None:
                    recorder(step, x_t, x0_hat, info)
                if step:
                    bar.update(1)

            labels = layout.labels[start:start + count] if layout.labels else None
            res = method.sample(run.model, ImageRequest(n=count, labels=labels, **request), gen,
                                on_step if progress or recorder is not None else None)
            images.append(res.images.cpu())
            if recorder is not None:
                recorders.append(recorder)
    return torch.cat(images), ReverseProcessRecorder.joined(recorders), res


def format_eval(ev: ImageEval) -> str:
    acc = ev.class_accuracy
    acc_text = f"{acc:.4f}" if acc is not None else "n/a (unconditional)"
    lines = [
        f"{ev.sampler} {ev.steps} steps" + (f", guidance {ev.guidance:g}" if ev.guidance is not None else "")
        + f", {ev.samples} samples",
        f"  FID (classifier features) {ev.fid:.3f}",
        f"  class accuracy            {acc_text}",
        f"  classifier test accuracy  {ev.classifier_test_accuracy:.4f}",
        f"  sampling                  {ev.seconds_per_image * 1000:.1f} ms/image on {ev.device}",
    ]
    return "\n".join(lines)


# ---- demo ----------------------------------------------------------------------------------------------
def resolve_demo_data(data: str) -> tuple[str, str | None]:
    """MNIST if it can be found or downloaded, else the offline 8x8 digits (and why)."""
    from textdiffusion.data.images import load_images

    if data != "mnist":
        return data, None
    try:
        load_images("mnist")
        return "mnist", None
    except DataError as e:
        return "digits", str(e)


def _demo_config(source: str, steps: int | None, preset: str):
    overrides = [f"data.corpus={source}", f"train.steps={steps or DEMO_STEPS}", "train.final_eval_windows=500"]
    if source == "digits":  # 8x8 pictures: one halving of the resolution instead of two
        overrides.append("unet.channel_mult=1,2")
    return make_config("image", preset, overrides)


def run_demo(steps: int | None = None, data: str = "mnist", run_dir: str | None = None, preset: str = "cpu") -> int:
    from textdiffusion.trainer import default_run_dir, run_training

    source, why = resolve_demo_data(data)
    if why:
        print(f"MNIST is not available ({why.split(';')[0]}); using scikit-learn's 8x8 digits instead "
              f"(offline fallback, recorded in the run's config)", file=sys.stderr)
    cfg = _demo_config(source, steps, preset)
    rd = Path(run_dir) if run_dir else default_run_dir(cfg)
    print(f"Training a class-conditional DDPM U-Net on {source} for {cfg.train.steps} steps "
          f"({cfg.train.batch_size} images per step); Ctrl-C stops early and keeps the checkpoint.", file=sys.stderr)
    summary = run_training(cfg, rd)
    if summary.interrupted:
        print(f"stopped; continue with: textdiffusion mnist train --resume {rd}", file=sys.stderr)
        return 130
    _print_demo_report(rd, sample_images(rd, sampler="ddim", steps=100), summary)
    return 0


def _print_demo_report(rd: Path, result: dict[str, Any], summary: TrainSummary) -> None:
    """Where the demo's pictures are, its validation bound, and the commands to try next."""
    print(f"\nsamples (a row per digit, DDIM 100 steps): {result['files']['grid']}\n"
          f"denoising strip: {result['files']['strip']}\nreverse process: {result['files']['gif']}")
    if summary.score is not None:
        print(f"validation: {summary.score.bits:.3f} bits/dim (an upper bound) on {summary.score.windows} "
              f"test images", file=sys.stderr)
    print(f"\nrun directory: {rd}\n  more samples: textdiffusion mnist sample {rd} --digit 7 --guidance 3\n"
          f"  evaluate:     textdiffusion mnist eval {rd}   # FID and class accuracy, about a minute",
          file=sys.stderr)


def check_digit(digit: int | None) -> None:
    if digit is not None and not 0 <= digit <= 9:
        raise ConfigError(f"--digit must be 0..9, got {digit}")
