"""Running checked requests: a pool of worker threads, one :class:`Job` per sampling, its events handed to the
event loop as they happen, and cancellation at the next step. Nothing here knows HTTP: the app turns a job's
events into a server-sent-events response, and a test can read them from a plain asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from textdiffusion.checkpoint import CheckpointError
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.viz.trajectory import decode_masked

from .requests import RequestError, Settings
from .served import ServedRun

Event = tuple[str, dict[str, Any]]  # (name, data): start, frame, done or error
LAST_EVENTS = ("done", "error")


class Cancelled(Exception):
    """Raised from the sampler's step callback to stop a sampling nobody is watching."""


class Frames:
    """Sampler states -> player frames ``{step, t, nfe, text, masked, changed}`` for the first sample."""

    def __init__(self, tok: Tokenizer, mask_char: str):
        self.tok = tok
        self.mask_char = mask_char
        self.prev: torch.Tensor | None = None

    def __call__(self, step: int, ids: torch.Tensor, info: Mapping[str, Any]) -> dict[str, Any]:
        ids = ids.detach().cpu()
        text, masked = decode_masked(self.tok, ids.tolist(), self.mask_char)
        changed = int((ids != self.prev).sum()) if self.prev is not None and self.prev.shape == ids.shape else 0
        self.prev = ids
        frame: dict[str, Any] = {"step": step, "t": None, "nfe": None, "text": text, "masked": masked,
                                 "changed": changed}
        for key in ("t", "nfe"):
            value = info.get(key)
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, (int, float)):
                frame[key] = round(float(value), 6) if key == "t" else value
        return frame


class Job:
    """One sampling: its settings, the queue its events go through, and the flag that stops it.

    The worker thread calls :meth:`sample`; the event loop reads :meth:`events`. ``stop`` may be called
    from anywhere: the sampler's step callback raises :class:`Cancelled` at the next step, and a ``pace``
    wait wakes at once."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancel = threading.Event()
        self.reason = "the sampling was stopped"  # what the client is told, if it is still listening
        self.frames = 0
        self.paced = 0.0  # seconds spent waiting for the pace, left out of the reported sampling time
        self._frames = Frames(settings.served.tok, settings.req.placeholder)

    def stop(self, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        self.cancel.set()

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """From the worker thread: hand an event to the event loop (the queue is not thread-safe)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (event, data))
        except RuntimeError:  # the loop is closed: the server is gone, so is the listener
            self.cancel.set()
            raise Cancelled() from None

    async def events(self) -> AsyncIterator[Event]:
        """``start``, then every event the worker emits, up to and including ``done`` or ``error``."""
        yield "start", self.settings.start_event()
        while True:
            event, data = await self.queue.get()
            yield event, data
            if event in LAST_EVENTS:
                return

    def on_step(self, step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
        """The sampler's step callback: one frame per step, the pace wait, and the place a stop takes effect."""
        if self.cancel.is_set():
            raise Cancelled()
        if self.frames == 0 and step > 0:  # samplers that report no initial state (the continuous ones)
            self._frame(0, self.settings.initial, {"t": 1.0, "nfe": 0})
        self._frame(step, state[0], info)
        pace = self.settings.pace_ms / 1000
        if pace:
            waited = time.perf_counter()
            if self.cancel.wait(pace):
                raise Cancelled()
            self.paced += time.perf_counter() - waited

    def _frame(self, step: int, ids: torch.Tensor, info: Mapping[str, Any]) -> None:
        self.emit("frame", self._frames(step, ids, info))
        self.frames += 1

    def sample(self) -> dict[str, Any]:
        """Run the sampler to its end (in the worker thread); the ``done`` event's data."""
        s = self.settings
        run = s.served.run
        with torch.no_grad():  # grad mode is per thread: the worker must switch it off itself
            gen = torch.Generator(device=run.device).manual_seed(s.seed)
            tic = time.perf_counter()
            res = s.served.method.sample(run.model, s.req, gen, self.on_step)
            seconds = time.perf_counter() - tic - self.paced
        return {"text": s.served.tok.decode(res.ids[0].cpu().tolist(), s.req.placeholder),
                "seconds": round(seconds, 4), "nfe": res.nfe, "steps": max(self.frames - 1, 0),
                "frames": self.frames, "sampler": res.info.get("sampler", s.req.sampler), "seed": s.seed}


class SamplingService:
    """The runs, the worker pool and the counters behind ``/api/status``.

    A request that finds every slot taken is refused at once (503) rather than queued: waiting requests
    would each hold a thread and a connection with nothing to show."""

    def __init__(self, runs: dict[str, ServedRun], max_steps: int, max_concurrent: int):
        self.runs = runs
        self.max_steps = max_steps
        self.max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.jobs: set[Job] = set()
        self.active = 0
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="textdiffusion-sample")
        return self._executor

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"active": self.active, "max_concurrent": self.max_concurrent, **self.counts}

    def start(self, settings: Settings) -> Job:
        """Take a slot and start the worker (from the event loop, whose events the job's queue feeds)."""
        with self._lock:
            if self.active >= self.max_concurrent:
                raise RequestError(f"the server is already running {self.active} samplings, its limit "
                                   f"(--max-concurrent {self.max_concurrent}); wait for one to finish or stop "
                                   f"one, then try again", status=503)
            self.active += 1
        job = Job(settings, asyncio.get_running_loop())
        with self._lock:
            self.jobs.add(job)
        try:
            self.executor.submit(self._work, job)
        except RuntimeError:  # shut down
            self._finish(job, None)
            raise RequestError("the server is shutting down; start it again", status=503) from None
        return job

    def _finish(self, job: Job, outcome: str | None) -> None:
        with self._lock:
            self.active -= 1
            if outcome:
                self.counts[outcome] += 1
            self.jobs.discard(job)

    def _work(self, job: Job) -> None:
        """The worker: sample, count the outcome, then send the last event. The slot is given back *before*
        that event goes out, so a client that has seen done or error can start its next sampling at once
        without finding its own finished one still counted."""
        outcome: str = "failed"
        last: Event | None = None
        try:
            outcome, last = _outcome(job)
        finally:  # whatever happens, the slot is given back
            self._finish(job, outcome)
            if last is not None:
                with contextlib.suppress(Cancelled):
                    job.emit(*last)

    def stop_all(self, reason: str) -> None:
        """Stop every sampling, telling the clients why. Takes no lock, so that a signal handler may call
        it (copying the set is one step under the GIL)."""
        for job in tuple(self.jobs):
            job.stop(reason)

    def shutdown(self) -> None:
        self.stop_all("the server is shutting down")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _outcome(job: Job) -> tuple[str, Event]:
    """Run the job; how it ended (completed, cancelled or failed) and the last event its client gets."""
    try:
        return "completed", ("done", job.sample())
    except Cancelled:
        return "cancelled", ("error", {"error": job.reason})
    except (ConfigError, DataError, CheckpointError) as e:
        return "failed", ("error", {"error": str(e)})
    except Exception as e:  # a bug: keep the server up, say where to look
        traceback.print_exc(file=sys.stderr)
        return "failed", ("error", {"error": f"the sampling failed ({type(e).__name__}: {e}); the server's "
                                             f"console has the details"})
