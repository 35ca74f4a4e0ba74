"""Infilling: held-out windows with one span blanked, filled by every method that can, against an ar taught to
fill in the middle, at equal training compute.

    python benchmarks/infilling.py [--runs runs/missing-families] [--only NAME,...] [--finished-only]
                                   [--windows 128] [--lengths 1,2,4,8,16,32] [--seed 0]

Every entry is a run directory ``RUNS/NAME`` trained as benchmarks/missing_families.py trains its runs (the `cpu`
preset, 2,000 steps, seed 1337, one thread; the same directory by default, so its ``masked``, ``uniform`` and
``embedding`` runs are reused and only the fill-in-the-middle ``ar`` runs are trained here: ``ar-fim`` with
``method.fim_rate=0.5`` in PSM order, ``ar-fim-spm`` and ``ar-fim-both`` the same in SPM order and in both, and
``ar-fim-spm-0.9`` SPM at the paper's rate 0.9). A finished run is reused, an interrupted one resumes. Then, for
each span length m: ``--windows`` validation windows (one context each, tiled over the split), each with m
characters from a position drawn uniformly (seed ``--seed`` + m) blanked, and per method

* the fill: one infill request per window (the method's default sampler and steps, temperature 1, a seed per
  window), scored by exact match of the span and the share of its characters right;
* the span NLL: -log p(true span | both sides) per character (``span_nll``), labelled exact (the FIM ar; masked's
  left_to_right sampler) or bound (uniform's NELBO restricted to the span), empty where a method has none;
* the judge: perplexity of the whole filled window under the training split's character 5-gram, beside the real
  windows' own.

Each run's scores are kept per span length in ``RUN/infilling_score.json`` (keyed by its weights' step and the
settings), so an interrupted pass resumes and a second one only re-renders. Writes benchmarks/results/infilling.json,
.md (the command beside every table) and .png (exact match and span NLL against span length).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from missing_families import SEED, STEPS, Entry, log, pick_entries, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LENGTHS = (1, 2, 4, 8, 16, 32)
BLANK = "\u2588"  # the placeholder: a character no corpus here holds
FIM_RATE = 0.5

ENTRIES = [
    Entry("ar-fim", "ar", (f"method.fim_rate={FIM_RATE}",), what="ar trained with fill-in-the-middle on half its "
                                                               "windows"),
    Entry("ar-fim-spm", "ar", (f"method.fim_rate={FIM_RATE}", "method.fim_mode=spm"),
          what="the same in SPM order: the middle continues the prefix"),
    Entry("ar-fim-both", "ar", (f"method.fim_rate={FIM_RATE}", "method.fim_mode=both"),
          what="the same, each window PSM or SPM (the paper's joint training; infills as SPM)"),
    Entry("ar-fim-spm-0.9", "ar", ("method.fim_rate=0.9", "method.fim_mode=spm"),
          what="SPM on 90% of the windows (the paper's rate)"),
    Entry("masked", "masked", what="masked diffusion (MDLM)"),
    Entry("uniform", "uniform", what="uniform-state diffusion (UDLM)"),
    Entry("embedding", "embedding", what="Gaussian diffusion on embeddings (Diffusion-LM)"),
]
BY_NAME = {e.name: e for e in ENTRIES}
DIFFUSION = ("masked", "uniform", "embedding")
FIM_ARS = tuple(e.name for e in ENTRIES if e.method == "ar")  # the rivals; a target is met against the best of them
TARGET_FROM = 8  # the target: spans of 8+ characters


@dataclass
class SpanScore:
    """One method at one span length: how its fills match the truth, its span NLL and the judge's view."""

    entry: str
    span: int
    windows: int
    exact_match: float  # share of windows whose span was filled exactly
    char_accuracy: float  # share of the span's characters filled right
    span_bits: float | None  # -log2 p(span | both sides) per character; None where the method has none
    span_kind: str  # "exact" | "bound" | "" (none: ``span_note`` says why)
    judge_ppl: float  # the training split's 5-gram judge on the whole filled windows
    seconds: float  # filling all windows (on a shared machine: ratios only)
    span_note: str = ""
    example: str = ""  # the first window's fill, the blank's characters in brackets
    left_bits: float | None = None  # a FIM ar's -log2 p(span | left side only) per character, the same network


def blanked(windows, length: int, seed: int):
    """Each window's span of ``length`` positions from a start drawn uniformly (a generator of ``seed``)."""
    import torch

    from textdiffusion.methods.spans import span_mask

    n, L = windows.shape
    starts = torch.randint(0, L - length + 1, (n,), generator=torch.Generator().manual_seed(seed))
    return span_mask(starts, length, L)


def match_scores(filled: list[str], truth: list[str], starts: list[int], length: int) -> tuple[float, float]:
    """(exact-match rate, character accuracy) of the spans at ``starts`` in ``filled`` against ``truth``."""
    exact = right = 0
    for f, t, a in zip(filled, truth, starts, strict=True):
        got, want = f[a:a + length], t[a:a + length]
        exact += got == want
        right += sum(g == w for g, w in zip(got, want, strict=False))
    return exact / len(truth), right / (len(truth) * length)


def fill(run, windows, span, seed: int) -> tuple[list[str], float]:
    """One infill request per window, the span blanked: the filled texts and the seconds taken."""
    import torch

    from textdiffusion.methods import SampleRequest

    tok = run.method.tok
    texts = []
    tic = time.perf_counter()
    for i, (w, s) in enumerate(zip(windows, span, strict=True)):
        template = tok.decode(torch.where(s, tok.mask_id, w).tolist(), mask_char=BLANK)
        req = SampleRequest(infill=template, placeholder=BLANK)
        with torch.no_grad():
            out = run.method.sample(run.model, req, torch.Generator().manual_seed(seed * 100_003 + i))
        texts.append(tok.decode(out.ids[0].tolist()))
    return texts, time.perf_counter() - tic


def score_span(entry: str, run, windows, length: int, seed: int, judge) -> SpanScore:
    """Every score of one run at one span length (see the module docstring)."""
    import torch

    from textdiffusion.config import ConfigError

    span = blanked(windows, length, seed + length)
    tok = run.method.tok
    truth = [tok.decode(w.tolist()) for w in windows]
    starts = [int(s.nonzero()[0]) for s in span]
    texts, seconds = fill(run, windows, span, seed + length)
    exact, chars = match_scores(texts, truth, starts, length)
    try:
        with torch.no_grad():
            nll = run.method.span_nll(run.model, windows, span)
        bits, kind, note = nll.nats_per_unit / math.log(2), nll.kind, nll.note
    except ConfigError as e:
        bits, kind, note = None, "", str(e)
    a = starts[0]
    example = f"{texts[0][:a]}[{texts[0][a:a + length]}]{texts[0][a + length:]}"
    return SpanScore(entry, length, len(texts), exact, chars, bits, kind, judge.perplexity(texts), seconds, note,
                     example)


def left_only_bits(run, windows, span) -> float:
    """-log2 p(span | the text before it) per span character under a fill-in-the-middle ar's plain left-to-right
    reading: what its span NLL given both sides should beat, if reading the right side helps it."""
    import torch

    from textdiffusion.diffusion.tokens import cross_entropy_per_token

    method = run.method
    with torch.no_grad():
        ce = cross_entropy_per_token(method._forward(run.model, method._inputs(windows)), windows).double()
    return float((ce * span).sum() / span.sum()) / math.log(2)


def left_to_right(runs: Path, fim_ars: list[str]) -> dict[str, float]:
    """Each FIM ar's final validation NLL (bits/char, exact, plain windows: what FIM training costs left to
    right), beside plain ``ar``'s from the same directory when it is there."""
    from textdiffusion.records import TrainSummary

    out = {}
    for name in ("ar", *fim_ars) if fim_ars else ():
        summary = TrainSummary.read(runs / name)
        if summary is not None and summary.score is not None:
            out[name] = summary.score.bits
    return out


def settings_key(args: argparse.Namespace) -> str:
    return f"preset={args.preset} steps={args.steps} windows={args.windows} seed={args.seed}"


def scores_of(entry: Entry, run, windows, args: argparse.Namespace, judge) -> list[SpanScore]:
    """The run's score at every span length: from RUN/infilling_score.json where it holds them for these weights and
    settings, else measured and added there one length at a time (so an interrupted pass resumes)."""
    cache = Path(run.path) / "infilling_score.json"
    key = f"step={run.step} {settings_key(args)}"
    kept: dict[str, dict] = {}
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            kept = got["spans"]
    out = []
    for length in args.lengths:
        if str(length) not in kept:
            log(f"scoring {entry.name} at span {length}")
            kept[str(length)] = asdict(score_span(entry.name, run, windows, length, args.seed, judge))
            cache.write_text(json.dumps({"key": key, "spans": kept}, indent=1) + "\n")
        if entry.name in FIM_ARS and kept[str(length)].get("left_bits") is None:
            kept[str(length)]["left_bits"] = left_only_bits(run, windows, blanked(windows, length, args.seed + length))
            cache.write_text(json.dumps({"key": key, "spans": kept}, indent=1) + "\n")
        out.append(SpanScore(**kept[str(length)]))
    return out


@dataclass
class Target:
    """The issue's target at one span length: the best diffusion method against the best FIM ar."""

    span: int
    measured: str
    passed: bool | None  # None: not measured


def targets(scores: list[SpanScore]) -> list[Target]:
    """At each span length >= 8: does some diffusion method beat every FIM ar measured, on exact match (the best
    ar's) AND on span NLL (the lowest ar's)? A bound that is below ar's exact NLL counts (the true NLL is lower
    still); a bound above it does not decide, and fails."""
    out = []
    for length in sorted({s.span for s in scores if s.span >= TARGET_FROM}):
        at = {s.entry: s for s in scores if s.span == length}
        ars = [s for name, s in at.items() if name in FIM_ARS]
        rivals = [s for name, s in at.items() if name in DIFFUSION]
        if not ars or not rivals:
            out.append(Target(length, "not measured (every FIM ar or every diffusion method missing)", None))
            continue
        ar_exact = max(ars, key=lambda s: s.exact_match)
        ar_nll = min(ars, key=lambda s: math.inf if s.span_bits is None else s.span_bits)
        winners = [s.entry for s in rivals if s.exact_match > ar_exact.exact_match and s.span_bits is not None
                   and ar_nll.span_bits is not None and s.span_bits < ar_nll.span_bits]
        best = max(rivals, key=lambda s: s.exact_match)
        nll = "" if best.span_bits is None else f", span NLL {best.span_bits:.3f} {best.span_kind}"
        measured = (f"{ar_exact.entry} exact match {ar_exact.exact_match:.1%}, {ar_nll.entry} span NLL "
                    f"{fmt(ar_nll.span_bits, '.3f')} {ar_nll.span_kind}; "
                    f"best diffusion {best.entry} {best.exact_match:.1%}{nll}")
        out.append(Target(length, measured + (f"; beaten by {', '.join(winners)}" if winners else ""), bool(winners)))
    return out


def fmt(v: float | None, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(result: dict, scores: list[SpanScore], tgts: list[Target]) -> str:
    lines = [
        "## Infilling: filling a blank between known text, against an ar that can fill in the middle",
        "",
        f"`{result['command']}`",
        "",
        f"{result['machine']}; {result['date']}. Every run: `{result['preset']}` preset, {result['steps']:,} steps, "
        f"seed {SEED}, one thread (equal training compute; `ar-fim` is `ar` with `method.fim_rate={FIM_RATE}`, in "
        "PSM order; `-spm` in SPM order, `-both` each window either, `-0.9` at `method.fim_rate=0.9`). "
        f"{result['windows']} validation windows of {result['length']} characters, one span blanked per window at "
        f"a uniform position (seed {result['seed']} + span length). Fill: each method's default sampler at "
        "temperature 1, one request per window. Span NLL: bits per span character of the true span given both "
        "sides, exact or a bound (a bound can only overstate). Judge: the training split's 5-gram perplexity of "
        "the whole filled window. Seconds: filling all windows, on a shared machine (ratios only). Left only: a "
        "FIM ar's NLL of the same span from the text before it alone (its plain left-to-right reading), which its "
        "span NLL given both sides should beat.",
    ]
    for length in sorted({s.span for s in scores}):
        real = result["real_judge_ppl"]
        lines += ["", f"### Span of {length} character{'s' if length > 1 else ''}", "",
                  "| method | exact match | char accuracy | span NLL (bits/char) | | left only | judge ppl | seconds |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for s in (s for s in scores if s.span == length):
            lines.append(f"| {s.entry} | {s.exact_match:.1%} | {s.char_accuracy:.1%} | {fmt(s.span_bits, '.3f')} | "
                         f"{s.span_kind or 'none'} | {fmt(s.left_bits, '.3f')} | {s.judge_ppl:.2f} | "
                         f"{s.seconds:,.1f} |")
        lines.append(f"| real text | | | | | | {real:.2f} | |")
    lines += ["", f"Target: some diffusion method beats every FIM `ar` on exact match and span NLL, spans of "
                  f"{TARGET_FROM}+ characters.", "", "| span | measured | |", "|---:|---|---|"]
    for t in tgts:
        verdict = "not measured" if t.passed is None else "pass" if t.passed else "**miss**"
        lines.append(f"| {t.span} | {t.measured} | {verdict} |")
    if result.get("left_to_right"):
        lines += ["", "Left to right: each run's final validation NLL on plain windows (`final.json`, all the split's "
                      "windows, exact), what fill-in-the-middle training costs the ordinary reading.", "",
                  "| run | val bits/char | vs ar |", "|---|---:|---:|"]
        plain = result["left_to_right"].get("ar")
        for name, bits in result["left_to_right"].items():
            lines.append(f"| {name} | {bits:.3f} | {'' if plain is None else format(bits - plain, '+.3f')} |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items()) + "."]
    notes = {s.entry: s.span_note for s in scores if s.span_kind == ""}
    if notes:
        lines += ["", "No span NLL: " + "; ".join(f"{k} ({v})" for k, v in notes.items()) + "."]
    lines += ["", "Examples (first window, longest span; the filled characters in brackets):", ""]
    longest = max(s.span for s in scores)
    lines += [f"- {s.entry}: `{s.example!r}`" for s in scores if s.span == longest]
    return "\n".join(lines) + "\n"


def picture(scores: list[SpanScore], path: Path, cmd: str) -> None:
    """Two panels against span length (log 2): exact match, and span NLL (filled dots exact, hollow bounds)."""
    from PIL import Image, ImageDraw

    if not scores:
        return
    W, H, top, bottom, gap = 1100, 520, 50, 70, 60
    panel = (W - 3 * gap - 140) // 2
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((gap, 12), cmd, fill="black")
    lengths = sorted({s.span for s in scores})
    entries = list(dict.fromkeys(s.entry for s in scores))
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34)]
    x_lo, x_hi = math.log2(lengths[0]) - 0.3, math.log2(lengths[-1]) + 0.3
    bits = [s.span_bits for s in scores if s.span_bits is not None]
    panels = [("exact match of the span", lambda s: s.exact_match, 0.0, 1.0, "{:.0%}"),
              ("span NLL, bits/char (hollow: bound)", lambda s: s.span_bits, 0.0, max(bits, default=1.0) * 1.1,
               "{:.1f}")]
    for k, (title, value, lo, hi, label) in enumerate(panels):
        x0 = gap + k * (panel + gap)
        px = lambda v, x0=x0: x0 + (math.log2(v) - x_lo) / (x_hi - x_lo) * panel  # noqa: E731
        py = lambda v, lo=lo, hi=hi: top + (hi - v) / (hi - lo) * (H - top - bottom)  # noqa: E731
        d.rectangle((x0, top, x0 + panel, H - bottom), outline="black")
        d.text((x0, top - 16), title, fill="black")
        for m in lengths:
            d.line((px(m), H - bottom, px(m), H - bottom + 4), fill="black")
            d.text((px(m) - 4, H - bottom + 8), str(m), fill="black")
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            d.line((x0 - 4, py(v), x0, py(v)), fill="black")
            d.text((x0 - 40, py(v) - 6), label.format(v), fill="black")
        d.text((x0, H - bottom + 28), "span length (characters, log scale)", fill="black")
        for i, name in enumerate(entries):
            colour = colours[i % len(colours)]
            line = [s for s in scores if s.entry == name and value(s) is not None]
            xy = [(px(s.span), py(value(s))) for s in line]
            if len(xy) > 1:
                d.line(xy, fill=colour, width=2)
            for (x, y), s in zip(xy, line, strict=True):
                hollow = k == 1 and s.span_kind == "bound"
                d.ellipse((x - 4, y - 4, x + 4, y + 4), outline=colour, fill="white" if hollow else colour)
    for i, name in enumerate(entries):
        d.text((W - 150, top + 18 * i), name, fill=colours[i % len(colours)])
    img.save(path)


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"error: --lengths {text!r}: give span lengths as whole numbers, e.g. 1,2,4,8") from None
    if not lengths or lengths[0] < 1:
        raise SystemExit(f"error: --lengths {text!r}: every span length must be at least 1")
    return lengths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/missing-families", help="one run directory per entry, reused (those of "
                                                                   "benchmarks/missing_families.py by default)")
    p.add_argument("--only", default="", help=f"comma-separated entries to measure: {', '.join(BY_NAME)}")
    p.add_argument("--finished-only", action="store_true", help="train nothing; measure the finished runs")
    p.add_argument("--preset", default="cpu", help="every run's preset (tiny: a smoke test of the script)")
    p.add_argument("--steps", type=int, default=STEPS, help="every run's training steps")
    p.add_argument("--windows", type=int, default=128, help="validation windows blanked at each span length")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="span lengths, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the span positions and of the fills")
    p.add_argument("--out", default=str(RESULTS / "infilling"), help="results stem (.json, .md, .png)")
    args = p.parse_args()
    args.lengths = parse_lengths(args.lengths)
    if args.windows < 1:
        raise SystemExit(f"error: --windows {args.windows}: score at least one window")
    cmd = " ".join(["python benchmarks/infilling.py", *sys.argv[1:]])
    runs, out = Path(args.runs), Path(args.out)
    todo, skipped = pick_entries(ENTRIES, args.only, runs, args.finished_only)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    args.round_steps = [0]  # no students here (missing_families.train reads it only for them)
    for entry in todo:
        train(entry, runs, args)

    from textdiffusion.data.batches import TextData
    from textdiffusion.evaluate import TrainingReference, run_corpus
    from textdiffusion.runs import open_run

    models = {e.name: open_run(runs / e.name, device="cpu") for e in todo}
    if not models:
        raise SystemExit("error: no run to measure; train one first (leave out --finished-only)")
    first = next(iter(models.values()))
    data, _, _ = run_corpus(first)
    judge = TrainingReference(data.train_text).judge
    length = first.cfg.model.context
    if args.lengths[-1] > length:
        raise SystemExit(f"error: --lengths: a span of {args.lengths[-1]} does not fit a window of {length}")
    windows = TextData.tiled_windows(data.val_ids, length, args.windows)
    scores = [s for e in todo for s in scores_of(e, models[e.name], windows, args, judge)]
    tok = first.method.tok
    real = judge.perplexity([tok.decode(w.tolist()) for w in windows])
    from common import machine

    tgts = targets(scores)
    result = {"command": cmd, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": settings_key(args), "preset": args.preset, "steps": args.steps, "windows": len(windows),
              "length": length, "seed": args.seed, "lengths": args.lengths, "skipped": skipped,
              "real_judge_ppl": real, "scores": [asdict(s) for s in scores], "targets": [asdict(t) for t in tgts],
              "left_to_right": left_to_right(runs, [e.name for e in todo if e.name in FIM_ARS])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, scores, tgts)
    out.with_suffix(".md").write_text(f"![exact match and span NLL against span length]({out.with_suffix('.png').name})"
                                      f"\n\n{text}")
    picture(scores, out.with_suffix(".png"), cmd)
    print(text)


if __name__ == "__main__":
    main()
