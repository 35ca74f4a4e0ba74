"""``textdiffusion compare RUN... --out DIR``: any mix of runs side by side, as a page and as data.

For every run it gathers what is already on disk (config, training curves, the validation number, ``eval.json``)
and measures what a comparison needs and a run does not keep:

* a **quality-vs-speed sweep** for text runs: ``samples`` samples at each sampler step count of ``sweep`` (plus
  the method's default), each scored by the judge of :mod:`textdiffusion.evaluate` and timed. ``ar`` has one
  point: it takes one network evaluation per character whatever the sweep says. Points are cached in
  ``RUN/sweep.json`` keyed by everything that changes them (checkpoint step, samples, length, seed, judge
  corpus), so running ``compare`` again is instant;
* one **denoising trajectory** per text run (the decoded text at every step, thinned to at most
  :data:`MAX_FRAMES` frames), and for image runs a sample grid, a denoising strip and the reverse-process GIF.

It writes ``comparison.json`` (everything, machine-readable), ``comparison.md`` (the tables and samples) and
``report.html`` (one self-contained file: scripts, styles and pictures inline, so it opens from ``file://`` with
no network). Every number carries what it is: the validation number is *exact* (``ar``) or an *upper bound*
(diffusion methods, a Monte-Carlo estimate with its standard error), sample metrics are *estimates* from the
stated number of samples and seeds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from textdiffusion.checkpoint import CheckpointError, read_json, versions, write_json
from textdiffusion.config import ConfigError
from textdiffusion.files import write_text
from textdiffusion.methods.base import SampleRequest

FORMAT = "textdiffusion-comparison/1"
SWEEP_FORMAT = "textdiffusion-sweep/1"
MAX_FRAMES = 240  # trajectory frames kept per run for the page
MAX_SWEEP_STEPS = 100_000
EXAMPLES = 3  # samples shown per run
IMAGE_SAMPLER = {"sampler": "ddim", "steps": 50, "eta": 0.0}  # grid + strip for image runs: seconds on a CPU
IMAGES_PER_CLASS = 4


def parse_sweep(text: str) -> list[int]:
    """``"4,16,64"`` -> [4, 16, 64]; empty -> no sweep (only the default step count)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            steps = int(part)
        except ValueError:
            raise ConfigError(f"--sweep takes comma-separated step counts like 4,16,64; {part!r} is not a "
                              f"whole number") from None
        if not 1 <= steps <= MAX_SWEEP_STEPS:
            raise ConfigError(f"--sweep step counts must be between 1 and {MAX_SWEEP_STEPS:,}; got {steps}")
        out.append(steps)
    return sorted(set(out))


# ---- what a run directory already holds ----------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: the rest is still good
            continue
    return rows


def _optional_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except CheckpointError:
        return None


def _val_entry(value: float | None, kind: str | None, unit: str, source: str, windows: Any = None,
               stderr_nats: float | None = None, details: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if value is None or kind not in ("exact", "bound"):
        return None
    stderr = stderr_nats / math.log(2) if stderr_nats is not None and math.isfinite(stderr_nats) else None
    samples = (details or {}).get("time_samples_per_window") or (details or {}).get("time_samples_per_image")
    what = ("exact negative log-likelihood" if kind == "exact" else
            "upper bound on the negative log-likelihood (NELBO), a Monte-Carlo estimate")
    return {"value": value, "kind": kind, "unit": unit, "stderr": stderr, "windows": windows, "source": source,
            "time_samples": samples, "what": what}


def read_run(path: str | Path) -> dict[str, Any]:
    """Everything ``compare`` needs that is already on disk. Raises a one-line error for a directory that
    is not a run."""
    run = Path(path)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist; pass directories written by "
                              f"`textdiffusion train` (they hold config.json)")
    if not (run / "config.json").exists():
        raise CheckpointError(f"{run} has no config.json, so it is not a run directory; pass directories written "
                              f"by `textdiffusion train`")
    meta = read_json(run / "config.json")
    if "config" not in meta:
        raise CheckpointError(f"{run / 'config.json'} has no 'config' section; it was not written by textdiffusion")
    cfg = meta["config"]
    method = cfg.get("method", {}).get("name", "?")
    image = method == "image"
    final = _optional_json(run / "final.json")
    trainer = _optional_json(run / "trainer.json")
    metrics = _read_jsonl(run / "metrics.jsonl")
    step = (trainer or {}).get("step") or (final or {}).get("step") or (metrics[-1]["step"] if metrics else 0)
    if not (run / "ema.safetensors").exists():
        raise CheckpointError(f"{run} has no ema.safetensors (training never reached its first save); train it "
                              f"longer or leave it out")
    val_key, unit = ("val_bpd", "bits/dim") if image else ("val_bpc", "bits/char")
    ev = _optional_json(run / "eval.json")
    eval_note = None
    if ev is not None and ev.get("step") != step:
        eval_note = (f"eval.json is from step {ev.get('step')} but the checkpoint is at step {step}; run "
                     f"`textdiffusion {'mnist ' if image else ''}eval {run}` (or compare --evaluate)")
        ev = None
    elif ev is None and image:  # FID and accuracy exist only in eval.json
        eval_note = f"no eval.json; run `textdiffusion {'mnist ' if image else ''}eval {run}` (or compare --evaluate)"

    val = None
    if ev is not None and not image and "val" in ev:
        v = ev["val"]
        val = _val_entry(v.get("bpc"), v.get("kind"), unit, "eval.json", v.get("windows"), v.get("stderr_nats"), v)
    if val is None and final is not None and final.get("step") == step and val_key in final:
        val = _val_entry(final[val_key], final.get("val_kind"), unit, "final.json (end of training)",
                         final.get("val_windows"), (final.get("val_details") or {}).get("stderr_nats"),
                         final.get("val_details"))
    if val is None:
        last = next((m for m in reversed(metrics) if val_key in m), None)
        if last is not None:
            val = _val_entry(last[val_key], last.get("val_kind"), unit, f"metrics.jsonl (step {last['step']})",
                             last.get("val_windows"))
    speed_key = "images_per_s" if image else "chars_per_s"
    speeds = [m[speed_key] for m in metrics if speed_key in m]
    train_speed = (final or {}).get(speed_key) or (speeds[-1] if speeds else None)
    curves = [{k: m[k] for k in ("step", "elapsed", "train_loss", val_key) if k in m} for m in metrics]
    model = cfg.get("model", {})
    return {
        "name": run.name, "path": str(run), "kind": "image" if image else "text", "method": method,
        "preset": cfg.get("preset", "?"), "parameters": meta.get("parameters"), "step": step,
        "train_steps": cfg.get("train", {}).get("steps"), "elapsed": (trainer or final or {}).get("elapsed"),
        "seed": meta.get("seed"), "device": meta.get("device"), "created": meta.get("created"),
        "tokenizer": cfg.get("data", {}).get("tokenizer", "char") if not image else None,
        "context": model.get("context") if not image else None,
        "corpus": meta.get("corpus") or _optional_json(run / "image.json") or {},
        "sampling_config": {k: cfg.get("method", {}).get(k) for k in ("sampler", "sample_steps", "timesteps")},
        "val": val, "train_speed": {"value": train_speed, "unit": "images/s" if image else "chars/s"},
        "curves": curves, "curve_val_key": val_key, "eval": ev, "eval_note": eval_note,
    }


def _unique_names(records: list[dict[str, Any]]) -> None:
    """Directory names, widened with parent folders until they are unique."""
    depth = 1
    while True:
        names = ["/".join(Path(r["path"]).resolve().parts[-depth:]) for r in records]
        if len(set(names)) == len(names) or depth > 8:
            break
        depth += 1
    for r, n in zip(records, names, strict=True):
        r["name"] = n


# ---- measured here ---------------------------------------------------------------------------------
class _Judges:
    """One :class:`~textdiffusion.evaluate.TrainingReference` per corpus (fitting one takes a second or two),
    and the real-text scores per corpus, length and count. A corpus is read, checked and split once."""

    def __init__(self) -> None:
        self._corpora: dict[str, tuple[Any, str, str, int]] = {}  # key -> (judge, text, source, train chars)
        self._real: dict[tuple[str, int, int], dict[str, float]] = {}

    @staticmethod
    def key(run) -> str:
        return f"{run.meta.get('corpus', {}).get('sha256') or run.cfg.data.corpus}:{run.cfg.data.val_fraction}"

    def get(self, run) -> tuple[Any, str, str]:
        """(judge, its cache key, the corpus source)."""
        from textdiffusion.evaluate import TrainingReference, run_corpus

        key = self.key(run)
        if key not in self._corpora:
            data, text, source = run_corpus(run)
            self._corpora[key] = (TrainingReference(data.train_text), text, source, len(data.train_text))
        judge, _text, source, _train_chars = self._corpora[key]
        return judge, key, source

    def real_text(self, key: str, length: int, n: int) -> dict[str, float]:
        """Scores of ``n`` real validation windows of ``length`` characters of corpus ``key`` (see :meth:`get`)."""
        from textdiffusion.evaluate import reference_windows

        if (key, length, n) not in self._real:
            judge, text, _source, train_chars = self._corpora[key]
            self._real[(key, length, n)] = judge.quality(reference_windows(text, train_chars, length, n))
        return self._real[(key, length, n)]


def _load_cache(run_dir: Path, step: int) -> list[dict[str, Any]]:
    cache = _optional_json(run_dir / "sweep.json")
    if not cache or cache.get("format") != SWEEP_FORMAT or cache.get("step") != step:
        return []
    return cache.get("points", [])


def _save_cache(run_dir: Path, step: int, points: list[dict[str, Any]]) -> None:
    try:
        write_json(run_dir / "sweep.json", {"format": SWEEP_FORMAT, "step": step, "points": points})
    except OSError as e:  # a read-only run directory: the comparison still works, only slower next time
        print(f"note: could not cache the sweep in {run_dir} ({e.strerror}); it will be recomputed next time",
              file=sys.stderr)


def _sweep_point(run, judge, length: int, steps: int, samples: int, seed: int) -> dict[str, Any]:
    from textdiffusion.evaluate import generate

    req = SampleRequest(n=samples, length=length, steps=steps)
    with torch.no_grad():
        texts, speed = generate(run, req, seed, batch=min(samples, 64))
    quality = judge.quality(texts)
    return {"requested_steps": steps, "steps": speed.get("steps") or steps or length,
            "sampler": run.method.check_sampler(req.sampler), "nfe": speed["nfe_per_sample"],
            "sample_chars_per_s": speed["sample_chars_per_s"], "seconds": speed["seconds"], **quality,
            "n": samples, "seeds": 1, "seed": seed, "length": length,
            "chars_per_sample": sum(len(t) for t in texts) / max(1, len(texts)), "examples": texts[:EXAMPLES]}


def _trajectory(run, length: int, seed: int) -> dict[str, Any]:
    from textdiffusion.viz.trajectory import TrajectoryRecorder

    rec = TrajectoryRecorder(run.tokenizer, "_", keep_states=True)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    with torch.no_grad():
        res = run.method.sample(run.model, SampleRequest(n=1, length=length), gen, rec)
    frames = rec.thinned(MAX_FRAMES)
    return {"sampler": res.info.get("sampler") or run.method.default_sampler, "nfe": res.nfe,
            "steps_total": rec.frames[-1]["step"], "frames_kept": len(frames), "mask_char": "_",
            "frames": [{"step": f["step"], "t": f.get("t"), "nfe": f.get("nfe"), "text": f["texts"][0],
                        "masked": f["masked"][0], "changed": f["changed"][0]} for f in frames],
            "final": run.tokenizer.decode(res.ids[0].tolist())}


def measure_text_run(record: dict[str, Any], judges: _Judges, length: int, sweep: list[int], samples: int,
                     seed: int, device: str, refresh: bool, bar: tqdm) -> None:
    """Adds ``sweep``, ``reference`` and ``trajectory`` to a text run's record."""
    from textdiffusion.runs import open_run

    run = open_run(record["path"], device=device)
    if length > run.method.window:
        raise ConfigError(f"--length {length} is longer than the context of {record['path']} "
                          f"({run.method.window}); use --length {run.method.window} or less")
    judge, judge_key, source = judges.get(run)
    record["judge_corpus"] = source
    run_dir = Path(record["path"])
    cached = [] if refresh else _load_cache(run_dir, run.step)
    base_key = {"samples": samples, "length": length, "seed": seed, "judge": judge_key}

    def point(steps: int) -> dict[str, Any]:
        key = {**base_key, "steps": steps}
        for c in cached:
            if c.get("key") == key:
                return c["result"]
        bar.set_postfix_str(f"{record['name']}: {steps or 'default'} steps")
        result = _sweep_point(run, judge, length, steps, samples, seed)
        cached.append({"key": key, "result": result})
        return result

    default = point(0)
    default["default"] = True
    # real text as long as the samples are in characters (a BPE or WordPiece token stands for several)
    ref_chars = round(default.get("chars_per_sample") or length)
    record["reference"] = {**judges.real_text(judge_key, ref_chars, samples), "chars": ref_chars}
    points = [default]
    bar.update(1)
    if run.method.name != "ar":  # ar ignores the step count: one network evaluation per character
        for steps in sweep:
            if steps != default["steps"]:
                try:
                    points.append(point(steps))
                except ConfigError as e:  # e.g. more steps than a discrete process has: leave the point out
                    record.setdefault("sweep_skipped", []).append({"steps": steps, "why": str(e)})
            bar.update(1)
    else:
        bar.update(len(sweep))
    _save_cache(run_dir, run.step, cached)
    record["sweep"] = sorted(points, key=lambda p: p["steps"])
    record["samples"] = {"texts": default["examples"], "sampler": default["sampler"], "steps": default["steps"],
                         "seed": seed, "length": length}
    bar.set_postfix_str(f"{record['name']}: trajectory")
    record["trajectory"] = _trajectory(run, length, seed)
    bar.update(1)
    record["device_measured"] = str(run.device)


def measure_image_run(record: dict[str, Any], out: Path, seed: int, device: str, bar: tqdm) -> None:
    """Writes the sample grid, the denoising strip and the GIF of an image run into ``out/assets/NAME``."""
    from textdiffusion.apps.mnist import open_image_run, sample_images

    run = open_image_run(record["path"], device=device)
    per_class = run.method.conditional
    n = IMAGES_PER_CLASS * run.method.spec.num_classes if per_class else 32
    bar.set_postfix_str(f"{record['name']}: images")
    res = sample_images(record["path"], out=out / "assets" / record["name"].replace("/", "__"), n=n,
                        sampler=IMAGE_SAMPLER["sampler"], steps=IMAGE_SAMPLER["steps"], eta=IMAGE_SAMPLER["eta"],
                        seed=seed, device=device)
    record["images"] = {"files": {k: str(Path(v).relative_to(out)) for k, v in res["files"].items()},
                        "n": res["n"], "sampler": res.get("sampler"), "steps": res.get("steps"),
                        "seconds_per_image": res["seconds_per_image"], "seed": seed,
                        "conditional": per_class}
    bar.update(1)


def _evaluate_missing(records: list[dict[str, Any]], device: str) -> None:
    from textdiffusion.apps.mnist import evaluate_images
    from textdiffusion.evaluate import evaluate_run

    for r in records:
        if r["eval"] is None:
            print(f"evaluating {r['path']} ...", file=sys.stderr)
            if r["kind"] == "image":
                evaluate_images(r["path"], samples=1000, device=device, progress=False)
            else:
                evaluate_run(r["path"], device=device)


# ---- the whole command ------------------------------------------------------------------------------------
def compare_runs(run_dirs: list[str], out: str | Path, samples: int = 32, length: int = 0,
                 sweep: str | list[int] = "4,16,64,256", seed: int = 0, device: str = "auto",
                 evaluate: bool = False, progress: bool = True, refresh: bool = False) -> dict[str, Path]:
    """Measure, then write ``comparison.json``, ``comparison.md`` and ``report.html`` into ``out``."""
    from textdiffusion.viz.report import render_html, render_markdown

    if not run_dirs:
        raise ConfigError("compare needs at least one run directory")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    steps_list = parse_sweep(sweep) if isinstance(sweep, str) else sorted(set(sweep))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    seen: set[Path] = set()
    records = []
    for d in run_dirs:
        key = Path(d).resolve()
        if key not in seen:
            seen.add(key)
            records.append(read_run(d))
    if evaluate:
        _evaluate_missing(records, device)
        records = [read_run(r["path"]) for r in records]
    _unique_names(records)
    text = [r for r in records if r["kind"] == "text"]
    contexts = [r["context"] for r in text if r["context"]]
    common = length or (min(contexts) if contexts else 0)
    out.mkdir(parents=True, exist_ok=True)
    work = sum(2 + len(steps_list) for _ in text) + sum(1 for r in records if r["kind"] == "image")
    tic = time.perf_counter()
    judges = _Judges()
    with tqdm(total=work, desc="compare", unit="job", disable=not progress, file=sys.stderr) as bar:
        for r in records:
            if r["kind"] == "text":
                measure_text_run(r, judges, common, steps_list, samples, seed, device, refresh, bar)
            else:
                measure_image_run(r, out, seed, device, bar)
    corpora = sorted({r.get("judge_corpus", "") for r in text})
    data = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
        "settings": {"samples": samples, "seeds": 1, "seed": seed, "length": common, "sweep": steps_list,
                     "device": device, "image_sampler": IMAGE_SAMPLER, "max_frames": MAX_FRAMES,
                     "seconds": round(time.perf_counter() - tic, 2)},
        "judge": {"kind": "character 5-gram, interpolated Witten-Bell (textdiffusion.evaluate.CharNgramJudge)",
                  "corpora": corpora},
        "runs": records,
    }
    paths = {"report": out / "report.html", "markdown": out / "comparison.md", "json": out / "comparison.json"}
    write_json(paths["json"], data)
    md = render_markdown(data)
    html = render_html(data, out)
    for key, content in (("markdown", md), ("report", html)):
        write_text(paths[key], content)
    return paths
