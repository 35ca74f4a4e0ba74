"""Reusing a small corpus: does diffusion overtake ar when both train for many epochs on little unique text?

    python benchmarks/repeated_data.py [--sizes 25k,100k,400k,1M] [--entries all | NAME,...] [--runs DIR]
        [--max-steps 6000] [--max-epochs 0] [--hours-per-size 0] [--patience 4] [--eval-epochs 0] [--windows 64]

For every training-set size U (a prefix of Tiny Shakespeare's training split, ``data.train_chars``; every run
is scored on the same validation windows of the whole held-out split) it trains, with the same seed and the
``cpu`` preset, ``ar`` at dropout 0, 0.1 and 0.2, ``masked``, ``block`` with B = 4, and ``masked`` with the
joint objective (``method.ar_weight=1``, which needs ``method.shift``). Each run is validated at regular epoch
counts (``--eval-epochs``; 0 picks the spacing that gives about 40 evaluations over the run's step budget) on
``--windows`` evenly spread validation windows: ``ar`` by its exact NLL, the diffusion runs by their bound and,
on the same windows, by the exact NLL of the left-to-right sampler (``train.eval_exact_windows``). An epoch is
``steps x batch x window / U`` (:mod:`textdiffusion.epochs`).

A run stops once ``--patience`` evaluations in a row have been above its best validation NLL (the bound, for
diffusion), though never in the first tenth of its budget (at least twice the warm-up), where a curve may stall
without having overfitted; or at its step budget: ``--max-steps``, fewer with ``--max-epochs``, and with
``--hours-per-size`` that many hours of training time per size, shared evenly by its runs
(``train.time_budget_s``; a time budget makes where a run stops depend on the machine). The learning rate
follows the preset's warm-up and cosine decay over the step budget.

Resumable: every run is a run directory ``RUNS/U<size>/<entry>`` trained in this process in pieces of one
evaluation; a killed study (Ctrl-C, a lost machine) resumes each run from its last checkpoint, and a run that
has stopped is reused (whether it has stopped is read from its metrics.jsonl, so a larger ``--patience`` lets it
go on). Several copies with different ``--sizes`` or ``--entries`` may share ``--runs``: a run another copy is
training is waited for. A progress line per evaluation goes to stderr.

Output (``--out`` stem: .json, .md, .png): per U a table of each entry's best NLL and the epoch it came at, its
ratio to ar's best over the three dropouts (bound and exact separately), the crossover epoch (the first
evaluation at which the entry is at or below ar's best), and a picture of validation NLL against epochs, one
panel per U. Where an entry does not cross, its falling part (after the warm-up, up to its best) is fitted with
a power law plus constant, L(e) = E + A e^-alpha (least squares: alpha on a log grid, E and A linear for each
alpha), and the epoch where the fit reaches ar's best is reported as the predicted crossover. Across U the
measured or predicted crossover epochs give an exponent beta (e* ~ U^beta, so the tokens trained to the
crossover grow as U^(1 + beta)), printed beside the published compute exponent 2.17 (Prabhudesai et al. 2025).
Where every curve bottoms out above ar's best, no epoch fit predicts a crossover; the gap table then fits each
entry's ratio to ar's best against U (ratio ~ c U^gamma) and reports U*, the size where that fit reaches 1.
An extrapolation past the step budget assumes the curve keeps its shape, which the cosine schedule (the
learning rate falls to its floor at the budget's end) does not promise: read it as an order of magnitude.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED = 1337
PUBLISHED_COMPUTE_EXPONENT = 2.17  # Prabhudesai et al. 2025: the compute of the crossover grows as U^2.17
# what every run shares: no mid-run samples, the final score on the study's own windows
COMMON = ("train.sample_every_eval=false", "train.final_eval_budget=0")
FIT_MIN_POINTS = 4


@dataclass(frozen=True)
class Entry:
    """One contestant: a method and its settings; ``autoregressive`` entries make the reference."""

    name: str
    method: str
    sets: tuple[str, ...] = ()
    autoregressive: bool = False


ENTRIES = [
    Entry("ar-d0", "ar", ("model.dropout=0.0",), autoregressive=True),
    Entry("ar-d0.1", "ar", ("model.dropout=0.1",), autoregressive=True),
    Entry("ar-d0.2", "ar", ("model.dropout=0.2",), autoregressive=True),
    Entry("masked", "masked"),
    Entry("block4", "block", ("method.block_size=4",)),
    Entry("masked-joint", "masked", ("method.shift=true", "method.ar_weight=1.0")),
]
BY_NAME = {e.name: e for e in ENTRIES}


@dataclass
class Point:
    """One evaluation: the step, its epoch, the headline NLL (ar: exact; diffusion: the bound) and the exact NLL."""

    step: int
    epoch: float
    nats: float
    exact: float | None


@dataclass
class Fit:
    """L(e) = E + A e^-alpha fitted to the falling part of a curve (``points``: how many evaluations)."""

    E: float
    A: float
    alpha: float
    rmse: float
    points: int
    first_epoch: float  # the earliest epoch fitted: the fit says nothing before it

    def at(self, epoch: float) -> float:
        return self.E + self.A * epoch ** -self.alpha

    def reaches(self, target: float) -> float | None:
        """The epoch where the fit comes down to ``target``; None when its asymptote E stays above it."""
        if target <= self.E or self.A <= 0:
            return None
        return (self.A / (target - self.E)) ** (1.0 / self.alpha)


@dataclass
class Curve:
    """A run's validation curve and where it stands."""

    entry: str
    size: int
    run: str
    autoregressive: bool
    points: list[Point]
    steps: int  # the step budget
    stopped: str | None  # "patience", "budget" or None (still to train)
    train_s: float | None = None  # training seconds, evaluation excluded (under load: compare within a run)

    def best(self, exact: bool = False) -> Point | None:
        pts = [p for p in self.points if (p.exact if exact else p.nats) is not None]
        return min(pts, key=lambda p: p.exact if exact else p.nats) if pts else None


@dataclass
class Judged:
    """One curve's best by one measure (the bound, or the exact NLL), against ar's best."""

    nats: float
    epoch: float
    step: int
    ratio: float | None = None  # to ar's best
    crossover_epoch: float | None = None  # the first evaluation at or below ar's best
    bottomed_out: bool = False  # no crossover, and the run overfitted (:func:`bottomed_out`): its best is final
    fit: Fit | None = None  # no crossover and still falling: the power law of its falling part
    predicted_crossover_epoch: float | None = None  # where the fit reaches ar's best (None: never)

    def crossover_text(self) -> str:
        if self.crossover_epoch is not None:
            return f"{self.crossover_epoch:,.1f}"
        if self.bottomed_out:
            return "none (bottomed out)"
        if self.fit is None:
            return "none (too few points to fit)"
        pred = self.predicted_crossover_epoch
        return "none; predicted " + (f"{pred:,.0f}" if pred else "never")


@dataclass
class Row:
    """An entry's line of a size's table: where its run stands and its best by each measure it has."""

    entry: str
    autoregressive: bool
    stopped: str | None
    evaluations: int
    last_epoch: float | None
    train_s: float | None
    bound: Judged | None = None  # diffusion only
    exact: Judged | None = None


@dataclass
class SizeResult:
    """One U: its curves, ar's best, and a row per entry."""

    size: int
    curves: list[Curve]
    ar_best: float | None
    ar_best_entry: str | None = None
    rows: list[Row] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the arguments --------------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """``25k`` -> 25,000, ``1M`` -> 1,000,000, ``4000`` -> 4,000."""
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        value = -1.0
    if value < 1 or value != int(value):
        raise SystemExit(f"error: --sizes takes character counts such as 25k,100k,400k,1M; {text!r} is not one")
    return int(value)


def parse_entries(text: str) -> list[Entry]:
    if text == "all":
        return list(ENTRIES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise SystemExit(f"error: unknown entry {unknown[0] if unknown else text!r}; choose from "
                         f"{', '.join(BY_NAME)} or all")
    return [BY_NAME[n] for n in names]


NICE = (1, 2, 2.5, 5)


def eval_spacing(horizon_epochs: float, evaluations: int = 40) -> float:
    """The largest round epoch spacing (1, 2, 2.5 or 5 times a power of ten) that gives at least
    ``evaluations`` evaluations over ``horizon_epochs``."""
    target = horizon_epochs / evaluations
    if target <= 0:
        return 1.0
    exponent = math.floor(math.log10(target))
    candidates = [m * 10.0 ** e for e in (exponent - 1, exponent) for m in NICE]
    return max(c for c in candidates if c <= target)


# ---- stopping, crossover and the fit ----------------------------------------------------------------------
def evaluations_above_best(points: list[Point]) -> int:
    """How many evaluations in a row, up to the last, have been above the best one."""
    if not points:
        return 0
    best = min(range(len(points)), key=lambda i: points[i].nats)
    return len(points) - 1 - best


def protected_steps(steps: int, warmup: int) -> int:
    """The first steps of a run that never stop it on patience: a tenth of its budget and at least twice the
    learning-rate warm-up. Early on a curve can stall for a few evaluations (masked diffusion sits near the
    unigram entropy before it learns more) without having overfitted anything."""
    return max(steps // 10, 2 * warmup)


def stop_reason(points: list[Point], patience: int, step: int, steps: int, finished: bool,
                protected: int = 0) -> str | None:
    """Why a run is done: ``patience`` evaluations in a row above its best once past its ``protected`` first
    steps, or its budget spent; None: go on."""
    past = bool(points) and points[-1].step >= protected
    if patience and past and evaluations_above_best(points) >= patience:
        return "patience"
    if finished or step >= steps:
        return "budget"
    return None


def crossover(curve: Curve, ar_best: float, exact: bool = False) -> float | None:
    """The first evaluated epoch at which ``curve`` is at or below ``ar_best`` (the best NLL of any ar run of the
    same U, whenever it came); None when it never gets there. Early in training every model is near uniform and
    the order of the curves means nothing, so the crossover is measured against ar's best, not ar's curve."""
    for p in sorted(curve.points, key=lambda p: p.step):
        value = p.exact if exact else p.nats
        if value is not None and value <= ar_best:
            return p.epoch
    return None


def fit_power_law(points: list[tuple[float, float]]) -> Fit | None:
    """Least squares of L(e) = E + A e^-alpha over (epoch, NLL) points: for each alpha of a log grid from 0.01 to
    10, E and A are a linear least-squares problem (A >= 0); the alpha of the smallest squared error wins. None
    with fewer than :data:`FIT_MIN_POINTS` points."""
    pts = [(e, v) for e, v in points if e > 0 and math.isfinite(v)]
    if len(pts) < FIT_MIN_POINTS:
        return None
    best: Fit | None = None
    n = len(pts)
    for k in range(401):
        alpha = 10 ** (-2 + 3 * k / 400)
        xs = [e ** -alpha for e, _ in pts]
        ys = [v for _, v in pts]
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx <= 0:
            continue
        A = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx)
        E = my - A * mx
        sse = sum((E + A * x - y) ** 2 for x, y in zip(xs, ys, strict=True))
        if best is None or sse < best.rmse ** 2 * n:
            best = Fit(E, A, alpha, math.sqrt(sse / n), n, min(e for e, _ in pts))
    return best


def falling_part(curve: Curve, warmup_steps: int, exact: bool = False) -> list[tuple[float, float]]:
    """The points a fit sees: after the learning-rate warm-up, up to the curve's best."""
    best = curve.best(exact)
    if best is None:
        return []
    return [(p.epoch, p.exact if exact else p.nats) for p in curve.points
            if p.step >= warmup_steps and p.step <= best.step and (p.exact if exact else p.nats) is not None]


def log_log_line(values: dict[int, float]) -> tuple[float, float] | None:
    """Slope and intercept of log value = intercept + slope log U by least squares, over the sizes U whose value
    is positive; None with fewer than two distinct such sizes."""
    pts = [(math.log(u), math.log(v)) for u, v in values.items() if u > 0 and v and v > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return slope, my - slope * mx


def scaling_exponent(crossings: dict[int, float]) -> float | None:
    """beta of e* ~ U^beta by least squares in log-log over the sizes with a (measured or predicted) crossover."""
    line = log_log_line(crossings)
    return None if line is None else line[0]


# ---- training and reading runs -------------------------------------------------------------------------------
def run_dir(runs: Path, size: int, entry: Entry) -> Path:
    return runs / f"U{size}" / entry.name


def settings(entry: Entry, size: int, steps: int, eval_every: int, windows: int, threads: int,
             time_budget_s: float) -> list[str]:
    exact = [] if entry.autoregressive else [f"train.eval_exact_windows={windows}",
                                             f"train.final_exact_windows={windows}"]
    return [f"seed={SEED}", f"data.train_chars={size}", f"train.steps={steps}", f"train.eval_every={eval_every}",
            f"train.eval_windows={windows}", f"train.final_eval_windows={windows}", f"train.threads={threads}",
            "train.device=cpu", f"train.time_budget_s={time_budget_s:g}", *COMMON, *exact, *entry.sets]


def read_curve(rd: Path, entry: Entry, size: int, patience: int) -> Curve:
    """The run's evaluations from metrics.jsonl, each at its epoch, and whether it has stopped."""
    from textdiffusion.checkpoint import read_header
    from textdiffusion.epochs import Epochs
    from textdiffusion.records import FINAL, METRICS, EvalRow, row_kind
    from textdiffusion.runs import read_run_config

    _, _, cfg = read_run_config(rd)
    epochs = Epochs.of_run(rd)
    rows = [json.loads(line) for line in (rd / METRICS).read_text().splitlines() if line.strip()] \
        if (rd / METRICS).is_file() else []
    evals = [EvalRow.from_json(r) for r in rows if row_kind(r) == "eval"]
    points = [Point(r.step, epochs.at(r.step), r.nats, r.nats if entry.autoregressive else r.exact_nats)
              for r in evals if r.nats is not None]
    header = read_header(rd) if (rd / "checkpoint.safetensors").is_file() else None
    step = header.step if header is not None else 0
    finished = (rd / FINAL).is_file()
    train_s = evals[-1].elapsed if evals else None
    protected = protected_steps(cfg.train.steps, cfg.train.warmup)
    return Curve(entry.name, size, str(rd), entry.autoregressive, points, cfg.train.steps,
                 stop_reason(points, patience, step, cfg.train.steps, finished, protected), train_s)


def wait_for_other_trainer(rd: Path, label: str) -> None:
    """When another process trains ``rd`` now, wait until it lets go (then the run is resumed or reused)."""
    from textdiffusion.run_lock import training_pid

    pid = training_pid(rd)
    if pid is not None:
        log(f"{label}: waiting for process {pid}, which trains {rd}")
    while training_pid(rd) is not None:
        time.sleep(10)


def run_config(entry: Entry, size: int, args: argparse.Namespace):
    """The config of ``entry``'s run at ``size`` and its :class:`~textdiffusion.epochs.Epochs`: the step budget
    (``--max-steps``, fewer with ``--max-epochs``), evaluations every ``--eval-epochs`` (or the round spacing that
    gives about 40 over the budget), and with ``--hours-per-size`` the run's share of that time."""
    from textdiffusion.epochs import Epochs
    from textdiffusion.methods.configs import make_config

    rate = Epochs.of_config(make_config(entry.method, args.preset, [f"data.train_chars={size}"]), size)
    steps = args.max_steps if not args.max_epochs else min(args.max_steps, rate.steps_for(args.max_epochs))
    eval_every = rate.steps_for(args.eval_epochs or eval_spacing(rate.at(steps)))
    budget = args.hours_per_size * 3600 / len(args.entry_list) if args.hours_per_size else 0.0
    sets = settings(entry, size, steps, eval_every, args.windows, args.threads, budget)
    return make_config(entry.method, args.preset, sets), rate


def train_run(entry: Entry, size: int, args: argparse.Namespace, label: str) -> Curve:
    """Train (or resume, or reuse) one run in pieces of one evaluation, until it stops; returns its curve."""
    from textdiffusion.trainer import Trainer

    rd = run_dir(Path(args.runs), size, entry)
    wait_for_other_trainer(rd, label)
    cfg, rate = run_config(entry, size, args)
    steps, eval_every = cfg.train.steps, cfg.train.eval_every
    if (rd / "config.json").is_file():
        curve = read_curve(rd, entry, size, args.patience)
        if curve.steps != steps:
            raise SystemExit(f"error: {rd} was started with a budget of {curve.steps:,} steps, this study asks for "
                             f"{steps:,}; pass the same --max-steps/--max-epochs, or another --runs folder")
        if curve.stopped:
            log(f"{label}: reused ({curve.stopped}, {len(curve.points)} evaluations)")
            return curve
    rd.parent.mkdir(parents=True, exist_ok=True)
    resume = (rd / "config.json").is_file()
    trainer = Trainer(cfg, rd, resume=resume, progress=False)
    try:
        log(f"{label}: {'resuming at step ' + format(trainer.step, ',') if resume else 'training'} "
            f"({steps:,} steps at most, {rate.at(steps):.1f} epochs; an evaluation every {eval_every:,} steps = "
            f"{rate.at(eval_every):.3g} epochs)")
        while True:
            curve = read_curve(rd, entry, size, args.patience)
            if curve.stopped:
                break
            target = min(steps, (trainer.step // eval_every + 1) * eval_every)
            tic, before = time.perf_counter(), trainer.elapsed
            summary = trainer.train(stop_at=target)
            if summary.interrupted:
                raise SystemExit(f"interrupted at step {trainer.step:,} of {rd}; the same command resumes it")
            wall, trained = time.perf_counter() - tic, trainer.elapsed - before
            curve = read_curve(rd, entry, size, args.patience)
            if summary.out_of_time:
                curve.stopped = "budget"
            log(progress_line(label, curve, trainer.step, rate.at(trainer.step), wall, trained))
            if curve.stopped:
                break
    finally:
        trainer.lock.release()
    return curve


def progress_line(label: str, curve: Curve, step: int, epoch: float, wall: float, trained: float) -> str:
    last = curve.points[-1] if curve.points else None
    best = curve.best()
    what = "exact" if curve.autoregressive else "bound"
    now = f"{what} {last.nats:.4f}" if last else "no evaluation yet"
    if last is not None and last.exact is not None and not curve.autoregressive:
        now += f", exact {last.exact:.4f}"
    best_text = f"best {best.nats:.4f} at {best.epoch:.1f} ep" if best else ""
    share = f"{wall:.1f} s since the last, {trained / wall:.0%} of it training" if wall > 0 else ""
    return (f"{label}: step {step:,}/{curve.steps:,} ({epoch:.1f} ep) {now}; {best_text}, "
            f"{evaluations_above_best(curve.points)} above it; {share}"
            + (f"; stopped: {curve.stopped}" if curve.stopped else ""))


# ---- the tables and the picture ------------------------------------------------------------------------------
#: a patience stop after this share of the step budget is a plateau at the cosine schedule's floor (the learning
#: rate is within a tenth of its range of the minimum), not overfitting: such a curve is fitted like one that ran
#: to its budget
FLOOR_SHARE = 0.8


def bottomed_out(curve: Curve) -> bool:
    """Whether ``curve`` stopped on patience while its learning rate was still well above the floor: its best is
    behind it because it overfitted, so no fit may predict it lower."""
    last = curve.points[-1].step if curve.points else 0
    return curve.stopped == "patience" and last < FLOOR_SHARE * curve.steps


def judge(curve: Curve, exact: bool, ar_best: float | None, warmup_steps: int) -> Judged | None:
    """``curve``'s best by one measure and, for a diffusion curve, its crossover or the fit that predicts one."""
    best = curve.best(exact)
    if best is None:
        return None
    got = Judged(best.exact if exact else best.nats, best.epoch, best.step)
    if ar_best is None:
        return got
    got.ratio = got.nats / ar_best
    if curve.autoregressive:
        return got
    got.crossover_epoch = crossover(curve, ar_best, exact)
    if got.crossover_epoch is None:
        # a curve that turned up before the schedule's floor has its best behind it: no fit can take it lower
        got.bottomed_out = bottomed_out(curve)
        got.fit = None if got.bottomed_out else fit_power_law(falling_part(curve, warmup_steps, exact))
        got.predicted_crossover_epoch = None if got.fit is None else got.fit.reaches(ar_best)
    return got


def analyse(size: int, curves: list[Curve], warmup_steps: int) -> SizeResult:
    """ar's best over its dropouts, and each entry judged against it."""
    bests = [(b.nats, c.entry) for c in curves if c.autoregressive and (b := c.best()) is not None]
    best = min(bests) if bests else (None, None)
    result = SizeResult(size, curves, best[0], best[1])
    for c in curves:
        row = Row(c.entry, c.autoregressive, c.stopped, len(c.points), c.points[-1].epoch if c.points else None,
                  c.train_s)
        if c.autoregressive:  # its headline number is exact
            row.exact = judge(c, False, result.ar_best, warmup_steps)
        else:
            row.bound = judge(c, False, result.ar_best, warmup_steps)
            row.exact = judge(c, True, result.ar_best, warmup_steps)
        result.rows.append(row)
    return result


@dataclass
class Scaling:
    """How one diffusion entry's crossover (by one measure) moves with U: e* ~ U^beta."""

    name: str
    epochs: dict[int, float]  # U -> the crossover epoch, measured or predicted
    beta: float | None
    compute_exponent: float | None  # 1 + beta: the tokens trained to the crossover grow as U^(1 + beta)


def judged_diffusion(results: list[SizeResult]) -> Iterator[tuple[str, int, Judged]]:
    """Every diffusion entry's judgement against ar, by measure: ("masked (bound)", U, its Judged), in order."""
    for r in results:
        for row in r.rows:
            for kind, got in (("bound", row.bound), ("exact", row.exact)):
                if not row.autoregressive and got is not None and got.ratio is not None:
                    yield f"{row.entry} ({kind})", r.size, got


def scaling(results: list[SizeResult]) -> list[Scaling]:
    """Per diffusion entry and measure: the crossover epoch (measured, else predicted) per U and the exponent."""
    epochs: dict[str, dict[int, float]] = {}
    for name, size, got in judged_diffusion(results):
        per = epochs.setdefault(name, {})
        if at := got.crossover_epoch or got.predicted_crossover_epoch:
            per[size] = at
    out = []
    for name, per in epochs.items():
        beta = scaling_exponent(per)
        out.append(Scaling(name, per, beta, None if beta is None else 1 + beta))
    return out


@dataclass
class Gap:
    """How one diffusion entry's best (by one measure) compares with ar's best as U changes: ratio ~ c U^gamma,
    by least squares in log-log. Where no curve crosses in epochs (every run bottoms out above ar's best, so no
    epoch fit can predict a crossover), the size U* where the fitted ratio comes down to 1 says in which
    direction, and how far, the unique data would have to move for the entry to match ar at this preset."""

    name: str
    ratios: dict[int, float]  # U -> best / ar's best
    gamma: float | None
    crossover_size: float | None  # U* where the fitted ratio is 1 (an extrapolation outside the sizes measured)


def ratio_fit(ratios: dict[int, float]) -> tuple[float | None, float | None]:
    """gamma and U* of log ratio = log c + gamma log U over two or more sizes; U* = exp(-log c / gamma), the size
    where the fit reaches a ratio of 1 (None when gamma is 0)."""
    line = log_log_line(ratios)
    if line is None:
        return None, None
    gamma, log_c = line
    return gamma, (None if gamma == 0 else math.exp(-log_c / gamma))


def gaps(results: list[SizeResult]) -> list[Gap]:
    """Per diffusion entry and measure: its ratio to ar's best per U, and the fit of that ratio against U."""
    ratios: dict[str, dict[int, float]] = {}
    for name, size, got in judged_diffusion(results):
        ratios.setdefault(name, {})[size] = got.ratio
    return [Gap(name, per, *ratio_fit(per)) for name, per in ratios.items()]


def f4(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def ep(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def ratio(got: Judged | None) -> str:
    return "—" if got is None or got.ratio is None else f"{got.ratio:.3f}x"


def cross(row: Row, got: Judged | None) -> str:
    return "—" if row.autoregressive or got is None or got.ratio is None else got.crossover_text()


def markdown(results: list[SizeResult], scales: list[Scaling], cmd: str, windows: int, patience: int,
             preset: str, gap_fits: list[Gap] | None = None) -> str:
    lines = [f"Command: `{cmd}`", "",
             f"`{preset}` preset, seed {SEED}; every run scored on the same {windows} evenly spread windows of the "
             "whole validation split (nats per character): `ar` by its exact NLL, diffusion by its bound and by the "
             "exact NLL of the left-to-right sampler. Ratio: to the best `ar` NLL over dropout 0, 0.1 and 0.2. "
             "Crossover: the first evaluation at which the entry is at or below that best. A run stops after "
             f"{patience} evaluations in a row above its best (not in the first tenth of its budget), or at its "
             "budget. Predicted: where the power-law fit "
             "of a curve still falling at its budget reaches `ar`'s best (never: its asymptote stays above it; "
             "bottomed out: the curve rose again above its best before 80% of its budget, which is final; a "
             "patience stop later than that is a plateau at the schedule's floor and is fitted).", ""]
    for r in results:
        ar = next((c for c in r.curves if c.entry == r.ar_best_entry), None)
        falling = ar is not None and ar.stopped != "patience"
        note = "; still falling at its budget: ar's own best is lower" if falling else ""
        lines += [f"### U = {r.size:,} characters (ar's best {f4(r.ar_best)}, {r.ar_best_entry or 'none'}{note})", "",
                  "| entry | best bound | at epoch | best exact | at epoch | ratio (bound) | ratio (exact) "
                  "| crossover (bound) | crossover (exact) | stopped |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in r.rows:
            b, x = row.bound, row.exact
            stopped = (row.stopped or "running") + (f" at {ep(row.last_epoch)} ep" if row.last_epoch else "")
            lines.append(f"| {row.entry} | {f4(b and b.nats)} | {ep(b and b.epoch)} | {f4(x and x.nats)} "
                         f"| {ep(x and x.epoch)} | {ratio(b)} | {ratio(x)} | {cross(row, b)} | {cross(row, x)} "
                         f"| {stopped} |")
        lines.append("")
    lines += ["### How the crossover scales with U", "",
              "| entry | crossover epoch per U (measured or predicted) | beta (e* ~ U^beta) "
              "| compute exponent 1 + beta | published |", "|---|---|---:|---:|---:|"]
    for sc in scales:
        per = ", ".join(f"{u:,}: {e:,.0f}" for u, e in sorted(sc.epochs.items())) or "—"
        beta = "—" if sc.beta is None else f"{sc.beta:.2f}"
        comp = "—" if sc.compute_exponent is None else f"{sc.compute_exponent:.2f}"
        lines.append(f"| {sc.name} | {per} | {beta} | {comp} | {PUBLISHED_COMPUTE_EXPONENT} |")
    if gap_fits:
        lines += ["", "### The gap to ar across U", "",
                  "Each entry's best over ar's best per U, fitted as ratio ~ c U^gamma (log-log least squares); U*: "
                  "where the fit reaches a ratio of 1, an extrapolation whenever it lies outside the sizes measured.",
                  "", "| entry | ratio per U | gamma | U* (fitted ratio = 1) |", "|---|---|---:|---:|"]
        for g in gap_fits:
            per = ", ".join(f"{u:,}: {v:.3f}x" for u, v in sorted(g.ratios.items())) or "—"
            gamma = "—" if g.gamma is None else f"{g.gamma:+.3f}"
            star = "—" if g.crossover_size is None else f"{g.crossover_size:,.0f}"
            lines.append(f"| {g.name} | {per} | {gamma} | {star} |")
    return "\n".join(lines) + "\n"


COLOURS = {"ar-d0": (31, 119, 180), "ar-d0.1": (70, 160, 220), "ar-d0.2": (130, 190, 235),
           "masked": (255, 127, 14), "block4": (44, 160, 44), "masked-joint": (214, 39, 40)}


@dataclass(frozen=True)
class Axes:
    """A panel's plot rectangle (pixels) and what it shows: log10 epochs from x0 to x1, NLL from y0 to y1."""

    left: float
    top: float
    right: float
    bottom: float
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, epoch: float) -> float:
        return self.left + (math.log10(epoch) - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        clipped = min(max(value, self.y0), self.y1)
        return self.top + (self.y1 - clipped) / (self.y1 - self.y0) * (self.bottom - self.top)


def panel(d, r: SizeResult, ox: int, oy: int, width: int, height: int) -> None:
    """One U's curves in the panel at (ox, oy)."""
    pts = [(p.epoch, v) for c in r.curves for p in c.points for v in (p.nats, p.exact) if v is not None and p.epoch > 0]
    if not pts:
        return
    x0 = math.log10(min(e for e, _ in pts))
    x1 = max(math.log10(max(e for e, _ in pts)) + 0.05, x0 + 0.5)
    ys = sorted(v for _, v in pts)
    ax = Axes(ox + 60, oy + 30, ox + width - 20, oy + height - 40, x0, x1, ys[0] - 0.05,
              min(ys[-1], ys[0] + 1.5) + 0.05)
    d.rectangle((ax.left, ax.top, ax.right, ax.bottom), outline="black")
    d.text((ax.left, oy + 10), f"U = {r.size:,} characters", fill="black")
    for k in range(6):
        v = ax.y0 + (ax.y1 - ax.y0) * k / 5
        d.text((ox + 8, ax.y(v) - 6), f"{v:.2f}", fill="black")
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if x0 <= math.log10(v) <= x1:
                d.line((ax.x(v), ax.bottom, ax.x(v), ax.bottom + 4), fill="black")
                d.text((ax.x(v) - 8, ax.bottom + 8), f"{v:g}", fill="black")
    if r.ar_best is not None:
        d.line((ax.left, ax.y(r.ar_best), ax.right, ax.y(r.ar_best)), fill=(200, 200, 200))
    for j, c in enumerate(r.curves):
        colour = COLOURS.get(c.entry, (0, 0, 0))
        line = [(ax.x(p.epoch), ax.y(p.nats)) for p in c.points if p.epoch > 0]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        for p in c.points if not c.autoregressive else ():
            if p.exact is not None and p.epoch > 0:
                d.ellipse((ax.x(p.epoch) - 2, ax.y(p.exact) - 2, ax.x(p.epoch) + 2, ax.y(p.exact) + 2), fill=colour)
        row = next((w for w in r.rows if w.entry == c.entry), None)
        f = row.bound.fit if row is not None and row.bound is not None else None
        if f is not None and r.ar_best is not None:
            start = f.first_epoch
            end = min(10 ** x1, max(start * 1.01, f.reaches(r.ar_best) or 10 ** x1))
            xs = [start * (end / start) ** (k / 40) for k in range(41)]
            d.line([(ax.x(e), ax.y(f.at(e))) for e in xs], fill=colour, width=1)
        d.text((ax.right - 130, ax.top + 6 + 14 * j), c.entry, fill=colour)


def picture(results: list[SizeResult], path: Path, cmd: str) -> None:
    """Validation NLL against epochs (log scale), one panel per U, drawn with pillow: ar's exact NLL and the
    diffusion bounds as lines, the diffusion runs' exact left-to-right NLL as dots, the bounds' fits as thin
    lines (to the predicted crossover), ar's best as a grey line."""
    from PIL import Image, ImageDraw

    cols = 2 if len(results) > 1 else 1
    rows = math.ceil(len(results) / cols)
    width, height = 620, 420
    img = Image.new("RGB", (cols * width, rows * height + 60), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), f"validation NLL (nats/char) against epochs: {cmd}", fill="black")
    for i, r in enumerate(results):
        panel(d, r, (i % cols) * width, 30 + (i // cols) * height, width, height)
    d.text((10, rows * height + 36), "lines: ar exact, diffusion bound; dots: diffusion exact (left to right); thin: "
                                     "fits of the bound; grey: ar's best", fill="black")
    img.save(path)


# ---- the study -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked (a bad one is a one-line error); ``sizes`` and ``entry_list`` parsed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="25k,100k,400k,1M", help="training-set sizes U in characters (prefixes)")
    p.add_argument("--entries", default="all", help=f"comma-separated, or all: {', '.join(BY_NAME)}")
    p.add_argument("--runs", default="runs/repeated-data", help="the run directories, resumed or reused")
    p.add_argument("--max-steps", type=int, default=6000, help="each run's step budget (its cosine schedule)")
    p.add_argument("--max-epochs", type=float, default=0.0, help="fewer steps when this many epochs come first")
    p.add_argument("--hours-per-size", type=float, default=0.0,
                   help="training hours per size, shared evenly by its runs (0 = the step budget alone)")
    p.add_argument("--patience", type=int, default=4, help="stop a run after this many evaluations in a row above "
                                                           "its best (0 = train the whole budget)")
    p.add_argument("--eval-epochs", type=float, default=0.0, help="epochs between evaluations (0 = about 40 over "
                                                                   "the budget, rounded)")
    p.add_argument("--windows", type=int, default=64, help="validation windows every evaluation scores")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--preset", default="cpu", help="the runs' preset (tests use tiny)")
    p.add_argument("--out", default=str(RESULTS / "repeated_data"), help="results stem (.json, .md, .png)")
    args = p.parse_args(argv)
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not args.size_list:
        raise SystemExit("error: --sizes needs at least one size, such as 25k,100k,400k,1M")
    args.entry_list = parse_entries(args.entries)
    for flag, value, low in (("--max-steps", args.max_steps, 1), ("--windows", args.windows, 1),
                             ("--threads", args.threads, 1), ("--patience", args.patience, 0)):
        if value < low:
            raise SystemExit(f"error: {flag} must be at least {low}, not {value}")
    for flag, value in (("--max-epochs", args.max_epochs), ("--hours-per-size", args.hours_per_size),
                        ("--eval-epochs", args.eval_epochs)):
        if not (math.isfinite(value) and value >= 0):
            raise SystemExit(f"error: {flag} must be a number >= 0, not {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = "python benchmarks/repeated_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import torch

    torch.set_num_threads(args.threads)
    from textdiffusion.errors import CheckpointError, ConfigError, DataError
    from textdiffusion.methods.configs import make_config
    from textdiffusion.trainer import TrainingAborted

    results = []
    todo = [(u, e) for u in args.size_list for e in args.entry_list]
    for i, (size, entry) in enumerate(todo, 1):
        label = f"({i}/{len(todo)}) U={size:,} {entry.name}"
        try:
            curve = train_run(entry, size, args, label)
        except (ConfigError, DataError, CheckpointError) as e:
            raise SystemExit(f"error: {label}: {e}") from None
        except TrainingAborted as e:  # a second Ctrl-C or SIGTERM: the last checkpoint is intact
            raise SystemExit(f"{label}: {e}; the same command resumes the study") from None
        if not results or results[-1][0] != size:
            results.append((size, []))
        results[-1][1].append(curve)
    warmup = make_config("ar", args.preset).train.warmup
    analysed = [analyse(size, curves, warmup) for size, curves in results]
    scales = scaling(analysed)
    gap_fits = gaps(analysed)
    text = markdown(analysed, scales, cmd, args.windows, args.patience, args.preset, gap_fits)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": cmd, "seed": SEED, "windows": args.windows, "patience": args.patience,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "sizes": [asdict(r) for r in analysed], "scaling": [asdict(sc) for sc in scales],
              "gaps": [asdict(g) for g in gap_fits]}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(f"![validation NLL against epochs]({out.with_suffix('.png').name})\n\n{text}")
    picture(analysed, out.with_suffix(".png"), cmd)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
