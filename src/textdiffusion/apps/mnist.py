"""``textdiffusion mnist ...``: image diffusion, run through the same trainer and run directories as text.

Training is :func:`textdiffusion.trainer.run_training` with ``--method image``; this module adds what is
particular to pictures: writing sample grids, denoising strips and GIFs (:func:`sample_images`), scoring
samples with FID and class accuracy in a trained classifier's feature space (:func:`evaluate_images`) and
the offline-capable demo (:func:`run_demo`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiffusion.apps import bounds
from textdiffusion.checkpoint import CheckpointError, write_json
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError, cache_dir
from textdiffusion.data.images import to_unit_range
from textdiffusion.methods.configs import make_config
from textdiffusion.methods.image import ImageDiffusion, ImageRequest
from textdiffusion.runs import LoadedRun, open_run
from textdiffusion.viz.images import ReverseProcessRecorder, save_grid

DEMO_STEPS = 1500
EVAL_SAMPLES, EVAL_STEPS = bounds.IMAGE_EVAL_SAMPLES, bounds.IMAGE_EVAL_STEPS  # why these: see apps/bounds.py


def open_image_run(path: str | Path, weights: str = "ema", device: str = "auto",
                   overrides: list[str] | None = None) -> LoadedRun:
    run = open_run(path, weights=weights, device=device, overrides=overrides)
    if not isinstance(run.method, ImageDiffusion):
        raise CheckpointError(f"{path} is a text run (method {run.cfg.method.name}); use `textdiffusion sample` for "
                              f"it")
    return run


def image_method(run: LoadedRun) -> ImageDiffusion:
    """The image method of a run opened by :func:`open_image_run` (which refused any other)."""
    assert isinstance(run.method, ImageDiffusion)
    return run.method


def _labels_for(method: ImageDiffusion, n: int, digit: int | None) -> list[int] | None:
    if digit is not None:
        return [digit] * n
    if method.conditional:  # a balanced set: 0, 1, ..., 9, 0, 1, ...
        return [i % method.spec.num_classes for i in range(n)]
    return None


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
        return _Layout(n, _labels_for(method, n, digit), 8, None, list(range(min(strip_rows, n))))
    n = n or 8 * k
    per_row = n // k
    # one row per digit: order the batch digit-major, and let the strip show the first sample of each row,
    # so its rows are different digits
    return _Layout(n, sorted(_labels_for(method, n, None) or []), per_row, [str(d) for d in range(k)],
                   [d * per_row for d in range(min(strip_rows, k))])


SAMPLE_FILES = ("samples.png", "denoising.png", "reverse.gif")


def sample_images(run_dir: str | Path, out: str | Path | None = None, n: int = 0, digit: int | None = None,
                  sampler: str = "", steps: int = 0, eta: float | None = None, guidance: float | None = None,
                  seed: int = 0, device: str = "auto", weights: str = "ema", strip_rows: int = 10,
                  gif: bool = True, overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate and write ``samples.png`` (a row per digit for a class-conditional model), ``denoising.png``
    (x_t at evenly spaced t for the first ``strip_rows`` samples) and ``reverse.gif`` into ``out``.

    The images are drawn in batches (:func:`~textdiffusion.apps.bounds.image_batch_size`: 500 at 28x28), so
    ``n`` is bounded by the grid (:data:`~textdiffusion.apps.bounds.MAX_IMAGE_GRID`), not by memory; a request
    of one batch draws what it always drew. The output folder is checked before any sampling."""
    if n:
        bounds.check_count(n, bounds.MAX_IMAGE_GRID, "--n", "the most one sample grid holds",
                           "for scores over more samples use `textdiffusion mnist eval --samples N`")
    run = open_image_run(run_dir, weights=weights, device=device, overrides=overrides)
    method = image_method(run)
    out_dir = Path(out) if out else run.path / "samples"
    bounds.check_output_folder(out_dir, "--out" if out else "the samples folder", SAMPLE_FILES)
    layout = _layout(method, n, digit, strip_rows)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    tic = time.perf_counter()
    images, recorder, res = _draw_layout(run, layout, gen, progress, sampler=sampler, steps=steps, eta=eta,
                                         guidance=guidance)
    seconds = time.perf_counter() - tic
    written = {"grid": str(save_grid(images, out_dir / "samples.png", nrow=layout.nrow,
                                     row_labels=layout.row_labels)),
               "strip": str(recorder.save_strip(out_dir / "denoising.png"))}
    if gif:
        written["gif"] = str(recorder.save_gif(out_dir / "reverse.gif", nrow=len(layout.strip)))
    return {"n": layout.n, "seconds": seconds, "seconds_per_image": seconds / layout.n, "nfe": res.nfe, **res.info,
            "files": written}


def _draw_layout(run: LoadedRun, layout: _Layout, gen: torch.Generator, progress: bool,
                 **request: Any) -> tuple[torch.Tensor, ReverseProcessRecorder, Any]:
    """The layout's images drawn batch after batch (a progress bar on stderr when there are several): the
    images (on the CPU), the reverse process of the strip's samples, and the last batch's result (sampler
    info and NFE, the same for every batch). Only batches holding a strip sample are recorded."""
    from textdiffusion.progress import progress_bar

    method = image_method(run)
    parts = bounds.batches(layout.n, bounds.image_batch_size(method.spec.size))
    images, recorders, res = [], [], None
    with progress_bar(total=layout.n, unit="image", disable=not progress or len(parts) == 1, leave=False) as bar:
        for start, count in parts:
            local = [i - start for i in layout.strip if start <= i < start + count]
            recorder = ReverseProcessRecorder(indices=local) if local else None
            labels = layout.labels[start:start + count] if layout.labels else None
            res = method.sample(run.model, ImageRequest(n=count, labels=labels, **request), gen, recorder)
            images.append(res.images.cpu())
            if recorder is not None:
                recorders.append(recorder)
            bar.update(count)
    return torch.cat(images), ReverseProcessRecorder.joined(recorders), res


# ---- evaluation: FID and class accuracy in a trained classifier's feature space --------------------------
def _data_key(data: Any) -> str:
    if getattr(data, "sha256", None):
        return f"{data.name}-{data.sha256[:16]}"
    import hashlib

    h = hashlib.sha256(data.x_train.numpy().tobytes()).hexdigest()
    return f"{data.name}-{h[:16]}"


def classifier_for_data(data: Any, device: torch.device, progress: bool = True):
    """The evaluation classifier for this dataset: trained once (minutes on a CPU) and cached under
    ``$TEXTDIFFUSION_CACHE/classifiers`` (default ~/.cache/textdiffusion), keyed by the data's fingerprint."""
    from textdiffusion.image_metrics import DEFAULT_STEPS, classifier_for, train_classifier

    def train():
        if progress:
            print(f"first, once for {data.name}: training the evaluation classifier ({DEFAULT_STEPS:,} steps, about 3 "
                  f"minutes on one CPU core for MNIST; cached afterwards) ...", file=sys.stderr)
        return train_classifier(data.x_train, data.y_train, data.x_test, data.y_test, device=device,
                                progress=progress, num_classes=data.num_classes)

    return classifier_for(_data_key(data), train, cache_dir() / "classifiers", {"data": data.record()})


def _sample_in_batches(run: LoadedRun, labels: list[int] | None, samples: int, batch_size: int,
                       gen: torch.Generator, progress: bool, steps: int,
                       **request: Any) -> tuple[torch.Tensor, float, dict, float]:
    """``samples`` images drawn ``batch_size`` at a time: the images (on the CPU), the seconds spent sampling
    (CUDA synchronised, so the time is the sampling's), and the last batch's sampler info and NFE.

    ``progress``: one bar over every sampler step of every batch (batches x ``steps``), moved by the
    sampler's step callback, which only counts (the draws are the same with or without it)."""
    from textdiffusion.progress import progress_bar

    method = image_method(run)
    images, seconds, info, nfe = [], 0.0, {}, 0.0
    starts = range(0, samples, batch_size)
    with progress_bar(total=len(starts) * steps, desc=f"sampling {samples:,} images", unit="step",
                      disable=not progress) as bar:

        def tick(step: int, *_: Any) -> None:
            if step:  # step 0 is the starting noise
                bar.update(1)

        for start in starts:
            part = labels[start: start + batch_size] if labels else None
            m = min(batch_size, samples - start)
            tic = time.perf_counter()
            res = method.sample(run.model, ImageRequest(n=m, labels=part, steps=steps, **request), gen,
                                tick if progress else None)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - tic
            images.append(res.images.cpu())
            info, nfe = res.info, res.nfe
    return torch.cat(images), seconds, info, nfe


def _reference_data(run: LoadedRun):
    """The run's own dataset (its test split is what FID compares with): read from where the run recorded it,
    checked to be the data it was trained on and to hold the run's image size."""
    from textdiffusion.data.images import load_images
    from textdiffusion.data.sources import check_identity, corpus_location

    size = image_method(run).spec.size
    recorded = run.meta.get("corpus") if isinstance(run.meta.get("corpus"), dict) else None
    data = load_images(corpus_location(run.cfg.data.corpus, recorded))
    check_identity(recorded, data.record(), run.path)
    if data.image_size != size:
        raise DataError(f"the run was trained on {size}x{size} images but "
                        f"{run.cfg.data.corpus} holds {data.image_size}x{data.image_size}")
    return data


def eval_steps(method: ImageDiffusion, steps: int = 0) -> int:
    """The step count ``mnist eval`` samples with: ``steps`` if given, else the run's ``method.sample_steps``,
    else :data:`EVAL_STEPS` (at most the training grid's T)."""
    return steps or method.cfg.sample_steps or min(EVAL_STEPS, method.max_steps or EVAL_STEPS)


def evaluate_images(run_dir: str | Path | LoadedRun, samples: int = EVAL_SAMPLES, sampler: str = "", steps: int = 0,
                    eta: float | None = None, guidance: float | None = None, seed: int = 0, device: str = "auto",
                    batch_size: int = 500, progress: bool = True, write: bool = True,
                    overrides: list[str] | None = None) -> dict[str, Any]:
    """FID (generated vs the test set, in the classifier's feature space), the classifier's accuracy on the
    digits it was asked for (class-conditional runs), and the sampling time per image.

    ``steps`` 0 means :func:`eval_steps`' default (50, not the sampler's own 1000 of DDPM: BENCHMARKS.md has
    50 at a better FID in a twentieth of the time). ``progress``: what the job will cost, said up front, then
    a bar over batches x steps on stderr. Appends the row to ``RUN/evals.jsonl`` and writes it as
    ``RUN/eval.json``. ``run_dir`` may also be a run already opened (the Python API's model holds one),
    with ``overrides`` the settings it was opened with."""
    from textdiffusion.image_metrics import fid_and_accuracy

    bounds.check_count(samples, bounds.MAX_IMAGE_EVAL, "--samples", "the generated images are held in memory for "
                       "FID", f"use --samples <= {bounds.MAX_IMAGE_EVAL}")
    run = run_dir if isinstance(run_dir, LoadedRun) else open_image_run(run_dir, device=device, overrides=overrides)
    method = image_method(run)
    steps = eval_steps(method, steps)
    data = _reference_data(run)
    if progress:
        print(_eval_cost(method, samples, batch_size, sampler, steps, guidance, run.device), file=sys.stderr)
    clf, clf_info = classifier_for_data(data, run.device, progress)
    labels = _labels_for(method, samples, None)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    generated, seconds, info, nfe = _sample_in_batches(run, labels, samples, batch_size, gen, progress, steps,
                                                       sampler=sampler, eta=eta, guidance=guidance)
    reference = to_unit_range(data.x_test)
    scores = fid_and_accuracy(clf.to(run.device), generated.to(run.device), reference.to(run.device),
                              torch.tensor(labels) if labels else None)
    row = {"run": str(run.path), "step": run.step, "samples": samples, "seed": seed, **info, "nfe": nfe,
           **scores, "classifier_test_accuracy": clf_info.get("test_accuracy"),
           "seconds": seconds, "seconds_per_image": seconds / samples, "device": str(run.device),
           "data": data.record()["source"], "offline_fallback": data.offline_fallback,
           "fid_feature_space": "penultimate layer of the evaluation classifier (FID computed there, not in "
                                "Inception features: compare only within this project)"}
    if write:
        write_json(run.path / "eval.json", row)
        with open(run.path / "evals.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return row


def _eval_cost(method: ImageDiffusion, samples: int, batch_size: int, sampler: str, steps: int,
               guidance: float | None, device: torch.device) -> str:
    """What ``mnist eval`` is about to do, in one line, before it does it: the sampling's network evaluations
    (a guided step costs two) and, the first time for a dataset, the classifier it trains."""
    w = method.cfg.guidance if guidance is None else guidance
    per_step = 2 if method.conditional and w != 1.0 else 1
    batches = -(-samples // batch_size)
    return (f"mnist eval: {samples:,} samples x {steps} {method.check_sampler(sampler)} steps = "
            f"{samples * steps * per_step:,} U-Net evaluations of one image on {device}, in {batches} "
            f"batch{'es' if batches > 1 else ''} (the first time for a dataset, the evaluation classifier is trained "
            f"before); the bar shows the time left (less work: --samples, --steps)")


def format_eval(row: dict[str, Any]) -> str:
    acc = row.get("class_accuracy")
    acc_text = f"{acc:.4f}" if acc is not None else "n/a (unconditional)"
    lines = [
        f"{row['sampler']} {row['steps']} steps" + (f", guidance {row['guidance']:g}" if row.get("guidance") is not None
                                                    else "") + f", {row['samples']} samples",
        f"  FID (classifier features) {row['fid']:.3f}",
        f"  class accuracy            {acc_text}",
        f"  classifier test accuracy  {row['classifier_test_accuracy']:.4f}",
        f"  sampling                  {row['seconds_per_image'] * 1000:.1f} ms/image on {row['device']}",
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
    if summary.get("interrupted"):
        print(f"stopped; continue with: textdiffusion mnist train --resume {rd}", file=sys.stderr)
        return 130
    _print_demo_report(rd, sample_images(rd, sampler="ddim", steps=100), summary)
    return 0


def _print_demo_report(rd: Path, result: dict[str, Any], summary: dict[str, Any]) -> None:
    """Where the demo's pictures are, its validation bound, and the commands to try next."""
    print(f"\nsamples (a row per digit, DDIM 100 steps): {result['files']['grid']}\n"
          f"denoising strip: {result['files']['strip']}\nreverse process: {result['files']['gif']}")
    if "val_bpd" in summary:
        print(f"validation: {summary['val_bpd']:.3f} bits/dim (an upper bound) on {summary['val_windows']} "
              f"test images", file=sys.stderr)
    print(f"\nrun directory: {rd}\n  more samples: textdiffusion mnist sample {rd} --digit 7 --guidance 3\n"
          f"  evaluate:     textdiffusion mnist eval {rd}   # FID and class accuracy, about a minute",
          file=sys.stderr)


def check_digit(digit: int | None) -> None:
    if digit is not None and not 0 <= digit <= 9:
        raise ConfigError(f"--digit must be 0..9, got {digit}")
