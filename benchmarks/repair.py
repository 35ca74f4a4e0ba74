"""Repairing corrupted text: held-out text with a fraction p of its characters changed, put back by `uniform`,
`masked`, `block` (B = 4) and `ar`'s noisy-channel decoder, all trained alike; the character error rate after
the repair against before, per p and channel.

    python benchmarks/repair.py [--runs runs/missing-families] [--chars 20000] [--rates 0.05,0.1,0.2]
                                [--only NAME,...] [--finished-only] [--train-only] [--render]

The runs are benchmarks/missing_families.py's (`cpu` preset, 2,000 steps, seed 1337, one thread), in the same
folder, so its `ar`, `masked` and `uniform` are reused and only `block` is trained here, the same way. A
finished run is reused, an interrupted one resumes.

The text: the first ``--chars`` characters of the validation split (the last 10% of the corpus, which no run
trained on), corrupted once per channel and rate with a fixed seed (:mod:`textdiffusion.corruption`): ``uniform``
changes a character into any other, ``keyboard`` into a QWERTY neighbour, the other case or an OCR lookalike.
Every repairer is told the channel and the rate, and repairs the whole text window after window
(:meth:`textdiffusion.api.TextModel.repair`). A cell's errors are kept in ``RUN/repair_score.json`` (keyed by the
weights' step, the text, the channel, the rate and the settings), so a second pass measures only what is new.

Writes benchmarks/results/repair.json, .md (the command beside the table, each target of the issue checked) and
.png (character error rate after the repair against p, one panel per channel).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from missing_families import Entry, finished, log, skip_reason
from missing_families import train as train_entry

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEPS = 2000
NOISE_SEED = 2027  # the corruption's seed: every repairer reads the same noisy text
CHANNELS = ("uniform", "keyboard")


@dataclass(frozen=True)
class Repairer:
    """One row: a run (an entry of missing_families' folder) and the repair settings it is asked with."""

    name: str
    entry: Entry
    settings: dict = field(default_factory=dict)
    what: str = ""


RUNS = {
    "ar": Entry("ar", "ar", what="autoregressive, exact likelihood"),
    "masked": Entry("masked", "masked", what="masked diffusion (MDLM)"),
    "block": Entry("block-4", "block", ("method.block_size=4",), what="block diffusion, B = 4"),
    "uniform": Entry("uniform", "uniform", what="uniform-state diffusion (UDLM/Duo)"),
}
REPAIRERS = [
    Repairer("uniform", RUNS["uniform"], {}, "reverse process from the matched time, one step: the posterior's argmax"),
    Repairer("uniform-8", RUNS["uniform"], {"steps": 8}, "the same, 8 steps: draws between t* and 0, argmax last"),
    Repairer("masked", RUNS["masked"], {}, "mask the rate's share least likely clean, fill them given the channel"),
    Repairer("block", RUNS["block"], {}, "the same, block by block (a block reads the blocks before it)"),
    Repairer("ar", RUNS["ar"], {}, "noisy-channel decoder: log p_ar(y) + log q(x|y), beam 4, 8 candidates"),
]
BY_NAME = {r.name: r for r in REPAIRERS}


@dataclass
class Cell:
    """One repair: a repairer on the text of one channel and rate."""

    channel: str
    rate: float
    errors_before: int
    errors_after: int
    changed: int  # characters the repairer changed
    seconds: float
    chars: int  # the text's length: the denominator of both error rates


@dataclass
class Row:
    repairer: str
    run: str
    what: str
    step: int
    cells: list[Cell]


def noisy_texts(tok, clean: str, rates: list[float]) -> dict[tuple[str, float], str]:
    """The clean text corrupted once per channel and rate, each from its own fixed seed."""
    import torch

    from textdiffusion.corruption import make_channel

    ids = torch.tensor(tok.encode(clean))
    out = {}
    for i, channel in enumerate(CHANNELS):
        for j, rate in enumerate(rates):
            gen = torch.Generator().manual_seed(NOISE_SEED + 100 * i + j)
            noisy, _ = make_channel(channel, rate, tok).corrupt(ids, gen)
            out[channel, rate] = tok.decode(noisy.tolist())
    return out


def cell_key(step: int, chars: int, channel: str, rate: float, settings: dict) -> str:
    extra = " ".join(f"{k}={v}" for k, v in sorted(settings.items()))
    return f"step={step} chars={chars} seed={NOISE_SEED} channel={channel} rate={rate:g} {extra}".strip()


def measure(repairer: Repairer, model, clean: str, noisy: dict[tuple[str, float], str]) -> list[Cell]:
    """Every (channel, rate) cell of one repairer, from the run's cache where it was measured before."""
    from textdiffusion.corruption import character_errors

    cache_file = model.path / "repair_score.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    cells = []
    for (channel, rate), text in noisy.items():
        key = cell_key(model.step, len(clean), channel, rate, repairer.settings)
        if key not in cache:
            log(f"  {repairer.name}: {channel} channel at p = {rate:g}")
            res = model.repair(text, rate=rate, channel=channel, progress=False, **repairer.settings)
            cache[key] = asdict(Cell(channel, rate, character_errors(text, clean), character_errors(res.text, clean),
                                     res.changed, res.seconds, len(clean)))
            cache_file.write_text(json.dumps(cache, indent=1) + "\n")
        cells.append(Cell(**cache[key]))
    return cells


def cell(row: Row, channel: str, rate: float) -> Cell | None:
    return next((c for c in row.cells if c.channel == channel and c.rate == rate), None)


@dataclass
class Target:
    claim: str
    held: bool | None
    measured: str


def targets(rows: list[Row], rate: float = 0.1) -> list[Target]:
    """The issue's: at p = 10%, some diffusion repairer leaves fewer errors than ar's decoder, and fewer than half
    of those it was given; per channel."""
    out = []
    by = {r.repairer: r for r in rows}
    for channel in CHANNELS:
        ar = cell(by["ar"], channel, rate) if "ar" in by else None
        diffusion = [(r.repairer, c) for r in rows if r.repairer != "ar" and (c := cell(r, channel, rate))]
        if ar is None or not diffusion:
            out.append(Target(f"{channel}, p = {rate:g}: a diffusion repairer beats ar", None, "not measured"))
            continue
        name, best = min(diffusion, key=lambda x: x[1].errors_after)
        out.append(Target(f"{channel}, p = {rate:g}: a diffusion repairer leaves fewer errors than ar's decoder",
                          best.errors_after < ar.errors_after,
                          f"best diffusion ({name}) {best.errors_after:,} vs ar {ar.errors_after:,} "
                          f"({best.errors_after / max(1, ar.errors_after):.2f}x)"))
        out.append(Target(f"{channel}, p = {rate:g}: it leaves fewer than half the errors it was given",
                          best.errors_after < best.errors_before / 2,
                          f"{best.errors_after:,} of {best.errors_before:,} "
                          f"({best.errors_after / max(1, best.errors_before):.2f}x)"))
    return out


def markdown(result: dict, rows: list[Row], tgts: list[Target]) -> str:
    rates = result["rates"]
    head = ["repairer", "how"] + [f"{ch} {r:.0%}" for ch in CHANNELS for r in rates]
    lines = [f"```bash\n{result['command']}\n```", "",
             f"Character error rate (errors / characters) of {result['chars']:,} validation characters after the "
             f"repair; the first row is the corrupted text's. Runs: `{result['preset']}` preset, {result['steps']:,} "
             f"steps each. {result['machine']}; {result['date']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = rows[0] if rows else None
    if first is not None:
        before = [f"{c.errors_before / c.chars:.2%}" if (c := cell(first, ch, r)) else "" for ch in CHANNELS
                  for r in rates]
        lines.append("| corrupted | (no repair) | " + " | ".join(before) + " |")
    for row in rows:
        vals = [f"{c.errors_after / c.chars:.2%}" if (c := cell(row, ch, r)) else "" for ch in CHANNELS for r in rates]
        lines.append(f"| {row.repairer} | {row.what} | " + " | ".join(vals) + " |")
    lines += ["", "| target | held | measured |", "|---|---|---|"]
    for t in tgts:
        held = "yes" if t.held else "not measured" if t.held is None else "**no**"
        lines.append(f"| {t.claim} | {held} | {t.measured} |")
    return "\n".join(lines) + "\n"


def picture(result: dict, rows: list[Row], path: Path) -> None:
    """Character error rate after the repair against p, one panel per channel, the corrupted text's as a grey
    line (drawn with pillow)."""
    from PIL import Image, ImageDraw

    rates = result["rates"]
    W, H, pad = 1100, 520, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 10), result["command"], fill="black")
    top_cer = max([c.errors_before / c.chars for r in rows for c in r.cells] +
                  [c.errors_after / c.chars for r in rows for c in r.cells] + [0.01])
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    panel_w = (W - 3 * pad - 160) // 2
    for k, channel in enumerate(CHANNELS):
        x0, y0, x1, y1 = pad + k * (panel_w + pad), 40, pad + k * (panel_w + pad) + panel_w, H - pad
        d.rectangle((x0, y0, x1, y1), outline="black")
        d.text((x0 + 6, y0 + 6), f"{channel} channel", fill="black")
        def px(p: float, x0: int = x0, x1: int = x1, span: float = max(1e-9, max(rates) - min(rates))) -> float:
            return x0 + 20 + (p - min(rates)) / span * (x1 - x0 - 40)

        def py(v: float, y0: int = y0, y1: int = y1) -> float:
            return y1 - v / top_cer * (y1 - y0 - 30)

        for p in rates:
            d.text((px(p) - 10, y1 + 6), f"{p:.0%}", fill="black")
        for v in (top_cer / 4, top_cer / 2, 3 * top_cer / 4, top_cer):
            d.text((x0 - 48, py(v) - 6), f"{v:.1%}", fill="black")
        series = [("corrupted", (170, 170, 170), [cell(rows[0], channel, p) for p in rates], True)] if rows else []
        series += [(r.repairer, colours[i % len(colours)], [cell(r, channel, p) for p in rates], False)
                   for i, r in enumerate(rows)]
        for _, colour, cells, before in series:
            xy = [(px(c.rate), py((c.errors_before if before else c.errors_after) / c.chars)) for c in cells if c]
            if len(xy) > 1:
                d.line(xy, fill=colour, width=2)
            for x, y in xy:
                d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    for i, (name, colour) in enumerate([("corrupted", (170, 170, 170))] +
                                       [(r.repairer, colours[j % len(colours)]) for j, r in enumerate(rows)]):
        d.text((W - 150, 50 + 18 * i), name, fill=colour)
    d.text((pad, H - 24), "x: the fraction p of characters changed; y: character error rate after the repair",
           fill="black")
    img.save(path)


def rows_of(result: dict) -> list[Row]:
    return [Row(**{**r, "cells": [Cell(**c) for c in r["cells"]]}) for r in result["rows"]]


def write_report(result: dict, rows: list[Row], out: Path) -> None:
    tgts = targets(rows)
    result["targets"] = [asdict(t) for t in tgts]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, rows, tgts)
    out.with_suffix(".md").write_text(f"![character error rate after repair]({out.with_suffix('.png').name})\n\n"
                                      f"{text}")
    picture(result, rows, out.with_suffix(".png"))
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/missing-families", help="one run directory per entry, reused")
    p.add_argument("--only", default="", help=f"comma-separated repairers to measure now: {', '.join(BY_NAME)}")
    p.add_argument("--finished-only", action="store_true", help="train nothing; measure the finished runs")
    p.add_argument("--train-only", action="store_true", help="train (or resume) the runs; measure nothing")
    p.add_argument("--preset", default="cpu", help="every run's preset (tiny: a smoke test of the script)")
    p.add_argument("--steps", type=int, default=STEPS, help="every run's training steps")
    p.add_argument("--chars", type=int, default=20_000, help="validation characters corrupted and repaired")
    p.add_argument("--rates", default="0.05,0.1,0.2", help="the fractions p of characters changed")
    p.add_argument("--out", default=str(RESULTS / "repair"), help="results stem (.json, .md, .png)")
    p.add_argument("--render", action="store_true", help="rewrite the .md and .png from the .json; measure nothing")
    args = p.parse_args()
    out = Path(args.out)
    if args.render:
        result = json.loads(out.with_suffix(".json").read_text())
        write_report(result, rows_of(result), out)
        return
    only = [n for n in args.only.split(",") if n]
    if unknown := [n for n in only if n not in BY_NAME]:
        raise SystemExit(f"error: --only {','.join(unknown)}: no such repairer; the repairers are "
                         f"{', '.join(BY_NAME)}")
    rates = [float(x) for x in args.rates.split(",") if x]
    cmd = " ".join(["python benchmarks/repair.py", *sys.argv[1:]])
    runs = Path(args.runs)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    todo = [r for r in REPAIRERS if not only or r.name in only]
    entries = {r.entry.name: r.entry for r in todo}
    ready: dict[str, Entry] = {}
    for entry in entries.values():
        reason = skip_reason(entry, set())
        if reason is None and args.finished_only and not finished(runs / entry.name):
            reason = "not finished (--finished-only)"
        if reason is not None:
            print(f"skipping {entry.name}: {reason}", flush=True)
            continue
        train_entry(entry, runs, args)
        ready[entry.name] = entry
    if args.train_only:
        return
    from common import machine
    from textdiffusion.api import load
    from textdiffusion.evaluate import run_corpus

    models = {name: load(runs / name, device="cpu") for name in ready}
    if not models:
        raise SystemExit("error: no run to measure; train one first (leave out --finished-only)")
    first = next(iter(models.values()))
    data, text, _ = run_corpus(first.run)
    clean = text[len(data.train_text):][:args.chars]
    noisy = noisy_texts(first.tokenizer, clean, rates)
    rows = []
    for repairer in todo:
        if repairer.entry.name not in models:
            continue
        model = models[repairer.entry.name]
        log(f"repairing with {repairer.name} ({model.path})")
        rows.append(Row(repairer.name, str(model.path), repairer.what, model.step,
                        measure(repairer, model, clean, noisy)))
    session = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = {"command": cmd, "machine": machine(), "date": session, "preset": args.preset, "steps": args.steps,
              "chars": len(clean), "rates": rates, "noise_seed": NOISE_SEED, "rows": [asdict(r) for r in rows]}
    write_report(result, rows, out)


if __name__ == "__main__":
    main()
