"""A hostile (or careless) user against the command line: issue 14's acceptance measurement.

    python benchmarks/hostile.py                 # every case (a few minutes on one thread)
    python benchmarks/hostile.py --quick         # in-process cases only: no signals, kills or concurrent trainers
    python benchmarks/hostile.py --list          # also print every case that is not ok, grouped by cause
    python benchmarks/hostile.py --json results.json --strict   # save everything; exit 1 if a case is not ok

Each case runs one or more ``textdiffusion`` commands against `tiny` runs trained at the start, and judges
what happened as one of:

* ``traceback``: an exception escaped ``main()`` (or a process printed a Python traceback, or died of a
  signal nobody sent it) instead of the CLI's one-line ``error: ...``;
* ``silent-wrong``: exit 0 with a wrong result, judged per case (``--temperature nan`` accepted, a sampling
  option with no effect, NaN weights sampled, an out-of-range value written into ``config.json``), or a
  command that cannot be meant literally answered with unbounded work (no answer within its time limit);
* ``lost``: a run that afterwards cannot be resumed or sampled, files that were overwritten or vanished, or a
  refused command that still changed the run;
* ``ok``: a short error that names the problem, or the correct behaviour.

Why it is built this way: a few hundred cases must run in minutes on one CPU thread, so most of them call
``textdiffusion.apps.cli.main(argv)`` in-process, with stdout and stderr captured, inside one *worker*
process that holds the imports. The worker runs under a memory cap (``RLIMIT_AS``) and the parent gives each
case a time limit: a case that allocates absurdly fails inside the cap (a traceback), one that runs past its
limit gets the worker killed and replaced (and is counted as unbounded work). Cases that need real
processes (SIGINT/SIGTERM/SIGKILL during training and saves, two trainers on one directory, Ctrl-C during
the final scoring, a full disk, unbounded ``--n``) run ``python -m textdiffusion`` with ``OMP_NUM_THREADS=1``;
what is checked afterwards (does the run resume? can it be trained again?) runs in-process, as each process
start costs seconds of imports.
When run as root, the worker drops the capabilities that let root read and write anything
(``setpriv``), so the unreadable-file and unwritable-directory cases mean what they say.

``serve`` never listens: the worker replaces the uvicorn server's ``run`` with a stub, so a case that would
start serving stops there (and is judged: an invalid ``--port`` that gets that far was accepted).

Every case names the item of issue 14 it comes from (1-7) and its family; the table counts both. Item 13
holds a later audit's families (:func:`audit_cases`): JSON nested past the stack, symlink loops, terminals that
cannot encode a character, names that are not UTF-8, networks too large for memory, and live-page clients that
stall (real ``serve`` processes, so only without ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("traceback", "silent-wrong", "lost", "ok")
SEVERITY = {"ok": 0, "silent-wrong": 1, "traceback": 2, "lost": 3}
HARNESS_ERROR = "harness-error"  # the harness itself failed on a case: a bug here, not a finding

MEMORY_CAP = 4 << 30  # bytes of address space per worker/process: a tiny run needs about 1.2 GB
CASE_LIMIT_S = 10.0  # a working command on a tiny run answers in well under 3 s
UNBOUNDED_LIMIT_S = 8.0  # huge --n/--steps/--length: refused, bounded, or (past this) unbounded
WORKER_START_S = 90.0
BIG_N_WAIT_S = 15.0  # --n 100000: refused, finished, or still making progress in bounded memory after this
TEXT_METHODS = ("ar", "masked", "embedding", "bits", "block", "uniform", "latent")
FIXTURES = ("ar", "masked", "masked2", "embedding", "bits", "block", "uniform", "latent", "image")
NOBODY_PREFIX = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def child_env() -> dict[str, str]:
    """The environment of every textdiffusion process: one thread, this checkout's sources, the shared data."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TEXTDIFFUSION_DATA", str(REPO.parent / "shared" / "data"))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _cap_memory() -> None:
    """preexec_fn of every child: an address-space cap, so an absurd allocation fails instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


# ---- one command and how it ended -------------------------------------------------------------------------
_PROGRESS = re.compile(r"\|.*\||^\s*sampled \d+/\d+|it/s|step/s|job/s")


def _message_lines(err: str) -> list[str]:
    """The lines of stderr a user reads as the message: warnings and progress bars left out."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    lines = [ln for ln in lines if "Warning" not in ln and not ln.startswith("  warnings.warn")
             and not _PROGRESS.search(ln)]
    for i in range(len(lines) - 1, -1, -1):  # the message starts at the last "error:" line, if there is one
        if lines[i].startswith("error:"):
            return lines[i:]
    return lines


@dataclass
class Call:
    """One command: its argv, exit status (None if an exception escaped main() or it never ended), output."""

    argv: list[str]
    rc: int | None = None
    out: str = ""
    err: str = ""
    exc: str = ""  # "Type: message" of an exception that escaped main()
    seconds: float = 0.0
    note: str = ""  # "would serve", "timeout", "killed by SIGKILL" ...

    @property
    def kind(self) -> str:
        """``traceback``, ``error`` (a non-zero exit with a short message) or ``exit0``."""
        if self.exc or self.rc is None or self.rc < 0:
            return "traceback"
        if self.rc == 0:
            return "exit0"
        if "Traceback (most recent call last)" in self.err:
            return "traceback"
        if self.err.lstrip().startswith("usage:"):  # argparse: usage lines, then one "error:" line
            return "error"
        return "traceback" if len(_message_lines(self.err)) > 3 else "error"

    @property
    def message(self) -> str:
        """The line that explains the outcome: the escaped exception, the error line, or the last line."""
        if self.exc:
            return self.exc
        if self.rc is not None and self.rc < 0:
            return f"died of signal {-self.rc} ({self.note or signal.Signals(-self.rc).name})"
        if self.rc is None:
            return self.note or "no exit status"
        for ln in reversed(self.err.splitlines()):
            if "error:" in ln or "Error" in ln:
                return ln.strip()[:300]
        lines = _message_lines(self.err)
        return (lines[-1] if lines else "").strip()[:300]

    def summary(self) -> dict[str, Any]:
        head = _message_lines(self.err)[:4] if not self.exc else [self.exc]
        return {"argv": self.argv, "rc": self.rc, "kind": self.kind, "seconds": round(self.seconds, 2),
                "note": self.note, "stderr": head}


def refused(call: Call, accepted: str = "silent-wrong", what: str = "") -> tuple[str, str]:
    """The command must end in a one-line error; exit 0 counts as ``accepted``."""
    kind = call.kind
    if kind == "traceback":
        return "traceback", call.message
    if kind == "error":
        return "ok", call.message
    return accepted, f"accepted{': ' + what if what else ''}"


def works(call: Call, failed: str = "silent-wrong", what: str = "") -> tuple[str, str]:
    """The command is valid and must succeed; a refusal counts as ``failed``."""
    kind = call.kind
    if kind == "traceback":
        return "traceback", call.message
    if kind == "error":
        return failed, f"refused a valid command{': ' + what if what else ''}: {call.message}"
    return "ok", "worked"


def no_traceback(call: Call) -> tuple[str, str]:
    """Either a result or a one-line error is fine; only an escaped exception is not."""
    return ("traceback", call.message) if call.kind == "traceback" else ("ok", call.kind)


def legal_or_refused(call: Call, legal: bool, what: str) -> tuple[str, str]:
    """A value from a family: refusing it is always fine; accepting it is fine only if it is a legal value."""
    if call.kind == "exit0" and not legal:
        return "silent-wrong", f"accepted {what}"
    return refused(call) if not legal else no_traceback(call)


def worst(*judgements: tuple[str, str]) -> tuple[str, str]:
    """The most severe of several judgements of one case (lost > traceback > silent-wrong > ok)."""
    bad = [j for j in judgements if j[0] != "ok"]
    if not bad:
        return judgements[-1] if judgements else ("ok", "")
    top = max(SEVERITY[o] for o, _ in bad)
    return next(o for o, _ in bad if SEVERITY[o] == top), "; ".join(r for _, r in bad)


# ---- what a case sees ----------------------------------------------------------------------------------
class WouldServe(Exception):
    """Raised by the stubbed uvicorn server: ``serve`` got as far as listening."""


class Ctx:
    """A case's workspace: the fixture runs (read-only), a fresh directory of its own, and ways to run the CLI.

    ``cli`` calls ``main()`` in this process (only inside the worker); ``proc``/``spawn`` start
    ``python -m textdiffusion``. Every call is kept in ``calls`` for the report."""

    def __init__(self, work: Path, case_dir: Path):
        self.work, self.dir = work, case_dir
        self.fixtures = work / "fixtures"
        self.corpus = work / "corpus.txt"
        self.calls: list[Call] = []

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def fixture(self, name: str) -> Path:
        """A fixture run used read-only (sample, serve): never written by the command."""
        return self.fixtures / name

    def run(self, name: str, dest: str | None = None) -> Path:
        """A private copy of a fixture run, for a case that writes to it or breaks it."""
        target = self.path(dest or name)
        shutil.copytree(self.fixtures / name, target)
        return target

    def cli(self, *argv: Any, encoding: str = "") -> Call:
        """``main(argv)`` here; ``encoding`` gives it byte streams in that encoding (a terminal under
        ``PYTHONIOENCODING=ascii``) instead of text buffers, which take any character."""
        import torch

        from textdiffusion.apps.cli import main

        call = Call([str(a) for a in argv])
        out: Any
        err: Any
        if encoding:
            out, err = (io.TextIOWrapper(io.BytesIO(), encoding=encoding, write_through=True) for _ in range(2))
        else:
            out, err = io.StringIO(), io.StringIO()
        threads, sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
        tic = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(call.argv)
                call.rc = rc if isinstance(rc, int) else 0
            except SystemExit as e:
                call.rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except WouldServe:
                call.rc, call.note = 0, "would serve"
            except BaseException as e:  # everything that escapes main() is what this harness looks for
                call.exc = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                call.err = (err.buffer.getvalue().decode(encoding, "replace") if encoding else err.getvalue()) \
                    + traceback.format_exc()
            finally:  # what one command may have changed for the next (train.threads, its Ctrl-C handler)
                torch.set_num_threads(threads)
                signal.signal(signal.SIGINT, sigint)
        call.seconds = time.perf_counter() - tic
        text = (lambda f: f.buffer.getvalue().decode(encoding, "replace")) if encoding else (lambda f: f.getvalue())
        call.out, call.err = text(out), call.err or text(err)
        self.calls.append(call)
        return call

    def popen(self, argv: list[Any], name: str, preexec: Callable[[], None] | None = None) -> subprocess.Popen:
        """Start ``python -m textdiffusion ARGV``, its stdout/stderr in files of the case directory."""
        argv = [str(a) for a in argv]
        out = open(self.path(f"{name}.out"), "w")  # noqa: SIM115 - closed by the caller via finish()
        err = open(self.path(f"{name}.err"), "w")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "textdiffusion", *argv], stdout=out, stderr=err,
                             cwd=self.dir, env=child_env(), preexec_fn=preexec or _cap_memory)
        p.argv, p.name, p.files, p.tic = argv, name, (out, err), time.perf_counter()  # type: ignore[attr-defined]
        return p

    def finish(self, p: subprocess.Popen, timeout: float = 120.0, note: str = "") -> Call:
        """Wait for a started process (killing it after ``timeout``) and record it as a call."""
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            note = note or f"no answer within {timeout:.0f} s"
        for f in p.files:  # type: ignore[attr-defined]
            f.close()
        call = Call(p.argv, rc=p.returncode, out=self.path(f"{p.name}.out").read_text(errors="replace"),  # type: ignore[attr-defined]
                    err=self.path(f"{p.name}.err").read_text(errors="replace"), note=note,  # type: ignore[attr-defined]
                    seconds=time.perf_counter() - p.tic)  # type: ignore[attr-defined]
        self.calls.append(call)
        return call

    def proc(self, *argv: Any, timeout: float = 120.0, name: str = "") -> Call:
        name = name or f"p{len(self.calls)}"
        return self.finish(self.popen(list(argv), name), timeout)

    def err_text(self, p: subprocess.Popen) -> str:
        return self.path(f"{p.name}.err").read_text(errors="replace")  # type: ignore[attr-defined]


@dataclass
class Case:
    id: str
    item: str  # the issue 14 item (1-7) the case comes from
    family: str
    fn: Callable[[Ctx], tuple[str, str]]
    proc: bool = False  # needs real processes (signals, kills, concurrent trainers): skipped by --quick
    limit: float = CASE_LIMIT_S
    risky: bool = False  # may allocate or loop without bound: only ever run inside the capped worker
    on_timeout: str = "silent-wrong"


@dataclass
class Result:
    id: str
    item: str
    family: str
    outcome: str
    reason: str
    seconds: float
    calls: list[dict[str, Any]] = field(default_factory=list)


def sets(*items: str) -> list[str]:
    """``--set`` flags, one setting each."""
    return [x for item in items for x in ("--set", item)]


# The cheapest training that still evaluates, checkpoints and scores: one step of a tiny run.
CHEAP = sets("train.steps=1", "train.eval_every=1", "train.eval_windows=2", "train.final_eval_windows=2",
             "train.sample_every_eval=false")


# a step count that may be huge: stop after half a second of training, checkpoint only at the end
STEPS_BUDGET = sets("train.time_budget_s=0.5", "train.eval_every=1000000000")


def train_argv(ctx: Ctx, method: str, run: str = "run", *extra: str, data: str | None = None) -> list[str]:
    image = method == "image"
    head = ["mnist", "train"] if image else ["train", "--method", method]
    return [*head, "--preset", "tiny", "--data", data or ("digits" if image else str(ctx.corpus)),
            "--run-dir", str(ctx.path(run)), "--no-progress", *CHEAP, *extra]


def resume_argv(run: Path, steps: int | None = 62) -> list[str]:
    return ["train", "--resume", str(run), "--no-progress", *([f"--steps={steps}"] if steps else [])]


def sample_argv(run: Path, *extra: str) -> list[str]:
    return ["sample", str(run), "--n=2", *extra]


def eval_argv(run: Path, *extra: str) -> list[str]:
    return ["eval", str(run), "--samples=2", "--val-windows=2", *extra]


def compare_argv(ctx: Ctx, run: Path, *extra: str) -> list[str]:
    return ["compare", str(run), "--out", str(ctx.path("cmp")), "--samples=2", "--sweep=4", "--no-progress",
            *extra]


def mnist_sample_argv(ctx: Ctx, run: Path, *extra: str) -> list[str]:
    return ["mnist", "sample", str(run), "--n=4", "--steps=5", "--sampler=ddim", "--out", str(ctx.path("imgs")),
            "--no-gif", *extra]


def mnist_eval_argv(run: Path, *extra: str) -> list[str]:
    return ["mnist", "eval", str(run), "--samples=4", "--steps=5", "--sampler=ddim", *extra]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what "nothing of ours was touched" is checked against."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _changed(before: dict[str, bytes], root: Path) -> list[str]:
    after = _snapshot(root) if root.is_dir() else {}
    return [k for k, v in before.items() if after.get(k) != v]


# ---- legal values of the numeric fields: what exit 0 may accept -----------------------------------------
def _num(value: str) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


_GE0, _GE1, _GT0 = (lambda v: v >= 0), (lambda v: v >= 1), (lambda v: v > 0)
_FRAC = lambda v: 0 <= v < 1  # noqa: E731
_UNIT = lambda v: 0 <= v <= 1  # noqa: E731
_SEED = lambda v: -1 <= v < 2 ** 63  # noqa: E731 - torch takes any 64-bit seed; -1 is a common "any" seed
_HUGE = 1e9  # beyond this a count is not a real request: refuse it (or bound the work)

# field -> (legal(v), whether a value beyond _HUGE is still legal: a cap, a budget, an interval)
LEGAL: dict[str, tuple[Callable[[float], bool], bool]] = {
    "model.n_layer": (_GE1, False), "model.n_head": (_GE1, False), "model.n_embd": (_GE1, False),
    "model.context": (_GE1, False), "model.mlp_ratio": (_GE1, False), "model.dropout": (_FRAC, False),
    "model.rope_base": (lambda v: v > 1, True),
    "train.steps": (_GE1, True), "train.batch_size": (_GE1, False), "train.grad_accum": (_GE1, False),
    "train.lr": (lambda v: 0 < v <= 10, False), "train.min_lr": (lambda v: 0 <= v <= 10, False),
    "train.warmup": (_GE0, True), "train.weight_decay": (lambda v: 0 <= v <= 10, False),
    "train.beta1": (_FRAC, False), "train.beta2": (_FRAC, False), "train.grad_clip": (_GE0, True),
    "train.ema_decay": (_FRAC, False), "train.eval_every": (_GE1, True), "train.eval_windows": (_GE0, True),
    "train.final_eval_windows": (_GE0, True), "train.threads": (lambda v: 0 <= v <= 1024, False),
    "train.time_budget_s": (_GE0, True), "train.log_every": (_GE0, True), "train.label_dropout": (_FRAC, False),
    "train.final_eval_budget": (lambda v: 0 <= v <= 100, False), "train.save_every_s": (_GE0, True),
    "data.label_top": (lambda v: 2 <= v <= 4096, False),
    "data.val_fraction": (lambda v: 0 < v < 1, False), "data.vocab_size": (_GE1, False),
    "data.train_chars": (_GE0, False), "train.eval_exact_windows": (_GE0, True),
    "method.temperature": (_GT0, True), "method.top_k": (_GE0, True), "method.top_p": (lambda v: 0 < v <= 1, False),
    "method.sigma_max": (_GT0, False), "method.eval_time_samples": (_GE1, False), "method.eval_seed": (_SEED, False),
    "method.confidence": (_UNIT, False), "method.sample_steps": (_GE0, False), "method.timesteps": (_GE0, False),
    "method.eta": (_UNIT, False), "method.time_difference": (_GE0, False), "method.x0_ce_weight": (_GE0, False),
    "method.probs_mse_weight": (_GE0, False), "method.embed_dim": (_GE1, False), "method.embed_scale": (_GT0, False),
    "method.rounding_weight": (_GE0, False), "method.guide_weight": (_UNIT, False), "method.bit_scale": (_GT0, False),
    "method.curriculum_steps": (_GE0, True), "method.curriculum_tau": (lambda v: 0 < v <= 100, False),
    "method.curriculum_tau_end": (lambda v: 0 < v <= 100, False),
    "method.block_size": (_GE1, False), "method.clip_low": (_UNIT, False), "method.fim_rate": (_UNIT, False),
    "method.clip_high": (lambda v: 0 < v <= 1, False), "method.guidance": (_GE0, True),
    "train.final_exact_windows": (_GE0, True), "train.distill_steps": (lambda v: 0 <= v <= 2 ** 20, False),
    "train.distill_substeps": (lambda v: 1 <= v <= 64, False), "train.distill_draws": (lambda v: 1 <= v <= 64, False),
    "method.anneal_steps": (_GE0, True), "method.ar_weight": (lambda v: 0 <= v <= 100, False),
    "method.remdm_eta": (_UNIT, False), "method.remdm_t_on": (lambda v: 0 < v < 1, False),
    "method.remdm_t_off": (lambda v: 0 <= v < 0.55, False), "method.remdm_alpha_on": (lambda v: 0 < v < 1, False),
    "method.compression": (_GE1, False), "method.latent_dim": (_GE1, False), "method.latent_noise": (_GT0, False),
    "method.latent_scale": (_GT0, False), "method.decoder_ce_weight": (_GE0, False),
    "method.autoencoder_steps": (_GE0, False), "method.autoencoder_layers": (_GE1, False),
    "unet.base_channels": (_GE1, False), "unet.num_res_blocks": (_GE0, False), "unet.heads": (_GE1, False),
    "unet.dropout": (_FRAC, False), "unet.groups": (_GE1, False), "unet.label_dropout": (_FRAC, False),
}
FRACTIONS = {k for k, (f, _) in LEGAL.items() if f in (_FRAC, _UNIT)} | {"method.top_p", "method.clip_high",
                                                                        "data.val_fraction"}


def is_legal(key: str, value: str, integer: bool) -> bool:
    v = _num(value)
    if v is None or key not in LEGAL or (integer and v != int(v)):
        return False
    ok, huge_ok = LEGAL[key]
    return ok(v) and (huge_ok or abs(v) <= _HUGE)


# The values of the issue's own list: the item they are listed under (the rest of a family is item 6).
ISSUE_LISTED = {"train.compile=bogus": "5", "train.amp=bogus": "5", "train.warmup=-5": "5", "model.mlp_ratio=0": "5",
                "preset=bogus": "5"}

SET_VALUES = ("nan", "inf", "-inf", "-1", "0", "1e30", "1e999", "abc", "", "true")
STR_VALUES: dict[str, tuple[str, ...]] = {
    "model.activation": ("foo",), "model.positions": ("bogus",), "train.device": ("bogus", "mps", "meta", "cuda:99"),
    "train.compile": ("bogus",), "train.amp": ("bogus",), "data.tokenizer": ("bogus",),
    "unet.channel_mult": ("abc", "", "0", "1,-2", "1,2,2,2,2,2,2,2"),
}
STR_DEFAULT_VALUES = ("bogus",)
STR_LEGAL = {("method.sampler", ""), ("method.guide_run", "")}
STR_SKIP = {"data.corpus"}  # the data family covers it


def _section_fields(method: str) -> list[tuple[str, str]]:
    """``(section.field, type)`` of every field a ``method`` run's config has."""
    from dataclasses import fields

    from textdiffusion.methods.configs import make_config

    cfg = make_config(method, "tiny")
    out = []
    for section in cfg.sections():
        for f in fields(getattr(cfg, section)):
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            out.append((f"{section}.{f.name}", typ))
    return out


def _declared_by(method: str) -> set[str]:
    """The method-section fields declared by a class that no earlier method of TEXT_METHODS + image shares:
    an inherited field is exercised once, under the first method whose config has it."""
    from dataclasses import fields

    from textdiffusion.methods.configs import method_config_class

    order = [*TEXT_METHODS, "image"]
    seen: dict[tuple[str, str], str] = {}
    for name in order:
        cls = method_config_class(name)
        for f in fields(cls):
            owner = next(c for c in reversed(cls.__mro__) if f.name in getattr(c, "__annotations__", {}))
            seen.setdefault((owner.__qualname__, f.name), name)
    cls = method_config_class(method)
    return {f"method.{f.name}" for f in fields(cls)
            if seen[(next(c for c in reversed(cls.__mro__) if f.name in getattr(c, "__annotations__", {})).__qualname__,
                     f.name)] == method}


# ---- case families -------------------------------------------------------------------------------------
def set_field_cases() -> list[Case]:
    """``train --set section.field=VALUE`` for every field: numbers get nan, inf, -1, 0, 1e30, 1e999, text, ""
    and a bool; strings a bogus value; bools a non-bool. The shared sections (model/train/data) are tried on
    ``masked``, each method's own fields on that method, the U-Net's on ``image``."""
    cases = []
    for method in (*TEXT_METHODS, "image"):
        own = _declared_by(method)
        for key, typ in _section_fields(method):
            section = key.split(".")[0]
            shared = section in ("model", "train", "data")
            if (shared and method != "masked") or (section == "method" and key not in own) or key in STR_SKIP:
                continue
            if key == "method.name":
                values: tuple[str, ...] = ("ar" if method != "ar" else "masked", "bogus")
            elif typ in ("int", "float"):
                values = SET_VALUES + (("2",) if key in FRACTIONS else ()) + \
                    {"model.n_embd": ("-32",), "train.warmup": ("-5",)}.get(key, ())
            elif typ == "bool":
                values = ("maybe", "2", "")
            else:
                values = STR_VALUES.get(key, STR_DEFAULT_VALUES)
            for value in values:
                cases.append(_set_case(method, key, typ, value))
    for method, item in (("masked", "preset=bogus"), ("masked", "seed=abc"), ("masked", "seed=1e23"),
                         ("masked", "seed=nan"), ("masked", "seed=-1"), ("masked", "seed=100000000000000000000000")):
        key, value = item.split("=")
        cases.append(_set_case(method, key, "int" if key == "seed" else "str", value))
    return cases


def _set_case(method: str, key: str, typ: str, value: str) -> Case:
    setting = f"{key}={value}"
    integer = typ == "int"
    if typ in ("int", "float"):
        legal = is_legal(key, value, integer) or (key == "seed" and value in ("-1",))
    elif key == "train.device":
        legal = False  # bogus, or a device this machine does not have (checked again below)
    else:
        legal = (key, value) in STR_LEGAL
    extra = STEPS_BUDGET if key == "train.steps" else []
    huge = value in ("1e30", "1e999") or value.endswith("000000000")

    def fn(ctx: Ctx) -> tuple[str, str]:
        ok = legal
        if key == "train.device":
            import torch

            ok = value.startswith("cuda") and torch.cuda.device_count() > int(value.split(":")[1] or 0)
        call = ctx.cli(*train_argv(ctx, method, "run", *extra, *sets(setting)))
        return legal_or_refused(call, ok, f"--set {setting}")

    # image runs load the digits and build a U-Net: seconds, more on a busy machine
    return Case(f"set:{method}/{setting}", ISSUE_LISTED.get(setting, "6"), "set-train", fn, risky=huge,
                limit=2 * CASE_LIMIT_S if method == "image" else CASE_LIMIT_S)


def set_syntax_cases() -> list[Case]:
    """Malformed ``--set`` items, and settings a trained run must not change, on train and sample."""
    cases = []
    for item in ("foo", "=1", "model.=1", ".x=1", "model.n_layer", "unknown.x=1", "model.bogus=1", "unet.heads=2",
                 "model.n_layer=2=3", "method.bogus=1", "  model.n_layer  =  3  ", "model.n_layer.x=1"):
        legal = item.strip().startswith("model.n_layer") and "3" in item and "=2=" not in item

        def fn(ctx: Ctx, item: str = item, legal: bool = legal) -> tuple[str, str]:
            return legal_or_refused(ctx.cli(*train_argv(ctx, "masked", "run", *sets(item))), legal, f"--set {item!r}")

        cases.append(Case(f"set-syntax:train/{item!r}", "6", "set-syntax", fn))
    for item in ("model.n_layer=8", "train.lr=1", "method.schedule=linear", "method.name=ar", "seed=3", "preset=base",
                 "data.corpus=/nonexistent", "method.bogus=1", "foo"):
        def fn(ctx: Ctx, item: str = item) -> tuple[str, str]:
            return refused(ctx.cli(*sample_argv(ctx.fixture("masked"), *sets(item))), what=f"sample --set {item}")

        cases.append(Case(f"set-syntax:sample/{item}", "6", "set-syntax", fn))
    return cases


def sample_set_cases() -> list[Case]:
    """``sample RUN --set method.X=VALUE`` for every sampling option, each under the first method that has it
    (the decoding family tries temperature and top-p on every method)."""
    from textdiffusion.methods.configs import method_config_class

    cases = []
    for method in TEXT_METHODS:
        cls = method_config_class(method)
        types = dict(_section_fields(method))
        own = _declared_by(method)
        for name in cls.sampling_fields():
            key = f"method.{name}"
            if key not in own:
                continue
            typ = types[key]
            if typ not in ("int", "float"):
                values: tuple[str, ...] = ("maybe",) if typ == "bool" else ("bogus",)
            else:
                values = SET_VALUES + (("2",) if key in FRACTIONS else ())
            for value in values:
                legal = is_legal(key, value, typ == "int") if typ in ("int", "float") else False
                if name == "guide_run":
                    legal = False

                def fn(ctx: Ctx, method: str = method, item: str = f"{key}={value}", legal: bool = legal):
                    fast = [] if "sample_steps" in item else FEW_STEPS.get(method, [])
                    call = ctx.cli(*sample_argv(ctx.fixture(method), *fast, *sets(item)))
                    return legal_or_refused(call, legal, f"sample --set {item}")

                huge = value in ("1e30", "1e999")
                cases.append(Case(f"set-sample:{method}/{key}={value}", "6", "set-sample", fn, risky=huge))
    return cases


FLAG_VALUES = ("nan", "inf", "-1", "0", "1e30", "1000000000000")


def _flag_item(value: str) -> str:
    return "5" if value in ("nan", "inf") else "7" if value in ("1e30", "1000000000000") else "6"


# command -> [(flag, legal(v) or None when no value of FLAG_VALUES may pass, values to skip)]
_INT, _FLOAT = "int", "float"
FLAGS: dict[str, list[tuple[str, str, Callable[[float], bool] | None]]] = {
    "sample": [("--n", _INT, lambda v: 1 <= v <= 1e5), ("--length", _INT, lambda v: 1 <= v <= 32),
               ("--steps", _INT, lambda v: 1 <= v <= 1e5), ("--temperature", _FLOAT, _GT0),
               ("--top-k", _INT, _GE0), ("--top-p", _FLOAT, lambda v: 0 < v <= 1),
               ("--seed", _INT, _SEED), ("--delay", _FLOAT, _GE0)],
    "eval": [("--samples", _INT, lambda v: 1 <= v <= 1e5), ("--length", _INT, lambda v: 1 <= v <= 32),
             ("--steps", _INT, lambda v: 1 <= v <= 1e5), ("--temperature", _FLOAT, _GT0), ("--top-k", _INT, _GE0),
             ("--top-p", _FLOAT, lambda v: 0 < v <= 1), ("--seed", _INT, _SEED),
             ("--val-windows", _INT, _GE0)],
    "compare": [("--samples", _INT, lambda v: 1 <= v <= 1e5), ("--length", _INT, lambda v: 1 <= v <= 32),
                ("--seed", _INT, _SEED), ("--sweep", "str", None)],
    "serve": [("--port", _INT, None), ("--max-steps", _INT, None), ("--max-concurrent", _INT, None)],
    "train": [("--steps", _INT, _GE1), ("--seed", _INT, _SEED)],
    "mnist train": [("--steps", _INT, _GE1), ("--seed", _INT, _SEED)],
    "mnist sample": [("--n", _INT, lambda v: 1 <= v <= 1e5), ("--digit", _INT, lambda v: 0 <= v <= 9),
                     ("--steps", _INT, lambda v: 1 <= v <= 1000), ("--eta", _FLOAT, _UNIT),
                     ("--guidance", _FLOAT, _GE0), ("--seed", _INT, _SEED)],
    "mnist eval": [("--samples", _INT, lambda v: 1 <= v <= 1e5), ("--steps", _INT, lambda v: 1 <= v <= 1000),
                   ("--eta", _FLOAT, _UNIT), ("--guidance", _FLOAT, _GE0),
                   ("--seed", _INT, _SEED)],
    "demo": [("--steps", _INT, None)],
    "mnist demo": [("--steps", _INT, None)],
}
# values that would start real work a flag case has no business starting (a server on a free port, a demo)
FLAG_SKIP = {("serve", "--port", "0"), ("serve", "--max-steps", "1000000000000"),
             ("serve", "--max-concurrent", "1000000000000"), ("demo", "--steps", "1000000000000"),
             ("mnist demo", "--steps", "1000000000000")}


def _flag_argv(ctx: Ctx, command: str, flag: str, value: str) -> list[str]:
    item = f"{flag}={value}"
    masked = ctx.fixture("masked")
    if command == "sample":
        show = ["--show"] if flag == "--delay" else []
        return ["sample", str(masked), *([] if flag == "--n" else ["--n=2"]), *show, item]
    if command == "eval":
        run = ctx.run("masked")
        return ["eval", str(run), *([] if flag == "--samples" else ["--samples=2"]),
                *([] if flag == "--val-windows" else ["--val-windows=2"]), item]
    if command == "compare":
        run = ctx.run("masked")
        return ["compare", str(run), "--out", str(ctx.path("cmp")), "--no-progress",
                *([] if flag == "--samples" else ["--samples=2"]), *([] if flag == "--sweep" else ["--sweep=4"]), item]
    if command == "serve":
        return ["serve", str(masked), item]
    if command in ("train", "mnist train"):
        budget = STEPS_BUDGET if flag == "--steps" else []
        return [*train_argv(ctx, "image" if command == "mnist train" else "ar", "run", *budget), item]
    if command == "mnist sample":
        run = ctx.fixture("image")
        base = ["mnist", "sample", str(run), "--sampler=ddim", "--out", str(ctx.path("imgs")), "--no-gif",
                *([] if flag == "--n" else ["--n=4"]), *([] if flag == "--steps" else ["--steps=5"])]
        return [*base, item]
    if command == "mnist eval":
        run = ctx.run("image")
        return ["mnist", "eval", str(run), "--sampler=ddim", *([] if flag == "--samples" else ["--samples=4"]),
                *([] if flag == "--steps" else ["--steps=5"]), item]
    if command in ("demo", "mnist demo"):
        return [*command.split(), "--run-dir", str(ctx.path("demo")), item]
    raise ValueError(command)


def flag_cases() -> list[Case]:
    """Every numeric flag of every command with nan, inf, -1, 0, 1e30 and 10^12; serve's port with values no
    socket can have (a valid port would start a server, so those are not tried)."""
    cases = []
    for command, flags in FLAGS.items():
        for flag, typ, legal_fn in flags:
            values = FLAG_VALUES + (("65536", "99999") if flag == "--port" else ()) + \
                (("2",) if flag in ("--top-p", "--eta") else ())
            for value in values:
                if (command, flag, value) in FLAG_SKIP:
                    continue
                v = _num(value)
                legal = bool(legal_fn and v is not None and (typ != _INT or (v == int(v) and "e" not in value))
                             and legal_fn(v))

                def fn(ctx: Ctx, command: str = command, flag: str = flag, value: str = value, legal: bool = legal):
                    return legal_or_refused(ctx.cli(*_flag_argv(ctx, command, flag, value)), legal, f"{flag}={value}")

                huge = value in ("1e30", "1000000000000")
                limit = UNBOUNDED_LIMIT_S if huge else 2 * CASE_LIMIT_S if command.startswith("mnist") else \
                    CASE_LIMIT_S
                cases.append(Case(f"flag:{command}/{flag}={value}", _flag_item(value), "flags", fn, risky=huge,
                                  limit=limit))
    return cases


# ---- config.json --------------------------------------------------------------------------------------
def _commands(ctx: Ctx, run: Path) -> dict[str, list[str]]:
    return {"sample": sample_argv(run), "resume": resume_argv(run), "eval": eval_argv(run),
            "compare": compare_argv(ctx, run, "--sweep="), "serve": ["serve", str(run)]}


def _edit_config(run: Path, edit: Callable[[dict], Any]) -> None:
    path = run / "config.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


WHOLE_FILE: dict[str, bytes | Callable[[bytes], bytes]] = {
    "[]": b"[]", "null": b"null", '"x"': b'"x"', "42": b"42", "{}": b"{}", "config-list": b'{"config": []}',
    "config-null": b'{"config": null}', "config-empty": b'{"config": {}}', "not-utf8": b"\xff\xfe\x00\x81garbage",
    "truncated": lambda b: b[: len(b) // 2], "empty": b"", "zeros": b"\0" * 64,
}


SHAPELESS = {"n_head", "context"}  # model fields that change what the network computes but no tensor's shape


def config_file_cases() -> list[Case]:
    """``config.json`` broken as a whole, by section and by field, then used by every command that reads it."""
    cases = []
    for label, content in WHOLE_FILE.items():
        for command in ("sample", "resume", "eval", "compare", "serve"):
            def fn(ctx: Ctx, content=content, command: str = command) -> tuple[str, str]:
                run = ctx.run("masked")
                path = run / "config.json"
                path.write_bytes(content(path.read_bytes()) if callable(content) else content)
                return refused(ctx.cli(*_commands(ctx, run)[command]), what="a broken config.json")

            cases.append(Case(f"config:{label}/{command}", "6", "config.json", fn))
    for section in ("model", "train", "method", "data"):
        for label, value in (("missing", None), ("list", []), ("string", "x")):
            for command in ("sample", "resume"):
                def fn(ctx: Ctx, section=section, value=value, label=label, command=command) -> tuple[str, str]:
                    run = ctx.run("masked")

                    def edit(meta: dict) -> None:
                        if label == "missing":
                            del meta["config"][section]
                        else:
                            meta["config"][section] = value

                    _edit_config(run, edit)
                    need = command == "resume" or section in ("model", "method")
                    call = ctx.cli(*_commands(ctx, run)[command])
                    return refused(call, what=f"config.{section} {label}") if need else no_traceback(call)

                cases.append(Case(f"config:{section}-{label}/{command}", "6", "config.json", fn))
    # every field with a wrong type, and null: refused before anything is built
    for key, typ in _section_fields("masked"):
        section, name = key.split(".")
        if key == "method.name":
            continue
        wrong: list[tuple[str, Any]] = [("null", None)]
        wrong.append(("text", "abc") if typ in ("int", "float", "bool") else ("number", 7))
        if typ == "int":
            wrong.append(("fraction", 2.5))
        for label, value in wrong:
            commands = ("resume", "sample") if section in ("model", "method") else ("resume",)
            for command in commands:
                def fn(ctx: Ctx, section=section, name=name, value=value, command=command) -> tuple[str, str]:
                    run = ctx.run("masked")
                    _edit_config(run, lambda meta: meta["config"][section].__setitem__(name, value))
                    # --steps would replace a broken train.steps: resume that one as it is (it finished: refused)
                    argv = resume_argv(run, None) if f"{section}.{name}" == "train.steps" and command == "resume" \
                        else _commands(ctx, run)[command]
                    return refused(ctx.cli(*argv), what=f"{section}.{name}={value!r}")

                cases.append(Case(f"config:{key}={label}/{command}", "6", "config.json", fn))
    # the method edited: another method's name (same weights, garbage samples), or none
    for src, dst in (("masked", "block"), ("block", "masked"), ("masked", "ar"), ("ar", "masked"),
                     ("embedding", "bits"), ("bits", "embedding"), ("masked", "bogus"), ("masked", 5),
                     ("masked", "image")):
        def fn(ctx: Ctx, src=src, dst=dst) -> tuple[str, str]:
            run = ctx.run(src)
            _edit_config(run, lambda meta: meta["config"]["method"].__setitem__("name", dst))
            return refused(ctx.cli(*sample_argv(run)), what=f"a {src} run relabelled {dst!r} sampled")

        cases.append(Case(f"config:method.name {src}->{dst}/sample", "5", "config.json", fn))
    # shapes edited: the model must not be built (1.7 GB for n_embd=4096) before the weights are checked
    for key, value in (("n_embd", 64), ("n_embd", 4096), ("n_layer", 3), ("n_head", 4), ("context", 64),
                       ("mlp_ratio", 2)):
        for command in ("sample", "resume"):
            def fn(ctx: Ctx, key=key, value=value, command=command) -> tuple[str, str]:
                run = ctx.run("masked")
                _edit_config(run, lambda meta: meta["config"]["model"].__setitem__(key, value))
                what = f"weights of another shape (model.{key}={value} edited)" if key not in SHAPELESS else \
                    f"model.{key}={value} edited; every tensor keeps its shape (only a record of the config in the " \
                    f"checkpoint can tell)"
                return refused(ctx.cli(*_commands(ctx, run)[command]), what=what)

            cases.append(Case(f"config:model.{key}={value}/{command}", "6", "config.json", fn, risky=value == 4096,
                              limit=30.0 if value == 4096 else CASE_LIMIT_S))
    return cases + resume_cases()


# ---- what a resume goes on with: the recorded settings, AdamW's moments, the smoothed loss ----------------------
# settings edited in config.json between a checkpoint and its resume: each would go on as another run
RESUME_EDITS = {"train.lr": 0.002, "train.batch_size": 3, "train.ema_decay": 0.5, "seed": 7,
                "data.val_fraction": 0.5, "train.weight_decay": 0.0, "train.warmup": 1, "train.grad_accum": 2,
                "train.eval_every": 7, "train.eval_windows": 3, "method.estimator": "count", "preset": "gpu"}
# what a resume may change (sampling options, where it runs): the run goes on as it was
RESUME_CHANGES = {"method.sample_steps": 7, "method.eval_seed": 5, "train.device": "cpu", "train.logger": "",
                  "train.save_every_s": 5.0, "train.threads": 1}


def _set_recorded(meta: dict, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if name:
        meta["config"][section][name] = value
    else:
        meta["config"][section] = value


def _without_tensors(path: Path, drop: Callable[[str], bool]) -> None:
    """Save a checkpoint again without the tensors ``drop`` names, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v for k, v in load_file(str(path)).items() if not drop(k)}, str(path), metadata=meta)


def resume_cases() -> list[Case]:
    """A resume must go on with the run its checkpoint recorded: config.json edited by hand is refused by name
    (and neither the record nor the edit is rewritten), what a resume may change still resumes, an optimizer
    state without all of AdamW's moments is refused, and the evaluation rows after a resume are an
    uninterrupted run's."""
    cases = []
    for key, value in {**RESUME_EDITS, **RESUME_CHANGES}.items():
        def fn(ctx: Ctx, key=key, value=value) -> tuple[str, str]:
            run = ctx.run("masked")
            before = (run / CKPT).read_bytes()
            _edit_config(run, lambda meta: _set_recorded(meta, key, value))
            edited = (run / "config.json").read_bytes()
            call = ctx.cli(*resume_argv(run))
            if key in RESUME_CHANGES:
                return works(call, what=f"{key}={value!r} may change on a resume")
            judged = refused(call, what=f"{key}={value!r} edited in config.json, then resumed")
            if judged[0] == "ok" and key not in call.message:
                judged = "silent-wrong", f"refused without naming {key}: {call.message}"
            if call.kind == "error" and ((run / CKPT).read_bytes() != before
                                         or (run / "config.json").read_bytes() != edited):
                judged = "lost", "a refused resume rewrote the run"
            return judged

        cases.append(Case(f"resume:edited {key}={value!r}", "2", "resume-edits", fn))

    moments = {"every exp_avg": lambda k: k.endswith(".exp_avg"),
               "every exp_avg_sq": lambda k: k.endswith(".exp_avg_sq"),
               "one parameter": lambda k: k.startswith("trainer.opt.0."),
               "every moment": lambda k: k.startswith("trainer.opt.")}
    for label, drop in moments.items():
        def fn(ctx: Ctx, drop=drop, label=label) -> tuple[str, str]:
            run = ctx.run("masked")
            _without_tensors(run / CKPT, drop)
            return refused(ctx.cli(*resume_argv(run)), what=f"a checkpoint without {label} of AdamW resumed")

        cases.append(Case(f"resume:optimizer without {label}", "6", "optimizer-moments", fn))

    def intact(ctx: Ctx) -> tuple[str, str]:
        return works(ctx.cli(*resume_argv(ctx.run("masked"))), what="an intact checkpoint")

    cases.append(Case("resume:optimizer intact", "6", "optimizer-moments", intact))

    def train_loss(ctx: Ctx, stop_at: int) -> tuple[str, str]:
        from textdiffusion.methods.configs import config_from_dict
        from textdiffusion.trainer import Trainer

        steps = sets("train.steps=6", "train.eval_every=2", "train.log_every=0")
        whole = ctx.cli(*train_argv(ctx, "masked", "whole", *steps))
        if whole.kind != "exit0":
            return works(whole, what="the uninterrupted run")
        cfg = config_from_dict(json.loads(ctx.path("whole", "config.json").read_text())["config"])
        Trainer(cfg, ctx.path("parts"), progress=False).train(stop_at=stop_at)  # as after a Ctrl-C
        resumed = ctx.cli(*resume_argv(ctx.path("parts"), None))
        if resumed.kind != "exit0":
            return works(resumed, what="the resume")
        rows = [[(r["step"], r.get("train_loss")) for r in map(json.loads, lines)]
                for lines in (ctx.path(run, "metrics.jsonl").read_text().splitlines() for run in ("whole", "parts"))]
        if rows[0] != rows[1]:
            return "silent-wrong", f"train_loss after a resume at step {stop_at}: {rows[1]} against {rows[0]}"
        return "ok", "the evaluation rows of an uninterrupted run"

    for stop_at in (1, 3, 4):
        cases.append(Case(f"resume:train_loss after a stop at step {stop_at}", "7", "resume-train-loss",
                          lambda ctx, stop_at=stop_at: train_loss(ctx, stop_at), limit=30.0))
    return cases


# ---- checkpoint files ----------------------------------------------------------------------------------
CKPT = "checkpoint.safetensors"  # the one-file checkpoint: model.*, ema.*, trainer.* tensors + metadata


def _poison(path: Path, value: float = float("nan"), prefix: str = "") -> None:
    """Overwrite every floating-point tensor of a safetensors file whose name starts with ``prefix`` (``ema.``,
    ``model.``) with ``value``, keeping its metadata."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors = {k: torch.full_like(v, value) if v.is_floating_point() and k.startswith(prefix) else v
               for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)


def _edit_metadata(path: Path, **changes: str) -> None:
    """Rewrite some metadata entries of a safetensors file (a checkpoint edited by hand or by another tool)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata=meta)


def _corrupt(ctx: Ctx, run: Path, name: str, how: str) -> None:
    path = run / name
    data = path.read_bytes() if path.exists() else b""
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero-bytes":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(bytes((i * 151 + 7) % 256 for i in range(1000)))
    elif how == "huge-header":  # a safetensors header claiming 2^63 bytes
        path.write_bytes(b"\xff" * 7 + b"\x7f" + b"{}")
    elif how == "missing":
        path.unlink()
    elif how == "json-list":
        path.write_text("[]")
    elif how == "json-empty":
        path.write_text("{}")
    elif how == "not-utf8":
        path.write_bytes(b"\xff\xfe\x81")
    elif how == "step-text":
        meta = json.loads(data)
        meta["step"] = "abc"
        path.write_text(json.dumps(meta))
    elif how == "step-huge":
        meta = json.loads(data)
        meta["step"] = 10 ** 30
        path.write_text(json.dumps(meta))
    elif how == "chars-removed":  # a tokenizer with one symbol fewer than the weights
        tok = json.loads(data)
        tok["chars"] = tok["chars"][1:]
        path.write_text(json.dumps(tok))
    elif how == "meta-step-text":
        _edit_metadata(path, step="abc")
    elif how == "meta-state-broken":
        _edit_metadata(path, state="{not json")
    elif how == "meta-state-list":
        _edit_metadata(path, state="[]")
    elif how == "meta-config-list":
        _edit_metadata(path, config="[]")
    elif how.startswith("from-"):  # swapped in from another run (another method, or another seed)
        shutil.copyfile(ctx.fixture(how[5:]) / name, path)
    else:
        raise ValueError(how)


# which files each command reads (a broken file it does not read must not stop it)
READS = {"sample": {"config.json", "tokenizer.json", CKPT},
         "sample-raw": {"config.json", "tokenizer.json", CKPT},
         "resume": {"config.json", "tokenizer.json", CKPT},
         "eval": {"config.json", "tokenizer.json", CKPT}}


def checkpoint_cases() -> list[Case]:
    """Checkpoint files truncated, emptied, garbled, missing or swapped in from another run, for every command
    that reads them; a file a command does not read must not stop it."""
    cases = []
    files = {CKPT: ("truncated", "zero-bytes", "garbage", "huge-header", "missing", "from-ar", "from-masked2",
                    "meta-step-text", "meta-state-broken", "meta-state-list", "meta-config-list"),
             "tokenizer.json": ("truncated", "json-list", "json-empty", "not-utf8", "missing", "chars-removed")}
    for name, hows in files.items():
        for how in hows:
            for command in ("sample", "sample-raw", "resume", "eval"):

                def fn(ctx: Ctx, name=name, how=how, command=command) -> tuple[str, str]:
                    run = ctx.run("masked")
                    _corrupt(ctx, run, name, how)
                    argv = {"sample": sample_argv(run), "sample-raw": sample_argv(run, "--weights=model"),
                            "resume": resume_argv(run), "eval": eval_argv(run)}[command]
                    call = ctx.cli(*argv)
                    if name not in READS[command]:
                        return works(call, "lost", f"{name} ({how}) is not needed to {command}")
                    if how.startswith("from-"):
                        return refused(call, what=f"{name} of the {how[5:]} run (same tensor shapes for masked2: "
                                                  f"only a run id in the checkpoint can tell)")
                    return refused(call, what=f"{name} {how}")

                item = "1" if how == "from-masked2" else "6"
                cases.append(Case(f"ckpt:{name}/{how}/{command}", item, "checkpoint", fn,
                                  risky=how == "huge-header"))
    # NaN (and inf) weights: never sampled, scored or resumed silently (issue item 5)
    for value, label in ((float("nan"), "nan"), (float("inf"), "inf")):
        for method in ("ar", "masked"):
            for command in ("sample", "eval", "compare", "serve"):
                def fn(ctx: Ctx, value=value, method=method, command=command, label=label) -> tuple[str, str]:
                    run = ctx.run(method)
                    _poison(run / CKPT, value, "ema.")
                    argv = {"sample": sample_argv(run), "eval": eval_argv(run),
                            "compare": compare_argv(ctx, run), "serve": ["serve", str(run)]}[command]
                    return refused(ctx.cli(*argv), what=f"{label} EMA weights used by {command}")

                cases.append(Case(f"ckpt:{label}-weights/{method}/{command}", "5", "nan-weights", fn))
        for command in ("sample-raw", "resume"):
            def fn(ctx: Ctx, value=value, command=command, label=label) -> tuple[str, str]:
                run = ctx.run("masked")
                _poison(run / CKPT, value, "model.")
                argv = sample_argv(run, "--weights=model") if command == "sample-raw" else resume_argv(run)
                return refused(ctx.cli(*argv), what=f"{label} raw weights used by {command}")

            cases.append(Case(f"ckpt:{label}-weights/masked/{command}", "5", "nan-weights", fn))
    # records beside the checkpoint: metrics.jsonl, final.json, eval.json
    for how, content in (("truncated-last-line", None), ("garbage-line", b'{"step": 10}\nnot json\n'),
                         ("not-utf8", b"\xff\xfe\n"), ("list-line", b"[]\n"), ("empty", b"")):
        for command in ("resume", "compare"):
            def fn(ctx: Ctx, how=how, content=content, command=command) -> tuple[str, str]:
                run = ctx.run("masked")
                path = run / "metrics.jsonl"
                path.write_bytes(path.read_bytes()[:-7] if content is None else content)
                argv = resume_argv(run) if command == "resume" else compare_argv(ctx, run)
                return no_traceback(ctx.cli(*argv))

            item = "4" if how == "truncated-last-line" else "6"
            cases.append(Case(f"ckpt:metrics.jsonl/{how}/{command}", item, "checkpoint", fn))
    for name in ("final.json", "eval.json", "sweep.json"):
        for how in ("truncated", "json-list", "not-utf8"):
            for command in ("compare", "serve"):
                def fn(ctx: Ctx, name=name, how=how, command=command) -> tuple[str, str]:
                    run = ctx.run("masked")
                    if not (run / name).exists():
                        (run / name).write_text('{"step": 60, "val_bpc": 3.0, "extra": [1, 2, 3]}')
                    _corrupt(ctx, run, name, how)
                    argv = compare_argv(ctx, run) if command == "compare" else ["serve", str(run)]
                    return no_traceback(ctx.cli(*argv))

                cases.append(Case(f"ckpt:{name}/{how}/{command}", "6", "checkpoint", fn))
    return cases + digest_cases()


def _flip_a_bit(path: Path, prefix: str) -> None:
    """Flip one bit in the middle of the first tensor whose name starts with ``prefix``; the header, all that
    safetensors checks, stays as it was."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    begin, end = header[sorted(k for k in header if k.startswith(prefix))[0]]["data_offsets"]
    data[8 + n + (begin + end) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _damage(run: Path, how: str) -> None:
    """Damage safetensors cannot see: a bit flipped in the data section, tensors re-saved as int64 with the
    file's own metadata, two symbols of tokenizer.json swapped; or a harmless change (tokenizer.json
    re-indented, its keys reordered)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = run / CKPT
    if how.startswith("bit-"):
        _flip_a_bit(path, {"bit-ema": "ema.", "bit-model": "model.", "bit-moment": "trainer.opt."}[how])
    elif how.endswith("-int64"):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        prefix = how.removesuffix("-int64") + "."
        save_file({k: v.to(torch.int64) if k.startswith(prefix) and v.is_floating_point() else v
                   for k, v in load_file(str(path)).items()}, str(path), metadata=meta)
    elif how == "tokenizer-swapped":
        tok = json.loads((run / "tokenizer.json").read_text())
        tok["chars"][1], tok["chars"][2] = tok["chars"][2], tok["chars"][1]
        (run / "tokenizer.json").write_text(json.dumps(tok))
    elif how == "tokenizer-reindented":
        tok = json.loads((run / "tokenizer.json").read_text())
        (run / "tokenizer.json").write_text(json.dumps(dict(reversed(list(tok.items()))), indent=5))
    else:
        raise ValueError(how)


def _unused_port() -> int:
    """A port nothing listens on now, so that a serve that gets as far as binding is not stopped by another."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# which tensors each command reads (damage elsewhere must not stop it); every command reads tokenizer.json
DIGEST_READS = {"sample": ("ema",), "sample-raw": ("model",), "eval": ("ema",), "resume": ("ema", "model", "moment"),
                "compare": ("ema",), "serve": ("ema",), "export": ("ema",)}


def digest_cases() -> list[Case]:
    """A checkpoint must prove it is whole: damage in the bytes, dtypes or tokenizer is refused by every command
    that reads the damaged part, and only by those."""
    cases = []
    for how in ("bit-ema", "bit-model", "bit-moment", "ema-int64", "model-int64", "tokenizer-swapped",
                "tokenizer-reindented"):
        for command, reads in DIGEST_READS.items():
            def fn(ctx: Ctx, how=how, command=command, reads=reads) -> tuple[str, str]:
                run = ctx.run("masked")
                _damage(run, how)
                argv = {"sample": sample_argv(run), "sample-raw": sample_argv(run, "--weights=model"),
                        "eval": eval_argv(run), "resume": resume_argv(run), "compare": compare_argv(ctx, run),
                        "serve": ["serve", str(run), "--port", str(_unused_port())],
                        "export": ["export", str(run), str(ctx.path("export"))]
                        }[command]
                call = ctx.cli(*argv)
                part = how.removeprefix("bit-").removesuffix("-int64")
                if how == "tokenizer-reindented" or (part in ("ema", "model", "moment") and part not in reads):
                    return works(call, "lost", f"{how} is harmless to {command}")
                return refused(call, what=f"{how} read by {command}")

            cases.append(Case(f"digest:{how}/{command}", "6", "digest", fn, limit=WORK_LIMIT_S))
    return cases


# ---- run directories, data, outputs --------------------------------------------------------------------
def _foreign_dir(ctx: Ctx, name: str, files: dict[str, str]) -> Path:
    d = ctx.path(name)
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


FOREIGN = {"model.safetensors": "my own weights", "tokenizer.json": '{"mine": true}', "final.json": '{"mine": true}',
           "notes.txt": "thesis draft", "samples/step_000001.txt": "my samples"}


def run_dir_cases() -> list[Case]:
    """Where a run goes (``--run-dir``) and where commands read one from."""
    cases: list[Case] = []

    def train_into(ctx: Ctx, target: Path, method: str = "masked") -> Call:
        argv = train_argv(ctx, method)
        argv[argv.index("--run-dir") + 1] = str(target)
        return ctx.cli(*argv)

    def nonrun_with_files(ctx: Ctx) -> tuple[str, str]:
        d = _foreign_dir(ctx, "mine", FOREIGN)
        before = _snapshot(d)
        call = train_into(ctx, d)
        changed = _changed(before, d)
        if changed:
            return "lost", f"overwrote files of a directory that is not a run: {', '.join(changed)}"
        return refused(call, what="trained into a directory that is not a run (nothing overwritten)")

    def nonrun_notes(ctx: Ctx) -> tuple[str, str]:
        d = _foreign_dir(ctx, "mine", {"notes.txt": "thesis draft"})
        before = _snapshot(d)
        call = train_into(ctx, d)
        if _changed(before, d):
            return "lost", "changed notes.txt"
        return refused(call, what="trained into a non-empty directory that is not a run")

    def empty_dir(ctx: Ctx) -> tuple[str, str]:
        ctx.path("empty").mkdir()
        return works(train_into(ctx, ctx.path("empty")), what="an empty existing directory")

    def is_file(ctx: Ctx) -> tuple[str, str]:
        ctx.path("f").write_text("x")
        return refused(train_into(ctx, ctx.path("f")), what="a file as --run-dir")

    def under_file(ctx: Ctx) -> tuple[str, str]:
        ctx.path("f").write_text("x")
        return refused(train_into(ctx, ctx.path("f", "sub")), what="--run-dir under a file")

    def unwritable(ctx: Ctx) -> tuple[str, str]:
        d = ctx.path("ro")
        d.mkdir()
        d.chmod(0o555)
        try:
            return refused(train_into(ctx, d / "run"), what="a run under a read-only directory")
        finally:
            d.chmod(0o755)

    def existing_run(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        before = _snapshot(run)
        call = train_into(ctx, run)
        if _changed(before, run):
            return "lost", "a new training overwrote an existing run"
        return refused(call, what="trained over an existing run")

    for name, fn, item in (("non-run dir with model/tokenizer/final/samples", nonrun_with_files, "4"),
                           ("non-run dir with notes.txt", nonrun_notes, "4"), ("empty dir", empty_dir, "4"),
                           ("a file", is_file, "6"), ("under a file", under_file, "6"),
                           ("unwritable parent", unwritable, "6"), ("an existing run", existing_run, "4")):
        cases.append(Case(f"run-dir:train/{name}", item, "run-dir", fn))

    # commands that read a run, pointed at things that are not one
    def target(ctx: Ctx, what: str) -> Path:
        if what == "missing":
            return ctx.path("nope")
        if what == "a file":
            ctx.path("f").write_text("x")
            return ctx.path("f")
        if what == "empty dir":
            ctx.path("e").mkdir()
            return ctx.path("e")
        if what == "non-run dir":
            return _foreign_dir(ctx, "mine", FOREIGN)
        if what == "config.json only":
            d = ctx.path("young")
            d.mkdir()
            shutil.copyfile(ctx.fixture("masked") / "config.json", d / "config.json")
            return d
        if what == "image run":
            return ctx.fixture("image")
        if what == "text run":
            return ctx.fixture("masked")
        raise ValueError(what)

    readers: dict[str, Callable[[Ctx, Path], list[str]]] = {
        "sample": lambda ctx, r: sample_argv(r), "eval": lambda ctx, r: eval_argv(r),
        "compare": lambda ctx, r: compare_argv(ctx, r), "serve": lambda ctx, r: ["serve", str(r)],
        "resume": lambda ctx, r: resume_argv(r), "mnist sample": lambda ctx, r: mnist_sample_argv(ctx, r),
        "mnist eval": lambda ctx, r: mnist_eval_argv(r), "mnist resume": lambda ctx, r: ["mnist", *resume_argv(r)]}
    for command, argv_fn in readers.items():
        image = command.startswith("mnist")
        for what in ("missing", "a file", "empty dir", "non-run dir", "config.json only",
                     "text run" if image else "image run"):
            if what in ("text run", "image run") and command in ("compare", "resume", "mnist resume"):
                continue  # compare mixes both; train --resume takes either

            def fn(ctx: Ctx, what=what, argv_fn=argv_fn, command=command) -> tuple[str, str]:
                call = ctx.cli(*argv_fn(ctx, target(ctx, what)))
                if what == "config.json only" and command.endswith("resume"):
                    return no_traceback(call)  # a run that crashed before its first checkpoint may restart
                return refused(call, what=f"{command} on {what}")

            cases.append(Case(f"run-dir:{command}/{what}", "6", "run-dir", fn))

    def mnist_resume_text(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        return refused(ctx.cli("mnist", *resume_argv(run)), what="`mnist train --resume` trained a text run")

    cases.append(Case("run-dir:mnist train --resume a text run", "5", "run-dir", mnist_resume_text))
    return cases


def data_cases() -> list[Case]:
    """``--data`` that is not a corpus: a device, missing, a directory, unreadable, empty, binary, too short."""
    cases = []

    def make(ctx: Ctx, what: str) -> tuple[str, bool]:
        """The --data value, and whether training on it is valid."""
        text = ctx.corpus.read_text()
        if what == "/dev/zero":
            return "/dev/zero", False
        if what == "/dev/null":
            return "/dev/null", False
        if what == "missing":
            return str(ctx.path("nope.txt")), False
        if what == "dir without .txt":
            ctx.path("d").mkdir()
            (ctx.path("d") / "a.csv").write_text("x")
            return str(ctx.path("d")), False
        if what == "dir of .txt":
            ctx.path("d").mkdir()
            (ctx.path("d") / "a.txt").write_text(text[:15000])
            (ctx.path("d") / "b.txt").write_text(text[15000:])
            return str(ctx.path("d")), True
        if what == "unreadable":
            ctx.path("u.txt").write_text(text)
            ctx.path("u.txt").chmod(0)
            return str(ctx.path("u.txt")), False
        if what == "empty file":
            ctx.path("e.txt").write_text("")
            return str(ctx.path("e.txt")), False
        if what == "one char":
            ctx.path("o.txt").write_text("a")
            return str(ctx.path("o.txt")), False
        if what == "shorter than context":
            ctx.path("s.txt").write_text("to be or not")
            return str(ctx.path("s.txt")), False
        if what == "not utf-8":
            ctx.path("b.txt").write_bytes(bytes(range(256)) * 200)
            return str(ctx.path("b.txt")), False
        if what == "named corpus":
            return "tinyshakespeare", True
        if what == "bogus name":
            return "bogus-corpus-name", False
        raise ValueError(what)

    for what in ("/dev/zero", "/dev/null", "missing", "dir without .txt", "dir of .txt", "unreadable", "empty file",
                 "one char", "shorter than context", "not utf-8", "named corpus", "bogus name"):
        def fn(ctx: Ctx, what=what) -> tuple[str, str]:
            data, valid = make(ctx, what)
            call = ctx.cli(*train_argv(ctx, "ar", "run", data=data))
            return works(call, what=f"--data {what}") if valid else refused(call, what=f"--data {what}")

        item = "6" if what in ("/dev/zero", "unreadable") else "4"
        cases.append(Case(f"data:train/{what}", item, "data", fn, risky=what == "/dev/zero",
                          limit=UNBOUNDED_LIMIT_S if what == "/dev/zero" else CASE_LIMIT_S))

    def image_data(ctx: Ctx, what: str) -> str:
        import numpy as np

        if what == "missing":
            return str(ctx.path("nope.npz"))
        if what == "a text file":
            return str(ctx.corpus)
        if what == "corrupt npz":
            ctx.path("c.npz").write_bytes(b"PK\x03\x04garbage")
            return str(ctx.path("c.npz"))
        if what == "npz without arrays":
            np.savez(ctx.path("m.npz"), a=np.zeros(3))
            return str(ctx.path("m.npz"))
        size = {"256x256 images": 256, "1x1 images": 1, "empty arrays": 28}[what]
        n = 0 if what == "empty arrays" else 20
        rng = np.random.default_rng(0)
        np.savez(ctx.path("fake.npz"), x_train=rng.integers(0, 255, (n, size, size), dtype=np.uint8),
                 y_train=np.arange(n) % 10, x_test=rng.integers(0, 255, (n, size, size), dtype=np.uint8),
                 y_test=np.arange(n) % 10)
        return str(ctx.path("fake.npz"))

    for what in ("missing", "a text file", "corrupt npz", "npz without arrays", "256x256 images", "1x1 images",
                 "empty arrays"):
        def fn(ctx: Ctx, what=what) -> tuple[str, str]:
            return refused(ctx.cli(*train_argv(ctx, "image", "run", data=image_data(ctx, what))),
                           what=f"mnist --data {what}")

        cases.append(Case(f"data:mnist train/{what}", "6", "data", fn, risky=what == "256x256 images",
                          limit=UNBOUNDED_LIMIT_S))
    return cases


def output_cases() -> list[Case]:
    """Where samples and trajectories are written."""
    cases = []

    def traj_dir(ctx: Ctx) -> tuple[str, str]:
        ctx.path("t").mkdir()
        return refused(ctx.cli(*sample_argv(ctx.fixture("masked"), "--trajectory", str(ctx.path("t")))),
                       what="--trajectory a directory")

    def traj_missing(ctx: Ctx) -> tuple[str, str]:
        target = ctx.path("missing", "dir", "t.json")
        call = ctx.cli(*sample_argv(ctx.fixture("masked"), "--trajectory", str(target)))
        if call.kind == "exit0" and ctx.path("missing").exists():
            return "silent-wrong", "--trajectory under a missing directory created the directories"
        return no_traceback(call) if call.kind != "exit0" else ("ok", "wrote without creating directories")

    def traj_readonly(ctx: Ctx) -> tuple[str, str]:
        d = ctx.path("ro")
        d.mkdir()
        d.chmod(0o555)
        try:
            return refused(ctx.cli(*sample_argv(ctx.fixture("masked"), "--trajectory", str(d / "t.json"))),
                           what="--trajectory in a read-only directory")
        finally:
            d.chmod(0o755)

    def traj_existing(ctx: Ctx) -> tuple[str, str]:
        ctx.path("t.json").write_text("old")
        return works(ctx.cli(*sample_argv(ctx.fixture("masked"), "--trajectory", str(ctx.path("t.json")))))

    def mnist_out_file(ctx: Ctx) -> tuple[str, str]:
        ctx.path("out").write_text("x")
        argv = mnist_sample_argv(ctx, ctx.fixture("image"))
        argv[argv.index("--out") + 1] = str(ctx.path("out"))
        return refused(ctx.cli(*argv), what="mnist sample --out an existing file")

    def compare_out_file(ctx: Ctx) -> tuple[str, str]:
        ctx.path("out").write_text("x")
        argv = compare_argv(ctx, ctx.run("masked"))
        argv[argv.index("--out") + 1] = str(ctx.path("out"))
        return refused(ctx.cli(*argv), what="compare --out an existing file")

    for name, fn, item in (("--trajectory a directory", traj_dir, "6"),
                           ("--trajectory under a missing directory", traj_missing, "7"),
                           ("--trajectory in a read-only directory", traj_readonly, "6"),
                           ("--trajectory an existing file", traj_existing, "6"),
                           ("mnist sample --out an existing file", mnist_out_file, "6"),
                           ("compare --out an existing file", compare_out_file, "6")):
        cases.append(Case(f"output:{name}", item, "output", fn))
    return cases


def clobber_cases() -> list[Case]:
    """Output names that are not plain files: a link is written through and stays a link, a named pipe is
    never replaced by a regular file."""
    cases = []

    def _node(path: Path) -> tuple[int, int]:
        st = os.lstat(path)
        return st.st_mode, st.st_ino

    def fifo(ctx: Ctx, linked: bool) -> tuple[str, str]:
        os.mkfifo(ctx.path("pipe"))
        name = ctx.path("t.json")
        if linked:
            name.symlink_to(ctx.path("pipe"))
        else:
            name = ctx.path("pipe")
        before = _node(ctx.path("pipe")), _node(name)
        call = ctx.cli(*sample_argv(ctx.fixture("masked"), "--trajectory", str(name)))
        if (_node(ctx.path("pipe")), _node(name)) != before:
            return "lost", "the named pipe (or the link to it) was replaced by a regular file"
        return refused(call, what="--trajectory a named pipe")

    def link(ctx: Ctx) -> tuple[str, str]:
        target = ctx.path("target.json")
        target.write_text("old")
        ctx.path("t.json").symlink_to(target)
        call = ctx.cli(*sample_argv(ctx.fixture("masked"), "--trajectory", str(ctx.path("t.json"))))
        if not ctx.path("t.json").is_symlink():
            return "lost", "the link was replaced by a regular file; its target never got the trajectory"
        if call.kind == "exit0" and target.read_text() == "old":
            return "silent-wrong", "the target of the link was not written"
        return works(call)

    for name, fn in (("--trajectory a named pipe", lambda ctx: fifo(ctx, False)),
                     ("--trajectory a link to a named pipe", lambda ctx: fifo(ctx, True)),
                     ("--trajectory a symlink to a file", link)):
        cases.append(Case(f"clobber:{name}", "1", "clobber", fn))
    return cases


def stale_temp_cases() -> list[Case]:
    """A new run killed during its first config.json write: the directory holds the lock file and the
    trainer's own temporary config.json (whole, or cut short). Both ``train --run-dir`` and ``--resume``
    must take it (a cut record cannot be resumed: a one-line refusal that points at ``--run-dir`` is fine)."""
    cases = []

    def killed(ctx: Ctx, whole: bool) -> Path:
        run = ctx.path("run")
        run.mkdir()
        (run / ".lock").touch()  # run_lock.LOCK_NAME
        record = (ctx.fixture("masked") / "config.json").read_bytes()
        (run / ".config.json.k1ll3d.tmp").write_bytes(record if whole else record[:40])
        return run

    def new_run(ctx: Ctx, whole: bool) -> tuple[str, str]:
        killed(ctx, whole)
        return works(ctx.cli(*train_argv(ctx, "masked")), what="train --run-dir after a killed start")

    def resume(ctx: Ctx, whole: bool) -> tuple[str, str]:
        call = ctx.cli(*resume_argv(killed(ctx, whole), steps=2))
        if whole:
            return works(call, what="--resume after a killed start")
        if call.kind == "error" and "--run-dir" not in call.message:
            return "silent-wrong", f"refused without pointing at train --run-dir: {call.message}"
        return refused(call, what="--resume of a cut config.json")

    for name, fn in (("train --run-dir, whole temporary", lambda ctx: new_run(ctx, True)),
                     ("train --run-dir, cut temporary", lambda ctx: new_run(ctx, False)),
                     ("--resume, whole temporary", lambda ctx: resume(ctx, True)),
                     ("--resume, cut temporary", lambda ctx: resume(ctx, False))):
        cases.append(Case(f"stale-temp:{name}", "5", "stale-temp", fn))
    return cases


def read_only_eval_cases() -> list[Case]:
    """``eval`` of a run it cannot write into: the results must be printed, with one line saying that
    eval.json was not written and why (not minutes of scoring, then nothing)."""

    def read_only(ctx: Ctx, fixture: str) -> tuple[str, str]:
        run = ctx.run(fixture)
        run.chmod(0o555)
        try:
            call = ctx.cli(*(mnist_eval_argv(run) if fixture == "image" else eval_argv(run)))
        finally:
            run.chmod(0o755)
        if call.kind == "traceback":
            return "traceback", call.message
        if ("FID" if fixture == "image" else "bits/char") not in call.out:
            return "lost", f"the results were computed and never printed: {call.message}"
        if "eval.json was not written" not in call.out + call.err:
            return "silent-wrong", "printed the results without saying eval.json was not written"
        return "ok", "printed, and said why eval.json was not written"

    return [Case(f"read-only-eval:{command} of a read-only run", "7", "read-only-eval",
                 lambda ctx, fixture=fixture: read_only(ctx, fixture))
            for command, fixture in (("eval", "masked"), ("mnist eval", "image"))]


def diagnosed(call: Call, cause: Iterable[str], wrong: Iterable[str] = ()) -> tuple[str, str]:
    """The command must be refused in one line that names the real ``cause`` (every fragment) and none of the
    ``wrong`` ones a past message blamed instead: a refusal for the wrong reason is judged silent-wrong."""
    kind = call.kind
    if kind != "error":
        return refused(call)
    message = next((ln.strip() for ln in reversed(call.err.splitlines()) if "error:" in ln), call.message)  # whole
    blamed = [w for w in wrong if w in message]
    if blamed:
        return "silent-wrong", f"wrong diagnosis ({', '.join(map(repr, blamed))}): {message}"
    missing = [c for c in cause if c not in message]
    if missing:
        return "silent-wrong", f"does not name the cause ({', '.join(map(repr, missing))}): {message}"
    return "ok", message


def diagnosis_cases() -> list[Case]:
    """Common mistakes whose one-line error once named the wrong cause or a fix that fails the same way: a run
    given as a file, a deleted or unreadable checkpoint, unreadable records and folders, a read-only run
    resumed, names too long for the file system, ``--set`` without ``=`` on a trained run, a config.json
    without a method name, a corpus too short for any context, ``--config`` given a symbolic link loop."""
    cases: list[Case] = []
    guess = "free disk space"

    def add(name: str, fn: Callable[[Ctx], tuple[str, str]]) -> None:
        cases.append(Case(f"diagnosis:{name}", "7", "diagnosis", fn))

    def commands(ctx: Ctx, run: Path) -> dict[str, list[Any]]:
        return {**_commands(ctx, run), "export": ["export", run, ctx.path("export")],
                "mnist sample": mnist_sample_argv(ctx, run)}

    for command in ("sample", "eval", "resume", "compare", "serve", "export", "mnist sample"):
        def as_file(ctx: Ctx, command=command) -> tuple[str, str]:
            config = ctx.run("masked") / "config.json"
            return diagnosed(ctx.cli(*commands(ctx, config)[command]), ["is a file, not a run directory"],
                             ["does not exist", guess])

        add(f"a run given as its config.json/{command}", as_file)

    for command in ("compare", "export"):
        def deleted(ctx: Ctx, command=command) -> tuple[str, str]:
            run = ctx.run("masked")
            (run / CKPT).unlink()
            return diagnosed(ctx.cli(*commands(ctx, run)[command]), ["deleted or moved"],
                             ["--resume", "resume or", "before its first"])

        add(f"a run whose checkpoint was deleted/{command}", deleted)

    for name in (CKPT, "config.json", "tokenizer.json", "final.json"):
        for command in {CKPT: ("sample", "resume", "compare", "export"), "final.json": ("compare",)}.get(
                name, ("sample", "compare")):  # sample reads no final.json
            def unreadable(ctx: Ctx, name=name, command=command) -> tuple[str, str]:
                run = ctx.run("masked")
                (run / name).chmod(0)
                return diagnosed(ctx.cli(*commands(ctx, run)[command]),
                                 ["cannot read", name, "permission denied", "chmod u+r"], ["damaged", guess])

            add(f"unreadable {name}/{command}", unreadable)

    for command in ("train --run-dir", "sample"):
        def closed(ctx: Ctx, command=command) -> tuple[str, str]:
            run = ctx.run("masked")
            run.chmod(0)
            try:
                argv = train_argv(ctx, "masked", "masked") if command == "train --run-dir" else sample_argv(run)
                call = ctx.cli(*argv)
            finally:
                run.chmod(0o755)
            return diagnosed(call, ["cannot open the folder", "chmod u+rx"], ["weights.safetensors", guess])

        add(f"an unreadable run folder/{command}", closed)

    def read_only_resume(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        run.chmod(0o555)
        try:
            call = ctx.cli(*resume_argv(run))
        finally:
            run.chmod(0o755)
        return diagnosed(call, [f"cannot write in {run}", "chmod u+w"], [".tmp", guess])

    add("resume of a read-only run", read_only_resume)

    long_name = "n" * 300
    for command in ("sample --out", "compare --out", "export", "train --run-dir"):
        def too_long(ctx: Ctx, command=command) -> tuple[str, str]:
            run, where = ctx.fixture("masked"), ctx.path(long_name)
            argv = {"sample --out": sample_argv(run, "--out", f"{where}.txt"),
                    "compare --out": ["compare", run, "--out", where, "--sweep="],
                    "export": ["export", run, where],
                    "train --run-dir": train_argv(ctx, "masked", long_name)}[command]
            return diagnosed(ctx.cli(*argv), ["too long"], ["permission", guess])

        add(f"a name too long for the file system/{command}", too_long)

    for command in ("sample", "eval"):
        def no_equals(ctx: Ctx, command=command) -> tuple[str, str]:
            run = ctx.fixture("masked")
            argv = sample_argv(run, "--set", "temperature") if command == "sample" else \
                eval_argv(run, "--set", "temperature")
            return diagnosed(ctx.cli(*argv), ["key=value"], ["sampling options"])

        add(f"--set without '='/{command}", no_equals)

    def no_method_name(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        _edit_config(run, lambda meta: meta["config"]["method"].pop("name"))
        return diagnosed(ctx.cli(*commands(ctx, run)["compare"]), ["no method name"], ["'?'"])

    add("config.json without a method name/compare", no_method_name)

    def one_char(ctx: Ctx) -> tuple[str, str]:
        corpus = ctx.path("one.txt")
        corpus.write_text("x", encoding="utf-8")
        return diagnosed(ctx.cli(*train_argv(ctx, "masked", data=str(corpus))), ["longer corpus"],
                         ["smaller context"])

    add("a one-character corpus/train", one_char)

    def config_loop(ctx: Ctx) -> tuple[str, str]:
        loop = ctx.path("loop.json")
        loop.symlink_to(loop)
        return diagnosed(ctx.cli("train", "--config", loop, "--run-dir", ctx.path("new")), ["symbolic link loop"],
                         ["permissions"])

    add("a symbolic link loop/train --config", config_loop)
    return cases


# ---- the issue's own list, one case each ---------------------------------------------------------------
# the Gaussian methods sample 200 steps by default (0.4 s); a few are enough to see an option's effect
FEW_STEPS = {"embedding": ["--steps=8"], "bits": ["--steps=8"]}


def _same_samples(ctx: Ctx, run: Path, *extra: str) -> tuple[Call, Call]:
    """The same sampling (seed 3) without and with ``extra``."""
    fast = FEW_STEPS.get(run.name, [])
    base = ctx.cli("sample", str(run), "--n=4", "--seed=3", *fast)
    test = ctx.cli("sample", str(run), "--n=4", "--seed=3", *fast, *extra)
    return base, test


def issue_cases() -> list[Case]:
    cases: list[Case] = []

    # item 5: decoding options that must be refused or take effect
    for method in TEXT_METHODS:
        for flag in ("--temperature=nan", "--temperature=inf", "--top-p=2", "--top-p=nan", "--top-k=-1"):
            def fn(ctx: Ctx, method=method, flag=flag) -> tuple[str, str]:
                call = ctx.cli(*sample_argv(ctx.fixture(method), *FEW_STEPS.get(method, []), flag))
                if flag == "--top-k=-1" and call.kind == "exit0":  # fine if it means "no cut", like 0
                    zero, test = _same_samples(ctx, ctx.fixture(method), flag)
                    if test.out == zero.out:
                        return "ok", "treated as 0 (no cut)"
                    return "silent-wrong", "--top-k=-1 accepted and sampled differently from --top-k=0"
                return refused(call, what=f"sample {flag}")

            cases.append(Case(f"issue:sample {method} {flag}", "5", "decoding", fn))
        for setting in ("method.temperature=0.01", "method.top_k=1", "method.top_p=0.01"):
            def fn(ctx: Ctx, method=method, setting=setting) -> tuple[str, str]:
                base, test = _same_samples(ctx, ctx.fixture(method), *sets(setting))
                if test.kind != "exit0":
                    return refused(test)
                if base.kind != "exit0":
                    return "traceback" if base.kind == "traceback" else "silent-wrong", f"plain sample: {base.message}"
                if test.out == base.out:
                    return "silent-wrong", f"sample --set {setting} accepted and had no effect"
                return "ok", "took effect"

            cases.append(Case(f"issue:sample {method} --set {setting} takes effect", "5", "decoding", fn))
    def ar_steps(ctx: Ctx) -> tuple[str, str]:
        base, test = _same_samples(ctx, ctx.fixture("ar"), "--steps=8")
        if test.kind != "exit0":
            return refused(test)
        if test.out == base.out:
            return "silent-wrong", "ar: --steps 8 accepted and had no effect (ar writes one character per step)"
        return "ok", "took effect"

    cases.append(Case("issue:sample ar --steps=8 takes effect or is refused", "5", "decoding", ar_steps))
    for method in ("ar", "masked"):
        def fn(ctx: Ctx, method=method) -> tuple[str, str]:
            base, test = _same_samples(ctx, ctx.fixture(method), "--temperature=0.01")
            if test.kind != "exit0":
                return works(test)
            return ("silent-wrong", "--temperature 0.01 had no effect") if test.out == base.out else ("ok", "")

        cases.append(Case(f"issue:sample {method} --temperature=0.01 takes effect (control)", "5", "decoding", fn))
        for setting in ("method.temperature=0.01", "method.top_k=1"):
            def fn(ctx: Ctx, method=method, setting=setting) -> tuple[str, str]:
                run = ctx.run(method)
                base = ctx.cli(*eval_argv(run, "--seed=3"))
                if base.kind != "exit0":
                    return works(base)
                before = json.loads((run / "eval.json").read_text())["samples"]["examples"]
                test = ctx.cli(*eval_argv(run, "--seed=3", *sets(setting)))
                if test.kind != "exit0":
                    return refused(test)
                after = json.loads((run / "eval.json").read_text())["samples"]["examples"]
                if after == before:
                    return "silent-wrong", f"eval --set {setting} accepted, recorded, and had no effect"
                return "ok", "took effect"

            cases.append(Case(f"issue:eval {method} --set {setting} takes effect", "5", "decoding", fn))
    for flag in ("--guidance=nan", "--guidance=inf", "--eta=nan", "--eta=2", "--eta=-1", "--guidance=-1"):
        def fn(ctx: Ctx, flag=flag) -> tuple[str, str]:
            return refused(ctx.cli(*mnist_sample_argv(ctx, ctx.fixture("image"), flag)), what=f"mnist sample {flag}")

        cases.append(Case(f"issue:mnist sample {flag}", "5", "decoding", fn))

    # item 6: the listed tracebacks that are not in a family
    for argv_tail, what in ((["--seed=1e23"], "--seed 1e23"), (["--seed=100000000000000000000000"], "--seed 10^23"),
                            (["--device=mps"], "--device mps"), (["--device=meta"], "--device meta"),
                            (["--device=bogus"], "--device bogus"), (["--device=cuda:99"], "--device cuda:99")):
        for command in ("train", "sample"):
            def fn(ctx: Ctx, argv_tail=argv_tail, command=command, what=what) -> tuple[str, str]:
                argv = train_argv(ctx, "ar") if command == "train" else sample_argv(ctx.fixture("masked"))
                return refused(ctx.cli(*argv, *argv_tail), what=f"{command} {what}")

            cases.append(Case(f"issue:{command} {what}", "6", "device-seed", fn))

    # item 4: a refused --resume --steps N must not rewrite config.json; truncated metrics; stale temp files
    for steps in (30, 60):
        def fn(ctx: Ctx, steps=steps) -> tuple[str, str]:
            run = ctx.run("masked")
            before = (run / "config.json").read_bytes()
            call = ctx.cli(*resume_argv(run, steps))
            if (run / "config.json").read_bytes() != before and call.kind != "exit0":
                return "lost", f"a refused --resume --steps {steps} rewrote config.json ({call.message})"
            return refused(call, what=f"--resume --steps {steps} on a run that finished 60")

        cases.append(Case(f"issue:refused --resume --steps {steps} leaves config.json", "4", "resume", fn))

    def stale_tmp(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        stale = [run / f".{CKPT}.abc123.tmp", run / ".metrics.jsonl.x1y2z3.tmp"]
        for p in stale:
            p.write_bytes(b"\0" * 100_000)
        call = ctx.cli(*resume_argv(run))
        judged = works(call, "lost", "resume with stale temp files beside the checkpoint")
        left = [p.name for p in stale if p.exists()]
        if judged[0] == "ok" and left:
            return "silent-wrong", f"stale temp files left after a resume: {', '.join(left)}"
        return judged

    cases.append(Case("issue:stale .tmp files are cleaned on resume", "4", "resume", stale_tmp))

    def truncated_metrics(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        path = run / "metrics.jsonl"
        path.write_bytes(path.read_bytes()[:-7])
        return works(ctx.cli(*resume_argv(run)), "lost", "metrics.jsonl with a truncated last line")

    cases.append(Case("issue:resume with a truncated last line of metrics.jsonl", "4", "resume", truncated_metrics))

    # item 4: data identity
    def changed_corpus(ctx: Ctx, directory: bool) -> tuple[str, str]:
        text = ctx.corpus.read_text()
        if directory:
            ctx.path("c").mkdir()
            (ctx.path("c") / "a.txt").write_text(text[:15000])
            (ctx.path("c") / "b.txt").write_text(text[15000:])
            data, edit = ctx.path("c"), ctx.path("c", "b.txt")
        else:
            ctx.path("c.txt").write_text(text)
            data, edit = ctx.path("c.txt"), ctx.path("c.txt")
        first = ctx.cli(*train_argv(ctx, "masked", "run", *sets("train.steps=2"), data=str(data)))
        if first.kind != "exit0":
            return works(first)
        edit.write_text(edit.read_text()[::-1])
        return refused(ctx.cli(*resume_argv(ctx.path("run"), 4)), what="resumed on a changed corpus")

    cases.append(Case("issue:resume on a changed corpus file", "4", "data-identity",
                      lambda ctx: changed_corpus(ctx, False)))
    cases.append(Case("issue:resume on a changed corpus directory", "4", "data-identity",
                      lambda ctx: changed_corpus(ctx, True)))

    def relative_data(ctx: Ctx) -> tuple[str, str]:
        a = ctx.path("a")
        a.mkdir()
        shutil.copyfile(ctx.corpus, a / "c.txt")
        os.chdir(a)
        try:
            first = ctx.cli("train", "--method=masked", "--preset=tiny", "--data=c.txt", "--run-dir=run",
                            "--no-progress", *CHEAP)
        finally:
            os.chdir(ctx.dir)
        if first.kind != "exit0":
            return works(first)
        ctx.path("b").mkdir()
        os.chdir(ctx.path("b"))
        try:
            return works(ctx.cli("eval", "../a/run", "--samples=2", "--val-windows=2"), "lost",
                         "eval from another directory of a run trained on a relative --data")
        finally:
            os.chdir(ctx.dir)

    cases.append(Case("issue:relative --data, eval from another directory", "4", "data-identity", relative_data))

    # item 2: a run that crashed before its first checkpoint, simulated; and a NaN loss before it
    def young_run(ctx: Ctx, first_message: str = "") -> tuple[str, str]:
        """Can the directory be resumed, or trained again, or does the user get a circle of messages?"""
        run = ctx.path("run")
        resume = ctx.cli(*resume_argv(run, 2))
        if resume.kind == "exit0":
            return "ok", "resumed"
        again = ctx.cli(*train_argv(ctx, "masked"))
        if again.kind == "exit0":
            return "ok", "trained again in place"
        bad = worst(no_traceback(resume), no_traceback(again))
        if "--resume" in again.message or "intact" in first_message:
            lost = ("lost", f"neither resumable ({resume.message}) nor reusable ({again.message})")
            return worst(bad, lost)
        return bad if bad[0] != "ok" else ("ok", f"refused with another fix: {again.message}")

    def crashed_young(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked", "run")
        for name in (CKPT, "model.safetensors", "ema.safetensors", "trainer.safetensors", "trainer.json",
                     "final.json", "metrics.jsonl"):
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / "samples", ignore_errors=True)  # an early crash has drawn no samples either
        return young_run(ctx)

    cases.append(Case("issue:a run with no checkpoint yet (crashed early) resumes or restarts", "2", "young-run",
                      crashed_young))

    def nan_loss(ctx: Ctx) -> tuple[str, str]:
        call = ctx.cli(*train_argv(ctx, "masked", "run", *sets("train.steps=5", "train.eval_every=100",
                                                              "train.lr=1e30", "train.warmup=0")))
        first = no_traceback(call) if call.kind != "exit0" else ("silent-wrong", "trained through a NaN loss")
        if call.kind == "exit0" or not ctx.path("run").exists():
            return first
        return worst(first, young_run(ctx, call.message))

    cases.append(Case("issue:NaN loss before the first checkpoint", "2", "young-run", nan_loss))

    # item 7: unbounded work that fails or finishes quickly in-process
    for argv_fn, what in ((lambda ctx: sample_argv(ctx.fixture("masked"), "--steps=1000000000"), "sample --steps 1e9"),
                          (lambda ctx: sample_argv(ctx.fixture("ar"), "--length=1000000000"), "ar --length 1e9"),
                          (lambda ctx: sample_argv(ctx.fixture("block"), "--length=1000000000"), "block --length 1e9"),
                          (lambda ctx: mnist_sample_argv(ctx, ctx.fixture("image"), "--steps=1000000000"),
                           "mnist sample --steps 1e9")):
        def fn(ctx: Ctx, argv_fn=argv_fn, what=what) -> tuple[str, str]:
            return refused(ctx.cli(*argv_fn(ctx)), what=f"{what} answered (it should be refused or bounded)")

        cases.append(Case(f"issue:{what}", "7", "unbounded", fn, risky=True, limit=UNBOUNDED_LIMIT_S))
    return cases


# ---- cases that need real processes --------------------------------------------------------------------
def _tmp_names(d: Path) -> list[str]:
    """Names in a run directory that look like a save in progress (temp files, partial step folders)."""
    with contextlib.suppress(OSError):
        return [p.name for p in d.rglob("*") if _tmp_names_of(p.name)]
    return []


def _wait_for(pred: Callable[[], bool], timeout: float, p: subprocess.Popen | None = None, poll: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if p is not None and p.poll() is not None:
            return pred()
        time.sleep(poll)
    return False


def _checkpointed(run: Path) -> bool:
    """Whether a first checkpoint exists (the one-file checkpoint, or 0.1's trainer.json)."""
    return (run / CKPT).exists() or (run / "trainer.json").exists()


def _saved_step(run: Path) -> int:
    """The step of the run's checkpoint (0 when there is none or it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(run / CKPT), framework="pt") as f:
            return int((f.metadata() or {}).get("step", 0))
    except Exception:  # any unreadable checkpoint counts as none
        return 0


def _kill(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        p.kill()
    p.wait()


def _resumes(ctx: Ctx, run: Path, steps: int | None = None) -> tuple[str, str]:
    """``train --resume RUN`` must work and finish (with final.json), else the run is lost."""
    call = ctx.cli(*resume_argv(run, steps))
    if call.kind == "traceback":
        return "lost", f"resume: {call.message}"
    if call.kind == "error":
        return "lost", f"cannot resume: {call.message}"
    if not (run / "final.json").exists():
        return "lost", "resume exited 0 without final.json"
    return "ok", "resumed and finished"


# training with a checkpoint at every step, 0.8M parameters so that a save takes long enough to be caught
SAVE_HEAVY = [*sets("model.n_layer=4", "model.n_head=4", "model.n_embd=256", "train.steps=12", "train.eval_every=1",
                    "train.eval_windows=2", "train.final_eval_windows=2", "train.sample_every_eval=false")]


def _inodes(run: Path) -> dict[str, int]:
    """Inode of every checkpoint-like file of a run (records and samples left out): a replaced file gets a new one."""
    out = {}
    with contextlib.suppress(OSError):
        for e in os.scandir(run):
            if e.is_file() and e.name not in ("metrics.jsonl", "config.json") and not _tmp_names_of(e.name):
                out[e.name] = e.inode()
    return out


def _tmp_names_of(name: str) -> bool:
    n = name.lower()
    return "lock" not in n and ("tmp" in n or "partial" in n or "incomplete" in n or n.startswith("."))


def _heavy_argv(ctx: Ctx, run: Path, *extra: str) -> list[str]:
    return ["train", "--method=ar", "--preset=tiny", "--data", str(ctx.corpus), "--run-dir", str(run),
            "--no-progress", *SAVE_HEAVY, *extra]


def proc_cases() -> list[Case]:
    cases: list[Case] = []

    # item 1: a kill, or a second Ctrl-C, in the middle of a save
    def kill_in_save(ctx: Ctx, when: str, second_sigint: bool = False) -> tuple[str, str]:
        """Signal the trainer at a moment of a save: ``temp`` = as soon as a temp file appears (the save has
        begun), ``replaced`` = as soon as a checkpoint file of the last save has been replaced by a new one
        (with one crash-consistent file that is the commit point, so a kill there must be harmless too)."""
        run = ctx.path("run")
        p = ctx.popen(_heavy_argv(ctx, run), "train")
        if not _wait_for(lambda: _checkpointed(run), 60, p):
            return works(ctx.finish(p))  # never got to a first checkpoint: a failure of its own
        if second_sigint:
            p.send_signal(signal.SIGINT)
        base = _inodes(run)
        seen: list[str] = []

        def caught() -> bool:
            if when == "temp":
                seen[:] = _tmp_names(run)
            else:
                now = _inodes(run)
                seen[:] = [n for n, ino in base.items() if now.get(n, ino) != ino]
            return bool(seen)

        hit = _wait_for(caught, 20, p, poll=0.0002)
        if p.poll() is None:
            p.send_signal(signal.SIGINT if second_sigint else signal.SIGKILL)
        how = f"{'at temp file' if when == 'temp' else 'right after replacing'} {seen}" if hit else \
            "(no save caught: at a random moment)"
        call = ctx.finish(p, 30, note=f"{'second SIGINT' if second_sigint else 'SIGKILL'} {how}")
        judged = no_traceback(call) if second_sigint and call.rc is not None and call.rc >= 0 else ("ok", "")
        outcome = worst(judged, _resumes(ctx, run))
        return outcome[0], f"{outcome[1]} [{call.note}]"

    cases.append(Case("proc:SIGKILL as a save begins", "1", "signals", lambda ctx: kill_in_save(ctx, "temp"),
                      proc=True))
    cases.append(Case("proc:SIGKILL right after the first file of a save is replaced", "1", "signals",
                      lambda ctx: kill_in_save(ctx, "replaced"), proc=True))
    cases.append(Case("proc:second Ctrl-C during the save of the first", "1", "signals",
                      lambda ctx: kill_in_save(ctx, "replaced", second_sigint=True), proc=True))

    def disk_full(ctx: Ctx) -> tuple[str, str]:
        """A file-size limit (like a full disk) at the first checkpoint; then the disk is freed."""
        run = ctx.path("run")

        def limit() -> None:
            _cap_memory()
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

        argv = ["train", "--method=ar", "--preset=tiny", "--data", str(ctx.corpus), "--run-dir", str(run),
                "--no-progress", *sets("train.steps=20", "train.eval_every=10", "train.final_eval_windows=2")]
        call = ctx.finish(ctx.popen(argv, "full", preexec=limit), 60)
        first = refused(call, what="training on a full disk")
        if call.kind == "error" and not ("checkpoint.safetensors" in call.message and "no checkpoint was written yet"
                                         in call.message):
            first = worst(first, ("silent-wrong", f"a full disk before any checkpoint, not named with the file and "
                                                  f"that nothing is saved yet: {call.message}"))
        if not run.exists():
            return first
        resume = ctx.cli(*resume_argv(run, None))
        if resume.kind == "exit0" and (run / "final.json").exists():
            return worst(first, ("ok", "resumed once space was free"))
        again = ctx.cli(*argv)
        if again.kind == "exit0":
            return worst(first, ("ok", "trained again once space was free"))
        return worst(first, ("lost", f"after a full disk: resume says {resume.message!r}, training again says "
                                     f"{again.message!r}"))

    cases.append(Case("proc:disk full at the first checkpoint", "1", "signals", disk_full, proc=True))

    # item 2: killed (or terminated) before the first checkpoint
    def before_first(ctx: Ctx, sig: signal.Signals) -> tuple[str, str]:
        run = ctx.path("run")
        argv = ["train", "--method=ar", "--preset=tiny", "--data", str(ctx.corpus), "--run-dir", str(run),
                "--no-progress", *sets("train.steps=5000", "train.eval_every=5000", "train.final_eval_windows=2")]
        p = ctx.popen(argv, "train")
        _wait_for(lambda: (run / "config.json").exists(), 60, p)
        time.sleep(1.0)
        p.send_signal(sig)
        call = ctx.finish(p, 30, note=f"{sig.name} before the first checkpoint")
        first = ("ok", "") if call.rc == -sig else no_traceback(call)  # dying of it is judged by what is left
        resume = ctx.cli(*resume_argv(run, max(3, _saved_step(run) + 2)))  # a short resume past what was done
        if resume.kind == "exit0":
            return worst(first, ("ok", "resumed"))
        again = ctx.cli(*[a if not a.startswith("train.steps=") else "train.steps=3" for a in argv])
        if again.kind == "exit0":
            return worst(first, ("ok", "trained again in place"))
        lost = ("lost", f"neither resumable ({resume.message}) nor reusable ({again.message})") \
            if "--resume" in again.message else ("ok", f"refused with another fix: {again.message}")
        return worst(first, no_traceback(resume), no_traceback(again), lost)

    cases.append(Case("proc:SIGKILL before the first checkpoint", "2", "signals",
                      lambda ctx: before_first(ctx, signal.SIGKILL), proc=True))
    cases.append(Case("proc:SIGTERM before the first checkpoint", "2", "signals",
                      lambda ctx: before_first(ctx, signal.SIGTERM), proc=True))

    # item 4: SIGTERM is Ctrl-C; Ctrl-C as a control
    def stop_mid_run(ctx: Ctx, sig: signal.Signals) -> tuple[str, str]:
        run = ctx.path("run")
        argv = ["train", "--method=ar", "--preset=tiny", "--data", str(ctx.corpus), "--run-dir", str(run),
                "--no-progress", *sets("train.steps=5000", "train.eval_every=100", "train.eval_windows=2",
                                       "train.final_eval_windows=2", "train.sample_every_eval=false")]
        p = ctx.popen(argv, "train")
        _wait_for(lambda: _checkpointed(run), 60, p)
        time.sleep(0.7)
        p.send_signal(sig)
        call = ctx.finish(p, 30, note=f"{sig.name} mid-run")
        if call.rc is not None and call.rc < 0:
            return "lost", f"{sig.name} killed training without a save (work since the last checkpoint is gone)"
        first = no_traceback(call)
        m = re.search(r"stopped at step (\d+)", call.err)
        step = int(m.group(1)) + 2 if m else None
        if step is None:
            return worst(first, ("lost", f"{sig.name}: no 'stopped at step N' message; stderr: {call.message}"))
        return worst(first, _resumes(ctx, run, step))

    cases.append(Case("proc:SIGTERM mid-run saves and stops like Ctrl-C", "4", "signals",
                      lambda ctx: stop_mid_run(ctx, signal.SIGTERM), proc=True))
    cases.append(Case("proc:Ctrl-C mid-run saves and stops (control)", "4", "signals",
                      lambda ctx: stop_mid_run(ctx, signal.SIGINT), proc=True))

    def ctrl_c_final_scoring(ctx: Ctx) -> tuple[str, str]:
        run = ctx.path("run")
        argv = ["train", "--method=masked", "--preset=tiny", "--data=tinyshakespeare", "--run-dir", str(run),
                *sets("train.steps=20", "train.eval_every=20", "train.eval_windows=2", "train.final_eval_windows=0",
                      "train.sample_every_eval=false", "method.eval_time_samples=16")]
        p = ctx.popen(argv, "train")

        def scoring() -> bool:
            if "scoring" in ctx.err_text(p):
                return True
            with contextlib.suppress(OSError, ValueError):
                rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
                return any(r.get("step") == 20 for r in rows) and _checkpointed(run)
            return False

        _wait_for(scoring, 90, p)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        call = ctx.finish(p, 60, note="Ctrl-C during the final scoring")
        first = no_traceback(call) if call.rc is not None and call.rc >= 0 else ("ok", "")
        if (run / "final.json").exists():
            return worst(first, ("ok", "final.json written anyway"))
        return worst(first, _resumes(ctx, run))

    cases.append(Case("proc:Ctrl-C during the final scoring", "4", "signals", ctrl_c_final_scoring, proc=True))

    # item 3: one writer per run
    def one_winner(ctx: Ctx, argv: list[str]) -> tuple[str, str]:
        """Start ``argv`` twice at once: exactly one may train, the other must get a one-line error."""
        a, b = ctx.popen(argv, "a"), ctx.popen(argv, "b")
        ca, cb = ctx.finish(a, 120), ctx.finish(b, 120)
        kinds = sorted([ca.kind, cb.kind])
        if kinds == ["exit0", "exit0"]:
            return "lost", "two trainers wrote one run directory and both exited 0"
        if kinds == ["error", "exit0"]:
            loser = ca if ca.kind == "error" else cb
            return "ok", loser.message
        return worst(no_traceback(ca), no_traceback(cb), ("lost", f"neither trained: {ca.message} / {cb.message}"))

    def two_new(ctx: Ctx) -> tuple[str, str]:
        """Racy by nature (both must pass the "is it a run already?" check before either writes config.json)."""
        return one_winner(ctx, ["train", "--method=ar", "--preset=tiny", "--data", str(ctx.corpus), "--run-dir",
                                str(ctx.path("run")), "--no-progress",
                                *sets("train.steps=100", "train.eval_every=25", "train.final_eval_windows=2")])

    def two_resumes(ctx: Ctx) -> tuple[str, str]:
        return one_winner(ctx, resume_argv(ctx.run("ar"), 300))

    cases.append(Case("proc:two new trainers on one directory at once", "3", "concurrency", two_new, proc=True))
    cases.append(Case("proc:two resumes of one run at once", "3", "concurrency", two_resumes, proc=True))

    def resume_while_training(ctx: Ctx) -> tuple[str, str]:
        run = ctx.path("run")
        argv = ["train", "--method=ar", "--preset=tiny", "--data", str(ctx.corpus), "--run-dir", str(run),
                "--no-progress", *sets("train.steps=100000", "train.eval_every=25", "train.eval_windows=2",
                                       "train.sample_every_eval=false")]
        a = ctx.popen(argv, "a")
        try:
            _wait_for(lambda: _checkpointed(run), 60, a)
            b = ctx.popen(resume_argv(run, None), "b")
            reader = ctx.cli(*sample_argv(run))
            _wait_for(lambda: b.poll() is not None, 8, b, poll=0.1)
            if b.poll() is None:
                _kill(b)
                cb = ctx.finish(b, 5, note="still training beside the first trainer after 8 s")
                outcome = ("lost", "a second trainer resumed a run that another process is training")
            else:
                cb = ctx.finish(b, 5)
                outcome = refused(cb, "lost", "a second trainer resumed a run being trained")
                if outcome[0] == "ok" and not re.search(rf"\b{a.pid}\b", cb.err):
                    outcome = ("ok", f"{cb.message} (without the holder's PID {a.pid})")
        finally:
            _kill(a)
            ctx.finish(a, 5, note="stopped by the harness")
        # sampling a run that is being trained reads it; that must keep working (or be a clean refusal)
        return worst(outcome, no_traceback(reader))

    cases.append(Case("proc:resume while another process trains the run", "3", "concurrency", resume_while_training,
                      proc=True))

    # item 7: --n that must be batched (bounded memory, progress) or refused
    for argv_fn, what in ((lambda ctx: ["sample", str(ctx.fixture("masked")), "--n=100000"],
                           "sample masked --n 100000"),
                          (lambda ctx: ["sample", str(ctx.fixture("ar")), "--n=100000"], "sample ar --n 100000"),
                          (lambda ctx: ["mnist", "sample", str(ctx.fixture("image")), "--n=1000000",
                                        "--out", str(ctx.path("o")), "--no-gif"], "mnist sample --n 1000000")):
        def fn(ctx: Ctx, argv_fn=argv_fn, what=what) -> tuple[str, str]:
            p = ctx.popen(argv_fn(ctx), "big")
            peak = 0
            end = time.monotonic() + BIG_N_WAIT_S
            while p.poll() is None and time.monotonic() < end:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    status = Path(f"/proc/{p.pid}/status").read_text()
                    peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) // 1024)
                time.sleep(0.2)
            running = p.poll() is None
            err_so_far = ctx.err_text(p)
            call = ctx.finish(p, 0.1 if running else 5, note=f"peak RSS {peak} MB")
            if not running:
                return no_traceback(call)
            if peak < 2048 and err_so_far.strip():
                return "ok", f"still working after {BIG_N_WAIT_S:.0f} s with bounded memory ({peak} MB) and progress"
            return "silent-wrong", f"{what}: unbounded (no answer after {BIG_N_WAIT_S:.0f} s, peak RSS {peak} MB, " \
                                   f"{'no progress shown' if not err_so_far.strip() else 'progress shown'})"

        cases.append(Case(f"proc:{what}", "7", "unbounded", fn, proc=True))
    return cases


# ---- the second audit: JSON past the stack, symlink loops, terminals, names, memory, stalled clients -------
AUDIT = "13"  # the item these families report under
WORK_LIMIT_S = 60.0  # cases that must do the work (train, eval, compare) and only print or name something odd
DEEP_JSON = {"10000 deep": "[" * 10_000 + "]" * 10_000, "500 deep": "[" * 500 + "]" * 500}
NOT_UTF8 = os.fsdecode(b"run\xff")  # a name Linux allows: Python holds the byte as a lone surrogate
UNICODE_TEXT = "\nROMEO \u2014 what light through yonder window breaks? \U0001f600\n"


def _nest(path: Path, nesting: str) -> None:
    """Put ``nesting`` into a JSON file: as an extra key of an object file, or as the whole file."""
    if path.name == "config.json":
        path.write_text(path.read_text().rstrip().rstrip("}") + f', "extra": {nesting}}}')
    else:
        path.write_text(nesting + "\n")


def _serve_process(ctx: Ctx, run: Path, timeout: float) -> tuple[subprocess.Popen, int | None]:
    """``textdiffusion serve RUN`` as a real process on a free port, and that port (None if it never listened)."""
    p = ctx.popen(["serve", run, "--port", "0", "--device", "cpu", "--client-timeout", timeout], "serve")
    port: list[int] = []

    def listening() -> bool:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", ctx.path("serve.out").read_text(errors="replace"))
        port[:] = [int(found.group(1))] if found else []
        return bool(found)

    return p, port[0] if _wait_for(listening, 60, p, poll=0.1) else None


def _raw_client(port: int, request: bytes, receive_buffer: int = 0) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def _closes_within(sock: Any, seconds: float) -> float | None:
    tic = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - tic < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - tic
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - tic
    return None


def _http(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def audit_cases() -> list[Case]:
    """Inputs of the second audit: each was a traceback or an unbounded wait, each must be a one-line error,
    a correct result or a bounded wait."""
    cases: list[Case] = []

    # JSON nested past the interpreter's stack (RecursionError), or deep enough to overflow a later reader
    for label, nesting in DEEP_JSON.items():
        for command in ("sample", "resume", "eval", "compare", "serve", "config", "train --config"):
            def fn(ctx: Ctx, nesting=nesting, command=command, label=label) -> tuple[str, str]:
                run = ctx.run("masked")
                _nest(run / "config.json", nesting)
                argv = {"config": ["config", "--config", run / "config.json"],
                        "train --config": ["train", "--config", run / "config.json", "--run-dir", ctx.path("new")]
                        }.get(command) or _commands(ctx, run)[command]
                call = ctx.cli(*argv)
                # past the stack it cannot be read; 500 deep it can, and refusing it is as fine as ignoring it
                return refused(call, what=f"a config.json nested {label}") if label == "10000 deep" else \
                    no_traceback(call)

            cases.append(Case(f"audit:config.json {label}/{command}", AUDIT, "deep-json", fn))
        for name, command in (("tokenizer.json", "sample"), ("final.json", "compare"), ("eval.json", "compare"),
                              ("metrics.jsonl", "compare"), ("final.json", "eval"), ("eval.json", "eval")):
            def fn(ctx: Ctx, nesting=nesting, name=name, command=command) -> tuple[str, str]:
                run = ctx.run("masked")
                _nest(run / name, nesting)
                call = ctx.cli(*_commands(ctx, run)[command])
                # the tokenizer is needed; the records are not (a reader shows no number, eval scores again)
                return refused(call, what=f"a {name} nested too deep") if name == "tokenizer.json" else works(call)

            cases.append(Case(f"audit:{name} {label}/{command}", AUDIT, "deep-json", fn, limit=WORK_LIMIT_S))
        def image_fn(ctx: Ctx, nesting=nesting) -> tuple[str, str]:
            run = ctx.run("image")
            _nest(run / "config.json", nesting)
            call = ctx.cli(*mnist_sample_argv(ctx, run))
            return refused(call, what="an image run's config.json nested deep") if nesting == DEEP_JSON[
                "10000 deep"] else no_traceback(call)

        cases.append(Case(f"audit:config.json {label}/mnist sample", AUDIT, "deep-json", image_fn))
    for command in ("sample", "resume"):
        def fn(ctx: Ctx, command=command) -> tuple[str, str]:
            run = ctx.run("masked")
            _edit_config(run, lambda meta: None)
            path = run / "config.json"
            path.write_text(re.sub(r'"seed": \d+', '"seed": ' + "7" * 5000, path.read_text()))
            return refused(ctx.cli(*_commands(ctx, run)[command]), what="a seed of 5,000 digits")

        cases.append(Case(f"audit:config.json 5000-digit number/{command}", AUDIT, "deep-json", fn))

    # a path that is a symbolic link loop, wherever a command takes one
    def loop(ctx: Ctx, name: str = "loop") -> Path:
        path = ctx.path(name)
        path.symlink_to(name)
        return path

    loops: dict[str, Callable[[Ctx], list[Any]]] = {
        "sample RUN": lambda ctx: sample_argv(loop(ctx)), "eval RUN": lambda ctx: eval_argv(loop(ctx)),
        "compare RUN": lambda ctx: compare_argv(ctx, loop(ctx)),
        "compare RUN among runs": lambda ctx: compare_argv(ctx, ctx.fixture("masked"), str(loop(ctx))),
        "serve RUN": lambda ctx: ["serve", loop(ctx)], "train --resume RUN": lambda ctx: resume_argv(loop(ctx)),
        "mnist sample RUN": lambda ctx: mnist_sample_argv(ctx, loop(ctx)),
        "mnist eval RUN": lambda ctx: mnist_eval_argv(loop(ctx)),
        "mnist train --resume RUN": lambda ctx: ["mnist", *resume_argv(loop(ctx))],
        "train --run-dir": lambda ctx: train_argv(ctx, "masked", "loop") if loop(ctx) else [],
        "train --data": lambda ctx: train_argv(ctx, "masked", data=str(loop(ctx))),
        "train --config": lambda ctx: ["train", "--config", loop(ctx), "--run-dir", ctx.path("r")],
        "config --config": lambda ctx: ["config", "--config", loop(ctx)],
        "compare --out": lambda ctx: compare_argv(ctx, ctx.fixture("masked")) if loop(ctx, "cmp") else [],
        "sample --trajectory": lambda ctx: sample_argv(ctx.fixture("masked"), f"--trajectory={loop(ctx)}"),
        "mnist sample --out": lambda ctx: mnist_sample_argv(ctx, ctx.fixture("image")) if loop(ctx, "imgs") else [],
    }
    for label, argv_fn in loops.items():
        def fn(ctx: Ctx, argv_fn=argv_fn, label=label) -> tuple[str, str]:
            call = ctx.cli(*argv_fn(ctx))
            if label == "sample --trajectory":  # an atomic write may also replace the link with the file
                return no_traceback(call)
            return refused(call, what=f"{label} a symlink loop")

        cases.append(Case(f"audit:symlink loop as {label}", AUDIT, "symlink-loop", fn))

    # text a terminal cannot encode: an em dash and an emoji, printed under ascii and latin-1 stdout
    for encoding in ("ascii", "latin-1"):
        def train_fn(ctx: Ctx, encoding=encoding) -> tuple[str, str]:
            corpus = ctx.path("unicode.txt")
            corpus.write_text(ctx.corpus.read_text(encoding="utf-8")[:20_000] + UNICODE_TEXT * 40, encoding="utf-8")
            argv = train_argv(ctx, "masked", "run", *sets("train.sample_every_eval=true"), data=str(corpus))
            trained = works(ctx.cli(*argv, encoding=encoding))
            sampled = works(ctx.cli(*sample_argv(ctx.path("run"), "--prompt=ROMEO \u2014", "--show"),
                                    encoding=encoding))
            return worst(trained, sampled)

        cases.append(Case(f"audit:train and sample unicode text under {encoding}", AUDIT, "encoding", train_fn,
                          limit=WORK_LIMIT_S))
        for command in ("eval", "compare", "config"):
            def fn(ctx: Ctx, encoding=encoding, command=command) -> tuple[str, str]:
                argv = (["config", "--method", "masked", "--set", "data.corpus=a\u2014b\U0001f600.txt"]
                        if command == "config" else _commands(ctx, ctx.run("masked"))[command])
                return works(ctx.cli(*argv, encoding=encoding), what=f"{command} under {encoding}")

            cases.append(Case(f"audit:{command} under {encoding}", AUDIT, "encoding", fn, limit=WORK_LIMIT_S))

    # names that are not UTF-8
    def train_into_bad_name(ctx: Ctx) -> tuple[str, str]:
        call = ctx.cli(*train_argv(ctx, "masked", NOT_UTF8))
        if ctx.path(NOT_UTF8).exists() and call.kind != "exit0":
            return "lost", f"left a half-made run behind: {call.message}"
        return refused(call, what="trained a run that safetensors cannot open") if call.kind != "exit0" else \
            worst(works(call), works(ctx.cli(*sample_argv(ctx.path(NOT_UTF8)))))

    cases.append(Case("audit:non-UTF-8 name/train --run-dir", AUDIT, "non-utf8", train_into_bad_name))
    for command in ("sample", "eval", "compare", "serve", "resume"):
        def fn(ctx: Ctx, command=command) -> tuple[str, str]:
            run = ctx.run("masked", NOT_UTF8)
            return no_traceback(ctx.cli(*_commands(ctx, run)[command]))

        cases.append(Case(f"audit:non-UTF-8 name/{command} RUN", AUDIT, "non-utf8", fn))

    def corpus_named_badly(ctx: Ctx) -> tuple[str, str]:
        corpus = ctx.path(NOT_UTF8 + ".txt")
        shutil.copyfile(ctx.corpus, corpus)
        trained = works(ctx.cli(*train_argv(ctx, "masked", data=str(corpus))))
        return worst(trained, _resumes(ctx, ctx.path("run"), 3)) if trained[0] == "ok" else trained

    cases.append(Case("audit:non-UTF-8 name/train --data, then resume", AUDIT, "non-utf8", corpus_named_badly,
                      limit=WORK_LIMIT_S))

    def out_named_badly(ctx: Ctx) -> tuple[str, str]:
        argv = compare_argv(ctx, ctx.fixture("masked"))
        argv[argv.index("--out") + 1] = str(ctx.path(NOT_UTF8))
        return works(ctx.cli(*argv))

    cases.append(Case("audit:non-UTF-8 name/compare --out", AUDIT, "non-utf8", out_named_badly,
                      limit=WORK_LIMIT_S))

    def printed_strictly(ctx: Ctx) -> tuple[str, str]:
        return works(ctx.cli("config", "--method", "masked", "--set", f"data.corpus={NOT_UTF8}", encoding="utf-8"))

    cases.append(Case("audit:non-UTF-8 name/printed to strict UTF-8", AUDIT, "non-utf8", printed_strictly))

    # networks too large for the machine: refused by size before a byte is allocated
    for label, argv_fn in {
        "masked n_embd=65536 n_layer=64": lambda ctx: train_argv(ctx, "masked", "run",
                                                                 *sets("model.n_embd=65536", "model.n_layer=64")),
        "ar n_embd=16384 n_layer=16": lambda ctx: train_argv(ctx, "ar", "run",
                                                             *sets("model.n_embd=16384", "model.n_layer=16")),
        "block n_embd=32768": lambda ctx: train_argv(ctx, "block", "run", *sets("model.n_embd=32768")),
        "image unet.base_channels=4096": lambda ctx: train_argv(ctx, "image", "run",
                                                                *sets("unet.base_channels=4096")),
    }.items():
        def fn(ctx: Ctx, argv_fn=argv_fn, label=label) -> tuple[str, str]:
            call = ctx.cli(*argv_fn(ctx))
            if call.kind == "error" and not re.search(r"parameters|memory", call.message):
                return "silent-wrong", f"refused without naming the size: {call.message}"
            return refused(call, what=f"a network of {label} trained")

        cases.append(Case(f"audit:too large for memory/{label}", AUDIT, "memory", fn, risky=True, limit=60.0))

    # the live page: clients that stop reading, and requests never finished
    def stalled_readers(ctx: Ctx) -> tuple[str, str]:
        from urllib.parse import urlencode

        p, port = _serve_process(ctx, ctx.fixture("masked"), 1.0)
        if port is None:
            return no_traceback(ctx.finish(p, 5))
        query = urlencode({"run": "masked", "sampler": "cached", "steps": 1000, "pace": 50}).encode()
        stalled = [_raw_client(port, b"GET /api/sample?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1024)
                   for _ in range(4)]
        tic, waited = time.monotonic(), None
        try:
            while time.monotonic() - tic < 40:  # each stalled sampling would run 50 s
                status, _ = _http(port, "/api/sample?" + urlencode({"run": "masked", "steps": 2}))
                if status == 200:
                    waited = time.monotonic() - tic
                    break
                time.sleep(0.5)
        finally:
            for sock in stalled:
                sock.close()
            p.send_signal(signal.SIGINT)
        call = ctx.finish(p, 15, note=f"fifth client served after {waited:.1f} s" if waited else "")
        if waited is None:
            return "silent-wrong", "four clients that read nothing held every slot for 40 s"
        return worst(no_traceback(call), ("ok", call.note))

    cases.append(Case("audit:serve/four clients stop reading, a fifth waits", AUDIT, "live-page", stalled_readers,
                      proc=True, limit=90.0))
    for label, request in (("nothing sent", b""), ("half the headers", b"GET /api/runs HTTP/1.1\r\nHost: 127"),
                           ("half a body", b"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 90"
                                           b"\r\n\r\n{\"run\": ")):
        def fn(ctx: Ctx, request=request, label=label) -> tuple[str, str]:
            p, port = _serve_process(ctx, ctx.fixture("masked"), 1.0)
            if port is None:
                return no_traceback(ctx.finish(p, 5))
            sock = _raw_client(port, request)
            try:
                closed = _closes_within(sock, 20)
                alive = _http(port, "/api/status")[0] == 200
            finally:
                sock.close()
                p.send_signal(signal.SIGINT)
            call = ctx.finish(p, 15, note=f"closed after {closed:.1f} s" if closed is not None else "")
            if closed is None:
                return "silent-wrong", f"a connection with {label} still open after 20 s"
            return worst(no_traceback(call), ("ok" if alive else "silent-wrong", call.note))

        cases.append(Case(f"audit:serve/a connection with {label}", AUDIT, "live-page", fn, proc=True, limit=60.0))
    return cases


def _strict_json(text: str) -> bool:
    """Whether ``text`` is JSON a browser's ``JSON.parse`` takes (no bare NaN or Infinity)."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        json.loads(text, parse_constant=refuse)
    except ValueError:
        return False
    return True


def _nan_row(path: Path) -> None:
    """Put a bare NaN (a diverged step, or an older writer) into the first evaluation row of a metrics file."""
    lines = path.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if '"kind": "train"' not in ln)
    row = json.loads(lines[i])
    row.update(train_loss=float("nan"), val_bpc=float("nan"))
    lines[i] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def edge_cases() -> list[Case]:
    """The live page's bind (an empty host, a public one, IPv6 loopback), clients that hang up mid-request,
    and NaN in the records a report is made from."""
    cases: list[Case] = []
    for label, host in (("empty", ""), ("blank", "  ")):
        def empty(ctx: Ctx, host=host) -> tuple[str, str]:
            call = ctx.cli("serve", ctx.fixture("masked"), "--host", host)
            if call.kind == "error" and "--host" not in call.message:
                return "silent-wrong", f"refused without naming --host: {call.message}"
            return refused(call, what="an empty --host listens on every interface with no Host check")

        cases.append(Case(f"audit:serve --host {label}", AUDIT, "serve-host", empty))

    def public(ctx: Ctx) -> tuple[str, str]:
        call = ctx.cli("serve", ctx.fixture("masked"), "--host", "0.0.0.0", "--port", "0")
        warned = [ln for ln in call.err.splitlines() if ln.startswith("warning:")]
        if call.kind == "exit0" and not (len(warned) == 1 and "every interface" in warned[0]):
            return "silent-wrong", f"a public bind without one line naming what it exposes: {warned}"
        return works(call)

    cases.append(Case("audit:serve --host 0.0.0.0 names what it exposes", AUDIT, "serve-host", public))

    def ipv6(ctx: Ctx) -> tuple[str, str]:
        import http.client

        p = ctx.popen(["serve", ctx.fixture("masked"), "--host", "::1", "--port", "0", "--device", "cpu"], "serve")
        found: list[int] = []

        def listening() -> bool:
            m = re.search(r"http://\[::1\]:(\d+)/", ctx.path("serve.out").read_text(errors="replace"))
            found[:] = [int(m.group(1))] if m else []
            return bool(m)

        if not _wait_for(listening, 60, p, poll=0.1):
            p.send_signal(signal.SIGINT)
            return worst(no_traceback(ctx.finish(p, 15)), ("silent-wrong", "no [::1] URL printed"))
        statuses = []
        try:
            for host in (None, "attacker.example"):
                conn = http.client.HTTPConnection("::1", found[0], timeout=30)
                conn.request("GET", "/api/runs", headers={"Host": host} if host else {})
                statuses.append(conn.getresponse().status)
                conn.close()
        finally:
            p.send_signal(signal.SIGINT)
        call = ctx.finish(p, 15, note=f"statuses {statuses}")
        return worst(no_traceback(call), ("ok" if statuses == [200, 400] else "silent-wrong",
                                          f"the printed URL answered {statuses[0]}, a foreign Host {statuses[1]}"))

    cases.append(Case("audit:serve --host ::1 answers at its URL", AUDIT, "serve-host", ipv6, proc=True,
                      limit=90.0))

    def hang_up(ctx: Ctx) -> tuple[str, str]:
        p, port = _serve_process(ctx, ctx.fixture("masked"), 5.0)
        if port is None:
            return no_traceback(ctx.finish(p, 5))
        try:
            for _ in range(3):
                sock = _raw_client(port, b"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 90"
                                         b"\r\n\r\n{\"run\": ")
                time.sleep(0.3)
                sock.close()
            time.sleep(1.0)
            alive = _http(port, "/api/status")[0] == 200
        finally:
            p.send_signal(signal.SIGINT)
        call = ctx.finish(p, 15)
        lines = [ln for ln in call.err.splitlines() if ln.strip() and ln.strip() != "stopped"]
        if "Traceback" in call.err or len(lines) > 3:
            return "traceback", f"{len(lines)} console lines for three hang-ups"
        return worst(no_traceback(call), ("ok" if alive else "silent-wrong", f"{len(lines)} console lines"))

    cases.append(Case("audit:serve/three clients hang up mid-body", AUDIT, "serve-hangup", hang_up, proc=True,
                      limit=60.0))

    def nan_metrics(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        _nan_row(run / "metrics.jsonl")
        call = ctx.cli(*compare_argv(ctx, run, "--sweep="))
        if call.kind != "exit0":
            return works(call)
        page = ctx.path("cmp", "report.html").read_text()
        data = re.search(r'<script type="application/json" id="td-data">(.*?)</script>', page, re.S)
        bad = [name for name, ok in (("comparison.json", _strict_json(ctx.path("cmp", "comparison.json").read_text())),
                                     ("report.html's data", bool(data) and _strict_json(data.group(1)))) if not ok]
        if bad:
            return "silent-wrong", f"bare NaN in {' and '.join(bad)}"
        if not any(ln.startswith("note:") and "non-finite" in ln for ln in call.err.splitlines()):
            return "silent-wrong", "compare said nothing of the NaN in metrics.jsonl"
        return "ok", "null written, and said"

    cases.append(Case("audit:NaN in metrics.jsonl/compare", AUDIT, "nan-json", nan_metrics, limit=WORK_LIMIT_S))

    def nan_final(ctx: Ctx) -> tuple[str, str]:
        run = ctx.run("masked")
        final = json.loads((run / "final.json").read_text())
        final.update(val_bpc=float("nan"), val_nats=float("inf"))
        (run / "final.json").write_text(json.dumps(final))
        (run / "eval.json").unlink(missing_ok=True)
        call = ctx.cli(*compare_argv(ctx, run, "--sweep="))
        if call.kind != "exit0":
            return no_traceback(call)
        return ("ok", "strict JSON") if _strict_json(ctx.path("cmp", "comparison.json").read_text()) else \
            ("silent-wrong", "bare NaN in comparison.json")

    cases.append(Case("audit:NaN in final.json/compare", AUDIT, "nan-json", nan_final, limit=WORK_LIMIT_S))
    return cases


_CASES: list[Case] = []


def all_cases() -> list[Case]:
    """Every case, in a fixed order (the worker and the parent build the same list and meet on ids)."""
    if _CASES:
        return _CASES
    cases = [*issue_cases(), *set_field_cases(), *set_syntax_cases(), *sample_set_cases(), *flag_cases(),
             *config_file_cases(), *checkpoint_cases(), *run_dir_cases(), *data_cases(), *output_cases(),
             *clobber_cases(), *stale_temp_cases(),
             *read_only_eval_cases(), *diagnosis_cases(), *audit_cases(), *proc_cases()]
    cases += edge_cases()
    seen: set[str] = set()
    unique = []
    for c in cases:
        if c.id not in seen:  # an issue case and a family may meet on one input: keep the first
            seen.add(c.id)
            unique.append(c)
    _CASES.extend(unique)
    return _CASES


# ---- fixtures ------------------------------------------------------------------------------------------
def make_fixtures(work: Path, names: Iterable[str] = FIXTURES) -> None:
    """Train the `tiny` runs every case starts from (60 steps each, seconds), in this process."""
    from textdiffusion.apps.cli import main
    from textdiffusion.data.corpus import resolve_corpus

    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(resolve_corpus("tinyshakespeare", download=False).read_text(encoding="utf-8")[:30_000])
    for name in names:
        target = work / "fixtures" / name
        if target.exists():
            continue
        if name == "image":
            argv = ["mnist", "train", "--preset=tiny", "--data=digits"]
        else:
            argv = ["train", f"--method={name.rstrip('2')}", "--preset=tiny", f"--data={corpus}"]
            argv += ["--seed=2"] if name.endswith("2") else []
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main([*argv, "--run-dir", str(target), "--no-progress"])
        if rc != 0:
            raise SystemExit(f"fixture {name} failed to train: {err.getvalue()[-2000:]}")
    if "image" in names:  # the evaluation classifier, trained once into the cache (a minute, then instant)
        import torch

        from textdiffusion.data.images import load_images
        from textdiffusion.image_evaluation import classifier_for_data

        with contextlib.redirect_stderr(io.StringIO()):
            classifier_for_data(load_images("digits"), torch.device("cpu"), progress=False)


def install_serve_stub() -> None:
    """``serve`` must never listen here: whatever would run the server raises WouldServe instead."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise WouldServe("serve got as far as starting the server")

    with contextlib.suppress(ImportError):
        import uvicorn

        uvicorn.Server.run = refuse  # type: ignore[method-assign]
        uvicorn.Server.serve = refuse  # type: ignore[method-assign]
    with contextlib.suppress(ImportError):
        import textdiffusion.apps.serve.app as app

        if hasattr(app, "_uvicorn_server"):
            app._uvicorn_server = lambda *a, **k: type("Stub", (), {"run": refuse})()


# ---- running cases -------------------------------------------------------------------------------------
def run_case(case: Case, work: Path, index: int, keep: bool = False) -> Result:
    """Run one case here (in-process cases: only in the worker or a test; process cases: anywhere)."""
    case_dir = work / "cases" / f"{index:04d}"
    if case_dir.exists():
        _rmtree(case_dir)
    case_dir.mkdir(parents=True)
    ctx = Ctx(work, case_dir)
    cwd = os.getcwd()
    os.chdir(case_dir)
    tic = time.perf_counter()
    try:
        outcome, reason = case.fn(ctx)
    except Exception as e:  # a bug of the harness (or a product change it did not foresee): shown, not counted
        outcome, reason = HARNESS_ERROR, f"{type(e).__name__}: {e} | {traceback.format_exc(limit=-3)!r}"
    finally:
        os.chdir(cwd)
        if not keep:
            _rmtree(case_dir)
    return Result(case.id, case.item, case.family, outcome, reason, time.perf_counter() - tic,
                  [c.summary() for c in ctx.calls])


def _rmtree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:  # cases make read-only folders and unreadable files
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(path, ignore_errors=True)


def worker_main(work: Path, keep: bool) -> None:
    """The in-process side: read case ids on stdin, answer one JSON line per case on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray writes to fd 1 (C libraries) must not corrupt the protocol
    import torch

    torch.set_num_threads(1)
    install_serve_stub()
    import textdiffusion.apps.cli  # noqa: F401 - the imports every case needs, once

    cases = {c.id: (i, c) for i, c in enumerate(all_cases())}
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        cid = json.loads(line)
        index, case = cases[cid]
        proto.write(json.dumps({"result": asdict(run_case(case, work, index, keep))}) + "\n")


class Worker:
    """The capped process that runs in-process cases; replaced after a case kills it or runs out of time."""

    def __init__(self, work: Path, log: Path, keep: bool):
        """Start the process; :meth:`wait_ready` waits for its imports (a spare is started ahead of need)."""
        prefix = NOBODY_PREFIX if os.geteuid() == 0 and shutil.which("setpriv") else []
        self.log_path = log
        self.log = open(log, "a")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen([*prefix, sys.executable, __file__, "--worker", str(work),
                                   *(["--keep"] if keep else [])], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.log, env=child_env(), cwd=work,
                                  preexec_fn=_cap_memory)
        self.buf = b""
        self.ready = False
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def wait_ready(self) -> Worker:
        if not self.ready:
            msg = self._line(WORKER_START_S)
            if not (msg and msg.get("ready")):
                self.close()
                raise SystemExit(f"the worker did not start; see {self.log_path}")
            self.ready = True
        return self

    def _line(self, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return None
            chunk = os.read(self.p.stdout.fileno(), 1 << 16)  # type: ignore[union-attr]
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, case: Case) -> dict | str:
        """The case's result, or "timeout", or "died"."""
        try:
            self.p.stdin.write((json.dumps(case.id) + "\n").encode())  # type: ignore[union-attr]
            self.p.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            return "died"
        msg = self._line(case.limit)
        if msg is not None:
            return msg["result"]
        return "died" if self.p.poll() is not None else "timeout"

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.log.close()


def run_inprocess(cases: list[Case], work: Path, progress: Callable[[Result], None], keep: bool = False
                  ) -> list[Result]:
    results = []
    index = {c.id: i for i, c in enumerate(all_cases())}
    worker: Worker | None = None
    spare: Worker | None = None  # started when one was lost: the next loss then costs no import time
    log = work / "worker.log"
    try:
        for case in cases:
            if worker is None:
                worker, spare = (spare or Worker(work, log, keep)).wait_ready(), None
                if results:
                    spare = Worker(work, log, keep)
            tic = time.perf_counter()
            answer = worker.run(case)
            if isinstance(answer, dict):
                res = Result(**answer)
            else:
                code = worker.p.poll()
                worker.close()
                worker = None
                if answer == "timeout":
                    res = Result(case.id, case.item, case.family, case.on_timeout,
                                 f"no answer within {case.limit:.0f} s (unbounded work)", time.perf_counter() - tic)
                else:
                    how = f"signal {-code} ({signal.Signals(-code).name})" if code and code < 0 else f"exit {code}"
                    res = Result(case.id, case.item, case.family, "traceback",
                                 f"the process died ({how}; see worker.log)", time.perf_counter() - tic)
                _rmtree(work / "cases" / f"{index[case.id]:04d}")
            results.append(res)
            progress(res)
    finally:
        for w in (worker, spare):
            if w is not None:
                w.close()
    return results


# ---- report --------------------------------------------------------------------------------------------
def _normalise(reason: str) -> str:
    """A reason with paths and numbers blanked, so the same cause on different inputs groups together."""
    text = re.sub(r"(/[\w.\-]+)+/?", "PATH", reason)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?", "N", text)
    return text[:160]


def report(results: list[Result], verbose: bool) -> str:
    lines = []
    counts = Counter(r.outcome for r in results)
    lines.append(f"{len(results)} cases: " + ", ".join(f"{o} {counts.get(o, 0)}" for o in OUTCOMES)
                 + (f", harness errors {counts[HARNESS_ERROR]}" if counts.get(HARNESS_ERROR) else ""))
    for title, key in (("issue item", "item"), ("family", "family")):
        groups: dict[str, Counter] = defaultdict(Counter)
        for r in results:
            groups[getattr(r, key)][r.outcome] += 1
        lines.append("")
        lines.append(f"| {title} | cases | " + " | ".join(OUTCOMES) + " |")
        lines.append("|---|---:|" + "---:|" * len(OUTCOMES))
        for name in sorted(groups):
            c = groups[name]
            lines.append(f"| {name} | {sum(c.values())} | " + " | ".join(str(c.get(o, 0)) for o in OUTCOMES) + " |")
    if verbose:
        bad = [r for r in results if r.outcome != "ok"]
        by_cause: dict[tuple[str, str], list[Result]] = defaultdict(list)
        for r in bad:
            by_cause[(r.outcome, _normalise(r.reason))].append(r)
        lines.append(f"\nnot ok, grouped by cause ({len(bad)} cases in {len(by_cause)} groups):")
        for (outcome, cause), group in sorted(by_cause.items(), key=lambda kv: (-SEVERITY.get(kv[0][0], 9),
                                                                                -len(kv[1]))):
            lines.append(f"\n[{outcome}] x{len(group)}  {cause}")
            for r in group[:12]:
                lines.append(f"  - {r.id}  (item {r.item})")
                if r.calls:
                    last = r.calls[-1]
                    lines.append(f"      $ textdiffusion {' '.join(last['argv'])}"[:400])
                    lines.append(f"      rc={last['rc']} {' / '.join(last['stderr'][:3])}"[:400])
                else:
                    lines.append(f"      {r.reason}"[:400])
            if len(group) > 12:
                lines.append(f"  ... and {len(group) - 12} more: " + ", ".join(r.id for r in group[12:40]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="in-process cases only (no signals or concurrent trainers)")
    ap.add_argument("--list", "--verbose", dest="verbose", action="store_true",
                    help="print every case that is not ok, grouped by cause, with its command and stderr")
    ap.add_argument("--json", help="write every result (commands, exit codes, stderr heads) to this file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any case is not ok (for CI)")
    ap.add_argument("--only", help="run only cases whose id matches this regular expression")
    ap.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--make-fixtures", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(Path(args.worker), args.keep)
        return 0
    if args.make_fixtures:
        make_fixtures(Path(args.make_fixtures))
        return 0

    os.environ.setdefault("TEXTDIFFUSION_DATA", child_env()["TEXTDIFFUSION_DATA"])  # checks run here too
    cases = all_cases()
    import torch

    torch.set_num_threads(1)
    if args.quick:
        cases = [c for c in cases if not c.proc]
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.id)]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    print(f"{len(cases)} cases ({sum(c.proc for c in cases)} with real processes); training fixtures in {work} ...",
          file=sys.stderr)
    fx = subprocess.run([sys.executable, __file__, "--make-fixtures", str(work)], env=child_env(),
                        preexec_fn=_cap_memory, capture_output=True, text=True)
    if fx.returncode != 0:
        print(fx.stdout + fx.stderr, file=sys.stderr)
        return 2
    print(f"fixtures ready in {time.perf_counter() - tic:.0f} s", file=sys.stderr)

    done = Counter()

    def progress(r: Result) -> None:
        done[r.outcome] += 1
        if sum(done.values()) % 50 == 0:
            print(f"  {sum(done.values())} done ({time.perf_counter() - tic:.0f} s): {dict(done)}", file=sys.stderr)

    results = run_inprocess([c for c in cases if not c.proc], work, progress, args.keep)
    index = {c.id: i for i, c in enumerate(all_cases())}
    for case in (c for c in cases if c.proc):
        res = run_case(case, work, index[case.id], args.keep)
        results.append(res)
        progress(res)
        print(f"  {case.id}: {res.outcome} ({res.seconds:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - tic
    print(report(results, args.verbose))
    print(f"\n{elapsed:.0f} s in all", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": elapsed, "counts": Counter(r.outcome for r in results),
                                               "results": [asdict(r) for r in results]}, indent=1))
    if not args.keep and not args.work:
        _rmtree(work)
    if args.strict and any(r.outcome != "ok" for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
