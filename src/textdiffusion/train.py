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
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from textdiffusion.checkpoint import (
    CheckpointError,
    optimizer_from_flat,
    optimizer_to_flat,
    read_json,
    read_tensors,
    versions,
    write_json,
    write_tensors,
)
from textdiffusion.config import Config, ConfigError, validate
from textdiffusion.data.sources import Source, as_source, load_source
from textdiffusion.files import write_text
from textdiffusion.methods.base import NLLResult, bits_key
from textdiffusion.optim import warmup_cosine
from textdiffusion.runs import build, pick_device

StopReason = Literal["out_of_time", "interrupted"]  # why a loop ended before its target step


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


def _rng_tensors(data_gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"rng.data": data_gen.get_state(), "rng.noise": noise_gen.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def _maybe_compile(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: ``torch.compile``d for ``train.compile`` "on", or "auto" on CUDA.

    Only the forward pass goes through it; the optimizer, EMA and checkpoints keep the plain module."""
    if mode == "on" or (mode == "auto" and device.type == "cuda"):
        return torch.compile(model)
    return model


def _autocast(mode: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context every forward pass runs in: bf16 autocast for ``train.amp`` "bf16", or "auto"
    on CUDA; else a no-op. A factory, as one autocast context cannot be entered twice at once."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class _Meter:
    """The loop's running accounting, shown on the progress bar and in each metrics row.

    ``loss`` is an exponential moving average of the per-step training loss (None before the first step);
    ``rate`` is the throughput in units (characters or images) per second of training time since the last
    evaluation, so evaluation time never counts against it; ``val_bits`` is the last validation number."""

    val_name: str  # "bpc" or "bpd", as the bar labels the validation number
    unit_name: str  # "chars" or "img", as the bar labels the rate
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

    def postfix(self) -> str:
        val = "-" if self.val_bits is None else f"{self.val_bits:.3f}"
        return f"loss {self.loss:.3f} | val {self.val_name} {val} | {self.rate:,.0f} {self.unit_name}/s"


class _StopFlag:
    """First Ctrl-C asks the loop to save and stop at the next step boundary; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class Trainer:
    """One run: builds the method, model, EMA and optimizer from a config, owns the run directory and trains.

    ``resume`` reloads the last checkpoint of ``run_dir`` (weights, optimizer, step, random generators)
    instead of starting a new directory; :meth:`train` then carries on as if it had never stopped."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True,
                 data: Any = None, log: Callable[[str], None] | None = None):
        """``data``: a TextData or ImageData already loaded (tests, benchmarks), else read from the config."""
        validate(cfg)
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.device = pick_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.seed)  # before the model is built: its initial weights come from this stream

        # data, method and model
        saved = self.run_dir if resume else None
        self.source: Source = load_source(cfg, saved) if data is None else as_source(data, saved)
        self.data = self.source.data  # the TextData / ImageData behind the source
        self.method, model = build(cfg, self.source.vocab)
        self.source.check(self.method)
        self.model = model.to(self.device)
        self.n_parameters = sum(p.numel() for p in self.model.parameters())  # any network, not only ours
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.opt = make_optimizer(self.model, cfg)

        # training state: everything a checkpoint holds, so a resumed run continues bit for bit
        self.data_gen = torch.Generator().manual_seed(cfg.seed)  # batches are cut on the CPU, then moved
        self.noise_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over resumes, evaluation excluded
        self.chars_seen = 0  # units seen: characters for text, images for images
        self.val_windows = self.source.val_set(self.method.window, cfg.train.eval_windows).to(self.device)

        # how the forward pass runs (compiled and in bf16 on CUDA by default)
        self.forward_model = _maybe_compile(self.model, cfg.train.compile, self.device)
        self.autocast = _autocast(cfg.train.amp, self.device)
        if resume:
            self._load()
        else:
            self._init_run_dir()

    # ---- run directory ---------------------------------------------------------------------------------
    def _init_run_dir(self) -> None:
        rd = self.run_dir
        if (rd / "config.json").exists():
            raise CheckpointError(f"{rd} already holds a run; resume it with `textdiffusion train --resume {rd}` "
                                  f"or pick another --run-dir")
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "samples").mkdir(exist_ok=True)
        corpus = self.source.record()
        write_json(rd / "config.json", {
            "config": self.cfg.to_dict(), "seed": self.cfg.seed, "versions": versions(), "corpus": corpus,
            "parameters": self.n_parameters, "device": str(self.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        self.source.save_vocab(rd)
        if self.progress:
            self.log(f"run directory: {rd} ({self.n_parameters:,} parameters, {self.device})")

    def save(self) -> None:
        """Checkpoint everything :meth:`_load` needs to continue exactly: weights, EMA, optimizer moments,
        random generators, step, training time and units seen."""
        rd = self.run_dir
        opt_tensors, opt_meta = optimizer_to_flat(self.opt)
        rng = _rng_tensors(self.data_gen, self.noise_gen)
        write_tensors(rd / "trainer.safetensors", {**opt_tensors, **rng}, self.step)
        write_tensors(rd / "model.safetensors", self.model.state_dict(), self.step)
        write_tensors(rd / "ema.safetensors", self.ema.model.state_dict(), self.step)
        write_json(rd / "trainer.json", {"step": self.step, "elapsed": self.elapsed, "chars_seen": self.chars_seen,
                                         "optimizer": opt_meta})

    def _load(self) -> None:
        rd = self.run_dir
        state = read_json(rd / "trainer.json")
        model_t, s1 = read_tensors(rd / "model.safetensors")
        ema_t, s2 = read_tensors(rd / "ema.safetensors")
        tr_t, s3 = read_tensors(rd / "trainer.safetensors")
        if not s1 == s2 == s3 == state["step"]:
            raise CheckpointError(f"checkpoint files in {rd} are from different steps ({s1}, {s2}, {s3}, "
                                  f"{state['step']}): an interrupted copy? restore a consistent set")
        self.model.load_state_dict(model_t)
        self.ema.model.load_state_dict(ema_t)
        optimizer_from_flat(self.opt, tr_t, state["optimizer"])
        self.data_gen.set_state(tr_t["rng.data"])
        self.noise_gen.set_state(tr_t["rng.noise"])
        torch.set_rng_state(tr_t["rng.torch"])
        if "rng.cuda" in tr_t and torch.cuda.is_available():
            torch.cuda.set_rng_state(tr_t["rng.cuda"])
        self.step, self.elapsed, self.chars_seen = state["step"], state["elapsed"], state.get("chars_seen", 0)
        # forget metrics written after the checkpoint we resume from (they will be recomputed)
        mpath = rd / "metrics.jsonl"
        if mpath.exists():
            lines = [ln for ln in mpath.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= self.step]
            write_json_lines(mpath, keep)

    # ---- evaluation ------------------------------------------------------------------------------------
    def evaluate(self, windows: torch.Tensor, model: torch.nn.Module | None = None) -> NLLResult:
        """The method's validation NLL of ``windows`` under ``model`` (default: the EMA weights)."""
        model = model or self.ema.model
        model.eval()
        with self.autocast():
            return self.method.nll(model, windows, batch_size=max(self.cfg.train.batch_size, 64))

    def write_samples(self) -> None:
        # not cfg.seed itself: the weights were initialised from that stream, and a sampler whose starting
        # noise equals a freshly initialised embedding table "decodes" it (ids 0, 1, 2, ... in order)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 7919)
        with self.autocast():
            self.source.write_samples(self.method, self.ema.model, gen, self.run_dir, self.step)

    # ---- the loop --------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or to ``stop_at``, for tests and benchmarks), evaluating and checkpointing
        every ``train.eval_every`` steps; returns the run's summary (also final.json when the run finished).

        A time budget or Ctrl-C stops at the next step boundary with a checkpoint; ``on_step(step)`` is
        called after every step."""
        cfg, t = self.cfg, self.cfg.train
        target = min(t.steps, stop_at) if stop_at else t.steps
        units_per_step = self.source.units(t.batch_size, self.method.window) * t.grad_accum
        bar = self._progress_bar()
        meter = _Meter(val_name=bits_key(self.method.unit)[4:],
                       unit_name="chars" if self.source.unit == "chars" else "img")
        stopped: StopReason | None = None
        with _StopFlag() as ctrl_c:
            while self.step < target:
                # -- stop at a step boundary: time budget spent, or Ctrl-C
                if stopped := self._stop_reason(ctrl_c):
                    break
                # -- one optimizer step
                tic = time.perf_counter()
                lr = lr_at(self.step, cfg)
                loss = self._optimizer_step(lr)
                dt = time.perf_counter() - tic
                # -- accounting
                self.elapsed += dt
                self.chars_seen += units_per_step
                meter.record(loss, units_per_step, dt)
                # -- evaluate, sample and checkpoint
                if self._eval_due():
                    meter.val_bits = self._evaluate_and_save(lr, meter.loss, meter.end_interval())
                # -- progress, and the caller's hook
                bar.update(1)
                bar.set_postfix_str(meter.postfix(), refresh=False)
                if on_step:
                    on_step(self.step)
        bar.close()

        # checkpoint where the loop ended; a stop always does, else only if the last step's evaluation did not
        if stopped or not self._eval_due():
            self.save()
        summary = self._summary(stopped)
        # a spent time budget ends the run as if it had finished; Ctrl-C and stop_at leave it to be resumed
        if stopped != "interrupted" and (self.step == t.steps or stopped == "out_of_time"):
            self._final_score(summary)
        return summary

    # ---- the loop's parts, in the order it calls them --------------------------------------------------
    def _progress_bar(self) -> tqdm:
        # redraw a few times a second on a terminal, rarely into a log file
        return tqdm(total=self.cfg.train.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                    desc=f"{self.cfg.method.name}/{self.cfg.preset}", unit="step",
                    mininterval=0.25 if sys.stderr.isatty() else 15.0)

    def _stop_reason(self, ctrl_c: _StopFlag) -> StopReason | None:
        """``"out_of_time"`` once ``train.time_budget_s`` of training is spent, ``"interrupted"`` after a
        Ctrl-C, else None: the loop asks before each step, so every stop leaves a whole step behind."""
        budget = self.cfg.train.time_budget_s
        if budget > 0 and self.elapsed >= budget:
            return "out_of_time"
        if ctrl_c.requested:
            return "interrupted"
        return None

    def _optimizer_step(self, lr: float) -> float:
        """One update at learning rate ``lr`` over ``train.grad_accum`` micro-batches; returns its loss.

        Each micro-batch's loss is divided by the count before ``backward``, so the summed gradient and the
        returned loss are the means over the whole batch. Returns once the device has finished, so the
        caller's clock times the work rather than its queueing."""
        t = self.cfg.train
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        total = 0.0
        for _ in range(t.grad_accum):
            x = self.source.train_batch(t.batch_size, self.method.window, self.data_gen)
            x = x.to(self.device, non_blocking=True)
            with self.autocast():
                loss = self.method.loss(self.forward_model, x, self.noise_gen) / t.grad_accum
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {self.step}; lower train.lr or "
                                     f"raise train.warmup (the last checkpoint is intact)")
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return total

    def _eval_due(self) -> bool:
        """Whether the step just taken evaluates and checkpoints: every ``eval_every`` steps and the last."""
        return self.step % self.cfg.train.eval_every == 0 or self.step == self.cfg.train.steps

    def _evaluate_and_save(self, lr: float, train_loss: float | None, rate: float) -> float:
        """Score the EMA weights on the validation windows, append the metrics row, write samples (if
        ``train.sample_every_eval``) and checkpoint; returns the validation bits per unit for the progress bar."""
        val = self.evaluate(self.val_windows)
        self._log_metrics({"step": self.step, "train_loss": train_loss,
                           bits_key(val.unit): val.bits_per_unit, "val_nats": val.nats_per_unit,
                           "val_kind": val.kind, "val_windows": val.windows, "lr": lr, self._rate_key: rate,
                           "elapsed": self.elapsed})
        if self.cfg.train.sample_every_eval:
            self.write_samples()
        self.save()
        return val.bits_per_unit

    def _log_metrics(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    @property
    def _rate_key(self) -> str:
        return f"{self.source.unit}_per_s"  # chars_per_s or images_per_s

    def _summary(self, stopped: StopReason | None) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "step": self.step, "steps": self.cfg.train.steps,
                "elapsed": self.elapsed, "interrupted": stopped == "interrupted",
                "out_of_time": stopped == "out_of_time",
                self._rate_key: self.chars_seen / max(self.elapsed, 1e-9), "unit": self.source.unit}

    def _final_score(self, summary: dict[str, Any]) -> None:
        """Score ``train.final_eval_windows`` of the validation split (0 = all of it) with the EMA weights, and
        with the raw weights too if ``train.final_eval_raw``; add the numbers to ``summary`` and write it as
        final.json, the run's headline result."""
        t = self.cfg.train
        if self.progress:
            self.log("scoring the validation split with the EMA weights ...")
        full = self.source.val_set(self.method.window, t.final_eval_windows).to(self.device)
        ema_val = self.evaluate(full)
        summary.update({bits_key(ema_val.unit): ema_val.bits_per_unit, "val_nats": ema_val.nats_per_unit,
                        "val_kind": ema_val.kind, "val_windows": ema_val.windows, "val_details": ema_val.details})
        if t.final_eval_raw:
            raw_val = self.evaluate(full, self.model)
            summary.update({bits_key(raw_val.unit) + "_raw": raw_val.bits_per_unit,
                            "val_nats_raw": raw_val.nats_per_unit})
        write_json(self.run_dir / "final.json", summary)


def write_json_lines(path: Path, lines: list[str]) -> None:
    """Rewrite a JSON-lines file atomically, so a crash mid-write cannot cost the rows already recorded."""
    write_text(path, "".join(ln + "\n" for ln in lines))


def default_run_dir(cfg: Config) -> Path:
    """``runs/<method>-<preset>-<timestamp>``: a new run never lands in an existing one's directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.method.name}-{cfg.preset}-{stamp}"


def run_training(cfg: Config, run_dir: Path | None = None, progress: bool = True, **kw) -> dict[str, Any]:
    """Start a new run (``textdiffusion train``)."""
    trainer = Trainer(cfg, run_dir or default_run_dir(cfg), progress=progress)
    return trainer.train(**kw)


def resume_training(run_dir: Path, progress: bool = True, steps: int | None = None, **kw) -> dict[str, Any]:
    """Continue a run from its last checkpoint (``textdiffusion train --resume``)."""
    meta = read_json(Path(run_dir) / "config.json")
    cfg = Config.from_dict(meta["config"])
    if steps is not None and steps != cfg.train.steps:
        if steps < 1:
            raise ConfigError("--steps must be >= 1")
        cfg.train.steps = steps
        meta["config"] = cfg.to_dict()  # the run's record must describe the schedule it now follows
        write_json(Path(run_dir) / "config.json", meta)
    trainer = Trainer(cfg, Path(run_dir), resume=True, progress=progress)
    if trainer.step >= cfg.train.steps:
        raise ConfigError(f"{run_dir} already finished its {cfg.train.steps} steps; pass --steps N to train further")
    return trainer.train(**kw)
