"""The recipe search: which way of training a diffusion model comes closest to ``ar`` at equal training compute.

    python benchmarks/recipe_search.py [--budgets 1000,4000] [--recipes all | NAME,...] [--runs runs/recipe-search]

Every (recipe, budget) is a run directory under ``--runs``: a finished one is reused, an unfinished one resumes,
so the script can be stopped and started again, and several copies with different ``--recipes`` can share the
folder (a run is trained by one process at a time). A recipe is either from scratch (the whole budget on the
diffusion method) or from ``ar`` (``ar+...``: an ``ar`` run takes ``--ar-share`` of the budget, 75% by default,
and the diffusion method the rest, started from its weights with ``train --init-from``); the ``ar`` source runs
are shared by every recipe of a budget. Same seed everywhere; one thread per run by default (``--threads``).

Compute is counted in training steps of one batch (``cpu`` preset: 12 windows of 64 characters), the ``ar``
steps behind an adapted run included (final.json's ``total_steps``), and in training FLOPs
(:func:`textdiffusion.precision.transformer_flops_per_token` per token forwarded, times 2 for ``block``, whose
training forward runs the noisy and the clean copy side by side: 2L tokens a window; the joint objective's
second, ar, forward doubles a step's FLOPs again).

Every run is scored on the same validation windows (``--windows``, spread evenly over the split): ``ar`` by its
exact NLL, the diffusion runs by the exact NLL of the left-to-right sampler (``exact_nll``) and by the bound the
method reports (``nll``). The ratio to ``ar`` of the same budget uses the exact NLL where there is one. Writes
benchmarks/results/recipe_search.json, .md and .png (the ratio against compute, one line per recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED = 1337
# what every run shares: the checkpoints the score needs, no mid-run samples, a small final score (this script
# scores every run itself, on its own windows)
COMMON = ("train.eval_every=500", "train.sample_every_eval=false", "train.final_eval_windows=64")


@dataclass(frozen=True)
class Recipe:
    """One way to spend a budget: the method and its settings, from scratch or after an ``ar`` run."""

    name: str
    method: str
    sets: tuple[str, ...] = ()
    from_ar: bool = False  # ar trains --ar-share of the budget first, this method the rest from its weights
    anneal_share: float = 0.0  # anneal the attention over this share of the method's own steps
    autoregressive: bool = False  # B = 1 or ar itself: listed, never the best diffusion recipe

    def steps(self, budget: int, ar_share: float) -> tuple[int, int]:
        """(ar steps before it, its own steps) for a budget of total steps."""
        if not self.from_ar:
            return 0, budget
        before = round(budget * ar_share)
        return before, budget - before

    def settings(self, own: int) -> list[str]:
        anneal = [f"method.anneal_steps={max(1, int(own * self.anneal_share))}"] if self.anneal_share else []
        return [*self.sets, *anneal]


COUNT, SHIFT = "method.estimator=count", "method.shift=true"
RECIPES = [
    Recipe("ar", "ar", autoregressive=True),
    Recipe("masked", "masked"),
    Recipe("masked-count", "masked", (COUNT,)),
    Recipe("block4", "block", ("method.block_size=4",)),
    Recipe("block4-count", "block", ("method.block_size=4", COUNT)),
    Recipe("ar+masked-count", "masked", (COUNT,), from_ar=True),
    Recipe("ar+masked-count-shift", "masked", (COUNT, SHIFT), from_ar=True),
    Recipe("ar+masked-count-shift-anneal", "masked", (COUNT, SHIFT), from_ar=True, anneal_share=0.5),
    Recipe("ar+block4", "block", ("method.block_size=4",), from_ar=True),
    Recipe("ar+block4-count", "block", ("method.block_size=4", COUNT), from_ar=True),
    Recipe("ar+block4-count-clip", "block", ("method.block_size=4", COUNT, "method.clip_low=0.5"), from_ar=True),
    Recipe("ar+block4-count-shift", "block", ("method.block_size=4", COUNT, SHIFT), from_ar=True),
    Recipe("ar+block4-count-shift-anneal", "block", ("method.block_size=4", COUNT, SHIFT), from_ar=True,
           anneal_share=0.5),
    Recipe("ar+block2-count-shift", "block", ("method.block_size=2", COUNT, SHIFT), from_ar=True),
    Recipe("ar+block8-count-shift", "block", ("method.block_size=8", COUNT, SHIFT), from_ar=True),
    Recipe("ar+block2-count", "block", ("method.block_size=2", COUNT), from_ar=True),
    Recipe("ar+block8-count", "block", ("method.block_size=8", COUNT), from_ar=True),
    Recipe("ar+masked-count-shift-joint", "masked", (COUNT, SHIFT, "method.ar_weight=1.0"), from_ar=True),
    Recipe("ar+block4-count-shift-joint", "block", ("method.block_size=4", COUNT, SHIFT, "method.ar_weight=1.0"),
           from_ar=True),
    Recipe("ar+block1-count-shift", "block", ("method.block_size=1", COUNT, SHIFT), from_ar=True,
           autoregressive=True),
]
BY_NAME = {r.name: r for r in RECIPES}


@dataclass
class Row:
    """One (recipe, budget): its cost and its scores on the shared windows."""

    recipe: str
    budget: int
    run: str
    ar_steps: int
    own_steps: int
    total_steps: int
    train_flops: float
    exact_nats: float | None
    bound_nats: float | None
    nll_nats: float  # exact where the method has one, else the bound
    ratio: float | None = None  # nll_nats / ar's exact NLL at this budget
    train_s: float | None = None  # training seconds, the ar part's included (measured under load)
    score_s: dict[str, float] = field(default_factory=dict)
    autoregressive: bool = False


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ar_dir(runs: Path, steps: int) -> Path:
    return runs / f"ar-{steps}"


def run_dir(runs: Path, recipe: Recipe, budget: int) -> Path:
    return ar_dir(runs, budget) if recipe.method == "ar" else runs / f"T{budget}" / recipe.name


def finished(rd: Path, steps: int) -> bool:
    final = rd / "final.json"
    return final.is_file() and json.loads(final.read_text()).get("step") == steps


def check_settings(rd: Path, method: str, sets: list[str], init: Path | None) -> None:
    """A reused run must be the recipe's: same method, settings and source (else the script stops, naming it)."""
    cfg = json.loads((rd / "config.json").read_text())["config"]
    wrong = [] if cfg["method"]["name"] == method else [f"method={cfg['method']['name']}"]
    for s in sets:
        key, value = s.split("=", 1)
        section, name = key.split(".", 1)
        have = cfg[section].get(name)
        if str(have).lower() != value.lower() and not (isinstance(have, float) and have == float(value)):
            wrong.append(f"{key}={have}")
    if init is not None and Path(cfg["train"]["init_from"]).resolve() != init.resolve():
        wrong.append(f"train.init_from={cfg['train']['init_from']}")
    if wrong:
        raise SystemExit(f"error: {rd} was trained with other settings ({', '.join(wrong)}); delete it or pass "
                         f"another --runs folder")


def wait_for_other_trainer(rd: Path) -> None:
    """When another copy of this script trains ``rd`` now, wait for it to finish (then the run is reused)."""
    from textdiffusion.run_lock import training_pid

    pid = training_pid(rd)
    if pid is not None:
        log(f"waiting for process {pid}, which trains {rd}")
    while training_pid(rd) is not None:
        time.sleep(10)


def train(rd: Path, method: str, steps: int, sets: list[str], threads: int, init: Path | None = None) -> None:
    """Train (or resume, or reuse) one run in a child process."""
    sets = [*COMMON, f"train.threads={threads}", *sets]
    wait_for_other_trainer(rd)
    if finished(rd, steps):
        check_settings(rd, method, sets, init)
        return
    if (rd / "checkpoint.safetensors").is_file():
        check_settings(rd, method, sets, init)
        cmd = ["train", "--resume", str(rd), "--no-progress"]
    else:
        cmd = ["train", "--method", method, "--preset", "cpu", "--steps", str(steps), "--run-dir", str(rd),
               "--seed", str(SEED), "--no-progress", *(["--init-from", str(init)] if init else []), "--set", *sets]
    rd.parent.mkdir(parents=True, exist_ok=True)
    log(f"training {rd} ({method}, {steps} steps{f', from {init}' if init else ''})")
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "textdiffusion", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"error: training {rd} failed (command: textdiffusion {' '.join(cmd)})")
    log(f"  done in {time.perf_counter() - tic:.0f} s")


def score(rd: Path, windows_n: int) -> dict:
    """The run's exact NLL (and bound, for diffusion) on ``windows_n`` evenly spread validation windows, kept in
    RUN/recipe_score.json so a second pass reads it back."""
    cache = rd / "recipe_score.json"
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("windows") == windows_n:
            return got
    import torch

    from textdiffusion.data.batches import TextData
    from textdiffusion.evaluate import run_corpus
    from textdiffusion.precision import transformer_flops_per_token
    from textdiffusion.runs import open_run

    torch.set_num_threads(1)
    run = open_run(rd, device="cpu")
    data, _, _ = run_corpus(run)
    windows = TextData.tiled_windows(data.val_ids, run.method.window, windows_n)
    out: dict = {"windows": int(windows.shape[0]), "seconds": {}}
    tic = time.perf_counter()
    if run.method.likelihood_kind == "exact":
        out["exact_nats"], out["bound_nats"] = run.method.nll(run.model, windows).nats_per_unit, None
        out["seconds"]["exact"] = time.perf_counter() - tic
    else:
        out["exact_nats"] = run.method.exact_nll(run.model, windows).nats_per_unit
        out["seconds"]["exact"] = time.perf_counter() - tic
        tic = time.perf_counter()
        out["bound_nats"] = run.method.nll(run.model, windows).nats_per_unit
        out["seconds"]["bound"] = time.perf_counter() - tic
    m, t = run.cfg.model, run.cfg.train
    params = sum(p.numel() for p in run.model.parameters())
    tokens_per_step = t.batch_size * t.grad_accum * m.context
    # the joint objective runs a second (ar) forward of the same layout every step
    passes = 2 if getattr(run.cfg.method, "ar_weight", 0.0) > 0 else 1
    out["flops_per_step"] = (passes * run.method.forward_tokens_per_unit * tokens_per_step
                             * transformer_flops_per_token(params, m.n_layer, m.n_embd, m.context))
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def measure(recipe: Recipe, budget: int, runs: Path, windows: int, ar_share: float, threads: int) -> Row:
    before, own = recipe.steps(budget, ar_share)
    source = ar_dir(runs, before) if recipe.from_ar else None
    if source is not None:
        train(source, "ar", before, [], threads)
    rd = run_dir(runs, recipe, budget)
    train(rd, recipe.method, own, recipe.settings(own), threads, source)
    s = score(rd, windows)
    final = json.loads((rd / "final.json").read_text())
    total = final.get("total_steps", final["step"])
    train_s = final.get("total_elapsed", final["elapsed"])
    flops = s["flops_per_step"] * own
    if source is not None:
        flops += score(source, windows)["flops_per_step"] * before
    nll = s["exact_nats"] if s["exact_nats"] is not None else s["bound_nats"]
    return Row(recipe.name, budget, str(rd), before, own, total, flops, s["exact_nats"], s["bound_nats"], nll,
               train_s=train_s, score_s=s["seconds"], autoregressive=recipe.autoregressive)


def best_rows(rows: list[Row]) -> dict[int, Row]:
    """The best diffusion recipe (B >= 2) of every budget."""
    best: dict[int, Row] = {}
    for r in rows:
        if r.autoregressive or r.ratio is None:
            continue
        if r.budget not in best or r.nll_nats < best[r.budget].nll_nats:
            best[r.budget] = r
    return best


def markdown(rows: list[Row], cmd: str, windows: int, ar_share: float) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"Command: `{cmd}`  ", f"{windows} validation windows of 64 characters, evenly spread; seed {SEED}; "
             f"`cpu` preset (batch 12 x 64); `ar+` recipes spend {ar_share:.0%} of the budget on `ar`. Training "
             "seconds were measured on a 2-core machine shared with other jobs: compare steps and FLOPs, not "
             "seconds.", "",
             "| budget | recipe | ar steps + own | total steps | train GFLOPs | exact nats/char | bound nats/char "
             "| ratio to ar |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    best = best_rows(rows)
    for r in sorted(rows, key=lambda r: (r.budget, r.ratio if r.ratio is not None else math.inf)):
        mark = "**" if best.get(r.budget) is r else ""
        ratio = "—" if r.ratio is None else f"{mark}{r.ratio:.3f}x{mark}"
        lines.append(f"| {r.budget:,} | {mark}{r.recipe}{mark}{' (autoregressive)' if r.autoregressive else ''} "
                     f"| {r.ar_steps:,} + {r.own_steps:,} | {r.total_steps:,} | {r.train_flops / 1e9:,.0f} "
                     f"| {fmt(r.exact_nats)} | {fmt(r.bound_nats)} | {ratio} |")
    lines += ["", "Best diffusion recipe (block size >= 2) per budget: " + "; ".join(
        f"{b:,} steps: `{r.recipe}` {r.ratio:.3f}x ar" for b, r in sorted(best.items())) + "."]
    return "\n".join(lines) + "\n"


def picture(rows: list[Row], path: Path, cmd: str) -> None:
    """The ratio to ar against training FLOPs (log scale), one line per recipe, drawn with pillow."""
    from PIL import Image, ImageDraw

    pts = [r for r in rows if r.ratio is not None and r.recipe != "ar"]
    if not pts:
        return
    W, H, left, right, top, bottom = 1100, 640, 70, 300, 40, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [math.log10(r.train_flops) for r in pts]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = 1.0, max(1.1, min(2.0, max(r.ratio for r in pts) + 0.05))
    px = lambda v: left + (math.log10(v) - x0) / (x1 - x0) * (W - left - right)  # noqa: E731
    py = lambda v: top + (y1 - min(v, y1)) / (y1 - y0) * (H - top - bottom)  # noqa: E731
    d.rectangle((left, top, W - right, H - bottom), outline="black")
    for k in range(11):
        v = y0 + (y1 - y0) * k / 10
        d.line((left - 4, py(v), left, py(v)), fill="black")
        d.text((8, py(v) - 6), f"{v:.2f}x", fill="black")
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if x0 <= math.log10(v) <= x1:
                d.line((px(v), H - bottom, px(v), H - bottom + 4), fill="black")
                d.text((px(v) - 14, H - bottom + 8), f"{v / 1e12:g}T" if v >= 1e12 else f"{v / 1e9:g}G",
                       fill="black")
    d.line((left, py(1.10), W - right, py(1.10)), fill=(200, 200, 200))
    d.text((left + 4, py(1.10) - 14), "target 1.10x", fill=(120, 120, 120))
    d.text((left, H - bottom + 28), "training FLOPs (ar part included), log scale; y: NLL / ar's exact NLL",
           fill="black")
    d.text((left, 12), f"recipe search: {cmd}", fill="black")
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 0, 0),
               (0, 100, 0), (255, 0, 255), (0, 0, 0), (170, 110, 40), (0, 128, 128), (128, 128, 0)]
    names = sorted({r.recipe for r in pts}, key=lambda n: min(r.ratio for r in pts if r.recipe == n))
    for i, name in enumerate(names):
        colour = colours[i % len(colours)]
        line = sorted((r for r in pts if r.recipe == name), key=lambda r: r.train_flops)
        xy = [(px(r.train_flops), py(r.ratio)) for r in line]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2 if i < len(colours) else 1)
        for x, y in xy:
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        d.text((W - right + 12, top + 16 * i), f"{name}", fill=colour)
    img.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="1000,4000", help="total training steps, comma-separated")
    p.add_argument("--recipes", default="all", help=f"comma-separated, or all: {', '.join(BY_NAME)}")
    p.add_argument("--runs", default="runs/recipe-search", help="the run directories, reused when finished")
    p.add_argument("--windows", type=int, default=256, help="validation windows every run is scored on")
    p.add_argument("--ar-share", type=float, default=0.75, help="share of an ar+ recipe's budget spent on ar")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--out", default=str(RESULTS / "recipe_search"), help="results stem (.json, .md, .png)")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: table the (recipe, budget) runs already finished under --runs")
    args = p.parse_args()
    cmd = "python benchmarks/recipe_search.py " + " ".join(sys.argv[1:])
    names = list(BY_NAME) if args.recipes == "all" else args.recipes.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"error: unknown recipe {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    if "ar" not in names:
        names.append("ar")  # every ratio is to ar of the same budget
    budgets = [int(b) for b in args.budgets.split(",")]
    runs = Path(args.runs)
    rows: list[Row] = []
    todo = [(b, BY_NAME[n]) for b in budgets for n in names]
    if args.finished_only:
        todo = [(b, r) for b, r in todo if finished(run_dir(runs, r, b), r.steps(b, args.ar_share)[1])]
    for i, (budget, recipe) in enumerate(todo, 1):
        log(f"({i}/{len(todo)}) {recipe.name} at {budget} steps")
        rows.append(measure(recipe, budget, runs, args.windows, args.ar_share, args.threads))
        r = rows[-1]
        log(f"  exact {r.exact_nats} bound {r.bound_nats}")
    for r in rows:
        ar = next(a for a in rows if a.recipe == "ar" and a.budget == r.budget)
        r.ratio = r.nll_nats / ar.nll_nats
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, cmd, args.windows, args.ar_share)
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "windows": args.windows, "seed": SEED,
                                                    "ar_share": args.ar_share, "rows": [asdict(r) for r in rows]},
                                                   indent=1) + "\n")
    out.with_suffix(".md").write_text(f"![ratio to ar against compute]({out.with_suffix('.png').name})\n\n{text}")
    picture(rows, out.with_suffix(".png"), cmd)
    print(text)


if __name__ == "__main__":
    main()
