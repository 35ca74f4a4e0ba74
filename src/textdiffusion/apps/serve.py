"""``textdiffusion serve RUN_DIR...``: a local web page to sample from text runs and watch the denoising live.

The app is a small Starlette application run by uvicorn, bound to 127.0.0.1 unless ``--host`` says
otherwise. Every run is loaded once at startup; a request then costs only its sampling.

Endpoints
---------
``GET /``
    The page (``viz/web/live.html`` + ``live.js``, with the shared ``player.js`` and ``td.css``), all
    served from ``/static/`` so it works with no network.
``GET /api/runs``
    A JSON list with one object per run: name, method, preset, training step, parameter count, offered
    samplers and the default one, default and largest step count (``steps_fixed`` for ``ar``, which
    writes one character per step), context / default / largest length, tokenizer kind, whether prompt
    and infill are supported, the largest input text, and for char tokenizers the ``alphabet`` so the
    page can point out unknown characters while the user types.
``GET /api/status``
    ``{"active", "max_concurrent", "completed", "cancelled", "failed"}``: samplings running now and since
    startup.
``GET /api/sample?run=...&prompt=...`` or ``POST /api/sample`` with the same fields as a JSON object
    Parameters: ``run`` (name from /api/runs; optional with a single run), ``prompt`` *or* ``infill``
    (a text whose ``placeholder`` characters, ``_`` by default, are the blanks to fill), ``sampler``,
    ``steps``, ``length``, ``temperature``, ``top_k``, ``top_p``, ``seed`` (default: random, reported back)
    and ``pace`` (milliseconds to wait after each frame, at most 1000, so that a fast model can be
    watched). Empty values mean the run's defaults. ``steps`` is checked but not used for ``ar`` runs,
    which take one step per generated character; ``length`` counts tokens (characters for a char
    tokenizer) and is the template's own length for an infill.

    GET exists so that ``EventSource`` and curl work (an EventSource must be closed on ``done`` or
    ``error``, or it reconnects and samples again); the page POSTs with ``fetch`` and reads the stream
    itself, which also lets it read the JSON of a refused request and abort with its Stop button.

    Every parameter is checked before anything streams. A bad one gives HTTP 400 (413 for a body over
    64 KiB, 503 when all sampling slots are busy) with ``{"error": "one sentence naming the problem and the
    fix"}``. Otherwise the answer is ``text/event-stream`` with the events

    * ``start``: the resolved settings (run, method, sampler, steps, length, seed, ..., ``fixed``: the
      character positions the user gave, ``mask_char``);
    * ``frame``: one per sampler step, ``{step, t, nfe, text, masked: [positions], changed}``, the format
      of ``TD.Player`` (step 0 is the initial, fully masked state);
    * ``done``: ``{text, seconds, nfe, steps, frames, sampler, seed}`` (seconds of sampling, pace waits left
      out; steps can be fewer than asked when a sampler finishes early, e.g. masked ancestral);
    * ``error``: ``{error}`` if the sampling fails after it started.

Concurrency and cancellation
----------------------------
Sampling runs in a thread pool of ``max_concurrent`` workers, so the event loop keeps answering other
requests while a model computes (torch releases the GIL in its kernels). A request that finds every slot
taken is refused at once with 503 rather than queued: the page says so, and no thread or socket waits
unboundedly. The worker hands each frame to the event loop with ``call_soon_threadsafe``. When the client
goes away (Stop, a closed tab), the response's ``finally`` sets the job's cancel flag; the sampler's
``on_step`` callback raises at the next step (a ``pace`` wait wakes at once), so no CPU is spent on a
sampling nobody watches. ``/api/status`` counts it as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import socket
import sys
import threading
import time
import traceback
import unicodedata
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from textdiffusion.checkpoint import CheckpointError, read_json
from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods.base import SampleRequest
from textdiffusion.runs import LoadedRun, open_run
from textdiffusion.viz import web_asset
from textdiffusion.viz.trajectory import decode_masked

MAX_PACE_MS = 1000  # a slower pace is no longer "watching", it is waiting
MAX_TEMPERATURE = 10.0
MAX_BODY = 64 * 1024  # the longest text any run accepts is far shorter
AR_LENGTH_FACTOR = 4  # ar slides its window, so it may write past its context; this keeps a request short
OTHER_TOKENIZER_CHARS = 8  # BPE/WordPiece: characters of input allowed per token of context, before tokenizing
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PARAMETERS = ("run", "prompt", "infill", "placeholder", "sampler", "steps", "length", "temperature", "top_k",
              "top_p", "seed", "pace")
STATIC = {"td.css": "text/css", "player.js": "text/javascript", "live.js": "text/javascript"}
# the page needs nothing but itself: no CDN, no inline script
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


class RequestError(Exception):
    """A refused request: answered as ``{"error": message}`` with ``status`` before anything streams."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _Cancelled(Exception):
    """Raised from the sampler's step callback to stop a sampling nobody is watching."""


# ----------------------------------------------------------------------------------------------------------
# runs


@dataclass
class ServedRun:
    """A loaded run and the limits a request to it is checked against."""

    name: str
    run: LoadedRun
    samplers: tuple[str, ...]
    default_sampler: str
    default_steps: int | None  # None: the step count is not a choice (ar writes one character per step)
    max_steps: int
    default_length: int
    max_length: int
    max_chars: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return self.run.cfg.method.name


def _offered_samplers(run: LoadedRun) -> tuple[str, ...]:
    """The samplers a request may pick. ``guided`` needs a second (ar) run named in the config, so it stays
    a CLI feature; ``cached`` is only exact without time conditioning, so it is hidden where it would fail."""
    out = [s for s in run.method.samplers if s != "guided"]
    if run.cfg.method.name == "masked" and run.cfg.method.time_conditioning:
        out = [s for s in out if s != "cached"]
    return tuple(out)


def _check_run_dir(path: Path) -> str:
    """The run's display name, after the checks that need no loading: a missing directory or an image run
    is a one-line error naming the command to use instead."""
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"run directory {path} does not exist; pass the directory `textdiffusion train` "
                              f"printed (it holds config.json)")
    if cfg_path.exists():
        method = read_json(cfg_path).get("config", {}).get("method", {}).get("name")
        if method == "image":
            raise ConfigError(f"{path} is an image run and the live page is for text; use "
                              f"`textdiffusion mnist sample {path}`")
    return path.resolve().name


def _serve_run(name: str, run: LoadedRun, max_steps: int, max_chars: int | None) -> ServedRun:
    method = run.cfg.method
    samplers = _offered_samplers(run)
    if not samplers:
        raise ConfigError(f"{run.path} offers no sampler the live page can run; use `textdiffusion sample`")
    default_sampler = method.sampler if method.sampler in samplers else samplers[0]
    context = run.cfg.model.context
    run_max_steps = max_steps
    if method.name in ("embedding", "bits") and method.timesteps:
        run_max_steps = min(max_steps, method.timesteps)  # the sampler's grid is the training grid
    if method.name == "ar":
        max_length, default_steps = context * AR_LENGTH_FACTOR, None
    else:
        max_length = context
        if method.name == "masked":
            default_steps = method.sample_steps or context
        else:
            default_steps = method.sample_steps or (min(method.timesteps, 200) if method.timesteps else 200)
        default_steps = min(default_steps, run_max_steps)
    tok = run.tokenizer
    assert tok is not None  # image runs are refused before they are opened
    chars = max_length if tok.kind == "char" else max_length * OTHER_TOKENIZER_CHARS
    if max_chars is not None:
        chars = min(chars, max_chars)
    served = ServedRun(name, run, samplers, default_sampler, default_steps, run_max_steps, context, max_length,
                       chars)
    final = run.path / "final.json"
    summary = read_json(final) if final.exists() else {}
    served.info = {
        "name": name, "path": str(run.path), "method": method.name, "preset": run.cfg.preset, "step": run.step,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "val_bpc": summary.get("val_bpc"), "val_kind": summary.get("val_kind"),
        "samplers": list(samplers), "sampler": default_sampler,
        "steps": default_steps, "steps_fixed": default_steps is None, "max_steps": run_max_steps,
        "context": context, "length": context, "max_length": max_length, "max_chars": chars,
        "tokenizer": tok.kind, "unit": "characters" if tok.kind == "char" else "tokens",
        "alphabet": "".join(tok.chars) if isinstance(tok, CharTokenizer) else None,
        "prompt": True, "infill": method.name != "ar", "placeholder": "_",
        "temperature": method.temperature, "top_k": method.top_k, "top_p": method.top_p,
    }
    return served


def load_runs(run_dirs: Sequence[str | Path], device: str = "auto", max_steps: int = 1000,
              max_chars: int | None = None) -> dict[str, ServedRun]:
    """Open every run once. A directory given twice is served once; two runs with the same directory name
    are told apart by their parent directory (and a number if that is not enough)."""
    if not run_dirs:
        raise ConfigError("serve needs at least one text run directory")
    runs: dict[str, ServedRun] = {}
    seen: set[Path] = set()
    for given in run_dirs:
        path = Path(given)
        name = _check_run_dir(path)
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if name in runs:
            name = f"{path.resolve().parent.name}/{name}"
        base, k = name, 2
        while name in runs:
            name, k = f"{base}#{k}", k + 1
        loaded = open_run(path, device=device)
        if loaded.tokenizer is None:
            raise ConfigError(f"{path} is not a text run; the live page samples text")
        runs[name] = _serve_run(name, loaded, max_steps, max_chars)
    return runs


# ----------------------------------------------------------------------------------------------------------
# request checking


@dataclass
class Settings:
    """A checked request: everything the worker needs, and what the ``start`` event reports."""

    served: ServedRun
    req: SampleRequest
    seed: int
    pace_ms: int
    steps: int
    initial: torch.Tensor  # (length,) the prepared state, fully masked where the model writes
    fixed: list[int]  # character positions the user gave

    def start_event(self) -> dict[str, Any]:
        r = self.req
        return {"run": self.served.name, "method": self.served.method_name, "sampler": r.sampler,
                "steps": self.steps, "length": int(self.initial.shape[0]),
                "mode": "infill" if r.infill is not None else "prompt",
                "temperature": r.temperature, "top_k": r.top_k, "top_p": r.top_p, "seed": self.seed,
                "pace": self.pace_ms, "fixed": self.fixed, "mask_char": r.placeholder}


def _given(params: Mapping[str, Any], name: str) -> Any:
    """The parameter, or None when absent or empty (an empty form field means "the default")."""
    value = params.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _int(params: Mapping[str, Any], name: str, lo: int, hi: int, what: str) -> int | None:
    value = _given(params, name)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = int(value.strip())
    if number is None or not lo <= number <= hi:
        raise RequestError(f"{name} must be {what}, got {_show(value)}")
    return number


def _float(params: Mapping[str, Any], name: str, ok: Any, what: str) -> float | None:
    value = _given(params, name)
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    if number is None or not math.isfinite(number) or not ok(number):
        raise RequestError(f"{name} must be {what}, got {_show(value)}")
    return number


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a text, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _describe_chars(chars: list[str]) -> str:
    def one(c: str) -> str:
        name = unicodedata.name(c, "")
        return f"{c!r} (U+{ord(c):04X}{' ' + name if name else ''})"

    shown = ", ".join(one(c) for c in chars[:5])
    return shown + (f" and {len(chars) - 5} more" if len(chars) > 5 else "")


def check_request(params: Mapping[str, Any], runs: Mapping[str, ServedRun], max_steps: int) -> Settings:
    """Turn raw parameters (query strings or JSON values) into :class:`Settings`, or raise
    :class:`RequestError` with one sentence that names the problem and the fix. Cheap: nothing runs the
    model, so the event loop can do it inline."""
    unknown = sorted(k for k in params if k not in PARAMETERS)
    if unknown:
        raise RequestError(f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(PARAMETERS)}")

    name = _text(params, "run")
    if not name:
        if len(runs) != 1:
            raise RequestError(f"say which run to sample with run=NAME; the runs are {', '.join(runs)}")
        name = next(iter(runs))
    if name not in runs:
        raise RequestError(f"unknown run {_show(name)}; the runs are {', '.join(runs)}")
    served = runs[name]
    run, tok = served.run, served.run.tokenizer
    assert tok is not None
    unit = "characters" if tok.kind == "char" else "tokens"

    placeholder = _text(params, "placeholder") or "_"
    if len(placeholder) != 1:
        raise RequestError(f"placeholder must be exactly one character, got {_show(placeholder)}")
    prompt, infill = _text(params, "prompt") or "", _text(params, "infill") or None
    if prompt and infill:
        raise RequestError("give either a prompt or an infill text, not both (a prompt is an infill text whose "
                           "blanks are all at the end)")
    text, label = (infill, "infill text") if infill is not None else (prompt, "prompt")
    if len(text) > served.max_chars:
        raise RequestError(f"the {label} has {len(text):,} characters but run {name} takes at most "
                           f"{served.max_chars:,}; shorten it")
    if infill is not None:
        if served.method_name == "ar":
            raise RequestError(f"run {name} is autoregressive (ar) and can only continue a prompt; use a prompt, "
                               f"or pick a masked, embedding or bits run to fill blanks")
        if placeholder not in infill:
            raise RequestError(f"the infill text has no {placeholder!r} placeholders; mark each character to "
                               f"generate with {placeholder!r}")
    if isinstance(tok, CharTokenizer):
        known = text.replace(placeholder, "") if infill is not None else text
        unseen = tok.unknown_chars(known)
        if unseen:
            raise RequestError(f"the {label} contains {'a character' if len(unseen) == 1 else 'characters'} run "
                               f"{name} never saw in training: {_describe_chars(unseen)}; remove or replace "
                               f"{'it' if len(unseen) == 1 else 'them'}")

    sampler = _text(params, "sampler") or served.default_sampler
    if sampler not in served.samplers:
        extra = (" (the guided sampler needs a guide run: use `textdiffusion sample --sampler guided`)"
                 if sampler == "guided" else "")
        raise RequestError(f"run {name} ({served.method_name}) has no sampler {_show(sampler)} here; choose one "
                           f"of {', '.join(served.samplers)}{extra}")

    steps = _int(params, "steps", 1, max_steps, f"a whole number from 1 to {max_steps} (the server's --max-steps)")
    if steps is not None and steps > served.max_steps:
        raise RequestError(f"run {name} was trained with {served.max_steps} diffusion steps, so steps must be at "
                           f"most {served.max_steps}, got {steps}")
    length = _int(params, "length", 1, served.max_length,
                  f"a whole number of {unit} from 1 to {served.max_length} (run {name}'s limit)")
    method_cfg = run.cfg.method
    temperature = _float(params, "temperature", lambda v: 0 < v <= MAX_TEMPERATURE,
                         f"a number above 0 and at most {MAX_TEMPERATURE:g} (1 samples the model as trained)")
    top_k = _int(params, "top_k", 0, tok.n_symbols,
                 f"a whole number from 0 (off) to {tok.n_symbols} (the run's vocabulary)")
    top_p = _float(params, "top_p", lambda v: 0 < v <= 1, "a number above 0 and at most 1 (1 is off)")
    seed = _int(params, "seed", 0, 2**63 - 1, "a whole number from 0 to 2**63-1 (or empty for a random one)")
    pace = _int(params, "pace", 0, MAX_PACE_MS, f"a whole number of milliseconds from 0 to {MAX_PACE_MS}")

    req = SampleRequest(n=1, length=length or 0, prompt=prompt, infill=infill, placeholder=placeholder,
                        sampler=sampler, steps=0,
                        temperature=method_cfg.temperature if temperature is None else temperature,
                        top_k=method_cfg.top_k if top_k is None else top_k,
                        top_p=method_cfg.top_p if top_p is None else top_p)
    # sizes in tokens, which only the tokenizer knows for BPE / WordPiece
    try:
        if infill is not None:  # the method's own template encoding: each blank one token, known runs whole
            probe = SampleRequest(n=1, infill=infill, placeholder=placeholder)
            n_text = int(run.method.prepare(probe, torch.device("cpu"))[0].shape[1])
        else:
            n_text = len(tok.encode(prompt)) if prompt else 0
    except (ConfigError, DataError) as e:
        raise RequestError(f"the {label} cannot be encoded: {e}") from None
    if infill is not None:
        if n_text > served.max_length:
            raise RequestError(f"the infill text is {n_text} {unit} long but run {name} takes at most "
                               f"{served.max_length}; shorten it")
        if length is not None and length < n_text:
            raise RequestError(f"length {length} is shorter than the infill text ({n_text} {unit}); leave length "
                               f"empty to use the text's length")
    else:
        if n_text >= served.max_length:
            raise RequestError(f"the prompt is {n_text} {unit} long, which leaves nothing to generate: run {name} "
                               f"writes at most {served.max_length}; shorten the prompt")
        total = length or served.default_length
        if n_text >= total:
            raise RequestError(f"the prompt is {n_text} {unit} long, which leaves nothing to generate in a length "
                               f"of {total}; shorten the prompt or raise the length (at most {served.max_length})")
        req.length = total
    if served.method_name == "ar":
        generated = req.length - n_text
        if generated > max_steps:
            raise RequestError(f"an ar run writes one {unit[:-1]} per step, and {generated} steps exceed the "
                               f"server's --max-steps {max_steps}; lower the length")
        steps = generated  # any `steps` asked for is not used: ar takes one step per token
    else:
        steps = req.steps = steps or served.default_steps or 1
    try:  # the method's own checks, last, so that anything the checks above missed is still one sentence
        initial, fixed = run.method.prepare(req, torch.device("cpu"))
    except (ConfigError, DataError) as e:
        raise RequestError(str(e)) from None
    state = initial[0]
    return Settings(served, req, secrets.randbelow(2**31) if seed is None else seed, pace or 0, steps, state,
                    _fixed_chars(served, state, fixed[0]))


def _fixed_chars(served: ServedRun, state: torch.Tensor, fixed: torch.Tensor) -> list[int]:
    """Character positions of the user's text in the frames. For a char tokenizer these are the token
    positions; otherwise only the prompt prefix (before the first blank) keeps its character positions
    while tokens are filled in, so only that is marked."""
    tok = served.run.tokenizer
    assert tok is not None
    if tok.kind == "char":
        return fixed.nonzero().flatten().tolist()
    _, masked = decode_masked(tok, state.tolist())
    return list(range(masked[0] if masked else len(tok.decode(state.tolist()))))


# ----------------------------------------------------------------------------------------------------------
# sampling jobs


class _Frames:
    """Sampler states -> player frames ``{step, t, nfe, text, masked, changed}`` for the first sample."""

    def __init__(self, served: ServedRun, mask_char: str):
        self.tok = served.run.tokenizer
        self.mask_char = mask_char
        self.prev: torch.Tensor | None = None

    def __call__(self, step: int, ids: torch.Tensor, info: Mapping[str, Any]) -> dict[str, Any]:
        tok = self.tok
        assert tok is not None
        ids = ids.detach().cpu()
        text, masked = decode_masked(tok, ids.tolist(), self.mask_char)
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
    """One sampling: its settings, the queue its events go through, and the flag that stops it."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.cancel = threading.Event()
        self.reason = "the sampling was stopped"  # what the client is told, if it is still listening
        self.frames = 0

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """From the worker thread: hand an event to the event loop (the queue is not thread-safe)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (event, data))
        except RuntimeError:  # the loop is closed: the server is gone, so is the listener
            self.cancel.set()
            raise _Cancelled() from None

    async def events(self) -> AsyncIterator[str]:
        yield _sse("start", self.settings.start_event())
        while True:
            event, data = await self.queue.get()
            yield _sse(event, data)
            if event in ("done", "error"):
                return


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class _EventStream(StreamingResponse):
    """A streaming response that stops its sampling however the response ends (done, client gone, server
    shutting down): the one place where every way out passes."""

    def __init__(self, job: Job):
        super().__init__(job.events(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel.set()


class SamplingService:
    """The runs, the worker pool and the counters behind ``/api/status``."""

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
        """Take a slot and start the worker, or refuse with 503: waiting requests would each hold a thread
        and a connection with nothing to show."""
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
        s = job.settings
        run = s.served.run
        frames = _Frames(s.served, s.req.placeholder)
        pace = s.pace_ms / 1000
        paced = 0.0  # seconds spent waiting for the pace, left out of the reported sampling time

        def on_step(step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
            nonlocal paced
            if job.cancel.is_set():
                raise _Cancelled()
            if job.frames == 0 and step > 0:  # samplers that report no initial state (embedding, bits)
                job.emit("frame", frames(0, s.initial, {"t": 1.0, "nfe": 0}))
                job.frames += 1
            job.emit("frame", frames(step, state[0], info))
            job.frames += 1
            if pace:
                waited = time.perf_counter()
                if job.cancel.wait(pace):
                    raise _Cancelled()
                paced += time.perf_counter() - waited

        # the slot is given back *before* the last event goes out, so a client that has seen done or error
        # can start its next sampling at once without finding its own finished one still counted
        outcome, last = "failed", None
        try:
            with torch.no_grad():  # grad mode is per thread: the worker must switch it off itself
                gen = torch.Generator(device=run.device).manual_seed(s.seed)
                tic = time.perf_counter()
                res = run.method.sample(run.model, s.req, gen, on_step)
                seconds = time.perf_counter() - tic - paced
            tok = run.tokenizer
            assert tok is not None
            last = ("done", {"text": tok.decode(res.ids[0].cpu().tolist(), s.req.placeholder),
                             "seconds": round(seconds, 4), "nfe": res.nfe, "steps": max(job.frames - 1, 0),
                             "frames": job.frames, "sampler": res.info.get("sampler", s.req.sampler),
                             "seed": s.seed})
            outcome = "completed"
        except _Cancelled:
            outcome, last = "cancelled", ("error", {"error": job.reason})
        except (ConfigError, DataError, CheckpointError) as e:
            last = ("error", {"error": str(e)})
        except Exception as e:  # a bug: keep the server up, say where to look
            traceback.print_exc(file=sys.stderr)
            last = ("error", {"error": f"the sampling failed ({type(e).__name__}: {e}); the server's console "
                                      f"has the details"})
        finally:
            self._finish(job, outcome)
            if last is not None:
                with contextlib.suppress(_Cancelled):
                    job.emit(*last)

    def stop_all(self, reason: str) -> None:
        """Stop every sampling, telling the clients why. Takes no lock, so that a signal handler may call
        it (copying the set is one step under the GIL)."""
        for job in tuple(self.jobs):
            job.reason = reason
            job.cancel.set()

    def shutdown(self) -> None:
        self.stop_all("the server is shutting down")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


# ----------------------------------------------------------------------------------------------------------
# the app


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_params(request: Request) -> Mapping[str, Any]:
    if request.method == "GET":
        return request.query_params
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestError(f"the request body is over {MAX_BODY // 1024} KiB; send a shorter text", status=413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise RequestError(f"the request body is over {MAX_BODY // 1024} KiB; send a shorter text", status=413)
    try:
        params = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        params = None
    if not isinstance(params, dict):
        raise RequestError('the request body must be a JSON object such as {"run": "NAME", "prompt": "ROMEO:"}')
    return params


def create_app(run_dirs: Sequence[str | Path], device: str = "auto", max_steps: int = 1000,
               max_concurrent: int = 4, max_chars: int | None = None,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> Starlette:
    """The ASGI app serving ``run_dirs``, every run loaded now (errors are the CLI's one-line errors).

    ``max_chars`` caps input texts in characters (default: what fits in each run's context).
    ``allowed_hosts`` are the Host headers answered (default: loopback names only, which stops another web
    site from reaching this server through DNS rebinding); None answers any, for a server bound to a
    public interface."""
    if max_steps < 1 or max_concurrent < 1:
        raise ConfigError("--max-steps and --max-concurrent must be >= 1")
    service = SamplingService(load_runs(run_dirs, device, max_steps, max_chars), max_steps, max_concurrent)
    page = web_asset("live.html")
    static = {name: web_asset(name) for name in STATIC}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return _error(f"no such file /static/{name}", 404)
        return Response(static[name], media_type=f"{STATIC[name]}; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    async def api_runs(request: Request) -> JSONResponse:
        return JSONResponse([served.info for served in service.runs.values()])

    async def api_status(request: Request) -> JSONResponse:
        return JSONResponse(service.status())

    async def api_sample(request: Request) -> Response:
        try:
            params = await _read_params(request)
            settings = check_request(params, service.runs, service.max_steps)
            job = service.start(settings)
        except RequestError as e:
            return _error(str(e), e.status)
        return _EventStream(job)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(f"no such page {request.url.path}; the live page is at /", 404)
        if exc.status_code == 405:
            return _error(f"{request.method} is not accepted at {request.url.path}", 405)
        return _error(str(exc.detail), exc.status_code)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.shutdown()

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    app = Starlette(
        routes=[Route("/", index), Route("/static/{name}", asset), Route("/api/runs", api_runs),
                Route("/api/status", api_status), Route("/api/sample", api_sample, methods=["GET", "POST"])],
        middleware=middleware, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.service = service
    return app


def _listen(host: str, port: int) -> socket.socket:
    """Bind now, so a taken port is a one-line error before anything is printed (and port 0 works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") \
            from None


def serve(run_dirs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_steps: int = 1000, max_concurrent: int = 4, max_chars: int | None = None) -> int:
    """Load the runs, serve the page until Ctrl+C; 0 on a clean stop."""
    import uvicorn

    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    app = create_app(run_dirs, device=device, max_steps=max_steps, max_concurrent=max_concurrent,
                     max_chars=max_chars, allowed_hosts=(*LOOPBACK_HOSTS, host) if loopback else None)
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(app.state.service.runs)
    print(f"serving {len(app.state.service.runs)} run(s) ({names}) at http://{shown}:{sock.getsockname()[1]}/ "
          f"(Ctrl+C to stop)", flush=True)
    if not loopback:
        print(f"warning: {host} is reachable from other machines; anyone who can reach it can use this CPU/GPU",
              file=sys.stderr)
    service: SamplingService = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn waits for open responses before it shuts down: end the streams now (each gets an
            # error event and closes) instead of waiting for the grace period and cancelling them
            service.stop_all("the server is shutting down")
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down cleanly, then re-raises the signal
        Server(config).run(sockets=[sock])
    print("stopped", file=sys.stderr)
    return 0
