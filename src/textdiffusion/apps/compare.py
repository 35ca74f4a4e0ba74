"""``textdiffusion compare RUN... --out DIR``: any mix of runs side by side, as a page and as data.

For every run it gathers what is already on disk (config, training curves, the validation number, ``eval.json``)
and measures what a comparison needs and a run does not keep:

* a **quality-vs-speed sweep** for text runs: ``samples`` samples at each sampler step count of ``sweep`` (plus
  the method's default), each scored by the judge of :mod:`textdiffusion.evaluate` and timed. ``ar`` has one
  point: it takes one network evaluation per character whatever the sweep says. Points are cached in
  ``RUN/sweep.json`` keyed by everything that changes them (checkpoint step, samples, length, seed, judge
  corpus), so running ``compare`` again is instant;
* an **accuracy-vs-fluency curve** over the guidance scale w (``guidance``) for every run trained with labels:
  text runs draw ``samples`` samples split evenly over their speakers at each w, scored by the speaker judge
  (:class:`~textdiffusion.speaker_judge.SpeakerJudge`: how often it names the speaker asked for, beside its
  accuracy on real held-out speeches of the same length) and by the evaluation judge (perplexity, word
  validity, distinct-2); class-conditional image runs give class accuracy against FID
  (:func:`~textdiffusion.image_evaluation.evaluate_images`). Cached in ``RUN/guidance.json`` like the sweep;
  unlabelled runs get no curve and spend nothing on one;
* with ``temperatures``, each text run's **frontier**: judge perplexity against character entropy over the
  temperature of the token draw, ``samples`` samples per temperature (cached in ``RUN/frontier.json``), with
  real held-out text's point beside it;
* one **denoising trajectory** per text run (the decoded text at every step, thinned to at most
  :data:`MAX_FRAMES` frames), and for image runs a sample grid, a denoising strip and the reverse-process GIF.

It writes ``comparison.json`` (everything, machine-readable), ``comparison.md`` (the tables and samples) and
``report.html`` (one self-contained file: scripts, styles and pictures inline, so it opens from ``file://`` with
no network). Every number carries what it is: the validation number is *exact* (``ar``) or an *upper bound*
(diffusion methods, a Monte-Carlo estimate with its standard error), sample metrics are *estimates* from the
stated number of samples and seeds.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from textdiffusion.api import ImageModel, TextModel, load
from textdiffusion.checkpoint import (
    CheckpointError,
    check_finite,
    has_checkpoint,
    is_export,
    read_group,
    read_header,
    read_run_meta,
    versions,
    write_json,
)
from textdiffusion.config import GUIDANCE, TEMPERATURE, ConfigError, Range
from textdiffusion.files import (
    file_as_run_message,
    is_symlink_loop,
    non_utf8_message,
    not_regular_message,
    symlink_loop_message,
    write_text,
)
from textdiffusion.methods import SampleRequest, get_method
from textdiffusion.methods.base import bits_key
from textdiffusion.progress import progress_bar
from textdiffusion.records import (
    METRICS,
    EvalRow,
    ImageEval,
    InitRecord,
    MetricsRow,
    Quality,
    TextEval,
    TrainRow,
    TrainSummary,
    held_nonfinite,
    read_eval,
    read_json_object,
    read_metrics,
)
from textdiffusion.run_dir import lost_checkpoint_message, trained_records
from textdiffusion.sharing import public_corpus_record, public_source, shareable_path
from textdiffusion.viz.records import (
    Comparison,
    Frame,
    FrontierPoint,
    GuidanceCurve,
    GuidancePoint,
    ImagePictures,
    Reference,
    RunRecord,
    SampleSet,
    Settings,
    SkippedPoint,
    SweepPoint,
    TextResults,
    TrainSpeed,
    Trajectory,
    ValEntry,
)

SWEEP_FORMAT = "textdiffusion-sweep/1"
GUIDANCE_FORMAT = "textdiffusion-guidance/1"
DEFAULT_GUIDANCE = "0,1,2,3,5"  # the scales of the guidance benchmark (BENCHMARKS.md) and of the digits' table
MAX_GUIDANCE_POINTS = 16
SPEAKER_JUDGE = "speaker judge: naive Bayes over per-speaker character 4-gram models fitted on the training " \
                "speeches (textdiffusion.speaker_judge.SpeakerJudge)"
IMAGE_JUDGE = "the evaluation classifier of `mnist eval` (textdiffusion.image_metrics)"
REPORT_FILES = ("report.html", "comparison.md", "comparison.json")  # what compare writes into --out
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


def parse_guidance(text: str) -> list[float]:
    """``"0,1,2,3,5"`` -> [0.0, 1.0, 2.0, 3.0, 5.0]; empty or ``none`` -> no guidance curves."""
    return _parse_values(text, "--guidance", "guidance scales", DEFAULT_GUIDANCE, GUIDANCE, MAX_GUIDANCE_POINTS,
                         "scales (each draws --samples samples per labelled run)", "--guidance scales")


def _parse_values(text: str, flag: str, what: str, example: str, allowed: Range, most: int, most_what: str,
                  each: str) -> list[float]:
    """A flag's comma-separated numbers, each inside ``allowed``, sorted without repeats, at most ``most`` of
    them; empty or ``none`` -> none. Errors are one line naming the flag and the value."""
    if text.strip().lower() in ("", "none"):
        return []
    out: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"{flag} takes comma-separated {what} like {example} (or none); {part!r} is not a "
                              f"number") from None
        if not allowed.allows(v):
            raise ConfigError(f"{each} must each be {allowed.describe()}; got {part}")
        out.append(v)
    out = sorted(set(out))
    if len(out) > most:
        raise ConfigError(f"{flag} takes at most {most} {most_what}; got {len(out)}")
    return out


# The guidance rules a curve is drawn for, by the name its points record. Every part of a curve takes the rule
# as a parameter (the sampler, the cache key, the record), so a further rule is an entry here, its sampling
# options in :func:`_rule_options` and the runs it applies to in :func:`curve_rules`.
RULES = {"free": "classifier-free guidance: the run's own label embedding, trained with label dropout "
                 "(Ho & Salimans 2022)",
         "classifier": "classifier guidance: the run's noisy speaker classifier steers its sampler "
                       "(textdiffusion.guidance.classifier), the language model untouched"}


def curve_rules(model: TextModel) -> list[tuple[str, list[str]]]:
    """The rules a text run gets a curve for, each with the labels it steers toward: classifier-free guidance
    needs a run trained with labels; classifier guidance a speaker classifier cached for the run's checkpoint
    (``compare`` trains none: ``TextModel.classifier()`` or ``sample --guidance-rule classifier`` does)."""
    rules = [("free", list(model.labels))] if model.labels else []
    clf = model.cached_classifier()
    if clf is not None:
        rules.append(("classifier", list(clf.names)))
    return rules


def _rule_options(rule: str) -> dict[str, Any]:
    """What a sampling call adds to ``label=`` and ``guidance=`` for ``rule``: nothing for classifier-free
    guidance, which is what the API does with a label."""
    if rule == "free":
        return {}
    if rule == "classifier":
        return {"rule": "classifier"}
    raise ConfigError(f"unknown guidance rule {rule!r}; choose one of {', '.join(RULES)}")


def _read_meta(run: Path) -> dict[str, Any]:
    """``config.json``, refusing a directory that is not a run."""
    if not run.is_dir() and is_symlink_loop(run):
        raise CheckpointError(symlink_loop_message(run))
    if (problem := non_utf8_message(run, "run directory")) is not None:
        raise CheckpointError(problem)
    if (problem := file_as_run_message(run)) is not None:
        raise CheckpointError(problem)
    if not run.is_dir():
        raise CheckpointError(f"run directory {run} does not exist; pass directories written by "
                              f"`textdiffusion train` (they hold config.json)")
    if not (run / "config.json").exists():
        raise CheckpointError(f"{run} has no config.json, so it is not a run directory; pass directories written "
                              f"by `textdiffusion train`")
    return read_run_meta(run)


def _method_class(run: Path, name: object) -> type:
    if not isinstance(name, str):  # no name to call unknown: the record itself is incomplete
        raise CheckpointError(f"{run / 'config.json'} records no method name; it was not written by textdiffusion, "
                              f"or was edited: restore it or retrain")
    try:
        return get_method(name)
    except ConfigError as e:
        raise CheckpointError(f"{run / 'config.json'}: {e} (was it written by another textdiffusion version?)") \
            from None


def _current_eval(run: Path, step: int, image: bool, command: str) -> tuple[dict[str, Any] | None, str | None]:
    """``eval.json`` when it scored this checkpoint, else None and what to run (``command`` eval) instead."""
    ev = read_eval(run)
    redo = f"run `{command} eval {run}` (or compare --evaluate)"
    scored = _eval_record(ev, image).step if ev is not None else None
    if ev is not None and scored != step:
        return None, f"eval.json is from step {scored} but the checkpoint is at step {step}; {redo}"
    if ev is None and image:  # FID and accuracy exist only in eval.json
        return None, f"no eval.json; {redo}"
    return ev, None


def _eval_record(ev: dict[str, Any], image: bool) -> TextEval | ImageEval:
    """eval.json as its record: an image run's, or a text run's (one of another shape reads as the image
    record, which keeps every key, so its step can still be told)."""
    if not image:
        try:
            return TextEval.from_json(ev)
        except (KeyError, TypeError, AttributeError):
            pass
    return ImageEval.from_json(ev)


def _read_val(ev: dict[str, Any] | None, final: TrainSummary | None, metrics: list[MetricsRow], step: int,
              unit: str) -> ValEntry | None:
    """The best-labelled validation number of checkpoint ``step``: a text run's eval.json, else final.json,
    else the last evaluation in metrics.jsonl (a run stopped before its final evaluation)."""
    label = f"bits/{unit}"

    def candidates():
        record = _eval_record(ev, False) if ev is not None and unit == "char" else None
        if isinstance(record, TextEval):
            v = record.val
            yield ValEntry.of(v.bpc, v.kind, label, "eval.json", v.windows, v.details.get("stderr_nats"), v.details)
        score = final.score if final is not None and final.step == step else None
        if score is not None and score.unit == unit:
            yield ValEntry.of(score.bits, score.kind, label, "final.json (end of training)", score.windows,
                              score.details.get("stderr_nats"), score.details)
        last = next((m for m in reversed(metrics) if isinstance(m, EvalRow) and m.unit == unit and m.bits is not None),
                    None)
        if last is not None:
            yield ValEntry.of(last.bits, last.kind, label, f"metrics.jsonl (step {last.step})", last.windows)

    return next((v for v in candidates() if v is not None), None)


def _read_exact(ev: dict[str, Any] | None, final: TrainSummary | None, step: int,
                val: ValEntry | None) -> ValEntry | None:
    """The run's exact NLL: its validation number when that is exact (ar); else, beside a bound, the exact NLL
    of its left_to_right sampler from eval.json, else from final.json (of checkpoint ``step``)."""
    if val is not None and val.kind == "exact":
        return val
    record = _eval_record(ev, False) if ev is not None else None
    score = final.score if final is not None and final.step == step else None
    found = [(record.exact, "eval.json")] if isinstance(record, TextEval) and record.exact is not None else []
    if score is not None and score.exact is not None:
        found.append((score.exact, "final.json (end of training)"))
    if not found:
        return None
    exact, source = found[0]
    entry = ValEntry.of(exact.bits, "exact", "bits/char", source, exact.windows, None, exact.details)
    return None if entry is None else replace(entry, what=f"exact negative log-likelihood of --sampler "
                                                          f"{exact.sampler} (one token per step, left to right)",
                                              sampler=exact.sampler)


def read_run(path: str | Path) -> RunRecord:
    """Everything ``compare`` needs that is already on disk. Raises a one-line error for a directory that
    is not a run."""
    run = Path(path)
    meta = _read_meta(run)
    cfg = meta["config"]
    section = cfg.get("method")
    method = section.get("name") if isinstance(section, dict) else None
    method_class = _method_class(run, method)
    image = method_class.family == "image"
    final = TrainSummary.read(run)
    metrics = read_metrics(run)
    _note_nonfinite(run, metrics)
    if not has_checkpoint(run) and not is_export(run) and trained_records(run):
        raise CheckpointError(lost_checkpoint_message(run, "leave the run out"))
    if not has_checkpoint(run) and not is_export(run):
        raise CheckpointError(f"{run} has no checkpoint (training stopped before its first save); resume it with "
                              f"`textdiffusion train --resume {run}` or leave it out")
    header = read_header(run)
    step = header.step
    check_finite(read_group(run, "ema")[0], header.path)  # a diverged checkpoint has no number worth showing
    ev, eval_note = _current_eval(run, step, image, method_class.command)
    val_key = bits_key(method_class.unit)
    data_unit = "images" if image else "chars"
    speeds = [m.rate for m in metrics if isinstance(m, EvalRow) and m.data_unit == data_unit and m.rate is not None]
    final_speed = final.rate if final is not None and final.unit == data_unit else None
    model = cfg.get("model", {})
    val = _read_val(ev, final, metrics, step, method_class.unit)
    return RunRecord(
        name=run.name, path=str(run), kind="image" if image else "text", method=method,
        preset=cfg.get("preset", "?"), parameters=meta.get("parameters"), step=step,
        train_steps=cfg.get("train", {}).get("steps"), elapsed=header.state.get("elapsed"),
        seed=meta.get("seed"), device=meta.get("device"), created=meta.get("created"),
        tokenizer=cfg.get("data", {}).get("tokenizer", "char") if not image else None,
        context=model.get("context") if not image else None,
        corpus=meta.get("corpus") or read_json_object(run / "image.json") or {},
        sampling_config={k: cfg.get("method", {}).get(k) for k in ("sampler", "sample_steps", "timesteps")},
        val=val,
        train_speed=TrainSpeed(final_speed or (speeds[-1] if speeds else None),
                               "images/s" if image else "chars/s"),
        curves=_curves(metrics, val_key),
        curve_val_key=val_key, eval=ev, eval_note=eval_note,
        init=InitRecord.from_json(meta.get("init_from") or meta.get("distill_from")),
        exact=None if image else _read_exact(ev, final, step, val))


def _curves(metrics: list[MetricsRow], val_key: str) -> list[dict[str, float]]:
    """The learning curves' points: validation from the evaluation rows; the training loss from the train rows
    (``train.log_every``: the mean over each interval) where the run has them, else the evaluation rows'
    smoothed loss, so the two kinds of loss never zigzag on one curve."""
    def point(row: MetricsRow, *keys: str) -> dict[str, float]:
        d = row.to_json()
        return {k: d[k] for k in ("step", "elapsed", *keys) if _is_number(d.get(k))}  # NaN or null: skipped

    evals = [m for m in metrics if isinstance(m, EvalRow)]
    trained = [m for m in metrics if isinstance(m, TrainRow)]
    if not trained:
        return [point(m, "train_loss", val_key) for m in evals]
    points = [point(m, "train_loss") for m in trained] + [point(m, val_key) for m in evals]
    return sorted(points, key=lambda p: p["step"])  # stable: a step's train point before its evaluation


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _note_nonfinite(run: Path, metrics: list[MetricsRow]) -> None:
    """One line when a run's metrics held NaN or infinity: its curves leave those points out, which a reader
    would otherwise take for a run that was never measured there."""
    steps = [m.step for m in metrics if held_nonfinite(m)]
    if steps:
        print(f"note: {run / METRICS} holds non-finite values (NaN or infinity, written as null) in {len(steps)} "
              f"of {len(metrics)} rows, first at step {steps[0]}; the curves leave those points out",
              file=sys.stderr)


def _unique_names(records: list[RunRecord]) -> list[RunRecord]:
    """Directory names, widened with parent folders until they are unique."""
    depth = 1
    while True:
        names = ["/".join(Path(r.path).resolve().parts[-depth:]) for r in records]
        if len(set(names)) == len(names) or depth > 8:
            break
        depth += 1
    return [replace(r, name=n) for r, n in zip(records, names, strict=True)]


# ---- measured here ---------------------------------------------------------------------------------
class _Judges:
    """One :class:`~textdiffusion.evaluate.TrainingReference` per corpus (fitting one takes a second or two),
    and the real-text scores per corpus, length and count. A corpus is read, checked and split once."""

    def __init__(self) -> None:
        self._corpora: dict[str, tuple[Any, str, str, int]] = {}  # key -> (judge, text, source, validation start)
        self._real: dict[tuple[str, int, int], Quality] = {}
        self._speakers: dict[tuple[str, int], Any] = {}  # (corpus key, speakers) -> SpeakerJudge

    @staticmethod
    def key(run) -> str:
        prefix = f":{run.cfg.data.train_chars}" if run.cfg.data.train_chars else ""  # another training text
        return f"{run.meta.get('corpus', {}).get('sha256') or run.cfg.data.corpus}:{run.cfg.data.val_fraction}{prefix}"

    def get(self, run) -> tuple[Any, str, str]:
        """(judge, its cache key, the corpus source)."""
        from textdiffusion.evaluate import TrainingReference, run_corpus

        key = self.key(run)
        if key not in self._corpora:
            data, text, source = run_corpus(run)
            self._corpora[key] = (TrainingReference(data.train_text), text, source, data.val_start)
        judge, _text, source, _val_start = self._corpora[key]
        return judge, key, source

    def speakers(self, run, labels: Sequence[str]):
        """The speaker judge of a labelled run: fitted on the training speeches of the ``len(labels)`` most-spoken
        speakers of its corpus's training split, which must be the run's own labels in order."""
        from textdiffusion.data.speakers import split_speakers
        from textdiffusion.speaker_judge import SpeakerJudge

        _judge, key, _source = self.get(run)
        if (key, len(labels)) not in self._speakers:
            _, text, _, val_start = self._corpora[key]
            trained = text[:run.cfg.data.train_chars or val_start]
            self._speakers[(key, len(labels))] = SpeakerJudge(split_speakers(trained, top=len(labels)))
        judge = self._speakers[(key, len(labels))]
        if [s.lower() for s in judge.speakers] != [s.lower() for s in labels]:
            raise CheckpointError(f"{run.path} was trained on the speakers {', '.join(labels)} but its corpus's "
                                  f"training split now has {', '.join(judge.speakers)} as the most-spoken; "
                                  f"compare it with --guidance none")
        return judge

    def held_out(self, key: str) -> str:
        """The validation split of corpus ``key`` (see :meth:`get`): what the n-gram distance compares with."""
        _judge, text, _source, val_start = self._corpora[key]
        return text[val_start:]

    def real_text(self, key: str, length: int, n: int) -> Quality:
        """Scores of ``n`` real validation windows of ``length`` characters of corpus ``key`` (see :meth:`get`)."""
        from textdiffusion.evaluate import reference_windows

        if (key, length, n) not in self._real:
            judge, text, _source, val_start = self._corpora[key]
            self._real[(key, length, n)] = Quality(**judge.quality(reference_windows(text, val_start, length, n)))
        return self._real[(key, length, n)]


class _PointCache:
    """A file in the run directory of measured results keyed by everything that changes them (``key`` plus
    what each entry adds). Entries for other settings are kept, so switching between two sample counts
    measures each once; a new checkpoint starts it afresh."""

    file, format, what = "sweep.json", SWEEP_FORMAT, "the sweep"

    def __init__(self, run_dir: Path, step: int, key: dict[str, Any], refresh: bool) -> None:
        self.run_dir, self.step, self.key = run_dir, step, key
        cache = None if refresh else read_json_object(run_dir / self.file)
        fresh = not cache or cache.get("format") != self.format or cache.get("step") != step
        self.entries: list[dict[str, Any]] = [] if fresh else cache.get("points", [])

    def find(self, extra: dict[str, Any]) -> Any:
        key = {**self.key, **extra}
        return next((entry.get("result") for entry in self.entries if entry.get("key") == key), None)

    def put(self, extra: dict[str, Any], result: Any) -> None:
        key = {**self.key, **extra}
        self.entries = [e for e in self.entries if e.get("key") != key]  # an unreadable entry is replaced
        self.entries.append({"key": key, "result": result})

    def save(self) -> None:
        if is_export(self.run_dir):  # read-only: its points are measured again each time
            return
        try:
            write_json(self.run_dir / self.file, {"format": self.format, "step": self.step, "points": self.entries})
        except OSError as e:  # a read-only run directory: the comparison still works, only slower next time
            print(f"note: could not cache {self.what} in {self.run_dir} ({e.strerror}); it will be recomputed "
                  f"next time", file=sys.stderr)


class _SweepCache(_PointCache):
    """``RUN/sweep.json``: the quality-vs-speed points, by step count."""

    def get(self, steps: int) -> SweepPoint | None:
        found = self.find({"steps": steps})
        try:
            return None if found is None else SweepPoint.from_json(found)
        except (KeyError, TypeError):  # written in another shape: measure it again
            return None

    def add(self, steps: int, point: SweepPoint) -> None:
        self.put({"steps": steps}, point.to_json())


class _GuidanceCache(_PointCache):
    """``RUN/guidance.json``: the guidance curves' points, by rule and scale, and the judge's accuracy on real
    data (its scale line)."""

    file, format, what = "guidance.json", GUIDANCE_FORMAT, "the guidance curve"

    def get(self, rule: str, w: float) -> GuidancePoint | None:
        found = self.find({"rule": rule, "w": w})
        try:
            return None if found is None else GuidancePoint.from_json(found)
        except (KeyError, TypeError):  # written in another shape: measure it again
            return None

    def add(self, point: GuidancePoint) -> None:
        self.put({"rule": point.rule, "w": point.w}, point.to_json())

    def reference(self, what: str, measure: Callable[[], float]) -> float:
        """The real-data accuracy keyed by ``what`` it was measured on, measured once."""
        found = self.find({"reference": what})
        if not isinstance(found, (int, float)):
            found = measure()
            self.put({"reference": what}, found)
        return float(found)


def _sweep_point(model: TextModel, judge, length: int, steps: int, samples: int, seed: int,
                 held_out: str) -> SweepPoint:
    """One point of the sweep, drawn and timed as ``eval`` draws its samples (:func:`~textdiffusion.evaluate.
    generate`, batches of 64), so sweep points and eval.json agree; ``held_out``: the validation text the
    n-gram distance compares with."""
    from textdiffusion.evaluate import distance_from_real, generate

    run = model.run
    req = SampleRequest(n=samples, length=length, steps=steps, **run.method.decoding())  # the run's own draw
    with torch.no_grad():
        texts, speed = generate(run, req, seed, batch=min(samples, 64))
    return SweepPoint(requested_steps=steps, steps=speed.get("steps") or steps or length,
                      sampler=run.method.check_sampler(req.sampler), nfe=speed["nfe_per_sample"],
                      sample_chars_per_s=speed["sample_chars_per_s"], seconds=speed["seconds"],
                      quality=Quality(**judge.quality(texts)), n=samples, seeds=1, seed=seed, length=length,
                      chars_per_sample=sum(len(t) for t in texts) / max(1, len(texts)), examples=texts[:EXAMPLES],
                      distance=distance_from_real(texts, held_out))


def _trajectory(model: TextModel, length: int, seed: int) -> Trajectory:
    from textdiffusion.viz.trajectory import TrajectoryRecorder

    rec = TrajectoryRecorder(model.tokenizer, "_", keep_states=True)
    res = model.sample(length=length, seed=seed, on_step=rec)  # the run's own sampler and token draw
    frames = rec.thinned(MAX_FRAMES)
    return Trajectory(sampler=res.sampler or model.default_sampler, nfe=res.nfe,
                      steps_total=rec.frames[-1]["step"], frames_kept=len(frames), mask_char="_",
                      frames=[Frame(step=f["step"], t=f.get("t"), nfe=f.get("nfe"), text=f["texts"][0],
                                    masked=f["masked"][0], changed=f["changed"][0]) for f in frames],
                      final=res.texts[0])


def _other_points(point: Callable[[int], SweepPoint], sweep: list[int], default: SweepPoint,
                  bar: tqdm) -> tuple[list[SweepPoint], list[SkippedPoint]]:
    """The sweep's step counts other than the default's; one the method refuses is left out, with why."""
    points, skipped = [], []
    for steps in sweep:
        if steps != default.steps:
            try:
                points.append(point(steps))
            except ConfigError as e:  # e.g. more steps than a discrete process has
                skipped.append(SkippedPoint(steps, str(e)))
        bar.update(1)
    return points, skipped


def _open_text_run(record: RunRecord, length: int, device: str) -> TextModel:
    model = load(record.path, device=device)
    if not isinstance(model, TextModel):
        raise ConfigError(f"{record.path} is not a text run")
    if length > model.context:
        raise ConfigError(f"--length {length} is longer than the context of {record.path} "
                          f"({model.context}); use --length {model.context} or less")
    return model


def measure_text_run(record: RunRecord, judges: _Judges, length: int, sweep: list[int], samples: int,
                     seed: int, device: str, refresh: bool, bar: tqdm, model: TextModel | None = None) -> TextResults:
    """The sweep (cached in ``RUN/sweep.json``), real-text scores of the same length and a trajectory.
    ``model``: the run already loaded (else it is loaded here, on ``device``)."""
    model = model or _open_text_run(record, length, device)
    judge, judge_key, source = judges.get(model.run)
    cache = _SweepCache(Path(record.path), model.step, {"samples": samples, "length": length, "seed": seed,
                                                        "judge": judge_key}, refresh)

    def point(steps: int) -> SweepPoint:
        found = cache.get(steps)
        if found is None:
            bar.set_postfix_str(f"{record.name}: {steps or 'default'} steps")
            found = _sweep_point(model, judge, length, steps, samples, seed, judges.held_out(judge_key))
            cache.add(steps, found)
        return found

    default = point(0)
    # real text as long as the samples are in characters (a BPE or WordPiece token stands for several)
    ref_chars = round(default.chars_per_sample or length)
    reference = Reference(judges.real_text(judge_key, ref_chars, samples), ref_chars)
    bar.update(1)
    steps_fixed = model.text_method.default_steps(length) is None
    if steps_fixed:  # ar: one network evaluation per character, whatever the sweep asks
        others, skipped = [], []
        bar.update(len(sweep))
    else:
        others, skipped = _other_points(point, sweep, default, bar)
    cache.save()
    bar.set_postfix_str(f"{record.name}: trajectory")
    trajectory = _trajectory(model, length, seed)
    bar.update(1)
    return TextResults(judge_corpus=public_source(source), reference=reference,
                       sweep=sorted([default, *others], key=lambda p: p.steps),
                       samples=SampleSet(default.examples, default.sampler, default.steps, seed, length),
                       trajectory=trajectory, device_measured=str(model.device), sweep_skipped=skipped,
                       steps_fixed=steps_fixed)


# ---- guidance: accuracy against fluency over w ---------------------------------------------------------------
def _text_guidance_point(model: TextModel, judge, speakers, rule: str, names: list[str], w: float, length: int,
                         per_label: int, seed: int) -> GuidancePoint:
    """``per_label`` samples written as each of ``names`` at scale ``w`` under ``rule`` (label i drawn with
    seed ``seed + i``, as benchmarks/guidance_text.py does, so at w = 0 the labels do not share one draw):
    how often the speaker judge names the label asked for, the evaluation judge's fluency scores and the
    sampling speed."""
    texts: list[str] = []
    labels: list[int] = []
    seconds = 0.0
    for i, name in enumerate(names):
        res = model.sample(n=per_label, length=length, label=name, guidance=w, seed=seed + i, progress=False,
                           **_rule_options(rule))
        texts += res.texts
        labels += [i] * len(res.texts)
        seconds += res.seconds
    q = judge.quality(texts)
    chars = sum(len(t) for t in texts)
    return GuidancePoint(rule=rule, w=w, accuracy=speakers.accuracy(texts, labels), samples=len(texts), seed=seed,
                         seconds=seconds, judge_ppl=q["judge_ppl"], word_validity=q["word_validity"],
                         distinct_2=q["distinct_2"], chars_per_s=chars / max(seconds, 1e-9), length=length,
                         chars_per_sample=chars / max(1, len(texts)), example=texts[0] if texts else "")


def _curve_points(cache: _GuidanceCache, rule: str, weights: list[float], measure: Callable[[float], GuidancePoint],
                  name: str, bar: tqdm) -> list[GuidancePoint]:
    """The curve's points, from the cache where they are, else measured (and cached)."""
    points = []
    for w in weights:
        point = cache.get(rule, w)
        if point is None:
            bar.set_postfix_str(f"{name}: guidance w={w:g}")
            point = measure(w)
            cache.add(point)
        points.append(point)
        bar.update(1)
    return points


def _more_work(bar: tqdm, jobs: int) -> None:
    """A curve's points join the bar when the run turns out to have labels (found only once it is loaded)."""
    if bar.total is not None:
        bar.total += jobs
        bar.refresh()


def measure_text_guidance(record: RunRecord, model: TextModel, judges: _Judges, weights: list[float], length: int,
                          samples: int, seed: int, refresh: bool, bar: tqdm) -> list[GuidanceCurve]:
    """A curve per guidance rule the run supports (none for a run trained without labels): at every scale,
    ``samples`` samples split evenly over the labels (rounded up to a multiple of their number), cached in
    ``RUN/guidance.json``. The speaker judge is fitted only when a point or the scale line is missing."""
    rules = curve_rules(model) if weights else []
    if not rules:
        return []
    labels = rules[0][1]  # the same speakers, in the same order, under either rule (the corpus's most-spoken)
    _more_work(bar, len(rules) * len(weights))
    per_label = -(-samples // len(labels))
    judge, judge_key, _source = judges.get(model.run)
    cache = _GuidanceCache(Path(record.path), model.step, {"samples": per_label * len(labels), "length": length,
                                                           "seed": seed, "judge": judge_key, "labels": labels},
                           refresh)
    curves = []
    for rule, names in rules:
        points = _curve_points(cache, rule, weights, lambda w, rule=rule, names=names: _text_guidance_point(
            model, judge, judges.speakers(model.run, names), rule, names, w, length, per_label, seed), record.name,
            bar)
        # real speeches as long as the samples are in characters (a BPE or WordPiece token stands for several)
        chars = round(points[0].chars_per_sample or length)
        reference = cache.reference(f"held-out speeches of {chars} characters",
                                    lambda chars=chars: judges.speakers(model.run, labels).held_out_accuracy(chars))
        curves.append(GuidanceCurve(kind="text", rule=rule, judge=SPEAKER_JUDGE, labels=labels,
                                    chance=1 / len(labels), reference_accuracy=reference,
                                    reference_what=f"the speaker judge on the run's held-out real speeches cut to "
                                                   f"{chars} characters", points=points))
    cache.save()
    return curves


def _image_guidance_point(run, rule: str, w: float, samples: int, seed: int) -> GuidancePoint:
    """``samples`` images (the digits in turn) at scale ``w``, scored as ``mnist eval`` scores them: class accuracy
    and FID in the evaluation classifier's features."""
    from textdiffusion.image_evaluation import evaluate_images

    ev = evaluate_images(run, samples=samples, sampler=IMAGE_SAMPLER["sampler"], steps=IMAGE_SAMPLER["steps"],
                         eta=IMAGE_SAMPLER["eta"], guidance=w, seed=seed, progress=False, write=False,
                         **_rule_options(rule))
    return GuidancePoint(rule=rule, w=w, accuracy=ev.class_accuracy, samples=samples, seed=seed, seconds=ev.seconds,
                         fid=ev.fid, images_per_s=samples / max(ev.seconds, 1e-9), sampler=ev.sampler, steps=ev.steps)


def measure_image_guidance(record: RunRecord, weights: list[float], samples: int, seed: int, device: str,
                           refresh: bool, progress: bool, bar: tqdm) -> list[GuidanceCurve]:
    """Class accuracy against FID over w for a class-conditional image run (the caller checks that it is),
    ``samples`` images per point (two at least) with the pictures' sampler (:data:`IMAGE_SAMPLER`), cached in
    ``RUN/guidance.json``. The evaluation classifier is loaded, or trained once and cached (saying so), only
    when a point is missing."""
    from textdiffusion.image_evaluation import _reference_data, classifier_for_data, open_image_run

    rules = ["free"]  # the image method steers by classifier-free guidance only
    if not weights:
        return []
    _more_work(bar, len(rules) * len(weights))
    samples = max(2, samples)  # FID needs a covariance: two images at least
    cache = _GuidanceCache(Path(record.path), record.step, {"samples": samples, "seed": seed, **IMAGE_SAMPLER},
                           refresh)
    state: dict[str, Any] = {}

    def opened():
        """The run and the classifier's test accuracy, the first time a number is missing."""
        if "run" not in state:
            run = open_image_run(record.path, device=device)
            _clf, info = classifier_for_data(_reference_data(run), run.device, progress)  # trained once, saying so
            state.update(run=run, test_accuracy=info.get("test_accuracy"))
        return state["run"]

    def test_accuracy() -> float:
        opened()
        return float("nan") if state["test_accuracy"] is None else float(state["test_accuracy"])

    classes = (read_json_object(Path(record.path) / "image.json") or {}).get("num_classes") or 10
    curves = []
    for rule in rules:
        points = _curve_points(cache, rule, weights,
                               lambda w, rule=rule: _image_guidance_point(opened(), rule, w, samples, seed),
                               record.name, bar)
        reference = cache.reference("classifier test accuracy", test_accuracy)
        curves.append(GuidanceCurve(kind="image", rule=rule, judge=IMAGE_JUDGE,
                                    labels=[str(d) for d in range(classes)], chance=1 / classes,
                                    reference_accuracy=reference,
                                    reference_what="the evaluation classifier on the real test images",
                                    points=points))
    cache.save()
    return curves


# ---- the frontier: judge perplexity against entropy over temperature ------------------------------------------
# Lowering the temperature of the token draw buys judge perplexity with character entropy: a sampler is better
# than another only at the same entropy. Each point is drawn with the run's default sampler and steps and scored
# as the sweep's are, the n-gram distance included (which a collapse cannot buy); one draw of ``samples``
# samples per temperature and text run, as much as one sweep point, cached in ``RUN/frontier.json``.
FRONTIER_FORMAT = "textdiffusion-frontier/1"
SUGGESTED_TEMPERATURES = "0.6,0.8,0.9,1,1.1"  # from a clear collapse to a little past the model's own law
MAX_TEMPERATURES = 12


def parse_temperatures(text: str) -> list[float]:
    """``"0.6,0.8,1"`` -> [0.6, 0.8, 1.0]; empty or ``none`` -> no frontier."""
    return _parse_values(text, "--temperatures", "temperatures", SUGGESTED_TEMPERATURES, TEMPERATURE,
                         MAX_TEMPERATURES, "values (each draws --samples samples per text run)", "--temperatures")


class _FrontierCache(_PointCache):
    """``RUN/frontier.json``: the frontier's points, by temperature."""

    file, format, what = "frontier.json", FRONTIER_FORMAT, "the frontier"

    def get(self, temperature: float) -> FrontierPoint | None:
        found = self.find({"temperature": temperature})
        try:
            return None if found is None else FrontierPoint.from_json(found)
        except (KeyError, TypeError):  # written in another shape: measure it again
            return None

    def add(self, point: FrontierPoint) -> None:
        self.put({"temperature": point.temperature}, point.to_json())


def frontier_point(model: TextModel, judge, held_out: str, length: int, temperature: float, samples: int,
                   seed: int) -> FrontierPoint:
    """``samples`` samples at ``temperature`` (the run's own sampler, steps, top-k and top-p), drawn as ``eval``
    draws them, scored by the judge and by the n-gram distance from ``held_out``."""
    from textdiffusion.evaluate import distance_from_real, generate

    run = model.run
    req = SampleRequest(n=samples, length=length, **run.method.decoding(temperature=temperature))
    with torch.no_grad():
        texts, speed = generate(run, req, seed, batch=min(samples, 64))
    return FrontierPoint(temperature=temperature, sampler=run.method.check_sampler(req.sampler),
                         steps=speed.get("steps") or length, n=samples, seed=seed, length=length,
                         seconds=speed["seconds"], quality=Quality(**judge.quality(texts)),
                         distance=distance_from_real(texts, held_out), example=texts[0] if texts else "")


def measure_frontier(record: RunRecord, model: TextModel, judges: _Judges, temperatures: Sequence[float],
                     length: int, samples: int, seed: int, refresh: bool, bar: tqdm) -> list[FrontierPoint]:
    """A point per temperature, from ``RUN/frontier.json`` where it is, else drawn (and cached); none when no
    temperature is asked for."""
    if not temperatures:
        return []
    judge, judge_key, _source = judges.get(model.run)
    cache = _FrontierCache(Path(record.path), model.step, {"samples": samples, "length": length, "seed": seed,
                                                           "judge": judge_key}, refresh)
    points = []
    for t in temperatures:
        point = cache.get(t)
        if point is None:
            bar.set_postfix_str(f"{record.name}: temperature {t:g}")
            point = frontier_point(model, judge, judges.held_out(judge_key), length, t, samples, seed)
            cache.add(point)
        points.append(point)
        bar.update(1)
    cache.save()
    return points


def measure_image_run(record: RunRecord, out: Path, seed: int, device: str, bar: tqdm) -> ImagePictures:
    """Writes the sample grid, the denoising strip and the GIF of an image run into ``out/assets/NAME``."""
    from textdiffusion.apps.mnist import sample_images

    model = load(record.path, device=device)
    if not isinstance(model, ImageModel):
        raise ConfigError(f"{record.path} is not an image run")
    per_class = model.conditional
    n = IMAGES_PER_CLASS * model.classes if per_class else 32
    bar.set_postfix_str(f"{record.name}: images")
    res = sample_images(record.path, out=out / "assets" / record.name.replace("/", "__"), n=n,
                        sampler=IMAGE_SAMPLER["sampler"], steps=IMAGE_SAMPLER["steps"], eta=IMAGE_SAMPLER["eta"],
                        seed=seed, device=device)
    bar.update(1)
    return ImagePictures(files={k: str(Path(v).relative_to(out)) for k, v in res["files"].items()}, n=res["n"],
                         sampler=res.get("sampler"), steps=res.get("steps"),
                         seconds_per_image=res["seconds_per_image"], seed=seed, conditional=per_class)


def _evaluate_missing(records: list[RunRecord], device: str) -> None:
    from textdiffusion.evaluate import evaluate_text
    from textdiffusion.image_evaluation import evaluate_images

    for r in records:
        if r.eval is None:
            print(f"evaluating {r.path} ...", file=sys.stderr)
            if r.is_text:
                evaluate_text(r.path, device=device)
            else:
                evaluate_images(r.path, samples=1000, device=device, progress=False)


# ---- the whole command ------------------------------------------------------------------------------------
def _read_runs(run_dirs: list[str], evaluate: bool, device: str) -> list[RunRecord]:
    """One record per distinct directory, in the order given, with names that tell them apart."""
    seen: set[Path] = set()
    records = []
    for d in run_dirs:
        key = Path(os.path.realpath(d))  # unlike Path.resolve, never raises: a symlink loop is reported by read_run
        if key not in seen:
            seen.add(key)
            records.append(read_run(d))
    if evaluate:
        _evaluate_missing(records, device)
        records = [read_run(r.path) for r in records]
    return _unique_names(records)


def _measure(records: list[RunRecord], out: Path, length: int, sweep: list[int], samples: int, seed: int,
             device: str, progress: bool, refresh: bool, weights: list[float],
             temperatures: Sequence[float] = ()) -> None:
    """Fills in every record's ``text_results`` or ``images``, the guidance curves of labelled runs and the
    frontiers of text runs over ``temperatures``."""
    work = sum(2 + len(sweep) + len(temperatures) if r.is_text else 1 for r in records)
    judges = _Judges()
    with progress_bar(total=work, desc="compare", unit="job", disable=not progress) as bar:
        for r in records:
            if r.is_text:
                model = _open_text_run(r, length, device)
                r.text_results = measure_text_run(r, judges, length, sweep, samples, seed, device, refresh, bar,
                                                  model=model)
                r.text_results.frontier = measure_frontier(r, model, judges, temperatures, length, samples, seed,
                                                           refresh, bar)
                r.guidance = measure_text_guidance(r, model, judges, weights, length, samples, seed, refresh, bar)
            else:
                r.images = measure_image_run(r, out, seed, device, bar)
                if r.images.conditional:
                    r.guidance = measure_image_guidance(r, weights, samples, seed, device, refresh, progress, bar)


def _shown(record: RunRecord) -> RunRecord:
    """A run as the report shows it: its folder relative to the working directory (or by name) and its data
    by name and sha256, never an absolute local path (:mod:`textdiffusion.sharing`)."""
    ev = record.eval
    if isinstance(ev, dict) and isinstance(ev.get("run"), str):  # eval.json of earlier versions
        ev = {**ev, "run": shareable_path(ev["run"])}
    return replace(record, path=shareable_path(record.path), corpus=public_corpus_record(record.corpus), eval=ev)


def compare_runs(run_dirs: list[str], out: str | Path, samples: int = 32, length: int = 0,
                 sweep: str | list[int] = "4,16,64,256", seed: int = 0, device: str = "auto",
                 evaluate: bool = False, progress: bool = True, refresh: bool = False,
                 guidance: str | list[float] = DEFAULT_GUIDANCE,
                 temperatures: str | list[float] = "") -> dict[str, Path]:
    """Measure, then write ``comparison.json``, ``comparison.md`` and ``report.html`` into ``out``.
    ``guidance``: the scales of the accuracy-vs-fluency curves of runs trained with labels ("" or "none": no
    curves). ``temperatures``: those of each text run's frontier ("" or "none", the default: no frontier; each
    temperature costs one draw of ``samples`` samples per text run, as much as one sweep point)."""
    from textdiffusion.extras import require

    require(("jinja2", "markupsafe"), "report", "compare's report.html")
    from textdiffusion.viz.report import render_html, render_markdown

    if not run_dirs:
        raise ConfigError("compare needs at least one run directory")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    steps_list = parse_sweep(sweep) if isinstance(sweep, str) else sorted(set(sweep))
    weights = parse_guidance(guidance if isinstance(guidance, str) else ",".join(map(str, guidance)))
    temps = parse_temperatures(temperatures if isinstance(temperatures, str) else ",".join(map(str, temperatures)))
    out = Path(out)
    if is_symlink_loop(out):
        raise ConfigError(f"--out {symlink_loop_message(out)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    for name in REPORT_FILES:  # refused now, not after the measuring
        if (problem := not_regular_message(out / name)) is not None:
            raise ConfigError(f"--out {problem}")
    records = _read_runs(run_dirs, evaluate, device)
    contexts = [r.context for r in records if r.is_text and r.context]
    common = length or (min(contexts) if contexts else 0)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    _measure(records, out, common, steps_list, samples, seed, device, progress, refresh, weights, temps)
    settings = Settings(samples=samples, seeds=1, seed=seed, length=common, sweep=steps_list, device=device,
                        image_sampler=IMAGE_SAMPLER, max_frames=MAX_FRAMES,
                        seconds=round(time.perf_counter() - tic, 2), guidance=weights, temperatures=temps)
    comparison = Comparison(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=versions(), settings=settings,
                            judge_corpora=sorted({r.text_results.judge_corpus for r in records if r.text_results}),
                            runs=[_shown(r) for r in records])
    paths = {key: out / name for key, name in zip(("report", "markdown", "json"), REPORT_FILES, strict=True)}
    write_json(paths["json"], comparison.to_json(), through_links=True)
    md = render_markdown(comparison)
    html = render_html(comparison, out)
    for key, content in (("markdown", md), ("report", html)):
        write_text(paths[key], content, through_links=True)
    return paths
