"""Streams: a sampler that reports each step through a callback, read as an iterator of frames.

A sampler calls ``on_step`` at every step; a reader (a loop, a web page) wants to pull frames at its own pace.
:class:`Feed` joins the two with a thread and a one-frame queue; :class:`Stream` is what a stream of either
kind offers (:class:`~textdiffusion.api.text.TextStream`, :class:`~textdiffusion.api.image.ImageStream`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from textdiffusion.config import ConfigError


class _Stopped(Exception):
    """Raised inside the sampler's step callback once the reader has stopped listening."""


class Feed:
    """Runs ``work(report)`` in a thread and hands each ``report(item)`` to the reading thread, one at a time.

    A sampler reports its steps through a callback; a reader wants an iterator. The thread runs the sampler
    (under ``context``: grad mode and autocast are per thread) and waits at each step until the reader has
    taken the previous one, so the sampler never runs ahead of a slow reader by more than a frame. When the
    reader stops (:meth:`close`, a ``break``, an exception), the sampler is stopped at its next step.
    ``seconds`` is the time the sampler itself took, without the waits for the reader."""

    _POLL_S = 0.05

    def __init__(self, work: Callable[[Callable[[Any], None]], Any], context: Callable[[], Any]):
        self._work, self._context = work, context
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waited = 0.0
        self.result: Any = None
        self.seconds = 0.0

    def _put(self, kind: str, payload: Any) -> None:
        waited = time.perf_counter()
        while not self._stop.is_set():
            try:
                self._queue.put((kind, payload), timeout=self._POLL_S)
                break
            except queue.Full:
                continue
        self._waited += time.perf_counter() - waited
        if self._stop.is_set():
            raise _Stopped()

    def _report(self, item: Any) -> None:
        if self._stop.is_set():
            raise _Stopped()
        self._put("item", item)

    def _run(self) -> None:
        try:
            with torch.no_grad(), self._context():
                tic = time.perf_counter()
                result = self._work(self._report)
                seconds = time.perf_counter() - tic - self._waited
            self._put("done", (result, seconds))
        except _Stopped:
            pass
        except BaseException as e:  # handed to the reader, which raises it in its own thread
            with contextlib.suppress(_Stopped):  # unless the reader has gone
                self._put("error", e)

    def __iter__(self) -> Iterator[Any]:
        if self._thread is not None:
            raise ConfigError("a stream can be read once; call stream() again for another sampling")
        self._thread = threading.Thread(target=self._run, name="textdiffusion-stream", daemon=True)
        self._thread.start()
        try:
            while True:
                kind, payload = self._queue.get()
                if kind == "item":
                    yield payload
                elif kind == "done":
                    self.result, self.seconds = payload
                    return
                else:
                    raise payload
        finally:
            self.close()

    def close(self) -> None:
        """Stop the sampler at its next step and wait for it (a step is one network evaluation)."""
        self._stop.set()
        while True:  # a waiting sampler sees the stop at its next poll
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def cpu_copy(x: torch.Tensor) -> torch.Tensor:
    """A copy the sampler cannot change afterwards (it may update its state in place)."""
    return x.detach().to("cpu", copy=True)


def number(value: Any) -> float | None:
    """A step's ``t`` or ``nfe`` as a plain number (samplers report floats, ints or 0-d tensors)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_S = TypeVar("_S", bound="Stream")


class Stream:
    """What both streams share: a sampler running in a :class:`Feed`, stopped by :meth:`close` or by leaving
    a ``with`` block."""

    _feed: Feed

    def close(self) -> None:
        """Stop the sampling (at its next step) if it is still running."""
        self._feed.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
