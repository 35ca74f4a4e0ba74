"""Is a small difference between two best NLLs of the repeated-data study real? Retrain and score on more text.

    python benchmarks/confirm_best.py --size 10k --entries ar-d0,masked-joint [--windows 1024] [--runs DIR]

The study (``benchmarks/repeated_data.py``) picks each run's best evaluation on 64 validation windows, the same
windows every time, so a gap of a few hundredths of a nat between two entries may be the luck of those windows
and of picking the lowest of many evaluations. For each entry this script reads the study's run at ``--size``,
finds its best evaluation (ar: its exact NLL; diffusion: the exact NLL of its left-to-right sampler, or its bound
with ``--measure bound``), retrains the run from its own config.json to that step in ``--scratch`` (the same seed,
so the same weights: the evaluation it records at that step is checked against the study's), and scores the EMA
weights on ``--windows`` evenly spread validation windows, window by window. It prints each entry's NLL with its
standard error and every entry's paired difference from the first (same windows), with the z of that difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import repeated_data as study


@dataclass
class Scored:
    """One entry at its best step: the study's number there, the retrained run's, and the per-window NLLs."""

    entry: str
    step: int
    epoch: float
    study_nats: float
    retrained_nats: float | None
    per_window: list[float]  # nats per character of each window

    @property
    def mean(self) -> float:
        return sum(self.per_window) / len(self.per_window)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); the error is NaN for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """The mean of b - a over the same windows, its standard error, and z = mean / error."""
    if len(a) != len(b):
        raise ValueError("paired differences need the same windows")
    mean, err = mean_and_stderr([y - x for x, y in zip(a, b, strict=True)])
    return mean, err, (mean / err if err > 0 else float("nan"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", required=True, help="the study's U, such as 10k")
    p.add_argument("--entries", required=True, help="two or more of the study's entries; differences are to the first")
    p.add_argument("--measure", choices=("exact", "bound"), default="exact", help="a diffusion entry's best by")
    p.add_argument("--windows", type=int, default=1024, help="validation windows scored, evenly spread")
    p.add_argument("--runs", default="runs/repeated-data", help="the study's run folder")
    p.add_argument("--scratch", default="runs/repeated-data-confirm", help="where the runs are retrained")
    args = p.parse_args(argv)
    size = study.parse_size(args.size)
    entries = study.parse_entries(args.entries)
    if len(entries) < 2 or args.windows < 2:
        raise SystemExit("error: name at least two --entries and at least 2 --windows")

    import torch

    from textdiffusion.data.batches import TextData
    from textdiffusion.evaluate import run_corpus
    from textdiffusion.runs import open_run, read_run_config
    from textdiffusion.trainer import Trainer

    torch.set_num_threads(1)
    cmd = "python benchmarks/confirm_best.py " + " ".join(argv if argv is not None else sys.argv[1:])
    scored: list[Scored] = []
    for entry in entries:
        rd = study.run_dir(Path(args.runs), size, entry)
        if not (rd / "config.json").is_file():
            raise SystemExit(f"error: {rd} holds no run; run the study first: python benchmarks/repeated_data.py "
                             f"--sizes {args.size}")
        curve = study.read_curve(rd, entry, size, patience=0)
        exact = not entry.autoregressive and args.measure == "exact"
        best = curve.best(exact)
        if best is None:
            raise SystemExit(f"error: {rd} has no evaluation yet")
        _, _, cfg = read_run_config(rd)
        scratch = Path(args.scratch) / f"U{size}" / entry.name
        if not (scratch / "config.json").is_file():
            Trainer(cfg, scratch, progress=False).train(stop_at=best.step)
        rows = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines() if line.strip()]
        at = [r for r in rows if r.get("step") == best.step and "val_nats" in r]
        key = "val_exact_nats" if exact else "val_nats"
        retrained = at[-1].get(key) if at else None
        run = open_run(scratch, device="cpu")
        data, _, _ = run_corpus(run)
        windows = TextData.tiled_windows(data.val_ids, run.method.window, args.windows)
        score = (run.method.exact_nll if exact else run.method.nll)
        per_window = []
        with torch.no_grad():
            for w in windows.split(1):
                per_window.append(score(run.model, w).nats_per_unit)
        scored.append(Scored(entry.name, best.step, best.epoch, best.exact if exact else best.nats, retrained,
                             per_window))
        print(f"[{entry.name}] step {best.step:,}: study {scored[-1].study_nats:.4f}, retrained "
              f"{'—' if retrained is None else format(retrained, '.4f')}; {len(per_window)} windows "
              f"{scored[-1].mean:.4f}", file=sys.stderr, flush=True)

    lines = [f"Command: `{cmd}`", "",
             f"U = {size:,}; each entry retrained to its best evaluation of the study and scored on {args.windows} "
             f"evenly spread validation windows (nats per character, exact; the difference is paired, window by "
             f"window, to {scored[0].entry}).", "",
             "| entry | best step | epoch | study (64 windows) | retrained, same step | "
             f"{args.windows} windows ± s.e. | difference ± s.e. | z |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scored:
        mean, err = mean_and_stderr(s.per_window)
        diff = "—" if s is scored[0] else "{:+.4f} ± {:.4f} | {:+.1f}".format(*paired(scored[0].per_window,
                                                                                      s.per_window))
        if s is scored[0]:
            diff += " | —"
        again = "—" if s.retrained_nats is None else f"{s.retrained_nats:.4f}"
        lines.append(f"| {s.entry} | {s.step:,} | {s.epoch:.1f} | {s.study_nats:.4f} | {again} | {mean:.4f} ± "
                     f"{err:.4f} | {diff} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
