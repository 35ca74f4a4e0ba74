"""The one training loop. Every method trains here; a method only supplies ``loss``, ``nll`` and ``sample``.

AdamW with linear warmup and cosine decay, gradient clipping and accumulation, an EMA of the weights (used
for evaluation and sampling), bf16 autocast and optional ``torch.compile`` on CUDA. Training is exactly
resumable: weights, EMA, optimizer moments, the step and every random generator are checkpointed, and all
randomness flows through explicit generators, so a run stopped at step N and resumed ends bit-identical to
an uninterrupted one (on CPU; GPU kernels may be non-deterministic).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import inspect
import math
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from textdiffusion import distributed, files, loggers, precision
from textdiffusion.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    CheckpointHeader,
    TrainingCounters,
    has_checkpoint,
    read_header,
    read_run_meta,
    restore_training_state,
    rng_tensors,
    training_state,
    versions,
    write_checkpoint,
    write_json,
)
from textdiffusion.config import Config, ConfigError, validate
from textdiffusion.data.corpus import DataError
from textdiffusion.data.sources import SOURCES, Source, as_source, load_source
from textdiffusion.digests import VOCAB_FILE
from textdiffusion.distill_from import (
    Objective,
    Teacher,
    check_same_teacher,
    copy_teacher,
    distillation_objective,
    open_teacher,
)
from textdiffusion.final_score import budget_count, budget_label, score_key
from textdiffusion.init_from import load_init_weights
from textdiffusion.json_writing import to_json
from textdiffusion.methods import get_method
from textdiffusion.methods.base import REGISTRY, NLLResult, bits_key, score
from textdiffusion.network_size import check_network_fits
from textdiffusion.optim import warmup_cosine
from textdiffusion.progress import progress_bar
from textdiffusion.records import (
    METRICS,
    DistillRecord,
    EvalRow,
    ExactScore,
    FinalScore,
    InitRecord,
    MetricsRow,
    ScoreKey,
    TrainSummary,
    truncate_metrics,
)
from textdiffusion.run_dir import RunDirectory, finish_first_config
from textdiffusion.runs import (
    build,
    check_checkpoint_config,
    check_checkpoint_shapes,
    pick_device,
    read_run_config,
)
from textdiffusion.sharing import recorded_command, run_corpus_record
from textdiffusion.training_samples import write_training_samples

# windows the final score's exact NLL takes first, timed, when train.final_eval_budget bounds it
EXACT_PROBE = 8
StopReason = Literal["out_of_time", "interrupted"]  # why a loop ended before its target step

class TrainingAborted(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: training stops at once. The message says which checkpoint is intact."""


class TrainingDiverged(ConfigError):
    """The loss or the weights stopped being finite numbers; nothing non-finite is ever checkpointed."""


def lr_at(step: int, cfg: Config) -> float:
    """The run's learning rate at ``step`` (:func:`textdiffusion.optim.warmup_cosine`)."""
    t = cfg.train
    return warmup_cosine(step, t.steps, t.lr, t.min_lr, t.warmup)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """Decay matrices (and embeddings), not gains or biases (nanoGPT's grouping)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.train.beta1, cfg.train.beta2)
    try:  # the fused kernel is several times faster than the per-tensor loop, on CPU as on CUDA
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # a device/dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=betas)


class EMA:
    """Exponential moving average of the weights, kept as a full model so it can be evaluated directly.

    With ``warmup`` the decay ramps as min(decay, (1 + n) / (10 + n)) so early, random weights are
    forgotten quickly (the schedule of tf.train.ExponentialMovingAverage's num_updates)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - d)


def _require_labels(method: Any) -> None:
    """Labelled data needs a method that builds a label-conditioned model; the error names those that do."""
    if not getattr(method, "supports_labels", False):
        able = sorted(name for name, cls in REGISTRY.items() if getattr(cls, "supports_labels", False))
        use = " or ".join(filter(None, (", ".join(able[:-1]), able[-1]))) if able else "a text method"
        raise DataError(f"data.labels=speaker trains a label-conditioned model, which the {method.name} method does "
                        f"not build; use {use}")


def job_device(cfg: Config, world: distributed.World) -> torch.device:
    """The device of this process: ``train.device``, and under torchrun on GPUs the one of its local rank."""
    device = pick_device(cfg.train.device)
    if world.active and device.type == "cuda":
        if cfg.train.device not in ("auto", "cuda"):
            raise ConfigError(f"train.device={cfg.train.device} names one GPU, but torchrun gives each process its "
                              f"own (LOCAL_RANK); use --device cuda (train.device=cuda)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def _maybe_compile(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: ``torch.compile``d for ``train.compile`` "on", or "auto" on CUDA.

    Only the forward pass goes through it; the optimizer, EMA and checkpoints keep the plain module."""
    if mode == "on" or (mode == "auto" and device.type == "cuda"):
        return torch.compile(model)
    return model


@dataclass
class _Meter:
    """The loop's running accounting, shown on the progress bar and in each metrics row.

    ``loss`` is an exponential moving average of the per-step training loss (None before the first step);
    ``rate`` is the throughput in units (characters or images) per second of training time since the last
    evaluation, so evaluation time never counts against it; ``val_bits`` is the last validation number;
    ``mfu`` the model FLOPs utilisation of that rate, on a GPU whose peak is known (else None).

    The bar shows the loss as ``loss_name`` times ``loss_scale``: a likelihood loss (nats per token) in bits, the
    validation number's unit, so the two read side by side; a surrogate objective as it is, named so."""

    val_name: str  # "bpc" or "bpd", as the bar labels the validation number
    unit_name: str  # "chars" or "img", as the bar labels the rate
    loss_name: str = "loss"
    loss_scale: float = 1.0
    flops_per_unit: float | None = None
    peak_flops: float | None = None
    devices: int = 1
    loss: float | None = None
    units: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    val_bits: float | None = None

    def record(self, loss: float, units: int, seconds: float) -> None:
        """Account one step."""
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        self.units += units
        self.seconds += seconds
        if self.seconds > 0:
            self.rate = self.units / self.seconds

    def end_interval(self) -> float:
        """The rate since the last evaluation, for this evaluation's row; the next interval starts at zero."""
        self.rate = self.units / max(self.seconds, 1e-9)
        self.units, self.seconds = 0, 0.0
        return self.rate

    @property
    def mfu(self) -> float | None:
        if self.flops_per_unit is None:
            return None
        return precision.mfu(self.flops_per_unit, self.rate, self.peak_flops, self.devices)

    def postfix(self) -> str:
        val = "-" if self.val_bits is None else f"{self.val_bits:.3f}"
        mfu = "" if self.mfu is None else f" | MFU {self.mfu:.0%}"
        return (f"{self.loss_name} {self.loss * self.loss_scale:.3f} | val {self.val_name} {val} | "
                f"{self.rate:,.0f} {self.unit_name}/s{mfu}")


def _loss_label(method: Any, cfg: Config) -> tuple[str, float]:
    """How the bar shows ``method``'s training loss: its name and the factor from the loss's own unit. A
    likelihood in nats per token becomes bits per character (``train bpc``) with the character tokenizer, whose
    tokens are characters, else bits per token; any other objective is shown as it is."""
    if cfg.train.distill_from:
        return "distill KL", 1.0
    if not method.loss_is_likelihood:
        return "objective", 1.0
    per = "train bpc" if cfg.data.tokenizer == "char" else "train bits/token"
    return per, 1 / math.log(2)


def _saved_loss(value: Any) -> float | None:
    """The smoothed training loss a checkpoint recorded; a checkpoint written before it was kept (or one whose
    record is not a finite number) starts the average afresh, as those versions did."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class _StopFlag:
    """Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, Slurm and docker send) both ask the loop to save and stop
    at the next step boundary, and say so at once. A second signal aborts without saving, except while a
    checkpoint is being written: then it waits until the write is complete, so no signal costs a checkpoint.
    With ``abort_at_once`` (final scoring, which has no step boundaries) the first signal aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log: Callable[[str], None], resume_hint: Callable[[], str]):
        self.log, self.resume_hint = log, resume_hint
        self.requested = False
        self.abort_at_once = False
        self._saving = False
        self._deferred: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.abort_at_once:  # final scoring: the trainer says what to do once the scoring has stopped
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.log(f"\n{name}: stopping at the end of this step and saving a checkpoint (send it again to "
                     f"abort; the last checkpoint stays usable)")
            return
        if self._saving:
            self._deferred = name
            self.log(f"\n{name}: a checkpoint is being written; aborting as soon as it is complete")
            return
        raise TrainingAborted(f"aborted without saving; {self.resume_hint()}")

    @contextlib.contextmanager
    def saving(self):
        """Defer signals for the duration of a checkpoint write; a deferred one aborts right after it."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
            if self._deferred:
                self._deferred = None
                raise TrainingAborted(f"aborted once the checkpoint was complete; {self.resume_hint()}")

    def __exit__(self, *exc) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        return False


# the errors of a write that a full or read-only disk gives, named as such by :meth:`Trainer._write_failed`
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class Trainer:
    """One run: builds the method, model, EMA and optimizer from a config, owns the run directory and trains.

    ``resume`` reloads the checkpoint of ``run_dir`` (weights, optimizer, step, random generators) instead of
    starting a new directory; :meth:`train` then carries on as if it had never stopped. The trainer holds the
    run's lock (:mod:`textdiffusion.run_lock`) from construction until :meth:`train` returns, so one process
    at a time writes a run."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True,
                 data: Any = None, log: Callable[[str], None] | None = None):
        """``data``: a TextData or ImageData already loaded (tests, benchmarks), else read from the config."""
        validate(cfg)
        # a missing logger package is an error now, not after the first steps
        loggers.require(cfg.train.logger, Path(run_dir) / "config.json" if resume else None)
        self.world = distributed.current_world()
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress and self.world.is_main
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        if not self.world.is_main:  # rank 0 speaks for the job
            self.log = lambda msg: None
        self._check_shards(cfg, resume)
        self.device = job_device(cfg, self.world)
        distributed.init(self.world, self.device)
        method_class = get_method(cfg.method.name)
        self.dir = RunDirectory(self.run_dir, method_class.command, self.log)
        self.lock = self.dir.lock
        self._stop: _StopFlag | None = None
        self.saved_step: int | None = None  # the step of the checkpoint on disk (None: none yet)
        self._saved_at = time.monotonic()  # when it was written (train.save_every_s counts from here)
        if self.world.is_main:
            source = SOURCES[method_class.family]
            self.dir.claim(resume, source.vocab_file if source.resume_needs_vocab else None)
        distributed.barrier(self.world)  # the others read what rank 0 has claimed (or find it missing)
        try:
            # the id config.json and every checkpoint record: the run's own, or a new one (rank 0's for a job)
            self.run_id = (str(read_run_meta(self.run_dir).get("run_id", "")) if resume
                           else distributed.broadcast(uuid.uuid4().hex, self.world))
            header = read_header(self.run_dir) if resume and has_checkpoint(self.run_dir) else None
            if header is not None:
                check_checkpoint_config(header, cfg, self.run_id, resume=True)  # an edited config.json: refused
            self._build(cfg, data, resume and (self.run_dir / "tokenizer.json").exists())
            # the run a train.init_from run started from: recorded in config.json, reloaded only before step 0
            self.init: InitRecord | None = (InitRecord.from_json(read_run_meta(self.run_dir).get("init_from"))
                                            if resume else None)
            # a student's teacher (train.distill_from): loaded on every start, the loss needs it at every step
            self.teacher: Teacher | None = None
            self.objective: Objective | None = None  # the loss in place of the method's (None: the method's)
            if cfg.train.distill_from:
                self.teacher = open_teacher(cfg, self.source.vocab, self.method, self.device)
                self.objective = distillation_objective(self.method, self.teacher, cfg.train.distill_substeps,
                                                        cfg.train.distill_draws)
                if resume:
                    check_same_teacher(self.teacher, DistillRecord.from_json(
                        read_run_meta(self.run_dir).get("distill_from")), self.run_dir)
            if header is not None:
                check_checkpoint_shapes(header, self.model, self.run_dir)
                self._load(header)
            else:
                if self.teacher is not None:
                    copy_teacher(self.teacher, self.model, self.ema.model)
                    if self.progress:
                        record = self.teacher.record
                        self.log(f"distilling {record.teacher.run} (step {record.teacher.step}): {record.steps} "
                                 f"sampling steps to match its {record.teacher_steps}")
                if cfg.train.init_from:
                    self.init = load_init_weights(cfg.train.init_from, cfg, self.source.vocab, self.model)
                    self.ema.model.load_state_dict(self.model.state_dict())
                    if self.progress:
                        self.log(f"starting from the EMA weights of {self.init.run} (step {self.init.step})")
                self._start_run(fresh=not resume)
        except BaseException:
            self.dir.abandon()
            raise

    def _check_shards(self, cfg: Config, resume: bool) -> None:
        """Every process needs at least one data shard, and the shards must split evenly: a new run under
        torchrun gets one shard per process; a resumed run keeps its count (see :mod:`.distributed`)."""
        t, size = cfg.train, self.world.size
        if not resume and t.data_shards == 1 and size > 1:
            t.data_shards = size
        if t.data_shards % size:
            what = "this run splits" if resume else "train.data_shards splits"
            raise ConfigError(f"{what} each batch into {t.data_shards} data shards, which {size} processes cannot "
                              f"share evenly; run with a number of processes that divides {t.data_shards}")

    def _build(self, cfg: Config, data: Any, saved_vocab: bool) -> None:
        """Data, method, model, EMA, optimizer and generators: the state at step 0."""
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.seed)  # before the model is built: its initial weights come from this stream

        # data, method and model
        saved = self.run_dir if saved_vocab else None
        kind = get_method(cfg.method.name).family  # what the data is: text or images
        self.source: Source = load_source(cfg, saved, kind) if data is None else as_source(data, saved, cfg)
        self.data = self.source.data  # the TextData / ImageData behind the source
        check_network_fits(lambda: build(cfg, self.source.vocab)[1], self.device)  # before a byte is allocated
        self.method, model = build(cfg, self.source.vocab)
        if hasattr(self.source, "label_names"):  # labelled text: the names the samplers take
            _require_labels(self.method)
            self.method.label_names = tuple(self.source.label_names)
        self.source.check(self.method)
        for option, path in self.method.companion_runs().items():  # checked now, not at the first sampling
            if not (Path(path) / "config.json").is_file():
                raise ConfigError(f"{option}={path} is not a run directory (no config.json); pass the directory of "
                                  f"a trained run, or leave it empty")
        self.model = model.to(self.device)
        self.n_parameters = sum(p.numel() for p in self.model.parameters())  # any network, not only ours
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.opt = make_optimizer(self.model, cfg)
        if self.world.rank > 0:  # dropout and other global draws differ per process; rank 0 keeps the seed's
            torch.manual_seed(cfg.seed + distributed.SHARD_STRIDE * self.world.rank)

        # training state: everything a checkpoint holds, so a resumed run continues bit for bit. Each data
        # shard has its own generators; shard 0's are those of a one-process run (see textdiffusion.distributed)
        self.shards = self.world.shards(cfg.train.data_shards)
        stride = distributed.SHARD_STRIDE
        self.shard_gens = [(torch.Generator().manual_seed(cfg.seed + stride * s),  # batches are cut on the CPU
                            torch.Generator(device=self.device).manual_seed(cfg.seed + 1 + stride * s))
                           for s in self.shards]
        self.data_gen, self.noise_gen = self.shard_gens[0]
        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over resumes, evaluation excluded
        self.chars_seen = 0  # units seen: characters for text, images for images
        self.interval = loggers.Interval()  # the steps since the last train row (checkpointed)
        self.smoothed_loss: float | None = None  # the bar's and the evaluation rows' train_loss (checkpointed)
        self.logger = loggers.RunLogger(None)  # train.logger, opened by train() on rank 0
        self.val_windows = self.source.val_set(self.method.window, cfg.train.eval_windows).to(self.device)
        # train.eval_exact_windows: the windows of the exact NLL beside a bound at each evaluation (None: none)
        self.exact_windows = (self.source.val_set(self.method.window, cfg.train.eval_exact_windows).to(self.device)
                              if cfg.train.eval_exact_windows and getattr(self.method, "exact_sampler", "") else None)

        # how the forward pass runs (compiled and in bf16 on CUDA by default)
        self.ddp = None
        if self.world.active and self.method.parameters_in_forward_only:  # gradients averaged over the processes
            # during backward; only a method whose steps may skip parameters pays for DDP's search for them
            self.ddp = distributed.DataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                                else None,
                                                find_unused_parameters=self.method.leaves_parameters_unused)
        self.forward_model = _maybe_compile(self.ddp or self.model, cfg.train.compile, self.device)
        self.autocast = precision.autocast(cfg.train.amp, self.device)
        self.precision = precision.resolve(cfg.train.amp, self.device)
        self.tf32 = precision.enable_tf32(self.device)
        # model FLOPs per unit, for the utilisation of a GPU whose peak is known (transformer methods)
        self.flops_per_unit = self.method.flops_per_unit(self.n_parameters)
        self.peak_flops = precision.peak_flops(self.device)

    # ---- run directory ---------------------------------------------------------------------------------
    @property
    def resume_command(self) -> str:
        return self.dir.resume_command

    def _start_run(self, fresh: bool) -> None:
        """Write the run's records and its step-0 checkpoint, so a run that dies at any later moment can be
        resumed. ``fresh=False``: a run that died before its first checkpoint is started again from step 0,
        keeping its config.json."""
        rd = self.run_dir
        if self.world.is_main:
            self.dir.start_records(self._run_meta() if fresh else None, self.source.save_vocab,
                                   tuple(source.vocab_file for source in SOURCES.values()))
        self.save()
        if self.progress and fresh:
            self.log(f"run directory: {rd} ({self.n_parameters:,} parameters, {self.device})")

    def _run_meta(self) -> dict[str, Any]:
        """config.json of a new run: the resolved config, the corpus it read, where and how it trains, and the
        command line that started it (``argv``, for the model card of an export). The corpus record and the
        command line name paths in a form that travels (:mod:`textdiffusion.sharing`); the config keeps
        ``data.corpus`` as it was given, since ``train --config`` and resume read it."""
        corpus = run_corpus_record(self.source.record(), self.run_dir)
        return {"config": self.cfg.to_dict(), "seed": self.cfg.seed, "versions": versions(),
                "corpus": corpus, "argv": recorded_command(),
                "parameters": self.n_parameters, "device": str(self.device),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_id": self.run_id,
                "precision": self.precision, "tf32": self.tf32,
                **({"init_from": self.init.to_json()} if self.init is not None else {}),
                **({"distill_from": self.teacher.record.to_json()} if self.teacher is not None else {}),
                **({"world_size": self.world.size} if self.world.active else {})}

    def save(self) -> None:
        """Checkpoint everything :meth:`_load` needs to continue exactly: weights, EMA, optimizer moments,
        random generators, step, training time and units seen, in one atomic write (see
        :mod:`textdiffusion.checkpoint`). Non-finite weights are refused, so the checkpoint on disk is always
        one that samples; a signal during the write waits for it to complete."""
        self._check_finite()
        rng: dict[str, torch.Tensor] = {}
        for part in distributed.gather(rng_tensors(self.shards, self.shard_gens, self.world.rank), self.world):
            rng.update(part)  # every process's generators: the one writer saves them all
        if not self.world.is_main:
            self.saved_step, self._saved_at = self.step, time.monotonic()
            return
        counters = TrainingCounters(self.step, self.elapsed, self.chars_seen, self.world.size,
                                    self.interval.to_state(), self.smoothed_loss)
        groups, state = training_state(self.model, self.ema.model, self.opt, rng, counters)
        guard = self._stop.saving() if self._stop is not None else contextlib.nullcontext()
        with guard:
            try:
                write_checkpoint(self.run_dir, groups, state, self.cfg.to_dict(), self.run_id, self._vocab_record())
            except (OSError, SafetensorError) as e:  # a full disk, a file-size limit, a vanished directory
                why = f"could not write the checkpoint of step {self.step} to {self.run_dir / CHECKPOINT} " \
                      f"({getattr(e, 'strerror', None) or e})"
                if self.saved_step is None:  # a resume of this run starts again from step 0
                    raise CheckpointError(f"{why}; no checkpoint was written yet: free space and run "
                                          f"`{self.resume_command}` (it starts again from step 0)") from None
                raise CheckpointError(f"{why}; the checkpoint at step {self.saved_step} is intact: free space and "
                                      f"run `{self.resume_command}`") from None
            self.saved_step = self.step
            self._saved_at = time.monotonic()

    def _vocab_record(self) -> dict[str, Any] | None:
        """The tokenizer the weights are trained with, whose digest the checkpoint records (image runs: None)."""
        return self.source.vocab.to_dict() if self.source.vocab_file == VOCAB_FILE else None

    def _check_finite(self) -> None:
        for label, net in (("weights", self.model), ("EMA weights", self.ema.model)):
            bad = [name for name, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad:
                raise TrainingDiverged(self._diverged(f"the {label} became non-finite ({bad[0]}, ...)"))

    def _diverged(self, what: str) -> str:
        kept = ("no checkpoint was written" if self.saved_step is None else
                f"the checkpoint at step {self.saved_step} is intact")
        return (f"{what} at step {self.step}; {kept}, but resuming replays the same steps: train a new run with a "
                f"lower train.lr or a longer train.warmup")

    def _load(self, header: CheckpointHeader) -> None:
        rd = self.run_dir
        state = header.state
        restore_training_state(header, self.model, self.ema.model, self.opt, self.shards, self.shard_gens,
                               self.world.rank)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world.size:
            self.log(f"resuming on {self.world.size} process(es) a run saved on {saved_world}: its "
                     f"{self.cfg.train.data_shards} data shards draw exactly as before; dropout draws differ")
        self.step, self.elapsed, self.chars_seen = state["step"], state["elapsed"], state.get("chars_seen", 0)
        self.interval = loggers.Interval.from_state(state.get("log_interval"))
        self.smoothed_loss = _saved_loss(state.get("smoothed_loss"))
        self.saved_step = self.step
        if self.progress:
            self.log(f"resuming {rd} from its checkpoint at step {self.step} ({header.path.name})")
        # forget metrics written after the checkpoint we resume from (they will be recomputed)
        truncate_metrics(rd, self.step)

    # ---- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, windows: torch.Tensor, model: torch.nn.Module | None = None, progress: bool = False,
                 desc: str = "", exact: bool = False) -> NLLResult:
        """The method's validation NLL of ``windows`` under ``model`` (default: the EMA weights); ``progress``:
        a bar over its batches on stderr (the evaluations inside the loop have the training bar instead);
        ``exact``: the exact NLL of the method's ``exact_sampler`` instead of its bound."""
        model = model or self.ema.model
        model.eval()
        with self.autocast():
            return score(self.method, model, windows, batch_size=self.score_batch_size, progress=progress, desc=desc,
                         exact=exact)

    def _score_within(self, windows: Any, deadline: float) -> NLLResult | None:
        """The EMA weights' score of ``windows``, or None once ``time.perf_counter()`` passes ``deadline``
        (checked after each batch): the final score's larger count is dropped rather than overrun its budget.
        A method whose ``nll`` takes no ``progress`` cannot be stopped and is scored whole."""

        class OverBudget(Exception):
            pass

        bar = None

        def tick(done: int, total: int) -> None:
            nonlocal bar
            if self.progress:
                if bar is None:  # opened once the total is known, as every scoring bar is
                    bar = progress_bar(total=total, desc="final score, EMA weights", unit="batch")
                bar.update(done - bar.n)
            if time.perf_counter() > deadline and done < total:
                raise OverBudget

        if "progress" not in inspect.signature(self.method.nll).parameters:
            return self.evaluate(windows.to(self.device), progress=self.progress, desc="final score, EMA weights")
        self.ema.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                return self.method.nll(self.ema.model, windows.to(self.device), batch_size=self.score_batch_size,
                                       progress=tick)
        except OverBudget:
            return None
        finally:
            if bar is not None:
                bar.close()

    @property
    def score_batch_size(self) -> int:
        """The batch the validation windows are scored in (part of a score's key: it can move the last bits)."""
        return max(self.cfg.train.batch_size, 64)

    def write_samples(self) -> None:
        # not cfg.seed itself: the weights were initialised from that stream, and a sampler whose starting
        # noise equals a freshly initialised embedding table "decodes" it (ids 0, 1, 2, ... in order)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 7919)
        with self.autocast():
            write_training_samples(self.method, self.ema.model, self.source.vocab, gen, self.run_dir, self.step)

    # ---- the loop --------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None, on_step: Callable[[int], None] | None = None) -> TrainSummary:
        """Train to ``train.steps`` (or to ``stop_at``, for tests and benchmarks), evaluating and checkpointing
        every ``train.eval_every`` steps; returns the run's summary (also final.json when the run finished).

        A time budget or Ctrl-C stops at the next step boundary with a checkpoint; ``on_step(step)`` is
        called after every step."""
        cfg, t = self.cfg, self.cfg.train
        target = min(t.steps, stop_at) if stop_at else t.steps
        units_per_step = self.source.units(t.batch_size, self.method.window) * t.grad_accum * t.data_shards
        loss_name, loss_scale = _loss_label(self.method, cfg)
        meter = _Meter(val_name=bits_key(self.method.unit)[4:],
                       unit_name="chars" if self.source.unit == "chars" else "img",
                       loss_name=loss_name, loss_scale=loss_scale,
                       flops_per_unit=self.flops_per_unit, peak_flops=self.peak_flops, devices=self.world.size,
                       loss=self.smoothed_loss)
        stopped: StopReason | None = None
        if self.world.is_main:
            self.lock.acquire()
            self.logger = loggers.open_logger(t.logger, self.run_dir, self.run_id, self.step, cfg.to_dict(), self.log)
        self._stop = _StopFlag(self.log, self._abort_hint)
        try:
            with self._stop as stop:
                bar = self._progress_bar()
                try:
                    while self.step < target:
                        # -- stop at a step boundary: time budget spent, Ctrl-C or SIGTERM
                        stopped, save_due = self._at_boundary(stop)
                        if stopped:
                            break
                        # -- a recent checkpoint for readers of a run in training: every train.save_every_s
                        if save_due and self.saved_step != self.step:
                            self.save()
                        # -- one optimizer step
                        tic = time.perf_counter()
                        lr = lr_at(self.step, cfg)
                        loss, grad_norm = self._optimizer_step(lr)
                        dt = time.perf_counter() - tic
                        # -- accounting
                        self.elapsed += dt
                        self.chars_seen += units_per_step
                        meter.record(loss, units_per_step, dt)
                        self.smoothed_loss = meter.loss
                        # -- a train row every train.log_every steps (and at the last)
                        if t.log_every:
                            self.interval.add(loss, grad_norm, units_per_step, dt)
                            if self.step % t.log_every == 0 or self.step == t.steps:
                                self._log_train_row(lr)
                        # -- evaluate, sample and checkpoint
                        if self._eval_due():
                            rate = meter.end_interval()
                            meter.val_bits = self._evaluate_and_save(lr, meter.loss, rate, meter.mfu)
                        # -- progress, and the caller's hook
                        bar.update(1)
                        bar.set_postfix_str(meter.postfix(), refresh=False)
                        if on_step:
                            on_step(self.step)
                finally:
                    bar.close()
                if stopped is None and stop.requested:
                    # the signal came during the loop's last step (its evaluation, or the caller's hook): the
                    # loop ended on its target, and the stop still has to reach the caller and skip final scoring
                    stopped = "interrupted"

                # checkpoint where the loop ended, unless the last step's evaluation just did
                if self.saved_step != self.step:
                    self.save()
                summary = self._summary(stopped)
                # a spent time budget ends the run as if it had finished; a signal and stop_at leave it to resume
                finished = self.step >= t.steps or stopped == "out_of_time"
                if stopped != "interrupted" and finished and self.world.is_main:
                    stop.abort_at_once = True  # scoring has no step boundary to stop at
                    try:
                        self._final_score(summary)
                        self._log_final(summary)
                    except KeyboardInterrupt:
                        summary.interrupted = summary.scoring_interrupted = True
            return summary
        except OSError as e:
            if e.errno not in WRITE_FAILURES:
                raise
            raise CheckpointError(self._write_failed(e)) from None
        finally:
            self._stop = None
            self.logger.close()
            self.lock.release()

    def _write_failed(self, e: OSError) -> str:
        """The one line for a record that could not be written mid-run (metrics.jsonl, a sample file,
        final.json): the file (the target, not the atomic write's temporary), why, and what is intact."""
        name = Path(e.filename) if e.filename else None
        if name is not None and (own := re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name.name)):
            name = name.with_name(own.group(1))  # atomic_write's temporary ``.NAME.XXXX.tmp``
        where = str(name) if name is not None else f"a file in {self.run_dir}"
        if self.saved_step is None:
            return (f"could not write {where} ({e.strerror}); no checkpoint was written yet: free space and run "
                    f"`{self.resume_command}` (it starts again from step 0)")
        return (f"could not write {where} ({e.strerror}); the checkpoint at step {self.saved_step} is intact: free "
                f"space and run `{self.resume_command}`")

    def _abort_hint(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"the checkpoint at step {self.saved_step} is intact: `{self.resume_command}` continues from it"

    # ---- the loop's parts, in the order it calls them --------------------------------------------------
    def _progress_bar(self) -> tqdm:
        return progress_bar(total=self.cfg.train.steps, initial=self.step, disable=not self.progress,
                            desc=f"{self.cfg.method.name}/{self.cfg.preset}", unit="step")

    def _at_boundary(self, stop: _StopFlag) -> tuple[StopReason | None, bool]:
        """Why the loop stops here, if it does: ``"out_of_time"`` once ``train.time_budget_s`` of training is
        spent, ``"interrupted"`` after a Ctrl-C or SIGTERM, else None; and whether ``train.save_every_s`` of
        wall time have passed since the last checkpoint. The loop asks before each step, so every stop leaves a
        whole step behind; the processes of a torchrun job agree on both in one collective (a checkpoint is
        one too), whichever of them saw the clock or the signal first."""
        t = self.cfg.train
        save_due = t.save_every_s > 0 and time.monotonic() - self._saved_at >= t.save_every_s
        out_of_time, requested, save_due = distributed.any_true(
            [t.time_budget_s > 0 and self.elapsed >= t.time_budget_s, stop.requested, save_due],
            self.world, self.device)
        if out_of_time:
            return "out_of_time", save_due
        if requested:
            return "interrupted", save_due
        return None, save_due

    def _optimizer_step(self, lr: float) -> tuple[float, float]:
        """One update at learning rate ``lr`` over ``train.grad_accum`` micro-batches of each of this process's
        data shards; returns its loss and the global gradient norm before clipping (nan unless
        ``train.log_every`` asks for it: it is read, never changed, so logging leaves the update as it was).

        Each micro-batch's loss is divided by the local count before ``backward``, and DDP averages the
        gradients over the processes, so the update and the returned loss are the means over the whole global
        batch. The gradients are all-reduced once, with the last micro-batch (``no_sync`` before it). Returns
        once the device has finished, so the caller's clock times the work rather than its queueing."""
        t = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        self.method.at_training_step(self.step)
        total = 0.0
        draws = [gens for _ in range(t.grad_accum) for gens in self.shard_gens]
        objective = self.objective or self.method.loss
        for i, (data_gen, noise_gen) in enumerate(draws):
            x = self.source.train_batch(t.batch_size, self.method.window, data_gen)
            x = x.to(self.device, non_blocking=True)
            last = i == len(draws) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                with self.autocast():
                    loss = objective(self.forward_model, x, noise_gen) / len(draws)
                loss.backward()
            total += float(loss.detach())
        total = distributed.all_mean(total, self.world, self.device)
        if self.world.active and self.ddp is None:
            distributed.average_gradients(list(self.model.parameters()), self.world)
        if not math.isfinite(total):
            self.opt.zero_grad(set_to_none=True)
            raise TrainingDiverged(self._diverged(f"the training loss became {total}"))
        norm = None
        if t.grad_clip > 0:  # the gradients are averaged over the processes by now: the norm is the global one
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        elif t.log_every:
            norm = _grad_norm(self.model.parameters())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return total, float(norm) if norm is not None and t.log_every else math.nan

    def _eval_due(self) -> bool:
        """Whether the step just taken evaluates and checkpoints: every ``eval_every`` steps and the last."""
        return self.step % self.cfg.train.eval_every == 0 or self.step == self.cfg.train.steps

    def _evaluate_and_save(self, lr: float, train_loss: float | None, rate: float,
                           mfu: float | None = None) -> float:
        """Score the EMA weights on the validation windows, append the metrics row, write samples (if
        ``train.sample_every_eval``) and checkpoint; returns the validation bits per unit for the progress bar.

        Under torchrun rank 0 alone scores the windows (the others wait in the checkpoint's collective), so the
        number is the one a single process computes, draw for draw."""
        if not self.world.is_main:
            self.save()
            return float("nan")
        val = self.evaluate(self.val_windows)
        exact = self.evaluate(self.exact_windows, exact=True) if self.exact_windows is not None else None
        self._log_metrics(EvalRow(self.step, train_loss, val.unit, val.bits_per_unit, val.nats_per_unit, val.kind,
                                  val.windows, lr, self.source.unit, rate, self.elapsed, mfu,
                                  exact.nats_per_unit if exact else None, exact.windows if exact else None))
        if self.cfg.train.sample_every_eval:
            self.write_samples()
        self.save()
        return val.bits_per_unit

    def _log_train_row(self, lr: float) -> None:
        """Append the train row of the steps since the last one and start the next interval. Every process
        keeps the interval (the checkpoint saves rank 0's); rank 0 writes the row."""
        tokens = self.method.forward_tokens_per_unit if self.source.unit == "chars" else None
        row = self.interval.row(self.step, lr, self.elapsed, self.source.unit, tokens)
        if self.flops_per_unit is not None:
            row.mfu = precision.mfu(self.flops_per_unit, row.rate, self.peak_flops, self.world.size)
        self.interval = loggers.Interval()
        if self.world.is_main:
            self._log_metrics(row)

    def _log_metrics(self, row: MetricsRow) -> None:
        """Append a row to metrics.jsonl (the record) and then hand it to ``train.logger``."""
        data = row.to_json()
        files.append_line(self.run_dir / METRICS, to_json(data))
        self.logger.log(data)

    def _log_final(self, summary: TrainSummary) -> None:
        """The end-of-training validation numbers (final.json's) to ``train.logger`` as ``final/...``."""
        if summary.score is not None:
            self.logger.log({"step": self.step, "kind": "final", **summary.score.to_json()})

    def _summary(self, stopped: StopReason | None) -> TrainSummary:
        return TrainSummary(str(self.run_dir), self.step, self.cfg.train.steps, self.elapsed,
                            stopped == "interrupted", stopped == "out_of_time",
                            self.chars_seen / max(self.elapsed, 1e-9), self.source.unit, init=self.init,
                            distill=self.teacher.record if self.teacher is not None else None)

    def _final_score(self, summary: TrainSummary) -> None:
        """Score the validation split with the EMA weights, and with the raw weights too if
        ``train.final_eval_raw``; add the numbers to ``summary`` and write it as final.json, the run's headline
        result. How many windows: ``train.final_eval_windows``, or with 0 the whole split, or with
        ``train.final_eval_budget`` what that fraction of the training time pays for
        (:func:`~textdiffusion.final_score.budget_count`). final.json records the count, the split's count and
        the score's key, which lets ``eval`` return this number instead of computing it again."""
        t, window = self.cfg.train, self.method.window
        started = time.perf_counter()
        total = len(self.source.val_set(window, 0))
        count = min(t.final_eval_windows, total) if t.final_eval_windows else total
        what = "images" if self.source.unit == "images" else "windows"
        budget = t.final_eval_budget if not t.final_eval_windows else 0.0
        ema_val = None
        probe = min(total, t.eval_windows or total)
        if budget > 0 and probe < total:
            if self.progress:
                self.log(f"scoring {probe:,} of {total:,} validation {what} with the EMA weights, timed: the final "
                         f"score may take {budget_label(budget)} of the {self.elapsed:.1f}s of training ...")
            tic = time.perf_counter()
            ema_val = self.evaluate(self.source.val_set(window, probe).to(self.device), progress=self.progress,
                                    desc="final score, EMA weights")
            count = budget_count(total, probe, time.perf_counter() - tic, budget * self.elapsed,
                                 2 if t.final_eval_raw else 1)
            if count != probe:  # more windows, unless a slower machine (load) makes them overrun the budget
                if self.progress:
                    part = f"{count:,} of {total:,} validation {what}" if count < total else f"all {total:,} {what}"
                    self.log(f"scoring {part} with the EMA weights ...")
                larger = self._score_within(self.source.val_set(window, count if count < total else 0),
                                            tic + budget * self.elapsed)
                if larger is not None:
                    ema_val = larger
                else:
                    self.log(f"scoring {count:,} {what} ran past the budget (a slower machine than the timing "
                             f"said); the final score keeps the {probe:,} already scored")
                    count = probe
        windows = self.source.val_set(window, count if count < total else 0).to(self.device)
        if ema_val is None:
            if self.progress:
                self.log(f"scoring the validation split with the EMA weights ({count:,} {what}) ...")
            ema_val = self.evaluate(windows, progress=self.progress, desc="final score, EMA weights")
        batch = self.score_batch_size
        summary.score = score = FinalScore(
            ema_val.unit, ema_val.bits_per_unit, ema_val.nats_per_unit, ema_val.kind, ema_val.windows, ema_val.details,
            windows_of=total, units=ema_val.units, budget=budget if budget > 0 and count < total else None,
            key=score_key(self.cfg, self.ema.model, self.step, count, self.device, batch))
        if t.final_eval_raw:
            raw_val = self.evaluate(windows, self.model, progress=self.progress, desc="final score, raw weights")
            score.raw_bits, score.raw_nats = raw_val.bits_per_unit, raw_val.nats_per_unit
        if getattr(self.method, "exact_sampler", "") and t.final_exact_windows:
            left = budget * self.elapsed - (time.perf_counter() - started) if budget > 0 else None
            score.exact = self._exact_score(min(t.final_exact_windows, count), total, score.key, left)
        summary.write(self.run_dir)

    def _exact_score(self, most: int, total: int, key: ScoreKey, left: float | None) -> ExactScore:
        """Beside a bound, the exact NLL of the method's ``exact_sampler`` (the chain rule, a pass per token of a
        window) on its own count of evenly spread validation windows: ``most`` of them, or with ``left`` (the
        seconds of ``train.final_eval_budget`` the bound left over) :data:`EXACT_PROBE` timed first, then the
        largest count of the doubling ladder up to ``most`` that the rest pays for, so a short run's final score
        stays within its budget (a probe's worth at least). ``key`` is the bound's: the same weights and
        settings, another count. Its time against the training time is logged."""
        sampler = self.method.exact_sampler
        tic = time.perf_counter()
        count = most if left is None else min(EXACT_PROBE, most)
        res = self._exact_of(count, total)
        if count < most:
            assert left is not None
            larger = budget_count(most, count, time.perf_counter() - tic, left)
            if larger > count:
                count, res = larger, self._exact_of(larger, total)
        seconds = time.perf_counter() - tic
        if self.progress:
            share = seconds / max(self.elapsed, 1e-9)
            self.log(f"exact NLL {res.bits_per_unit:.4f} bits/char on {count:,} windows in {seconds:.1f}s, {share:.0%} "
                     f"of the {self.elapsed:.1f}s of training")
        return ExactScore(res.bits_per_unit, res.nats_per_unit, res.windows, res.units, sampler, res.details, total,
                          replace(key, windows=count))

    def _exact_of(self, count: int, total: int) -> NLLResult:
        """The EMA weights' exact NLL of ``count`` evenly spread validation windows."""
        if self.progress:
            self.log(f"scoring the exact NLL of --sampler {self.method.exact_sampler} on {count:,} of {total:,} "
                     f"validation windows ...")
        windows = self.source.val_set(self.method.window, count if count < total else 0).to(self.device)
        self.ema.model.eval()
        with torch.no_grad(), self.autocast():
            return score(self.method, self.ema.model, windows, batch_size=self.score_batch_size,
                         progress=self.progress, desc="final score, exact NLL", exact=True)


def _grad_norm(parameters: Any) -> torch.Tensor:
    """The global L2 norm of the gradients, as ``clip_grad_norm_`` computes it, without touching them."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()).float() for g in grads]))


def default_run_dir(cfg: Config) -> Path:
    """``runs/<method>-<preset>-<timestamp>``: a new run never lands in an existing one's directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.method.name}-{cfg.preset}-{stamp}"


def _leave_world(trainer: Trainer, summary: TrainSummary) -> TrainSummary:
    """Under torchrun, wait until every process is done (rank 0 scores the final windows alone), then take the
    process group down: a process that exits with gloo's threads still running dies by std::terminate
    (SIGABRT), and torchrun then stops the others mid-work."""
    distributed.barrier(trainer.world)
    distributed.shutdown(trainer.world)
    return summary


def run_training(cfg: Config, run_dir: Path | None = None, progress: bool = True, **kw) -> TrainSummary:
    """Start a new run (``textdiffusion train``); returns its :class:`~textdiffusion.records.TrainSummary`
    (final.json's record, for a finished run)."""
    world = distributed.current_world()
    if run_dir is None and world.active:  # one directory for the job: rank 0's timestamp
        distributed.init(world, job_device(cfg, world))
        run_dir = Path(distributed.broadcast(str(default_run_dir(cfg)), world))
    trainer = Trainer(cfg, run_dir or default_run_dir(cfg), progress=progress)
    try:
        return _leave_world(trainer, trainer.train(**kw))
    finally:
        trainer.lock.release()


def resume_training(run_dir: Path, progress: bool = True, steps: int | None = None, **kw) -> TrainSummary:
    """Continue a run from its last checkpoint (``textdiffusion train --resume``); ``steps`` changes the length
    of its schedule. A run that stopped before its first checkpoint starts again from step 0; a run that was
    interrupted while scoring its final result is scored. config.json is rewritten (for a new ``steps``)
    only once the run is locked, loaded and known to accept it. A run killed while writing its first
    config.json gets that write finished (:func:`~textdiffusion.run_dir.finish_first_config`)."""
    if finish_first_config(Path(run_dir)):
        print(f"{run_dir}: finished writing config.json, which a stopped trainer left as a temporary file",
              file=sys.stderr)
    run_dir, meta, cfg = read_run_config(run_dir)
    recorded_steps = cfg.train.steps
    if steps is not None:
        if steps < 1:
            raise ConfigError("--steps must be >= 1")
        cfg.train.steps = steps
    trainer = Trainer(cfg, run_dir, resume=True, progress=progress)
    try:
        if trainer.step > cfg.train.steps:
            raise ConfigError(f"{run_dir} is already at step {trainer.step}, past --steps {cfg.train.steps}; pass "
                              f"a larger --steps to train further")
        final = run_dir / "final.json"
        if trainer.step == cfg.train.steps and final.exists():
            raise ConfigError(f"{run_dir} already finished its {cfg.train.steps} steps; pass --steps N to train "
                              f"further")
        if cfg.train.steps != recorded_steps and trainer.world.is_main:
            meta["config"] = cfg.to_dict()  # the run's record must describe the schedule it now follows
            write_json(run_dir / "config.json", meta)
        return _leave_world(trainer, trainer.train(**kw))
    finally:
        trainer.lock.release()
