"""The missing families side by side: `uniform` (with its heuristic variant and a few-step student) and `latent`
beside `ar`, `masked` and `embedding`, every run trained alike and scored by one evaluation in one process.

    python benchmarks/missing_families.py [--runs runs/missing-families] [--only NAME,...] [--finished-only]
                                          [--train-only] [--samples 128] [--windows 256] [--speed-turns 3]

Every entry of ENTRIES is a run directory ``RUNS/NAME``: the `cpu` preset, 2,000 steps, seed 1337, one thread
(a student: ``train --distill-from`` its teacher, ``--round-steps`` steps). A finished run is reused, an
interrupted one resumes, so the script can be stopped and started again; an entry whose method (or option) is not
in this code is skipped with a one-line note, so it runs at any time. Then, in this one process:

* likelihood: each run's ``nll`` on the same ``--windows`` validation windows, labelled exact or bound, with its
  ratio to `masked`'s bound and to `ar`'s exact NLL, and the method's own terms (latent: the three of its bound);
* quality: ``--samples`` samples of one context (64 chars) at temperature 1, seed 0, scored like
  ``textdiffusion eval``: judge perplexity, character entropy, word validity and the n-gram distance from held-out
  text (benchmarks/sample_quality.py); real held-out windows scored alike give the reference row;
* speed: chars/s at batch 64, every point timed in turn, ``--speed-turns`` times (so the load of a shared machine
  falls on all alike), each sampler at its default steps, and `masked`, `uniform` and the last student also at
  4, 8, 16, 32 and 64 steps.

A run's likelihood and quality are kept in ``RUN/families_score.json`` (keyed by its weights' step and the
settings) so a second pass only re-times. ``--only`` measures some entries and keeps the others' rows from the
results file when they were measured with the same settings. Writes benchmarks/results/missing_families.json, .md
(the command beside the table, each target of the issue checked) and .png (judge perplexity against chars/s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED = 1337
STEPS = 2000
SWEEP = (4, 8, 16, 32, 64)
ENTROPY_TOLERANCE = 0.1  # bits: the student's "entropy within 0.1 bits" of its teacher


@dataclass(frozen=True)
class Entry:
    """One run of the comparison: a method with its settings, or a student distilled from another entry."""

    name: str  # the row's label and the run directory's name
    method: str
    sets: tuple[str, ...] = ()
    teacher: str = ""  # a student: the entry it learns from (train --distill-from)
    distill_steps: int = 0  # a student's sampling steps
    sweep: bool = False  # also sampled at each of SWEEP steps
    what: str = ""  # one line for the table


ENTRIES = [
    Entry("ar", "ar", what="autoregressive, exact likelihood"),
    Entry("masked", "masked", sweep=True, what="masked diffusion (MDLM)"),
    Entry("embedding", "embedding", what="Gaussian diffusion on embeddings (Diffusion-LM)"),
    Entry("uniform", "uniform", sweep=True, what="uniform-state diffusion (UDLM/Duo), continuous-time NELBO"),
    Entry("uniform-heuristic", "uniform", ("method.objective=heuristic",),
          what="tiny-diffusion's uniform: cross-entropy on every position, no likelihood"),
    Entry("latent", "latent", what="Gaussian diffusion in a learned text autoencoder's latent"),
    Entry("uniform-s32", "uniform", teacher="uniform", distill_steps=32, what="student of uniform, 32 steps"),
    Entry("uniform-s16", "uniform", teacher="uniform-s32", distill_steps=16, what="student, 16 steps"),
    Entry("uniform-s8", "uniform", teacher="uniform-s16", distill_steps=8, sweep=True, what="student, 8 steps"),
]
BY_NAME = {e.name: e for e in ENTRIES}
STUDENT_SETS = ("train.lr=3e-4", "train.warmup=50")  # benchmarks/distillation.py's rounds


@dataclass
class Likelihood:
    """A run's validation number on the shared windows: exact or a bound, with the method's own terms."""

    nats: float
    bits: float
    kind: str  # "exact" | "bound"
    windows: int
    terms: dict[str, float] = field(default_factory=dict)  # the method's eval_terms found in its details
    x_masked: float | None = None  # nats / masked's bound
    x_ar: float | None = None  # nats / ar's exact NLL


@dataclass
class Point:
    """One (run, steps): the quality of its samples and its speed at batch 64."""

    entry: str
    method: str
    sampler: str
    steps: int | None  # None: ar, one token per evaluation
    default: bool  # the sampler's own step count
    judge_ppl: float
    char_entropy: float
    word_validity: float
    ngram_js: float
    ngram_floor: float
    chars_s: float = 0.0
    example: str = ""


@dataclass
class Row:
    """One entry: where its run is, what it cost, its likelihood and its points."""

    entry: str
    method: str
    what: str
    run: str
    train_steps: int
    train_s: float  # training seconds (a student's own; under load)
    likelihood: Likelihood
    points: list[Point]
    session: str = ""  # when it was measured: rows of one session were timed in turn


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def skip_reason(entry: Entry, skipped: set[str]) -> str | None:
    """Why ``entry`` cannot run in this code (its method or an option missing, its teacher skipped), else None."""
    from dataclasses import fields

    from textdiffusion.methods import REGISTRY

    if entry.teacher and entry.teacher in skipped:
        return f"its teacher {entry.teacher} is skipped"
    cls = REGISTRY.get(entry.method)
    if cls is None:
        return f"the method `{entry.method}` is not registered in this code"
    names = {f.name for f in fields(cls.config_class)}
    for s in entry.sets:
        key = s.split("=", 1)[0]
        if key.startswith("method.") and key.split(".", 1)[1] not in names:
            return f"`{entry.method}` has no option {key} in this code"
    if entry.teacher and not hasattr(cls, "distillation_loss"):
        return f"`{entry.method}` has no few-step student (train --distill-from) in this code"
    return None


def finished(rd: Path) -> bool:
    return (rd / "final.json").is_file() and (rd / "checkpoint.safetensors").is_file()


def train(entry: Entry, runs: Path, args: argparse.Namespace) -> None:
    """Train (or resume, or reuse) the entry's run in a child process with one thread."""
    rd = runs / entry.name
    if finished(rd):
        return
    if (rd / "checkpoint.safetensors").is_file():
        cmd = ["train", "--resume", str(rd)]
    elif entry.teacher:
        cmd = ["train", "--distill-from", str(runs / entry.teacher), "--steps",
               str(round_steps(entry, args.round_steps)), "--run-dir", str(rd), "--set",
               f"train.distill_steps={entry.distill_steps}", *STUDENT_SETS]
    else:
        cmd = ["train", "--method", entry.method, "--preset", args.preset, "--steps", str(args.steps),
               "--seed", str(SEED), "--run-dir", str(rd), *(["--set", *entry.sets] if entry.sets else [])]
    cmd.append("--no-progress")
    rd.parent.mkdir(parents=True, exist_ok=True)
    log(f"training {entry.name}: textdiffusion {' '.join(cmd)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    tic = time.perf_counter()
    with open(runs / f"{entry.name}.log", "a", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-m", "textdiffusion", *cmd], stdout=out, stderr=subprocess.STDOUT,
                              env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: training {rd} failed; its output is in {runs / (entry.name + '.log')}")
    log(f"  done in {time.perf_counter() - tic:.0f} s")


def round_steps(entry: Entry, steps: list[int]) -> int:
    """A student's training steps: its round's entry of ``steps``, the last one for the rounds after."""
    students = [e.name for e in ENTRIES if e.teacher]
    return steps[min(students.index(entry.name), len(steps) - 1)]


def settings_key(args: argparse.Namespace) -> str:
    return f"preset={args.preset} steps={args.steps} windows={args.windows} samples={args.samples} seed=0"


class Scorer:
    """What every run is scored against: the training split's judge and words, the held-out text and windows."""

    def __init__(self, run, windows: int):
        from textdiffusion.evaluate import TrainingReference, run_corpus

        data, text, _ = run_corpus(run)
        self.data, self.text = data, text
        self.held_out = text[len(data.train_text):]
        self.reference = TrainingReference(data.train_text)
        self.windows = windows
        self.length = run.cfg.model.context  # every sample is one context long (cpu: 64 characters)

    def quality(self, texts: list[str]) -> dict:
        from textdiffusion.sample_distance import sample_distance

        q = self.reference.quality(texts)
        d = sample_distance(texts, self.held_out)
        return {"judge_ppl": q["judge_ppl"], "char_entropy": q["char_entropy"], "word_validity": q["word_validity"],
                "ngram_js": d.js_bits, "ngram_floor": d.floor_bits}

    def real(self, samples: int) -> dict:
        """Held-out windows scored like samples: the reference row."""
        from textdiffusion.evaluate import reference_windows

        return self.quality(reference_windows(self.text, len(self.data.train_text), self.length, samples))

    def likelihood(self, run) -> Likelihood:
        import torch

        from textdiffusion.data.batches import TextData
        from textdiffusion.methods.base import score

        windows = TextData.tiled_windows(self.data.val_ids, run.method.window, self.windows)
        with torch.no_grad():
            nll = score(run.method, run.model, windows)
        terms = {k: float(v) for k, v in nll.details.items() if k in run.method.eval_terms
                 and isinstance(v, int | float)}
        return Likelihood(nll.nats_per_unit, nll.bits_per_unit, nll.kind, nll.windows, terms)


def points_of(entry: Entry, run) -> list[tuple[str, int | None, bool]]:
    """(sampler, steps, is-default) of every point an entry is sampled at."""
    sampler = run.method.default_sampler  # the run's own (uniform's heuristic variant: its redraw)
    usual = run.method.default_steps(run.cfg.model.context, sampler)
    pts = [(sampler, usual, True)]
    if entry.sweep and usual is not None:
        top = run.method.max_steps or max(SWEEP)
        pts += [(sampler, s, False) for s in SWEEP if s != usual and s <= top]
    return pts


def sample(run, sampler: str, steps: int | None, n: int, seed: int) -> tuple[list[str], float, int]:
    """``n`` samples of one context at batch 64: texts, seconds, characters written."""
    import torch

    from textdiffusion.evaluate import generate
    from textdiffusion.methods import SampleRequest

    req = SampleRequest(n=n, length=run.cfg.model.context, sampler=sampler, steps=steps or 0)
    with torch.no_grad():
        texts, speed = generate(run, req, seed, batch=64)
    return texts, speed["seconds"], round(speed["sample_chars_per_s"] * speed["seconds"])


def scored(entry: Entry, run, scorer: Scorer, args: argparse.Namespace) -> tuple[Likelihood, list[Point]]:
    """The run's likelihood and the quality of each point, from RUN/families_score.json when it holds them for
    these weights and settings, else measured and kept there."""
    cache = Path(run.path) / "families_score.json"
    key = f"step={run.step} {settings_key(args)}"
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            return Likelihood(**got["likelihood"]), [Point(**p) for p in got["points"]]
    log(f"scoring {entry.name}")
    lik = scorer.likelihood(run)
    points = []
    for sampler, steps, default in points_of(entry, run):
        texts, _, _ = sample(run, sampler, steps, args.samples, 0)
        points.append(Point(entry.name, entry.method, sampler, steps, default,
                            **scorer.quality(texts), example=texts[0]))
    cache.write_text(json.dumps({"key": key, "likelihood": asdict(lik), "points": [asdict(p) for p in points]},
                                indent=1) + "\n")
    return lik, points


def time_points(models: dict[str, object], rows: list[Row], turns: int) -> None:
    """chars/s of every point at batch 64, each timed in turn ``turns`` times after a warm-up."""
    clock: dict[int, list[float]] = {}
    todo = [(row, p) for row in rows for p in row.points]
    for row, p in todo:
        sample(models[row.entry], p.sampler, p.steps, 8, 99)
    for turn in range(turns):
        for i, (row, p) in enumerate(todo):
            _, seconds, chars = sample(models[row.entry], p.sampler, p.steps, 64, turn)
            acc = clock.setdefault(i, [0.0, 0])
            acc[0] += seconds
            acc[1] += chars
        log(f"speed turn {turn + 1}/{turns}")
    for i, (_, p) in enumerate(todo):
        seconds, chars = clock[i]
        p.chars_s = chars / seconds


def ratios(rows: list[Row]) -> None:
    by = {r.entry: r for r in rows}
    masked = by.get("masked")
    ar = by.get("ar")
    for r in rows:
        if masked is not None and masked.likelihood.kind == "bound":
            r.likelihood.x_masked = r.likelihood.nats / masked.likelihood.nats
        if ar is not None and ar.likelihood.kind == "exact":
            r.likelihood.x_ar = r.likelihood.nats / ar.likelihood.nats


@dataclass
class Target:
    """One target of the issue: what was measured against what it must reach."""

    name: str
    measured: str
    needed: str
    passed: bool | None  # None: not measured (a run missing)
    margin: str = ""


def point(rows: list[Row], entry: str, steps: int | None = None) -> Point | None:
    """The entry's point at ``steps`` (None: at its default steps)."""
    for r in rows:
        if r.entry == entry:
            for p in r.points:
                if (p.default if steps is None else p.steps == steps):
                    return p
    return None


LSGM_TERMS = ("reconstruction_nats_per_char", "latent_nats_per_char", "entropy_nats_per_char")


def bound_terms(lik: Likelihood) -> Target:
    """Latent's bound, E_q[-log p(x|z)] + E_q[-log p(z)] - H(q(z|x)): reported with its three terms, which must
    add up to the number reported."""
    name = "latent: bound reported with its three terms"
    if not all(k in lik.terms for k in LSGM_TERMS):
        return Target(name, f"terms {', '.join(sorted(lik.terms)) or 'none'}", ", ".join(LSGM_TERMS), False)
    recon, latent, entropy = (lik.terms[k] for k in LSGM_TERMS)
    gap = recon + latent - entropy - lik.nats
    return Target(name, f"{recon:.4f} + {latent:.4f} - ({entropy:.4f}) nats/char", f"= {lik.nats:.4f}",
                  abs(gap) < 1e-3, f"{gap:+.1e}")


def targets(rows: list[Row], real: dict) -> list[Target]:
    by = {r.entry: r for r in rows}
    out: list[Target] = []

    def missing(name: str, need: str, *entries: str) -> bool:
        absent = [e for e in entries if e not in by]
        if absent:
            out.append(Target(name, f"not measured ({', '.join(absent)} not in the table)", need, None))
        return bool(absent)

    name = "uniform: bound <= 1.10x masked's"
    if not missing(name, "<= 1.10x", "uniform", "masked"):
        x = by["uniform"].likelihood.x_masked
        out.append(Target(name, f"{x:.3f}x", "<= 1.10x", x <= 1.10, f"{1.10 - x:+.3f}x"))
    student, teacher = point(rows, "uniform-s8", 8), point(rows, "uniform", 64)
    name = "student at 8 steps: judge ppl <= teacher's at 64"
    if not missing(name, "<=", "uniform-s8", "uniform") and student and teacher:
        out.append(Target(name, f"{student.judge_ppl:.2f} vs {teacher.judge_ppl:.2f}", "<=",
                          student.judge_ppl <= teacher.judge_ppl,
                          f"{teacher.judge_ppl / student.judge_ppl - 1:+.1%}"))
        gap = abs(student.char_entropy - teacher.char_entropy)
        out.append(Target("student at 8 steps: entropy within 0.1 bits of teacher's at 64",
                          f"{student.char_entropy:.3f} vs {teacher.char_entropy:.3f} bits (gap {gap:.3f})",
                          f"<= {ENTROPY_TOLERANCE} bits", gap <= ENTROPY_TOLERANCE,
                          f"{ENTROPY_TOLERANCE - gap:+.3f} bits"))
        x = student.chars_s / teacher.chars_s
        out.append(Target("student at 8 steps: >= 4x teacher's chars/s (at 64)", f"{x:.2f}x", ">= 4x", x >= 4,
                          f"{x - 4:+.2f}x"))
    if not missing("latent: reconstruction >= 99% of validation characters", ">= 0.99", "latent"):
        lat = by["latent"].likelihood.terms
        acc = next((v for k, v in lat.items() if "recon" in k and "acc" in k), None)
        out.append(Target("latent: reconstruction >= 99% of validation characters",
                          "not reported" if acc is None else f"{acc:.4f}", ">= 0.99",
                          None if acc is None else acc >= 0.99, "" if acc is None else f"{acc - 0.99:+.4f}"))
        out.append(bound_terms(by["latent"].likelihood))
    name = "latent: >= 4x masked's chars/s at batch 64"
    if not missing(name, ">= 4x", "latent", "masked"):
        x = point(rows, "latent").chars_s / point(rows, "masked").chars_s
        out.append(Target(name, f"{x:.2f}x", ">= 4x", x >= 4, f"{x - 4:+.2f}x"))
    if not missing("latent: better than embedding on each sample metric", "each", "latent", "embedding"):
        lat, emb = point(rows, "latent"), point(rows, "embedding")
        # (metric, latent's, embedding's, +1 where higher is better, -1 where lower is): the margin is latent's
        # relative gain, positive when it is better
        checks = [("judge ppl", lat.judge_ppl, emb.judge_ppl, -1),
                  ("word validity", lat.word_validity, emb.word_validity, 1),
                  ("n-gram JS", lat.ngram_js, emb.ngram_js, -1),
                  ("entropy, distance from real text's", abs(lat.char_entropy - real["char_entropy"]),
                   abs(emb.char_entropy - real["char_entropy"]), -1)]
        for what, a, b, sign in checks:
            out.append(Target(f"latent better than embedding: {what}", f"{a:.3f} vs {b:.3f}",
                              "higher" if sign > 0 else "lower", sign * (a - b) > 0,
                              f"{sign * (a - b) / b:+.1%}" if b else ""))
    return out


def fmt(v: float | None, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(result: dict, rows: list[Row], tgts: list[Target]) -> str:
    real = result["real"]
    lines = [
        "## The missing families: uniform-state and latent diffusion beside ar, masked and embedding",
        "",
        f"`{result['command']}`",
        "",
        f"{result['machine']}; {result['date']}. Every run: `{result['preset']}` preset, {result['steps']:,} "
        f"steps, seed {SEED}, one thread (students: `train --distill-from`, rounds of "
        f"{', '.join(map(str, result['round_steps']))} steps). Likelihood on the same {result['windows']} "
        f"validation windows (bits/char; a bound can only overstate). Quality: {result['samples']} samples of "
        f"{result['length']} characters at temperature 1, seed 0, judge = character 5-gram of the training split; "
        f"n-gram JS from held-out text (orders 1-4; real text of the same size: {real['ngram_js']:.3f}). Speed: "
        f"chars/s at batch 64, every point timed in turn, {result['speed_turns']} turns, on a machine shared with "
        "other jobs: ratios hold, absolute rates are low.",
        "",
        "| run | likelihood (bits/char) | x masked | x ar | method's terms | train s |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        lk = r.likelihood
        terms = ", ".join(f"{k} {v:.4g}" for k, v in lk.terms.items())
        lines.append(f"| {r.entry} | {lk.bits:.4f} {lk.kind} | {fmt(lk.x_masked, '.3f')} | {fmt(lk.x_ar, '.3f')} "
                     f"| {terms} | {r.train_s:,.0f} |")
    lines += ["", "| run | sampler | steps | chars/s | judge ppl | entropy (bits) | word validity | n-gram JS |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for p in r.points:
            steps = "" if p.steps is None else f"{p.steps}{'' if not p.default else ' (default)'}"
            lines.append(f"| {r.entry} | {p.sampler} | {steps} | {p.chars_s:,.0f} | {p.judge_ppl:.2f} | "
                         f"{p.char_entropy:.3f} | {p.word_validity:.3f} | {p.ngram_js:.3f} |")
    lines.append(f"| real text | held-out windows | | | {real['judge_ppl']:.2f} | {real['char_entropy']:.3f} | "
                 f"{real['word_validity']:.3f} | {real['ngram_js']:.3f} |")
    lines += ["", "| target | measured | needed | | margin |", "|---|---|---|---|---:|"]
    for t in tgts:
        verdict = "not measured" if t.passed is None else "pass" if t.passed else "**miss**"
        lines.append(f"| {t.name} | {t.measured} | {t.needed} | {verdict} | {t.margin} |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items()) + "."]
    sessions = sorted({r.session for r in rows})
    if len(sessions) > 1:
        lines += ["", f"Rows were measured in {len(sessions)} sessions ({', '.join(sessions)}); chars/s compare "
                      "best within one."]
    lines += ["", "Examples (first sample at the default steps):", ""]
    lines += [f"- {r.entry}: `{next(p.example for p in r.points if p.default)!r}`" for r in rows]
    return "\n".join(lines) + "\n"


def picture(rows: list[Row], real: dict, path: Path, cmd: str) -> None:
    """Judge perplexity against chars/s (both log scale), one point per run and step count, drawn with pillow."""
    from PIL import Image, ImageDraw

    pts = [(r.entry, p) for r in rows for p in r.points if p.chars_s > 0]
    if not pts:
        return
    W, H, left, right, top, bottom = 1000, 620, 70, 200, 40, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [math.log10(p.chars_s) for _, p in pts]
    ys = [math.log10(p.judge_ppl) for _, p in pts] + [math.log10(real["judge_ppl"])]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys) - 0.05, max(ys) + 0.05
    px = lambda v: left + (math.log10(v) - x0) / (x1 - x0) * (W - left - right)  # noqa: E731
    py = lambda v: top + (y1 - math.log10(v)) / (y1 - y0) * (H - top - bottom)  # noqa: E731
    d.rectangle((left, top, W - right, H - bottom), outline="black")
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if x0 <= math.log10(v) <= x1:
                d.line((px(v), H - bottom, px(v), H - bottom + 4), fill="black")
                d.text((px(v) - 12, H - bottom + 8), f"{v:,.0f}", fill="black")
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        for m in (1, 1.5, 2, 3, 5, 7):
            v = m * 10.0 ** e
            if y0 <= math.log10(v) <= y1:
                d.line((left - 4, py(v), left, py(v)), fill="black")
                d.text((10, py(v) - 6), f"{v:g}", fill="black")
    d.line((left, py(real["judge_ppl"]), W - right, py(real["judge_ppl"])), fill=(200, 200, 200))
    d.text((left + 4, py(real["judge_ppl"]) - 14), "real text", fill=(120, 120, 120))
    d.text((left, H - bottom + 28), "chars/s at batch 64 (log); y: judge perplexity (log, lower is better); "
           "numbers: sampling steps", fill="black")
    d.text((left, 12), cmd, fill="black")
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    for i, r in enumerate(rows):
        colour = colours[i % len(colours)]
        line = sorted((p for p in r.points if p.chars_s > 0), key=lambda p: p.chars_s)
        xy = [(px(p.chars_s), py(p.judge_ppl)) for p in line]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for (x, y), p in zip(xy, line, strict=True):
            d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
            if p.steps is not None:
                d.text((x + 5, y - 12), str(p.steps), fill=colour)
        d.text((W - right + 12, top + 18 * i), r.entry, fill=colour)
    img.save(path)


def pick_entries(entries: list[Entry], only_arg: str, runs: Path,
                 finished_only: bool) -> tuple[list[Entry], dict[str, str]]:
    """The entries a pass trains and measures (``--only``, comma-separated; every one when empty), less those
    that cannot run here or, with ``--finished-only``, are not trained yet: (to do, {skipped name: why}).
    An unknown name in ``--only`` ends the script with a one-line error."""
    names = [e.name for e in entries]
    only = [n for n in only_arg.split(",") if n]
    if unknown := [n for n in only if n not in names]:
        raise SystemExit(f"error: --only {','.join(unknown)}: no such entry; the entries are {', '.join(names)}")
    skipped: dict[str, str] = {}
    todo: list[Entry] = []
    for entry in entries:
        if only and entry.name not in only:
            continue
        reason = skip_reason(entry, set(skipped))
        if reason is None and finished_only and not finished(runs / entry.name):
            reason = "not finished (--finished-only)"
        if reason is not None:
            skipped[entry.name] = reason
            print(f"skipping {entry.name}: {reason}", flush=True)
            continue
        todo.append(entry)
    return todo, skipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/missing-families", help="one run directory per entry, reused")
    p.add_argument("--only", default="", help=f"comma-separated entries to train and measure now: "
                                              f"{', '.join(BY_NAME)} (the others' rows are kept)")
    p.add_argument("--finished-only", action="store_true", help="train nothing; measure the finished runs")
    p.add_argument("--train-only", action="store_true", help="train (or resume) the runs; measure nothing")
    p.add_argument("--preset", default="cpu", help="every run's preset (tiny: a smoke test of the script)")
    p.add_argument("--steps", type=int, default=STEPS, help="every run's training steps (students: --round-steps)")
    p.add_argument("--round-steps", type=int, nargs="+", default=[500, 300],
                   help="training steps of the student rounds, in order (the last repeats for the rounds after)")
    p.add_argument("--samples", type=int, default=128, help="samples scored at each point")
    p.add_argument("--windows", type=int, default=256, help="validation windows every run's likelihood takes")
    p.add_argument("--speed-turns", type=int, default=3, help="times every point is timed, in turn")
    p.add_argument("--out", default=str(RESULTS / "missing_families"), help="results stem (.json, .md, .png)")
    p.add_argument("--render", action="store_true", help="rewrite the .md and .png from the .json; measure nothing")
    args = p.parse_args()
    if args.render:
        render(Path(args.out))
        return
    cmd = " ".join(["python benchmarks/missing_families.py", *sys.argv[1:]])
    runs, out = Path(args.runs), Path(args.out)
    todo, skipped = pick_entries(ENTRIES, args.only, runs, args.finished_only)
    only = [n for n in args.only.split(",") if n]
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    for entry in todo:
        train(entry, runs, args)
    if args.train_only:
        return

    from textdiffusion.records import TrainSummary
    from textdiffusion.runs import open_run

    models = {e.name: open_run(runs / e.name, device="cpu") for e in todo}
    if not models:
        raise SystemExit("error: no run to measure; train one first (leave out --finished-only)")
    scorer = Scorer(next(iter(models.values())), args.windows)
    session = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for entry in todo:
        run = models[entry.name]
        lik, points = scored(entry, run, scorer, args)
        summary = TrainSummary.read(run.path)
        rows.append(Row(entry.name, entry.method, entry.what, str(run.path), summary.step, summary.elapsed, lik,
                        points, session))
    time_points(models, rows, args.speed_turns)
    key = settings_key(args)
    kept: list[Row] = []
    if only and out.with_suffix(".json").is_file():
        old = json.loads(out.with_suffix(".json").read_text())
        if old.get("settings") == key:
            kept = [r for r in rows_of(old) if r.entry not in only and r.entry in BY_NAME]
    order = {e.name: i for i, e in enumerate(ENTRIES)}
    rows = sorted(rows + kept, key=lambda r: order[r.entry])
    ratios(rows)
    real = scorer.real(args.samples)
    tgts = targets(rows, real)
    from common import machine

    result = {"command": cmd, "machine": machine(), "date": session, "settings": key, "windows": args.windows,
              "samples": args.samples, "preset": args.preset, "steps": args.steps, "length": scorer.length,
              "speed_turns": args.speed_turns, "round_steps": args.round_steps,
              "skipped": skipped, "real": real, "rows": [asdict(r) for r in rows],
              "targets": [asdict(t) for t in tgts]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, rows, tgts, out)


def rows_of(result: dict) -> list[Row]:
    """The rows of a results file, as records."""
    return [Row(**{**r, "likelihood": Likelihood(**r["likelihood"]), "points": [Point(**q) for q in r["points"]]})
            for r in result["rows"]]


def write_report(result: dict, rows: list[Row], tgts: list[Target], out: Path) -> None:
    """The .md (printed too) and .png of a result."""
    text = markdown(result, rows, tgts)
    out.with_suffix(".md").write_text(f"![judge perplexity against chars/s]({out.with_suffix('.png').name})\n\n{text}")
    picture(rows, result["real"], out.with_suffix(".png"), result["command"])
    print(text)


def render(out: Path) -> None:
    """Rewrite the .md and .png from the .json, measuring nothing: the verdicts are judged again."""
    if not out.with_suffix(".json").is_file():
        raise SystemExit(f"error: --render: {out.with_suffix('.json')} does not exist; run the script without "
                         f"--render first")
    result = json.loads(out.with_suffix(".json").read_text())
    rows = rows_of(result)
    tgts = targets(rows, result["real"])
    result["targets"] = [asdict(t) for t in tgts]
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, rows, tgts, out)


if __name__ == "__main__":
    main()
