"""``textdiffusion sample``: generate text from a trained run through the Python API, optionally animated
(``--show``) or recorded step by step (``--trajectory``).

Each finished batch is written at once (to stdout, or appended to ``--out`` as JSON Lines and synced to disk),
so a long request interrupted by Ctrl-C or killed keeps every sample finished before it stopped."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, TYPE_CHECKING

from textdiffusion.apps.cli.checks import refuse_image_run
from textdiffusion.apps.cli.flags import (
    DELAY,
    DEVICE_HELP,
    RUN_DIR_HELP,
    SET_HELP,
    STEPS,
    add_decoding,
    add_set,
    command,
    number,
    positive,
    text_sampler_help,
)
from textdiffusion.catalogue import GUIDANCE_RULES
from textdiffusion.config import GUIDANCE, ConfigError

if TYPE_CHECKING:
    from textdiffusion.api.results import SampledBatch


def add(sub: argparse._SubParsersAction) -> None:
    s = command(sub, "sample", "generate text from a trained run",
                "Generate text from a trained run: unconditionally, after a --prompt, or filling the blanks of "
                "an --infill template. Samples go to stdout, one per block; statistics to stderr.",
                "examples:\n  textdiffusion sample runs/masked --prompt \"ROMEO:\" --n 4 --show\n"
                "  textdiffusion sample runs/masked --infill $'ROMEO:\\nO ____ art thou' --sampler confidence\n"
                "  textdiffusion sample runs/ar --length 500 --temperature 0.8 --top-p 0.95")
    s.add_argument("run_dir", help=RUN_DIR_HELP)
    s.add_argument("--prompt", help="text the sample must start with")
    s.add_argument("--infill", help="text with placeholder characters to fill in, e.g. 'O ____ art thou'")
    s.add_argument("--placeholder", default="_", help="the character that marks a blank in --infill")
    s.add_argument("--n", type=positive(int), default=1, help="number of samples")
    s.add_argument("--length", type=positive(int),
                   help="characters per sample, prompt included (default: the model's context); past the context, "
                        "masked, embedding and bits chain windows (see --overlap)")
    s.add_argument("--overlap", type=positive(int),
                   help="with --length past the context of a method that chains windows: characters each new "
                        "window starts with, fixed to the end of the text so far (default: half the context)")
    s.add_argument("--steps", type=number(int, STEPS),
                   help="denoising steps of a diffusion sampler (default: the run's method.sample_steps, else the "
                        "method's: one per token for masked)")
    s.add_argument("--sampler", help=text_sampler_help())
    add_decoding(s)
    s.add_argument("--label", metavar="NAME",
                   help="write as this label (a speaker, e.g. ROMEO) of a run trained with --set data.labels=speaker")
    s.add_argument("--guidance", type=number(float, GUIDANCE), metavar="W",
                   help="guidance toward --label: 0 = unconditional, 1 = plain conditional (default), above 1 "
                        "sharper")
    s.add_argument("--guidance-rule", choices=GUIDANCE_RULES,
                   help="free: classifier-free guidance, on a run trained with labels (the default); classifier: "
                        "a small classifier of the method's noisy states steers any run, trained on first use and "
                        "cached in RUN/speaker-classifier")
    s.add_argument("--show", action="store_true", help="animate the denoising in the terminal (on stderr)")
    s.add_argument("--delay", type=number(float, DELAY), default=0.03, help="seconds per frame of --show")
    s.add_argument("--trajectory", metavar="FILE", help="write every intermediate state to this JSON file")
    s.add_argument("--gif", metavar="FILE", help="draw the first sample's denoising as an animated GIF")
    s.add_argument("--out", metavar="FILE",
                   help="write the samples to this file instead of stdout, as JSON Lines ({\"text\": ...} a "
                        "line), each batch appended and synced as soon as it is drawn (Ctrl-C keeps them)")
    s.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="ema: the moving average of the weights, which eval scores; model: the raw weights")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_set(s, SET_HELP)
    s.add_argument("--no-progress", action="store_true", help="no progress bars (the results still print)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Draw ``--n`` texts through the Python API (:meth:`textdiffusion.api.TextModel.sample`: batches that
    bound memory, exactly the draws of one sampling for everyday requests), refusing counts and steps past
    :mod:`textdiffusion.limits` and an unwritable ``--trajectory`` before the run is even loaded."""
    from textdiffusion import limits
    from textdiffusion.api import TextModel, TextOptions, load

    limits.check_count(args.n, limits.MAX_TEXT_SAMPLES, "--n", "the most one command draws",
                       "draw more in several runs with different --seed")
    if args.steps:  # the method's own (smaller) limit is checked once the run is open
        limits.check_text_steps(args.steps, True, None)
    trajectory = limits.check_output_file(args.trajectory, "--trajectory") if args.trajectory else None
    gif = limits.check_output_file(args.gif, "--gif") if args.gif else None
    out = limits.check_output_file(args.out, "--out", stream=True) if args.out else None
    refuse_image_run(args.run_dir, "sample")
    model = load(args.run_dir, device=args.device, weights=args.weights, overrides=args.overrides)
    if not isinstance(model, TextModel):
        raise ConfigError(f"{args.run_dir} is an image run; use `textdiffusion mnist sample {args.run_dir}`")
    options = TextOptions(n=args.n, length=args.length or 0, sampler=args.sampler or "", steps=args.steps or 0,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          label=args.label or "", guidance=1.0 if args.guidance is None else args.guidance,
                          rule=args.guidance_rule or "", overlap=args.overlap or 0)
    text = {"infill": args.infill, "placeholder": args.placeholder}
    plan = model.plan(args.prompt or "", **text, options=options)
    if trajectory and plan.batches > 1:
        raise ConfigError(f"--trajectory records every step of every sample, at most {plan.batch_size} samples of "
                          f"this length (one batch); use --n <= {plan.batch_size} with --trajectory")
    if gif and plan.batches > 1:
        raise ConfigError(f"--gif records every step of the first batch, at most {plan.batch_size} samples of this "
                          f"length; use --n <= {plan.batch_size} with --gif")
    on_step, recorder = _sample_watchers(args, model.tokenizer)
    with SampleWriter(out) as writer:
        try:
            res = model.sample(args.prompt or "", **text, options=options, on_step=on_step,
                               progress=not args.no_progress, on_batch=writer.write)
        except KeyboardInterrupt:
            writer.finish()
            print(f"interrupted after {writer.written} of {args.n} samples; {writer.where()}", file=sys.stderr)
            return 130
        writer.finish()
    if gif:
        from textdiffusion.viz.text_gif import frames_of, save_denoising_gif

        save_denoising_gif(frames_of(recorder), gif, columns=min(res.length, 64), fixed=res.fixed)
        print(f"the denoising: {gif}", file=sys.stderr)
    if recorder and trajectory:
        recorder.write(trajectory, method=model.method, run=str(model.path), sampler=res.sampler, n=len(res.texts),
                       length=res.length, nfe=res.nfe, fixed=[res.fixed] * len(res.texts), final=res.texts)
    where = f", written to {out}" if out else ""
    chained = f" in {res.windows} windows overlapping by {res.overlap}" if res.windows > 1 else ""
    print(f"[{model.method} step {model.step}: {len(res.texts)} x {res.length} chars{chained}, sampler "
          f"{res.sampler}, {res.nfe:g} network evaluations per sample, {res.seconds:.2f}s{where}]", file=sys.stderr)
    if (bits := res.bits_per_token()) is not None:
        print(f"[exact: -log p of these draws under the draw that wrote them, {bits:.4f} bits per generated "
              f"{'character' if model.tokenizer.kind == 'char' else 'token'} on average]", file=sys.stderr)
    return 0


class SampleWriter:
    """Writes each finished batch of a sampling as it arrives (the ``on_batch`` of
    :meth:`~textdiffusion.api.TextModel.sample`), and says before the second batch how long the whole will take
    when that is long (:func:`textdiffusion.limits.sampling_estimate`).

    Without a file the texts go to stdout between the separator lines (flushed per batch; exactly the bytes
    one print of all texts gave). With a file each text is one JSON Lines record ``{"text": ...}``: a text may
    hold newlines and separators, a JSON line cannot be confused, and every line finished is a valid record,
    so the file stays readable whenever it stops. Each batch is written in one call, flushed and synced."""

    SEPARATOR = f"\n{'=' * 40}\n"

    def __init__(self, path: os.PathLike | None):
        self.path = path
        self.written = 0
        self._file: IO[str] | None = None

    def __enter__(self) -> SampleWriter:
        if self.path is not None:
            self._file = open(self.path, "w", encoding="utf-8")  # closed by __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, batch: SampledBatch) -> None:
        """One finished batch (a :class:`~textdiffusion.api.results.SampledBatch`), written through."""
        if self._file is not None:
            self._file.write("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in batch.texts))
            self._file.flush()
            if os.path.isfile(self.path):  # a device or a pipe has nothing to sync (fsync raises EINVAL there)
                os.fsync(self._file.fileno())
        else:
            sys.stdout.write("".join((self.SEPARATOR if batch.start + i else "") + t
                                     for i, t in enumerate(batch.texts)))
            sys.stdout.flush()
        self.written = batch.done
        if batch.batch == 0:
            from textdiffusion import limits

            note = limits.sampling_estimate(batch.seconds, batch.done, batch.total, len(batch.texts), batch.batches)
            if note:
                print(note, file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End stdout's last text with its newline (nothing to do for a file: each record ends its line)."""
        if self._file is None and self.written:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def where(self) -> str:
        """Where the samples written so far are, for the interrupt's message."""
        if not self.written:
            return "nothing written"
        return f"{self.written} written to {self.path}" if self._file is not None else \
            f"{self.written} printed above"


def _sample_watchers(args: argparse.Namespace, tokenizer):
    """The ``on_step`` callback for ``--show``, ``--trajectory`` and ``--gif`` (None when none is asked, so the
    sampler does no per-step work), and the trajectory recorder to write or draw afterwards (or None)."""
    from textdiffusion.viz import TerminalAnimation, TrajectoryRecorder

    callbacks = []
    if args.show:
        callbacks.append(TerminalAnimation(tokenizer, delay=args.delay))
    recorder = (TrajectoryRecorder(tokenizer, args.placeholder, keep_states=bool(args.gif))
                if args.trajectory or args.gif else None)
    if recorder:
        callbacks.append(recorder)

    def on_step(step, state, info):
        for cb in callbacks:
            cb(step, state, info)

    return (on_step if callbacks else None), recorder
