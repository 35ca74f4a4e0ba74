"""What one request may ask for, checked before any work is done: counts, sampler steps, lengths, the batches
that bound memory, and the output paths a command will write.

The Python API, the command line and the live page all draw through these limits, so they live in the library
(the apps sit on top of it). Each error names the limit and how to stay under it: without them a mistyped
``steps=1000000000`` would try a 4 GB allocation and ``n=100000`` one batch of 100000 samples. Output paths
are checked before minutes of sampling are spent on a result that cannot be written.

Batching and reproducibility: a request that fits in one batch draws exactly what one sampling call draws
(same seed, same numbers). A larger one draws batch after batch from the one generator, so its samples
differ from what a single huge batch would have drawn, and depend on the batch size; they are still fully
determined by the seed, and the first batch of ``n=N`` is the whole of ``n=B``.
"""

from __future__ import annotations

import os
from pathlib import Path

from textdiffusion.config import ConfigError
from textdiffusion.files import is_symlink_loop, not_regular_message, symlink_loop_message, write_target

#: text ``sample --n``: samples are held (and printed) as text, so a million is a few hundred MB at most
MAX_TEXT_SAMPLES = 1_000_000
#: sampler steps when the method has no training grid of its own (``Method.max_steps``); the live page's
#: default cap is 1000, a command line may go ten times further
MAX_TEXT_STEPS = 10_000
#: ``--length`` of a method that writes past its context (``ar``, ``block``): one network evaluation or more
#: per token, so 100000 tokens are already hours on a CPU
MAX_TEXT_LENGTH = 100_000
#: the live page: seconds a client may take to send a whole request, or to accept more of a stream, before it
#: is disconnected (and its sampling stopped); ``serve --client-timeout``
CLIENT_TIMEOUT_S = 10.0
#: ``mnist sample --n`` goes into one PNG grid; 10000 digits at 3x scale are an ~80-megapixel picture
MAX_IMAGE_GRID = 10_000
#: ``mnist eval --samples``: the generated images are kept (float) for FID, 100000 of 28x28 are ~300 MB
MAX_IMAGE_EVAL = 100_000
#: ``mnist eval``'s defaults (here, in a torch-free module, so --help shows them without importing torch): about
#: a minute on 2 CPU cores for a ``cpu``-preset run. BENCHMARKS.md's MNIST table (500 samples per row) has
#: DDPM's step taken 50 times at the best FID of any row (2.87; all 1000 steps: 3.35 in 18 times the time),
#: deterministic DDIM at 50 steps at 6.51. So: the run's own sampler (ddpm unless set) at 50 steps, on as
#: many samples as the table, so a result compares with it.
IMAGE_EVAL_SAMPLES = 500
IMAGE_EVAL_STEPS = 50

# one text batch: tokens through the network at once, logits held at once (B x L x vocab floats, a few
# copies of them while filtering and drawing), and sampled ids kept (B x length), each capped
_TOKENS_PER_BATCH = 1 << 16
_LOGITS_PER_BATCH = 1 << 28
_IDS_PER_BATCH = 1 << 24
_MAX_TEXT_BATCH = 1024
# one image batch: what ``mnist eval`` has always drawn at once for 28x28 images, scaled by the pixel count
_PIXELS_PER_BATCH = 500 * 28 * 28
_MAX_IMAGE_BATCH = 500


def check_count(n: int, limit: int, flag: str, why: str, fix: str) -> None:
    """``flag`` (e.g. ``--n``) asks for ``n`` items; more than ``limit`` is refused, saying ``why`` that is the
    limit and the ``fix``."""
    if n > limit:
        raise ConfigError(f"{flag} {n} is more than {limit:,} ({why}); {fix}")


def text_step_limit(method_max_steps: int | None) -> int:
    """The most sampler steps a text request may take: the method's training grid, or MAX_TEXT_STEPS."""
    return min(MAX_TEXT_STEPS, method_max_steps) if method_max_steps else MAX_TEXT_STEPS


def check_text_steps(steps: int | None, from_flag: bool, method_max_steps: int | None) -> None:
    """Refuse a step count above :func:`text_step_limit`; ``from_flag`` says whether ``--steps`` gave it (else
    the run's ``method.sample_steps``, from its config or a ``--set``)."""
    limit = text_step_limit(method_max_steps)
    if steps is None or steps <= limit:
        return
    what = (f"the {limit} steps the model was trained with" if method_max_steps and limit == method_max_steps
            else f"the {limit:,} sampler steps one command may take")
    where = f"--steps {steps}" if from_flag else f"method.sample_steps={steps}"
    raise ConfigError(f"{where} is more than {what}; use --steps <= {limit}")


def check_text_length(length: int, extends_past_context: bool) -> None:
    """``--length`` of a method that may write past its context (the others check their context themselves)."""
    if extends_past_context and length > MAX_TEXT_LENGTH:
        raise ConfigError(f"--length {length} is more than {MAX_TEXT_LENGTH:,} tokens, the most one sample may "
                          f"have; use --length <= {MAX_TEXT_LENGTH} (and several runs for more text)")


def text_batch_size(length: int, window: int, vocab: int) -> int:
    """Samples drawn at once for ``length`` tokens each, a network window of ``window`` tokens and ``vocab``
    outputs per token: as many as keep every per-batch tensor under its cap, at least one. At a char
    vocabulary and a 256-token context that is 256 samples, so everyday requests stay a single batch."""
    seen = max(1, min(length, window))  # tokens of one sample in a forward (a sliding method sees a window)
    by_tokens = _TOKENS_PER_BATCH // seen
    by_logits = _LOGITS_PER_BATCH // (seen * max(1, vocab))
    by_ids = _IDS_PER_BATCH // max(1, length)
    return max(1, min(_MAX_TEXT_BATCH, by_tokens, by_logits, by_ids))


def image_batch_size(size: int) -> int:
    """Images drawn at once at ``size`` x ``size`` pixels: 500 at 28x28 (and smaller), fewer above."""
    return max(1, min(_MAX_IMAGE_BATCH, _PIXELS_PER_BATCH // max(1, size * size)))


def batches(n: int, size: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each batch of ``size`` covering ``n`` items."""
    return [(start, min(size, n - start)) for start in range(0, n, size)]


#: a request whose first batch says the whole will take longer than this (seconds) announces how long, so a
#: 100000-sample request says "about 7 h" at its start rather than leaving it to a progress bar
LONG_SAMPLING_S = 60.0


def duration(seconds: float) -> str:
    """A rough duration for a person: "40 s", "12 min", "1.5 h", "7 h"."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 10 and round(hours, 1) != round(hours) else f"{round(hours)} h"


def sampling_estimate(seconds: float, done: int, total: int, batch_size: int, batches: int) -> str | None:
    """What a request drawn in ``batches`` batches of ``batch_size`` will take in all, from the ``seconds`` its
    first ``done`` samples took: a line to print before the rest is drawn, or None when the whole is estimated
    at :data:`LONG_SAMPLING_S` or less (an ordinary request says nothing)."""
    if done <= 0 or done >= total:
        return None
    estimate = seconds * total / done
    if estimate <= LONG_SAMPLING_S:
        return None
    return (f"about {duration(estimate)} for {total} samples ({batches} batches of {batch_size}); Ctrl-C keeps "
            f"the finished ones")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def check_output_file(path: str | Path, flag: str, stream: bool = False) -> Path:
    """A file the command will write at the end (e.g. ``--trajectory``): its folder must exist already (no
    folders are made for it) and be writable, and the path must not be a folder or any other name that is not
    a regular file (:func:`textdiffusion.files.write_target`, the rule every write follows). A symbolic link
    is checked where it leads, as that is where the file is written; the path given is returned.

    ``stream``: the command writes into the file as it goes instead of replacing it (``sample --out``), so a
    device or a named pipe it may write to is fine too (``/dev/null``, ``/dev/stdout``, a pipe to a reader)."""
    p = Path(path).expanduser()
    if is_symlink_loop(p):
        raise ConfigError(f"{flag} {symlink_loop_message(p)}")
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder; pass a file name, e.g. {p / 'trajectory.json'}")
    if stream and (p.is_char_device() or p.is_fifo()):
        if not os.access(p, os.W_OK):
            raise ConfigError(f"{flag} {p}: cannot write to it (permission denied); pick a file you can write to")
        return p
    if (problem := not_regular_message(p)) is not None:
        raise ConfigError(f"{flag} {problem}")
    parent = write_target(p).parent
    if not parent.exists():
        raise ConfigError(f"{flag} {p}: the folder {parent} does not exist; create it first or pick another path")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: {parent} is a file, not a folder; pick another path")
    if not _writable(parent):
        raise ConfigError(f"{flag} {p}: cannot write in {parent} (permission denied); pick a folder you can "
                          f"write to")
    return p


def check_output_folder(path: str | Path, flag: str, files: tuple[str, ...] = ()) -> Path:
    """A folder the command writes ``files`` into; it is created if missing, so it must not be a file, the
    closest existing folder above it must be writable, and none of ``files`` may be a folder."""
    p = Path(path).expanduser()
    if is_symlink_loop(p):
        raise ConfigError(f"{flag} {symlink_loop_message(p)}")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a folder; pass a folder (it is created if missing)")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {p}: {existing} is a file, so no folder can be made under it; pick another "
                          f"path")
    if not _writable(existing):
        raise ConfigError(f"{flag} {p}: cannot write in {existing} (permission denied); pick a folder you can "
                          f"write to")
    for name in files:
        if (p / name).is_dir():
            raise ConfigError(f"{flag} {p}: {p / name} is a folder, so the file cannot be written; remove it "
                              f"or pick another folder")
        if (problem := not_regular_message(p / name)) is not None:
            raise ConfigError(f"{flag} {problem}")
    return p
