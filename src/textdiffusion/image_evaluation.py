"""Scoring an image run: FID and class accuracy of its samples in a trained classifier's feature space, and
the sampling time per image (what ``textdiffusion mnist eval``, ``ImageModel.evaluate`` and ``compare``
report).

The metrics themselves are :mod:`textdiffusion.image_metrics`; this module opens the run, finds the data it
was trained on (its test split is FID's reference), draws the samples in batches and writes
``RUN/eval.json``. It is library, below the apps that print its numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, cast

import torch

from textdiffusion import limits
from textdiffusion.checkpoint import CheckpointError, is_export, write_json
from textdiffusion.data.corpus import DataError, cache_dir
from textdiffusion.data.images import to_unit_range
from textdiffusion.json_writing import to_json
from textdiffusion.methods.image import ImageDiffusion, ImageRequest
from textdiffusion.records import ImageEval
from textdiffusion.runs import LoadedRun, open_run
from textdiffusion.sharing import public_corpus_record, run_corpus_record, shareable_path

EVAL_SAMPLES, EVAL_STEPS = limits.IMAGE_EVAL_SAMPLES, limits.IMAGE_EVAL_STEPS  # why these: see limits.py


def open_image_run(path: str | Path, weights: str = "ema", device: str = "auto",
                   overrides: list[str] | None = None) -> LoadedRun:
    """Open a run of the image family (any image method), refusing a text run with the command it needs."""
    run = open_run(path, weights=weights, device=device, overrides=overrides)
    if run.method.family != "image":
        raise CheckpointError(f"{path} is a text run (method {run.cfg.method.name}); use `textdiffusion sample` for "
                              f"it")
    return run


def image_method(run: LoadedRun) -> ImageDiffusion:
    """The image method of a run opened by :func:`open_image_run` (which refused any other)."""
    return cast(ImageDiffusion, run.method)


def labels_for(method: ImageDiffusion, n: int, digit: int | None) -> list[int] | None:
    """The label of each of ``n`` images: ``digit`` for all, else a balanced set for a class-conditional run,
    else None (the run draws without labels)."""
    if digit is not None:
        return [digit] * n
    if method.conditional:  # a balanced set: 0, 1, ..., 9, 0, 1, ...
        return [i % method.spec.num_classes for i in range(n)]
    return None


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
    data = load_images(corpus_location(run.cfg.data.corpus, recorded, run.path))
    check_identity(recorded, data.record(), run.path)
    if data.image_size != size:
        raise DataError(f"the run was trained on {size}x{size} images but "
                        f"{run.cfg.data.corpus} holds {data.image_size}x{data.image_size}")
    return data


def eval_steps(method: ImageDiffusion, steps: int = 0) -> int:
    """The step count ``mnist eval`` samples with: ``steps`` if given, else the run's ``method.sample_steps``,
    else :data:`EVAL_STEPS` (at most the training grid's T); 0 (the method's own) for a method whose step count
    is not a choice (its ``default_steps`` is None)."""
    if steps or method.default_steps(0) is None:
        return steps
    return getattr(method.cfg, "sample_steps", 0) or min(EVAL_STEPS, method.max_steps or EVAL_STEPS)


def evaluate_images(run_dir: str | Path | LoadedRun, samples: int = EVAL_SAMPLES, sampler: str = "", steps: int = 0,
                    eta: float | None = None, guidance: float | None = None, seed: int = 0, device: str = "auto",
                    batch_size: int = 500, progress: bool = True, write: bool = True,
                    overrides: list[str] | None = None) -> ImageEval:
    """FID (generated vs the test set, in the classifier's feature space), the classifier's accuracy on the
    digits it was asked for (class-conditional runs), and the sampling time per image.

    ``steps`` 0 means :func:`eval_steps`' default (50, not the sampler's own 1000 of DDPM: BENCHMARKS.md has
    50 at a better FID in a twentieth of the time). ``progress``: what the job will cost, said up front, then
    a bar over batches x steps on stderr. Appends the row to ``RUN/evals.jsonl`` and writes it as
    ``RUN/eval.json``. ``run_dir`` may also be a run already opened (the Python API's model holds one),
    with ``overrides`` the settings it was opened with."""
    from textdiffusion.image_metrics import fid_and_accuracy

    limits.check_count(samples, limits.MAX_IMAGE_EVAL, "--samples", "the generated images are held in memory for "
                       "FID", f"use --samples <= {limits.MAX_IMAGE_EVAL}")
    run = run_dir if isinstance(run_dir, LoadedRun) else open_image_run(run_dir, device=device, overrides=overrides)
    method = image_method(run)
    steps = eval_steps(method, steps)
    data = _reference_data(run)
    if progress:
        print(_eval_cost(method, samples, batch_size, sampler, steps, guidance, run.device), file=sys.stderr)
    clf, clf_info = classifier_for_data(data, run.device, progress)
    labels = labels_for(method, samples, None)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    generated, seconds, info, nfe = _sample_in_batches(run, labels, samples, batch_size, gen, progress, steps,
                                                       sampler=sampler, eta=eta, guidance=guidance)
    reference = to_unit_range(data.x_test)
    scores = fid_and_accuracy(clf.to(run.device), generated.to(run.device), reference.to(run.device),
                              torch.tensor(labels) if labels else None)
    row = {"run": shareable_path(run.path), "step": run.step, "samples": samples, "seed": seed, **info, "nfe": nfe,
           **scores, "classifier_test_accuracy": clf_info.get("test_accuracy"),
           "seconds": seconds, "seconds_per_image": seconds / samples, "device": str(run.device),
           "data": public_corpus_record(run_corpus_record(data.record(), run.path))["source"],
           "offline_fallback": data.offline_fallback,
           "fid_feature_space": "penultimate layer of the evaluation classifier (FID computed there, not in "
                                "Inception features: compare only within this project)"}
    result = ImageEval.from_json(row)
    if write and not is_export(run.path):  # an export is read-only: the result is returned (and printed) only
        try:
            write_json(run.path / "eval.json", row)
            with open(run.path / "evals.jsonl", "a", encoding="utf-8") as f:
                f.write(to_json(row) + "\n")
        except OSError as e:  # a read-only run or a full disk: the sampling is still worth printing
            result.not_written = e.strerror or str(e)
    return result


def _eval_cost(method: ImageDiffusion, samples: int, batch_size: int, sampler: str, steps: int,
               guidance: float | None, device: torch.device) -> str:
    """What ``mnist eval`` is about to do, in one line, before it does it: the sampling's network evaluations
    (a guided step costs two) and, the first time for a dataset, the classifier it trains."""
    w = getattr(method.cfg, "guidance", 1.0) if guidance is None else guidance
    per_step = 2 if method.conditional and w != 1.0 else 1
    batches = -(-samples // batch_size)
    work = (f"{samples:,} samples x {steps} {method.check_sampler(sampler)} steps = {samples * steps * per_step:,} "
            f"U-Net evaluations of one image" if steps else
            f"{samples:,} samples by the {method.check_sampler(sampler)} sampler")
    return (f"mnist eval: {work} on {device}, in {batches} "
            f"batch{'es' if batches > 1 else ''} (the first time for a dataset, the evaluation classifier is trained "
            f"before); the bar shows the time left (less work: --samples, --steps)")
