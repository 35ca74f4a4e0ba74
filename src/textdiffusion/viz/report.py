"""Turning a comparison (see :mod:`textdiffusion.apps.compare`) into ``report.html`` and ``comparison.md``.

The HTML page is one file with everything inline: the style sheet and scripts from ``viz/web`` and the image
runs' pictures as data URIs, so it opens from ``file://`` on a machine with no network. Its skeleton is the
Jinja2 template ``viz/web/report.html.j2`` (autoescaped); this module prepares what it shows. The tables are
HTML, so they read even with scripts off; the scripts add sorting, draw the plots from the embedded JSON and
play the denoising trajectories.

Text that explains the numbers is written once here and used by both outputs, so the page and the Markdown
cannot drift apart. It uses a two-rule inline markup both understand: ```code``` and ``*emphasis*``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from textdiffusion.json_writing import to_json
from textdiffusion.records import InitRecord
from textdiffusion.viz import web_asset
from textdiffusion.viz.records import (
    Comparison,
    FrontierPoint,
    GuidanceCurve,
    Reference,
    RunRecord,
    SweepPoint,
    ValEntry,
)

WEB_ASSETS = ("player.js", "plot.js", "report.js")
TEMPLATE = "report.html.j2"
NA = "—"  # a number that was not measured or recorded

# ---- explanatory text, written once ----------------------------------------------------------------------
LEGEND_TITLE = "How to read the numbers."
VAL_KINDS = {  # the tag beside a validation number -> what it means
    "exact": "the model's true negative log-likelihood (`ar`).",
    "bound": "an upper bound on it (the diffusion NELBO), a Monte-Carlo estimate shown ± one standard error; "
             "the true bits/char can only be lower.",
}
ESTIMATES = ("Judge perplexity, word validity, distinct-2 and repetition are *estimates* from the stated number of "
             "samples and seeds; lower judge perplexity is better, real text scores shown as `real text` below. "
             "Speeds depend on the device.")
ONE_POINT = "`ar` has one point (one network evaluation per character)"
GUIDANCE_TITLE = "Guidance: accuracy vs fluency"
GUIDANCE_NOTE = ("For every run trained with labels, the guidance scale w steers the samples toward the label asked "
                 "for: w = 0 is the unconditional model, 1 the plain conditional one, above 1 sharper. *Accuracy* is "
                 "how often a fixed judge names the label asked for (text: the speaker judge, the samples split "
                 "evenly over the speakers; images: the evaluation classifier, the digits in turn); the dashed line "
                 "is the same judge on real data, so a point on it is as recognisable as the real thing. Fluency is "
                 "judge perplexity for text and FID for images (both lower is better); each point is labelled by "
                 "its w.")
DISTANCE_NOTE = ("*n-gram JS* is the Jensen-Shannon divergence (bits, 0 to 1) between the character 1-4-gram "
                 "distributions of the samples and of held-out text of the same size; *real floor* is what a second "
                 "slice of held-out text reaches, so a perfect sampler scores the floor. Unlike judge perplexity, a "
                 "sampler cannot lower it by collapsing onto likely characters.")
FRONTIER_TITLE = "Frontier: judge perplexity vs entropy over temperature"
FRONTIER_NOTE = ("Each run sampled with its default sampler and steps at every temperature: lowering it buys judge "
                 "perplexity with character entropy, so compare runs *at the same entropy*; real held-out text is "
                 "the point to reach. The n-gram distance says what each trade cost.")
GROWTH = {  # how a trajectory unfolds, shown above its player
    "sequential": "left-to-right growth, one character per network evaluation",
    "unmasking": "masked positions (grey) fill in",
    "rewriting": "the decoded text at every step: everything is rewritten, highlighted characters changed",
}


def inline_html(text: str) -> Markup:
    """The explanatory text's ```code``` and ``*emphasis*`` as HTML; everything else escaped."""
    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*([^*]+)\*", r"<i>\1</i>", html))


def legend_markdown() -> str:
    kinds = " ".join(f"*{kind}*: {text}" for kind, text in VAL_KINDS.items())
    return f"**{LEGEND_TITLE}** {kinds} {ESTIMATES} {DISTANCE_NOTE}"


# ---- numbers as text ---------------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return NA
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _val_text(val: ValEntry | None) -> str:
    if not val:
        return NA
    err = f" ± {val.stderr:.3f}" if val.stderr else ""
    return f"{val.value:.3f}{err}"


def _val_title(val: ValEntry | None) -> str:
    if not val:
        return "no validation number recorded"
    parts = [val.what, f"from {val.source}"]
    if val.windows:
        parts.append(f"{val.windows:,} windows" if val.unit == "bits/char" else f"{val.windows:,} images")
    if val.time_samples:
        parts.append(f"{val.time_samples} time samples each")
    if val.stderr:
        parts.append("± one standard error of the Monte-Carlo estimate")
    return "; ".join(parts)


def default_point(run: RunRecord) -> SweepPoint | None:
    """The sample-quality numbers the tables show: the comparison's own measurement at the method's default
    step count, so every run is scored with the same samples, length, seed and judge. (An ``eval.json`` may
    have used other settings or sampling overrides; it is quoted in the run's card instead.)"""
    return run.text_results.default_point if run.text_results else None


def eval_summary(run: RunRecord) -> str | None:
    """One line quoting a text run's ``eval.json`` (its own sample count and settings)."""
    ev = run.text_eval
    if ev is None or ev.quality is None:
        return None
    s, q = ev.samples, ev.quality
    extra = f", overrides {' '.join(s.overrides)}" if s.overrides else ""
    return (f"eval.json ({s.n} samples × 1 seed of {s.length} characters, sampler {s.sampler}"
            f"{extra}): judge ppl {_fmt(q.judge_ppl)}, word validity {_fmt(q.word_validity)}, "
            f"distinct-2 {_fmt(q.distinct_2)}, {_fmt(ev.speed.sample_chars_per_s, 0)} sample chars/s")


def _length(c: Comparison) -> str:
    """The common sample length in its unit: tokens stand for several characters with BPE or WordPiece."""
    n = c.settings.length
    kinds = {r.tokenizer for r in c.text_runs}
    return f"{n} characters" if kinds <= {"char", None} else f"{n} tokens (characters for char-tokenizer runs)"


def shared_reference(c: Comparison) -> Reference | None:
    """Real text's scores when every text run was measured against the same real text (one corpus, one
    sample length in characters); None when they differ, as each run's cells then say their own."""
    refs = [r.text_results.reference for r in c.text_runs if r.text_results]
    unique = {json.dumps(ref.to_json(), sort_keys=True) for ref in refs}
    return refs[0] if len(refs) == len(c.text_runs) and len(unique) == 1 else None


def real_text_line(ref: Reference) -> str:
    q = ref.quality
    return (f"Real text (validation windows of the same length): judge ppl {_fmt(q.judge_ppl)}, word validity "
            f"{_fmt(q.word_validity)}, distinct-2 {_fmt(q.distinct_2)}, repetition {_fmt(q.repetition)}, char "
            f"entropy {_fmt(q.char_entropy)} bits.")


def sweep_line(c: Comparison) -> str:
    s = c.settings
    return f"{s.samples} samples × {s.seeds} seed (seed {s.seed}) of {_length(c)} per point; {ONE_POINT}."


def settings_lines(c: Comparison) -> list[str]:
    s = c.settings
    scales = ", ".join(f"{w:g}" for w in s.guidance) or "none"
    return [f"sweep step counts: {', '.join(map(str, s.sweep)) or 'none'} (plus each method's default)",
            f"guidance scales: {scales} (runs trained with labels; {s.samples} samples per point: split evenly over "
            f"the speakers of a text run, the digits in turn for an image run)",
            f"samples per point: {s.samples}, seeds: {s.seeds} (seed {s.seed}), length {_length(c)}",
            f"frontier temperatures: {', '.join(f'{t:g}' for t in s.temperatures) or 'none'}",
            f"judge: {c.judge_kind}, fitted on the training split of "
            f"{', '.join(c.judge_corpora) or NA}",
            f"image runs: {s.image_sampler['sampler']} {s.image_sampler['steps']} steps for the grids",
            f"measured in {s.seconds:.1f} s"]


def _growth(run: RunRecord) -> str:
    res = run.text_results
    if res.steps_fixed:
        return GROWTH["sequential"]
    return GROWTH["unmasking" if res.trajectory.frames[0].masked else "rewriting"]


# ---- tables (shared by the page and the markdown) --------------------------------------------------------
@dataclass(frozen=True)
class Column:
    key: str
    header: str
    tip: str
    better: str | None  # "low" | "high" | None


@dataclass(frozen=True)
class Cell:
    text: str  # shown
    value: Any  # what the column sorts by
    tip: str = ""


@dataclass(frozen=True)
class Row:
    run_id: int
    cells: dict[str, Cell]
    val_kind: str | None  # the exact/bound tag beside the validation number


LEFT_ALIGNED = 3  # the first columns hold names, not numbers

TEXT_COLUMNS = [Column(*c) for c in (
    ("run", "run", "run directory", None),
    ("method", "method", "corruption process + loss + sampler", None),
    ("preset", "preset", "model/trainer size", None),
    ("parameters", "params", "trainable parameters", None),
    ("step", "train steps", "optimizer steps of the checkpoint", None),
    ("val", "val bits/char", "validation bits per character: exact for ar, an upper bound (NELBO) for diffusion; "
                             "lower is better", "low"),
    ("exact", "exact bits/char", "exact negative log-likelihood in bits per character: ar's own; masked and block's "
                                 "that of --sampler left_to_right (one token per step, left to right), on its own "
                                 "count of windows; lower is better", "low"),
    ("vs_ar", "× ar", "bits per character over the ar run's exact number (the first run compared whose validation "
                      "number is exact): exact where the run has it, else its bound; lower is better", "low"),
    ("judge_ppl", "judge ppl", "per-character perplexity of the samples under a character 5-gram judge fitted on "
                               "the training split (an estimate); lower is better", "low"),
    ("word_validity", "word validity", "share of generated words found in the training split; higher is better",
     "high"),
    ("distinct_2", "distinct-2", "distinct word bigrams / all word bigrams (diversity)", "high"),
    ("repetition", "repetition", "within-sample repeated word bigrams (loops); lower is better", "low"),
    ("char_entropy", "char entropy", "bits per character of the samples' character distribution: near real text's "
                                     "is right, far below it means the sampler bought its judge perplexity by "
                                     "collapsing onto frequent characters", None),
    ("ngram_js", "n-gram JS", "Jensen-Shannon divergence (bits) between the character 1-4-gram distributions of "
                              "the samples and of held-out text of the same size; lower is better, the real "
                              "floor is the best reachable", "low"),
    ("ngram_floor", "real floor", "the same divergence for a second slice of held-out text of the same size: "
                                  "what a sampler indistinguishable from real text scores", None),
    ("nfe", "NFE", "network evaluations per sample at the method's default step count (the quality columns)",
     "low"),
    ("train_speed", "train chars/s", "training throughput recorded by the trainer", "high"),
    ("sample_speed", "sample chars/s", "generated characters per second, measured with the quality columns", "high"),
    ("provenance", "samples × seeds", "how many samples and seeds the quality columns average over", None),
)]

IMAGE_COLUMNS = [Column(*c) for c in (
    ("run", "run", "run directory", None),
    ("preset", "preset", "model/trainer size", None),
    ("parameters", "params", "trainable parameters", None),
    ("step", "train steps", "optimizer steps of the checkpoint", None),
    ("val", "val bits/dim", "VDM variational bound on the 8-bit pixels (an upper bound); lower is better", "low"),
    ("fid", "FID", "Fréchet distance in the evaluation classifier's features (eval.json; an estimate)", "low"),
    ("class_accuracy", "class accuracy", "share of samples the classifier assigns the requested digit", "high"),
    ("eval_sampler", "eval sampler", "sampler and steps of the FID row", None),
    ("train_speed", "train images/s", "training throughput recorded by the trainer", "high"),
    ("sample_speed", "sample ms/image", "from eval.json", "low"),
    ("provenance", "samples × seeds", "samples and seeds behind FID and accuracy", None),
)]

QUALITY_COLUMNS = ("judge_ppl", "word_validity", "distinct_2", "repetition", "char_entropy")
DISTANCE_COLUMNS = ("ngram_js", "ngram_floor")

FRONTIER_COLUMNS = [
    *[Column(*c) for c in (
        ("run", "run", "run directory", None),
        ("temperature", "T", "temperature of the token draw (the run's default sampler and steps)", None),
        ("judge_ppl", "judge ppl", "per-character perplexity under the evaluation judge; lower is better", "low"),
        ("char_entropy", "char entropy", "bits per character of the samples' character distribution", None),
        ("word_validity", "word validity", "share of generated words found in the training split", "high"))],
    *[c for c in TEXT_COLUMNS if c.key in DISTANCE_COLUMNS],
    Column("samples", "samples", "samples behind the point", None),
]


GUIDANCE_TEXT_COLUMNS = [Column(*c) for c in (
    ("w", "w", "guidance scale: 0 unconditional, 1 plain conditional, above 1 sharper", None),
    ("accuracy", "speaker accuracy", "share of samples the speaker judge assigns the speaker asked for", "high"),
    ("judge_ppl", "judge ppl", "per-character perplexity under the evaluation judge (as in the sweep); lower is "
                               "better", "low"),
    ("ppl_ratio", "ppl / w=0", "judge perplexity against the same run's unguided samples (w = 0)", "low"),
    ("word_validity", "word validity", "share of generated words found in the training split", "high"),
    ("distinct_2", "distinct-2", "distinct word bigrams / all word bigrams (diversity)", "high"),
    ("speed", "chars/s", "generated characters per second (classifier-free guidance doubles the batch; a "
                         "classifier adds its own pass)", "high"),
    ("samples", "samples", "samples behind the point, over all speakers", None),
)]

GUIDANCE_IMAGE_COLUMNS = [Column(*c) for c in (
    ("w", "w", "guidance scale: 0 unconditional, 1 plain conditional, above 1 sharper", None),
    ("accuracy", "class accuracy", "share of samples the evaluation classifier assigns the digit asked for", "high"),
    ("fid", "FID", "Fréchet distance in the evaluation classifier's features; lower is better (biased up at "
                   "small sample counts)", "low"),
    ("speed", "images/s", "images drawn per second", "high"),
    ("samples", "samples", "images behind the point, the digits in turn", None),
)]


RULES_SHOWN = {"free": "classifier-free guidance"}  # a curve's rule as its line names it


def guidance_columns(curve: GuidanceCurve) -> list[Column]:
    return GUIDANCE_TEXT_COLUMNS if curve.kind == "text" else GUIDANCE_IMAGE_COLUMNS


def guidance_rows(curve: GuidanceCurve, run_id: int = 0) -> list[Row]:
    """A row per scale of one curve (text or image columns, as :func:`guidance_columns`)."""
    base = next((p for p in curve.points if p.w == 0.0), None)
    rows = []
    for p in curve.points:
        cells = {"w": Cell(f"{p.w:g}", p.w, f"rule: {curve.rule}"),
                 "accuracy": Cell(_fmt(p.accuracy), p.accuracy, f"chance {_fmt(curve.chance)}"),
                 "samples": Cell(f"{p.samples:,}", p.samples, f"seed {p.seed}")}
        if curve.kind == "text":
            ratio = p.judge_ppl / base.judge_ppl if base and _num(p.judge_ppl) and _num(base.judge_ppl) else None
            cells |= {"judge_ppl": Cell(_fmt(p.judge_ppl), p.judge_ppl), "ppl_ratio": Cell(_fmt(ratio, 2), ratio),
                      "word_validity": Cell(_fmt(p.word_validity), p.word_validity),
                      "distinct_2": Cell(_fmt(p.distinct_2), p.distinct_2),
                      "speed": Cell(_fmt(p.chars_per_s, 0), p.chars_per_s, f"{p.length} tokens per sample")}
        else:
            cells |= {"fid": Cell(_fmt(p.fid), p.fid),
                      "speed": Cell(_fmt(p.images_per_s, 1), p.images_per_s, f"{p.sampler} {p.steps} steps")}
        rows.append(Row(run_id, cells, None))
    return rows


def guidance_line(run: RunRecord, curve: GuidanceCurve) -> str:
    """What a curve is, said with its table: the run, the rule, the labels and the scale line."""
    ref = f"{_fmt(curve.reference_accuracy)}" if _num(curve.reference_accuracy) is not None else NA
    what = "speakers" if curve.kind == "text" else "classes"
    return (f"{run.name}, {RULES_SHOWN.get(curve.rule, curve.rule)}, {len(curve.labels)} {what} (chance "
            f"{_fmt(curve.chance)}): {curve.reference_what}: accuracy {ref}.")


def _common_cells(run: RunRecord) -> dict[str, Cell]:
    """The cells text and image tables share."""
    params, val, speed = run.parameters, run.val, run.train_speed.value
    return {
        "run": Cell(run.name, run.name, run.path),
        "preset": Cell(run.preset, run.preset),
        "parameters": Cell(f"{params:,}" if params else NA, params),
        "val": Cell(_val_text(val), val.value if val else None, _val_title(val)),
        "train_speed": Cell(_fmt(speed, 0), speed),
    }


def distance_cells(point: SweepPoint | FrontierPoint | None) -> dict[str, Cell]:
    """The n-gram distance and its real-text floor, blank when the point has none."""
    d = point.distance if point is not None else None
    if d is None:
        return {key: Cell(NA, None) for key in DISTANCE_COLUMNS}
    of = f" (the first {d.texts} of {d.texts_of} samples)" if d.texts < d.texts_of else ""
    return {"ngram_js": Cell(_fmt(d.js_bits), d.js_bits, f"excess over real text {_fmt(d.excess)}; orders "
                                                          f"{', '.join(map(str, d.orders))}; {d.chars:,} chars{of}"),
            "ngram_floor": Cell(_fmt(d.floor_bits), d.floor_bits, f"a second slice of {d.chars:,} held-out chars")}


def _quality_cells(q: SweepPoint | None, ref: Reference | None, device: str) -> dict[str, Cell]:
    """The text table's sample columns, from the default sweep point (blank when there is none)."""
    if q is None:
        return {"nfe": Cell(NA, None), "sample_speed": Cell(NA, None),
                **{key: Cell(NA, None) for key in (*QUALITY_COLUMNS, *DISTANCE_COLUMNS)}}
    cells = {"nfe": Cell(_fmt(q.nfe, 1), q.nfe, f"sampler {q.sampler}, {q.steps} steps"),
             "sample_speed": Cell(_fmt(q.sample_chars_per_s, 0), q.sample_chars_per_s,
                                  f"batch of {q.n} on {device}")}
    for key in QUALITY_COLUMNS:
        value, real = getattr(q.quality, key), getattr(ref.quality, key) if ref else None
        cells[key] = Cell(_fmt(value), value, f"real text: {_fmt(real)}" if real is not None else "")
    return cells | distance_cells(q)


def _exact_cells(run: RunRecord, ar: RunRecord | None) -> dict[str, Cell]:
    """The exact NLL (named by its sampler where it is not the method's own) and the ratio to ar's exact one."""
    exact = run.exact
    text = NA if exact is None else f"{exact.value:.3f}" + (f" ({exact.sampler})" if exact.sampler else "")
    mine = exact or run.val
    base = ar.exact if ar is not None else None
    ratio = mine.value / base.value if mine is not None and base is not None and base.value > 0 else None
    tip = "" if ratio is None or mine is None else \
        f"{'exact' if mine.kind == 'exact' else 'bound'} over {ar.name if ar else 'ar'}'s exact"
    return {"exact": Cell(text, exact.value if exact else None, _val_title(exact) if exact else "no exact number"),
            "vs_ar": Cell(_fmt(ratio, 3), ratio, tip)}


def text_row(run: RunRecord, run_id: int = 0, ar: RunRecord | None = None) -> Row:
    """A text run's row; ``ar`` is the run the × ar column divides by (None: the column is blank)."""
    res = run.text_results
    q = default_point(run)
    provenance = (Cell(f"{q.n} × {q.seeds}", q.n,
                       f"compare (default steps): {q.n} samples of {q.length} characters, {q.seeds} seed")
                  if q else Cell(NA, None, run.eval_note or ""))
    cells = {**_common_cells(run), "method": Cell(run.method, run.method), "step": _steps_cell(run),
             **_quality_cells(q, res.reference if res else None, res.device_measured if res else "?"),
             **_exact_cells(run, ar), "provenance": provenance}
    return Row(run_id, cells, run.val.kind if run.val else None)


def _steps_cell(run: RunRecord) -> Cell:
    """The training steps a text run cost: its own, and with the run it started from (train.init_from) the
    source's too, so a run from ar is not shown cheaper than it was."""
    own = Cell(f"{run.step:,}", run.step, f"of {run.train_steps} configured")
    if run.init is None or run.init.cost_steps is None:
        return own
    total = run.step + run.init.cost_steps
    return Cell(f"{total:,} ({run.step:,} own)", total, f"{run.step:,} of its own after {run.init.cost_steps:,} "
                f"behind the weights it started from ({run.init.run})")


def image_row(run: RunRecord, run_id: int = 0) -> Row:
    ev = run.image_eval
    ms = ev.seconds_per_image * 1000 if ev and ev.seconds_per_image else None
    sampler = (Cell(f"{ev.sampler or NA} {ev.steps if ev.steps is not None else ''}".strip(), ev.steps,
                    f"eta {ev.eta}, guidance {ev.guidance}") if ev else Cell(NA, None))
    cells = {**_common_cells(run), "step": Cell(f"{run.step:,}", run.step),
             "fid": Cell(_fmt(ev and ev.fid), ev and ev.fid, run.eval_note or "eval.json"),
             "class_accuracy": Cell(_fmt(ev and ev.class_accuracy), ev and ev.class_accuracy),
             "eval_sampler": sampler, "sample_speed": Cell(_fmt(ms, 1), ms),
             "provenance": Cell(f"{ev.samples} × 1" if ev else NA, ev and ev.samples)}
    return Row(run_id, cells, run.val.kind if run.val else None)


def _rows(c: Comparison, text: bool) -> list[Row]:
    if not text:
        return [image_row(r, i) for i, r in enumerate(c.runs) if not r.is_text]
    ar = next((r for r in c.runs if r.is_text and r.val is not None and r.val.kind == "exact"), None)
    return [text_row(r, i, ar) for i, r in enumerate(c.runs) if r.is_text]


# ---- markdown ---------------------------------------------------------------------------------------------
def _md_table(columns: list[Column], rows: list[Row], left_aligned: int = LEFT_ALIGNED) -> list[str]:
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---" if i < left_aligned else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        cells = []
        for col in columns:
            text = row.cells[col.key].text
            if col.key == "val" and row.val_kind:
                text += f" ({row.val_kind})"
            cells.append(text.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_sweep(c: Comparison) -> list[str]:
    lines = ["### Quality vs sampling steps", "", sweep_line(c), "",
             "| run | steps | NFE | judge ppl | word validity | distinct-2 | n-gram JS (floor) | sample chars/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in c.text_runs:
        res = r.text_results
        for p in res.sweep if res else []:
            mark = " (default)" if p.default else ""
            q = p.quality
            d = distance_cells(p)
            lines.append(f"| {r.name} | {p.steps}{mark} | {_fmt(p.nfe, 1)} | {_fmt(q.judge_ppl)} | "
                         f"{_fmt(q.word_validity)} | {_fmt(q.distinct_2)} | {d['ngram_js'].text} "
                         f"({d['ngram_floor'].text}) | {_fmt(p.sample_chars_per_s, 0)} |")
        for sk in res.sweep_skipped if res else []:
            lines.append(f"| {r.name} | {sk.steps} | — | skipped: {sk.why} | | | | |")
    return lines


def frontier_rows(c: Comparison) -> list[Row]:
    """A row per run and temperature, then real held-out text's own row per distinct reference (blank T)."""
    rows, refs = [], {}
    for i, r in enumerate(c.runs):
        res = r.text_results
        for p in res.frontier if res else []:
            q = p.quality
            cells = {"run": Cell(r.name, r.name, r.path),
                     "temperature": Cell(f"{p.temperature:g}", p.temperature, f"{p.sampler}, {p.steps} steps"),
                     "judge_ppl": Cell(_fmt(q.judge_ppl), q.judge_ppl),
                     "char_entropy": Cell(_fmt(q.char_entropy), q.char_entropy),
                     "word_validity": Cell(_fmt(q.word_validity), q.word_validity),
                     **distance_cells(p), "samples": Cell(f"{p.n:,}", p.n, f"seed {p.seed}, {p.seconds:.1f} s")}
            rows.append(Row(i, cells, None))
        if res and res.frontier:
            refs.setdefault(json.dumps(res.reference.to_json(), sort_keys=True), (i, res.reference))
    for i, ref in refs.values():
        q = ref.quality
        what = f"{q.words:,} words of held-out windows of {ref.chars} characters"
        cells = {"run": Cell("real text", "real text", what), "temperature": Cell(NA, None),
                 "judge_ppl": Cell(_fmt(q.judge_ppl), q.judge_ppl),
                 "char_entropy": Cell(_fmt(q.char_entropy), q.char_entropy),
                 "word_validity": Cell(_fmt(q.word_validity), q.word_validity),
                 **{key: Cell(NA, None) for key in DISTANCE_COLUMNS}, "samples": Cell(NA, None)}
        rows.append(Row(i, cells, None))
    return rows


def _md_frontier(c: Comparison) -> list[str]:
    if not any(r.text_results and r.text_results.frontier for r in c.runs):
        return []
    return [f"## {FRONTIER_TITLE}", "", FRONTIER_NOTE, "", *_md_table(FRONTIER_COLUMNS, frontier_rows(c), 1), ""]


def _md_guidance(c: Comparison) -> list[str]:
    """A table per guidance curve, text runs first."""
    curves = [(r, curve) for r in (*c.text_runs, *c.image_runs) for curve in r.guidance]
    if not curves:
        return []
    lines = [f"## {GUIDANCE_TITLE}", "", GUIDANCE_NOTE]
    for r, curve in curves:
        lines += ["", guidance_line(r, curve), "",
                  *_md_table(guidance_columns(curve), guidance_rows(curve), left_aligned=0)]
    return [*lines, ""]


def _md_text_section(c: Comparison) -> list[str]:
    lines = ["## Text runs", "", *_md_table(TEXT_COLUMNS, _rows(c, text=True))]
    ref = shared_reference(c)
    if ref:
        lines += ["", real_text_line(ref)]
    return [*lines, "", *_md_sweep(c)]


def _init_cost(init: InitRecord) -> str:
    """What training the source run cost, which counts in this run's cost."""
    if init.steps is None:
        return "the source's training cost is not recorded (it has no final.json)"
    seconds = f", {init.cost_elapsed:,.1f} s of training" if init.cost_elapsed is not None else ""
    return f"{init.cost_steps:,} steps{seconds} before this run's own"


def _md_run(r: RunRecord) -> list[str]:
    params = f", {r.parameters:,} parameters" if r.parameters else ""
    lines = [f"### {r.name}", "", f"`{r.path}` — {r.method}, preset {r.preset}, step {r.step:,}{params}.", ""]
    if r.init is not None:
        label = r.init.label()
        total = f" ({r.step + r.init.cost_steps:,} steps in all)" if r.init.cost_steps is not None else ""
        lines += [f"{label[0].upper()}{label[1:]}: {_init_cost(r.init)}{total}.", ""]
    if r.eval_note:
        lines += [f"Note: {r.eval_note}.", ""]
    if r.val is not None and r.val.sampler_note:
        lines += [f"Validation number: {r.val.sampler_note}.", ""]
    if eval_summary(r):
        lines += [f"{eval_summary(r)}.", ""]
    if r.text_results:
        sm, tr = r.text_results.samples, r.text_results.trajectory
        lines += [f"Samples ({sm.sampler}, {sm.steps} steps, seed {sm.seed}):", ""]
        for t in sm.texts:
            lines += ["```text", t, "```", ""]
        lines += [f"Denoising trajectory: {tr.steps_total} steps ({tr.frames_kept} frames kept), played in "
                  "`report.html`.", ""]
    if r.images:
        im = r.images
        lines += [f"![samples of {r.name}]({im.files['grid']})", "",
                  f"![denoising strip of {r.name}]({im.files['strip']})", "",
                  f"{im.n} images, {im.sampler} {im.steps} steps, seed {im.seed}.", ""]
    return lines


def render_markdown(c: Comparison) -> str:
    """``comparison.md``: the tables, the sweep and each run's samples, readable without the page."""
    n = len(c.runs)
    v = c.versions
    out = [f"# Comparison of {n} run{'s' if n != 1 else ''}", "",
           f"Written by `textdiffusion compare` on {c.created} (textdiffusion {v['textdiffusion']}, torch "
           f"{v['torch']}). The page with plots and animations is `report.html` beside this file.",
           "", legend_markdown(), ""]
    if c.text_runs:
        out += _md_text_section(c)
    if c.image_runs:
        out += ["", "## Image runs", "", *_md_table(IMAGE_COLUMNS, _rows(c, text=False))]
    if any(r.guidance for r in c.runs):
        out += ["", *_md_guidance(c)]
    if frontier := _md_frontier(c):
        out += ["", *frontier]
    out += ["", "## Runs", ""]
    for r in c.runs:
        out += _md_run(r)
    out += ["## Settings", "", *(f"- {line}" for line in settings_lines(c)), ""]
    return "\n".join(out)


# ---- html -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HtmlCell:
    text: str
    sort: str  # data-v: what the page's sorting compares ("" sorts last)
    tip: str
    classes: str
    href: str | None = None  # the run column links to the run's card
    tag: str | None = None  # the exact/bound tag


@dataclass(frozen=True)
class HtmlTable:
    id: str
    columns: list[Column]
    rows: list[tuple[int, list[HtmlCell]]]  # (run id, cells)
    left: int = LEFT_ALIGNED  # the first columns, which hold names, are left-aligned


@dataclass(frozen=True)
class GuidanceTable:
    """A guidance curve's table on the page, under its line."""

    line: str
    table: HtmlTable


@dataclass(frozen=True)
class Picture:
    key: str  # "grid" | "strip" | "gif": the page's tests find pictures by it
    caption: str
    src: str  # a data URI


@dataclass(frozen=True)
class Card:
    """A run's section of the page."""

    id: int
    run: RunRecord
    facts: str  # path · step · parameters · seed
    summary: str | None  # the eval.json quote
    growth: str | None  # how the trajectory unfolds (text runs)
    pictures: list[Picture]
    images_line: str | None


def _sort_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _html_cells(columns: list[Column], row: Row, left: int = LEFT_ALIGNED) -> list[HtmlCell]:
    out = []
    for i, col in enumerate(columns):
        cell = row.cells[col.key]
        classes = ["text"] if i < left else []
        if cell.text == NA:
            classes.append("na")
        out.append(HtmlCell(cell.text, _sort_text(cell.value), cell.tip, " ".join(classes),
                            href=f"#run-{row.run_id}" if col.key == "run" else None,
                            tag=row.val_kind if col.key == "val" else None))
    return out


def _html_table(table_id: str, columns: list[Column], rows: list[Row], left: int = LEFT_ALIGNED) -> HtmlTable:
    return HtmlTable(table_id, columns, [(row.run_id, _html_cells(columns, row, left)) for row in rows], left)


def _guidance_tables(c: Comparison) -> list[GuidanceTable]:
    """A table per guidance curve, text runs first (the charts draw the same points from the page data)."""
    ordered = sorted(enumerate(c.runs), key=lambda item: not item[1].is_text)
    return [GuidanceTable(guidance_line(r, curve),
                          _html_table(f"guidance-{i}-{curve.rule}", guidance_columns(curve),
                                      guidance_rows(curve, i), left=0))
            for i, r in ordered for curve in r.guidance]


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _pictures(run: RunRecord, out: Path) -> list[Picture]:
    im = run.images
    captions = {"grid": "samples" + (", a row per digit" if im.conditional else ""),
                "strip": "denoising: x_t from noise (left) to the sample (right)",
                "gif": "the reverse process, animated"}
    return [Picture(key, caption, _data_uri(out / im.files[key])) for key, caption in captions.items()
            if key in im.files]


def _card(i: int, run: RunRecord, out: Path) -> Card:
    facts = [run.path, f"step {run.step:,}"]
    if run.parameters:
        facts.append(f"{run.parameters:,} parameters")
    if run.seed is not None:
        facts.append(f"seed {run.seed}")
    im = run.images
    images_line = (f"{im.n} images, {im.sampler} {im.steps} steps, seed {im.seed}, "
                   f"{im.seconds_per_image * 1000:.0f} ms per image." if im else None)
    return Card(i, run, " · ".join(facts), eval_summary(run), _growth(run) if run.text_results else None,
                _pictures(run, out) if im else [], images_line)


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no '</' that could close the tag, no HTML comment openers."""
    return to_json(obj, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def _page_data(c: Comparison) -> dict[str, Any]:
    """What the scripts need: curves, sweeps and trajectories (not the pictures, which are inline already)."""
    runs = []
    for i, r in enumerate(c.runs):
        res = r.text_results
        runs.append({"id": i, "name": r.name, "kind": r.kind, "method": r.method,
                     "val_kind": r.val.kind if r.val else None, "curves": r.curves,
                     "curve_val_key": r.curve_val_key, "sweep": [p.to_json() for p in res.sweep] if res else [],
                     "reference": res.reference.to_json() if res else None,
                     "guidance": [curve.to_json() for curve in r.guidance],
                     "frontier": [p.to_json() for p in res.frontier] if res else [],
                     "trajectory": asdict(res.trajectory) if res else None})
    return {"runs": runs, "settings": asdict(c.settings)}


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["inline"] = inline_html
    return env.from_string(web_asset(TEMPLATE))


def render_html(c: Comparison, out: Path) -> str:
    """The page; ``out`` is the folder holding the image runs' pictures (they are inlined)."""
    ref = shared_reference(c)
    return _template().render(
        c=c, legend_title=LEGEND_TITLE, legend_kinds=VAL_KINDS, estimates=f"{ESTIMATES} {DISTANCE_NOTE}",
        sweep_line=sweep_line(c),
        real_text=real_text_line(ref) if ref else None, settings_lines=settings_lines(c),
        text_table=_html_table("text-table", TEXT_COLUMNS, _rows(c, text=True)) if c.text_runs else None,
        image_table=_html_table("image-table", IMAGE_COLUMNS, _rows(c, text=False)) if c.image_runs else None,
        cards=[_card(i, r, out) for i, r in enumerate(c.runs)],
        guidance_title=GUIDANCE_TITLE, guidance_note=GUIDANCE_NOTE, guidance_tables=_guidance_tables(c),
        guidance_kinds=[kind for kind in ("text", "image") if any(r.guidance for r in c.runs if r.kind == kind)],
        frontier_title=FRONTIER_TITLE, frontier_note=FRONTIER_NOTE,
        frontier_table=(_html_table("frontier-table", FRONTIER_COLUMNS, frontier_rows(c), left=1)
                        if any(r.text_results and r.text_results.frontier for r in c.runs) else None),
        # trusted package files and JSON made safe for a script element: inserted as they are
        style=Markup(web_asset("td.css")), scripts=[Markup(web_asset(name)) for name in WEB_ASSETS],
        page_data=Markup(_script_json(_page_data(c))))
