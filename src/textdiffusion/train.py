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
from pathlib import Path
from typing import Any

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
from textdiffusion.methods.base import bits_key
from textdiffusion.optim import warmup_cosine
from textdiffusion.runs import build, pick_device


def lr_at(step: int, cfg: Config) -> float:
    """The run's learning rate at ``step`` (:func:`textdiffusion.optim.warmup_cosine`)."""
    t = cfg.train
    return warmup_cosine(step, t.steps, t.lr, t.min_lr, t.warmup)


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
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
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True,
                 data: Any = None, log: Callable[[str], None] | None = None):
        """``data``: a TextData or ImageData already loaded (tests, benchmarks), else read from the config."""
        validate(cfg)
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.device = pick_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.seed)
        saved = self.run_dir if resume else None
        self.source: Source = load_source(cfg, saved) if data is None else as_source(data, saved)
        self.data = self.source.data  # the TextData / ImageData behind the source
        self.method, model = build(cfg, self.source.vocab)
        self.source.check(self.method)
        self.model = model.to(self.device)
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over resumes, evaluation excluded
        self.chars_seen = 0  # units seen: characters for text, images for images
        self.val_windows = self.source.val_set(self.method.window, cfg.train.eval_windows).to(self.device)
        self.forward_model = self.model
        use_compile = cfg.train.compile == "on" or (cfg.train.compile == "auto" and self.device.type == "cuda")
        if use_compile:
            self.forward_model = torch.compile(self.model)
        amp = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and self.device.type == "cuda")
        dev_type = self.device.type
        self.autocast = (lambda: torch.autocast(dev_type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        if resume:
            self._load()
        else:
            self._init_run_dir()

    # ---- run directory -------------------------------------------------------------------------------
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
            "parameters": self.model.num_parameters(), "device": str(self.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        self.source.save_vocab(rd)
        if self.progress:
            self.log(f"run directory: {rd} ({self.model.num_parameters():,} parameters, {self.device})")

    def save(self) -> None:
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

    # ---- evaluation during training -------------------------------------------------------------------
    def evaluate(self, windows: torch.Tensor, model: torch.nn.Module | None = None):
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
        cfg, t = self.cfg, self.cfg.train
        target = min(t.steps, stop_at) if stop_at else t.steps
        window, batch = self.method.window, t.batch_size
        chars_per_step = self.source.units(batch, window) * t.grad_accum
        rate_key = f"{self.source.unit}_per_s"
        unit_short = "chars" if self.source.unit == "chars" else "img"
        # redraw a few times a second on a terminal, rarely into a log file
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc=f"{cfg.method.name}/{cfg.preset}", unit="step",
                   mininterval=0.25 if sys.stderr.isatty() else 15.0)
        smooth_loss, val_text, rate = None, "-", 0.0
        interval_chars, interval_time = 0, 0.0
        interrupted = out_of_time = False
        with _StopFlag() as stop:
            while self.step < target:
                if t.time_budget_s > 0 and self.elapsed >= t.time_budget_s:
                    out_of_time = True
                    break
                if stop.requested:
                    interrupted = True
                    break
                tic = time.perf_counter()
                lr = lr_at(self.step, cfg)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                self.model.train()
                total = 0.0
                for _ in range(t.grad_accum):
                    # batches are cut on the CPU generator, then moved
                    x = self.source.train_batch(batch, window, self.data_gen).to(self.device, non_blocking=True)
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
                dt = time.perf_counter() - tic
                self.elapsed += dt
                self.chars_seen += chars_per_step
                interval_chars += chars_per_step
                interval_time += dt
                smooth_loss = total if smooth_loss is None else 0.95 * smooth_loss + 0.05 * total
                if self.step % t.eval_every == 0 or self.step == t.steps:
                    rate = interval_chars / max(interval_time, 1e-9)
                    val = self.evaluate(self.val_windows)
                    val_text = f"{val.bits_per_unit:.3f}"
                    self._log_metrics({"step": self.step, "train_loss": smooth_loss,
                                       bits_key(val.unit): val.bits_per_unit, "val_nats": val.nats_per_unit,
                                       "val_kind": val.kind, "val_windows": val.windows, "lr": lr, rate_key: rate,
                                       "elapsed": self.elapsed})
                    if t.sample_every_eval:
                        self.write_samples()
                    self.save()
                    interval_chars, interval_time = 0, 0.0
                elif interval_time > 0:
                    rate = interval_chars / interval_time
                bar.update(1)
                bar.set_postfix_str(f"loss {smooth_loss:.3f} | val {bits_key(self.method.unit)[4:]} {val_text} | "
                                    f"{rate:,.0f} {unit_short}/s", refresh=False)
                if on_step:
                    on_step(self.step)
        bar.close()
        if (self.step % t.eval_every != 0 and self.step != t.steps) or interrupted or out_of_time:
            self.save()
        summary: dict[str, Any] = {"run_dir": str(self.run_dir), "step": self.step, "steps": t.steps,
                                   "elapsed": self.elapsed, "interrupted": interrupted, "out_of_time": out_of_time,
                                   rate_key: self.chars_seen / max(self.elapsed, 1e-9), "unit": self.source.unit}
        if (self.step == t.steps or out_of_time) and not interrupted:
            if self.progress:
                self.log("scoring the validation split with the EMA weights ...")
            full = self.source.val_set(self.method.window, t.final_eval_windows).to(self.device)
            ema_val = self.evaluate(full)
            summary.update({bits_key(ema_val.unit): ema_val.bits_per_unit, "val_nats": ema_val.nats_per_unit,
                            "val_kind": ema_val.kind, "val_windows": ema_val.windows,
                            "val_details": ema_val.details})
            if t.final_eval_raw:
                raw_val = self.evaluate(full, self.model)
                summary.update({bits_key(raw_val.unit) + "_raw": raw_val.bits_per_unit,
                                "val_nats_raw": raw_val.nats_per_unit})
            write_json(self.run_dir / "final.json", summary)
        return summary

    def _log_metrics(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def write_json_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(ln + "\n" for ln in lines))


def default_run_dir(cfg: Config) -> Path:
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
