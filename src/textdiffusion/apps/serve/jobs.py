"""Running checked requests: a pool of worker threads, one :class:`Job` per sampling, its events handed to the
event loop as they happen, and cancellation at the next step. Nothing here knows HTTP: the app turns a job's
events into a server-sent-events response, and a test can read them from a plain asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from textdiffusion.api import Frame
from textdiffusion.checkpoint import CheckpointError
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError

from .requests import RequestError, Settings
from .served import ServedRun

Event = tuple[str, dict[str, Any]]  # (name, data): start, frame, done or error
LAST_EVENTS = ("done", "error")


class Cancelled(Exception):
    """Raised between two frames to stop a sampling nobody is watching."""


class Job:
    """One sampling: its settings, the queue its events go through, and the flag that stops it.

    The worker thread calls :meth:`sample`; the event loop reads :meth:`events`. ``stop`` may be called
    from anywhere: the worker raises :class:`Cancelled` before the next frame (which stops the sampler at its
    next step), and a ``pace`` wait wakes at once."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancel = threading.Event()
        self.reason = "the sampling was stopped"  # what the client is told, if it is still listening
        self.frames = 0

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

    def sample(self) -> dict[str, Any]:
        """Run the sampling to its end (in the worker thread), one ``frame`` event per step of the first sample;
        the ``done`` event's data. It goes through the Python API's stream, whose sampler waits for this
        thread: the pace wait here paces the sampler, and a stop takes effect at its next step."""
        s, r = self.settings, self.settings.req
        stream = s.served.model.stream(r.prompt, infill=r.infill, placeholder=r.placeholder, length=r.length,
                                       sampler=r.sampler, steps=r.steps, temperature=r.temperature, top_k=r.top_k,
                                       top_p=r.top_p, seed=s.seed, label=r.label, guidance=r.guidance,
                                       rule=r.rule)
        with stream:  # leaving early stops the sampler
            for frame in stream:
                if self.cancel.is_set():
                    raise Cancelled()
                self.emit("frame", _frame_event(frame))
                self.frames += 1
                if s.pace_ms and self.cancel.wait(s.pace_ms / 1000):
                    raise Cancelled()
        res = stream.result
        assert res is not None
        return {"text": res.texts[0], "seconds": round(res.seconds, 4), "nfe": res.nfe,
                "steps": max(self.frames - 1, 0), "frames": self.frames,
                "sampler": r.sampler if res.sampler is None else res.sampler, "seed": s.seed}


def _frame_event(frame: Frame) -> dict[str, Any]:
    """A player frame ``{step, t, nfe, text, masked, changed}`` of the first sample."""
    return {"step": frame.step, "t": None if frame.t is None else round(float(frame.t), 6), "nfe": frame.nfe,
            "text": frame.text, "masked": frame.masked[0], "changed": frame.changed[0]}


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
