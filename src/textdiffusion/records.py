"""What each stage leaves in a run directory, as typed records with their JSON form.

* :class:`TrainSummary`: what training returns, and ``final.json`` once the run has finished and scored its
  validation split (:class:`FinalScore`, with :class:`ExactScore` beside a bound);
* :class:`EvalRow` and :class:`TrainRow`: the rows of ``metrics.jsonl`` (an evaluation every
  ``train.eval_every`` steps; a train row every ``train.log_every`` steps, marked ``"kind": "train"``);
* :class:`TextEval`: the ``eval.json`` of ``textdiffusion eval``; :class:`ImageEval`: the one of
  ``textdiffusion mnist eval``.

Each record's ``to_json`` writes the keys in the order the files have always had, so a run directory reads
the same to any tool that read it before; ``from_json`` (and ``read``) accept files of every version, older
ones missing fields as ``None``. Readers take these types instead of re-reading dicts by string keys: the
key names live here and nowhere else. The module imports no torch (the loggers and the command line's help
read it); the JSON files are read and written by :mod:`textdiffusion.checkpoint`'s atomic helpers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from textdiffusion.errors import CheckpointError
from textdiffusion.files import write_text
from textdiffusion.json_reading import JSONProblem, parse_json

FINAL = "final.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
TRAIN_KIND = "train"  # the "kind" of a train row; an evaluation row carries none


def val_key(unit: str) -> str:
    """The name of a validation number in bits: ``val_bpc`` per character, ``val_bpd`` per image dimension."""
    return "val_bpc" if unit == "char" else "val_bpd"


def rate_key(data_unit: str) -> str:
    """The name of a throughput: ``chars_per_s`` or ``images_per_s`` (``data_unit``: "chars" | "images")."""
    return f"{data_unit}_per_s"


def _unit_of(row: dict[str, Any]) -> str | None:
    """The method unit ("char" | "dim") whose bits a row records, or None when it records none."""
    return next((u for u in ("char", "dim") if val_key(u) in row), None)


def _data_unit_of(row: dict[str, Any]) -> str | None:
    return next((u for u in ("chars", "images") if rate_key(u) in row), None)


def _measured(d: dict[str, Any], key: str) -> Any:
    """``d[key]``, a measured number: written as null (json_writing writes NaN and infinity so), it is read back
    as NaN, which every printer and comparison takes; a missing key stays None."""
    return math.nan if key in d and d[key] is None else d.get(key)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing or unreadable (a reader then shows no number)."""
    from textdiffusion.checkpoint import read_json

    if not path.exists():
        return None
    try:
        obj = read_json(path)
    except CheckpointError:
        return None
    return obj if isinstance(obj, dict) else None


# ---- final.json ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreKey:
    """What a validation number is a function of (:mod:`textdiffusion.final_score` computes it): the
    checkpoint's step, a digest of the scored weights, how many evenly spread windows were scored, and a
    digest of the settings that move the number. Two scores with equal keys are the same number."""

    step: int
    weights: str  # sha256 of the weights' tensors
    windows: int  # evenly spread validation windows (the split's count: all of them)
    settings: str  # sha256 of the method, network and data options, precision and batch size

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> ScoreKey | None:
        """None for a record without a key (written before keys were) or with a damaged one."""
        if not isinstance(d, dict):
            return None
        try:
            return cls(int(d["step"]), str(d["weights"]), int(d["windows"]), str(d["settings"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class ExactScore:
    """The exact NLL of a method whose validation number is a bound (masked, block), scored beside it: the
    likelihood of the sampler named ``sampler`` (one token per step, left to right), which a user can run. It
    costs a network pass per token of a window (per position of a block, for block), so it takes its own,
    smaller count of evenly spread validation windows: ``windows`` of ``windows_of``. ``key`` (final.json) is
    what the number is a function of; ``reused_from`` (eval.json) names the record it was read from."""

    bits: float  # per character
    nats: float
    windows: int
    chars: int
    sampler: str
    details: dict[str, Any] = field(default_factory=dict)  # the method's (order, stderr_nats, note, ...)
    windows_of: int | None = None
    key: ScoreKey | None = None
    reused_from: str | None = None

    @property
    def label(self) -> str:
        """How a table names the number: exact, and whose likelihood it is."""
        return f"exact: the likelihood of --sampler {self.sampler}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bpc": self.bits, "nats_per_char": self.nats, "kind": "exact", "sampler": self.sampler,
                               "windows": self.windows, "chars": self.chars, "details": self.details}
        if self.windows_of is not None:
            out["windows_of"] = self.windows_of
        if self.key is not None:
            out["key"] = self.key.to_json()
        if self.reused_from is not None:
            out["reused_from"] = self.reused_from
        return out

    @classmethod
    def from_json(cls, d: Any) -> ExactScore | None:
        """None for a record without one (ar's, or written before it was scored) or a damaged one."""
        if not isinstance(d, dict):
            return None
        try:
            details = d.get("details")
            return cls(float(d["bpc"]), float(d["nats_per_char"]), int(d["windows"]), int(d["chars"]),
                       str(d["sampler"]), details if isinstance(details, dict) else {}, d.get("windows_of"),
                       ScoreKey.from_json(d.get("key")), d.get("reused_from"))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class FinalScore:
    """The validation split scored at the end of training with the EMA weights (and the raw ones, with
    ``train.final_eval_raw``). ``unit`` is the method's ("char" | "dim"), naming the bits' key. ``windows``
    of ``windows_of`` were scored: fewer than all when ``train.final_eval_windows`` or, with ``budget`` set,
    ``train.final_eval_budget`` bounded them (records written before say neither: None)."""

    unit: str
    bits: float
    nats: float
    kind: str  # "exact" | "bound"
    windows: int  # text windows or images scored
    details: dict[str, Any] = field(default_factory=dict)  # the method's own terms (stderr_nats, ...)
    raw_bits: float | None = None
    raw_nats: float | None = None
    windows_of: int | None = None  # the validation split's windows (or images)
    units: int | None = None  # the characters (text) or images scored
    budget: float | None = None  # the fraction of the training time that bounded the count, if it did
    key: ScoreKey | None = None  # what the number is a function of, so eval can reuse it
    exact: ExactScore | None = None  # a bound's method (masked, block): the exact NLL of its left_to_right sampler

    @property
    def bounded(self) -> bool:
        """Whether fewer than all the split's windows were scored."""
        return self.windows_of is not None and self.windows < self.windows_of

    def to_json(self) -> dict[str, Any]:
        key = val_key(self.unit)
        out = {key: self.bits, "val_nats": self.nats, "val_kind": self.kind, "val_windows": self.windows,
               "val_details": self.details}
        if self.raw_bits is not None:
            out.update({key + "_raw": self.raw_bits, "val_nats_raw": self.raw_nats})
        if self.windows_of is not None:
            out["val_windows_of"] = self.windows_of
        if self.units is not None:
            out["val_units"] = self.units
        if self.budget is not None:
            out["val_budget"] = self.budget
        if self.key is not None:
            out["val_key"] = self.key.to_json()
        if self.exact is not None:
            out["val_exact"] = self.exact.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FinalScore | None:
        """None when the record holds no validation number (training stopped before scoring)."""
        unit = _unit_of(d)
        if unit is None:
            return None
        key = val_key(unit)
        details = d.get("val_details")
        return cls(unit, _measured(d, key), _measured(d, "val_nats"), d.get("val_kind"), d.get("val_windows"),
                   details if isinstance(details, dict) else {}, d.get(key + "_raw"), d.get("val_nats_raw"),
                   d.get("val_windows_of"), d.get("val_units"), d.get("val_budget"),
                   ScoreKey.from_json(d.get("val_key")), ExactScore.from_json(d.get("val_exact")))


@dataclass(frozen=True)
class InitRecord:
    """Where a run's weights came from when ``train.init_from`` started it from another run: that run's id
    and the step of its weights, and what training them cost (its steps and training seconds, None when the
    source recorded no final.json), so a table can count them in this run's cost. ``total_steps`` and
    ``total_elapsed`` add what the source's own start cost when it too started from a run."""

    run: str  # the source run as it was given
    run_id: str
    step: int
    steps: int | None
    elapsed: float | None
    total_steps: int | None = None
    total_elapsed: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "run_id": self.run_id, "step": self.step, "steps": self.steps,
                "elapsed": self.elapsed, "total_steps": self.cost_steps, "total_elapsed": self.cost_elapsed}

    @classmethod
    def from_json(cls, d: Any) -> InitRecord | None:
        if not isinstance(d, dict):
            return None
        return cls(str(d.get("run", "")), str(d.get("run_id", "")), int(d.get("step", 0)), d.get("steps"),
                   d.get("elapsed"), d.get("total_steps"), d.get("total_elapsed"))

    @property
    def cost_steps(self) -> int | None:
        """Training steps behind the source's weights, its own start's included (None: not recorded)."""
        return self.total_steps if self.total_steps is not None else self.steps

    @property
    def cost_elapsed(self) -> float | None:
        """Training seconds behind the source's weights, its own start's included (None: not recorded)."""
        return self.total_elapsed if self.total_elapsed is not None else self.elapsed

    def label(self) -> str:
        return f"started from {self.run} at step {self.step}"


@dataclass(frozen=True)
class DistillRecord:
    """The teacher of a student trained by ``train.distill_from`` (self-distillation through time): the teacher
    run as :class:`InitRecord` names a source (the student also starts from its weights), the student's sampling
    steps and the teacher's steps it learned to match (``steps`` times ``train.distill_substeps``)."""

    teacher: InitRecord
    steps: int  # the student's sampling steps (per block for block diffusion)
    teacher_steps: int  # the teacher's steps over the same time: one student step matches teacher_steps / steps

    def to_json(self) -> dict[str, Any]:
        return {**self.teacher.to_json(), "student_steps": self.steps, "teacher_steps": self.teacher_steps}

    @classmethod
    def from_json(cls, d: Any) -> DistillRecord | None:
        teacher = InitRecord.from_json(d)
        if teacher is None:
            return None
        return cls(teacher, int(d.get("student_steps", 0)), int(d.get("teacher_steps", 0)))

    def label(self) -> str:
        return (f"distilled from {self.teacher.run} at step {self.teacher.step}: {self.steps} sampling steps for "
                f"its {self.teacher_steps}")


@dataclass
class TrainSummary:
    """What a training session ends with: where it stopped and why, its throughput, and the final score once
    the run finished. Written as ``final.json`` (the run's headline result) when it holds a score."""

    run_dir: str
    step: int
    steps: int  # the schedule's length
    elapsed: float  # training seconds, summed over resumes, evaluation excluded
    interrupted: bool  # by a signal (or while scoring): the run resumes
    out_of_time: bool  # train.time_budget_s was spent: the run counts as finished
    rate: float  # data units per second of training
    unit: str  # the data's unit: "chars" | "images"
    score: FinalScore | None = None
    scoring_interrupted: bool = False  # a signal stopped the final scoring: final.json was not written
    init: InitRecord | None = None  # the run whose weights this one started from (train.init_from)
    distill: DistillRecord | None = None  # the teacher of a student (train.distill_from)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_dir": self.run_dir, "step": self.step, "steps": self.steps,
                               "elapsed": self.elapsed, "interrupted": self.interrupted,
                               "out_of_time": self.out_of_time, rate_key(self.unit): self.rate, "unit": self.unit}
        if self.score is not None:
            out.update(self.score.to_json())
        if self.scoring_interrupted:
            out["scoring_interrupted"] = True
        if self.init is not None:
            out["init_from"] = self.init.to_json()
        if self.distill is not None:
            out["distill_from"] = self.distill.to_json()
        if self.source is not None:
            out["total_steps"], out["total_elapsed"] = self.total_steps, self.total_elapsed
        return out

    @property
    def source(self) -> InitRecord | None:
        """The run whose weights this one started from: train.init_from's, or a student's teacher."""
        if self.init is not None:
            return self.init
        return self.distill.teacher if self.distill is not None else None

    @property
    def total_steps(self) -> int | None:
        """The run's training cost in steps: its own, plus the source's when it started from a run (None when
        the source's is not recorded)."""
        if self.source is None:
            return self.step
        return None if self.source.cost_steps is None else self.step + self.source.cost_steps

    @property
    def total_elapsed(self) -> float | None:
        """Training seconds, the source's counted as :attr:`total_steps` counts its steps."""
        if self.source is None:
            return self.elapsed
        return None if self.source.cost_elapsed is None else self.elapsed + self.source.cost_elapsed

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainSummary:
        unit = d.get("unit") or _data_unit_of(d) or "chars"
        return cls(str(d.get("run_dir", "")), d.get("step"), d.get("steps"), d.get("elapsed"),
                   bool(d.get("interrupted")), bool(d.get("out_of_time")), d.get(rate_key(unit)), unit,
                   FinalScore.from_json(d), bool(d.get("scoring_interrupted")),
                   InitRecord.from_json(d.get("init_from")), DistillRecord.from_json(d.get("distill_from")))

    def write(self, run_dir: Path) -> None:
        """``final.json``, with the run directory as it may be shown elsewhere (never an absolute path)."""
        from textdiffusion.checkpoint import write_json
        from textdiffusion.sharing import shareable_path

        write_json(Path(run_dir) / FINAL, {**self.to_json(), "run_dir": shareable_path(self.run_dir)})

    @classmethod
    def read(cls, run_dir: Path | str) -> TrainSummary | None:
        """A run's final.json, or None when it has none (still training, or an unreadable file)."""
        d = read_json_object(Path(run_dir) / FINAL)
        return cls.from_json(d) if d is not None else None


# ---- metrics.jsonl ---------------------------------------------------------------------------------------
@dataclass
class EvalRow:
    """An evaluation row: the EMA weights' validation number at ``step``, the smoothed training loss and the
    throughput since the previous evaluation."""

    step: int
    train_loss: float | None
    unit: str  # the method's: "char" | "dim" (names the bits' key)
    bits: float | None
    nats: float | None = None
    kind: str | None = None  # "exact" | "bound"
    windows: int | None = None
    lr: float | None = None
    data_unit: str = "chars"  # "chars" | "images" (names the rate's key)
    rate: float | None = None
    elapsed: float | None = None
    mfu: float | None = None  # model FLOPs utilisation, on a GPU whose peak is known
    # beside a bound, the exact NLL of the method's exact_sampler on its own windows (train.eval_exact_windows)
    exact_nats: float | None = None
    exact_windows: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"step": self.step, "train_loss": self.train_loss, val_key(self.unit): self.bits,
               "val_nats": self.nats, "val_kind": self.kind, "val_windows": self.windows, "lr": self.lr,
               rate_key(self.data_unit): self.rate, "elapsed": self.elapsed}
        if self.mfu is not None:
            out["mfu"] = self.mfu
        if self.exact_nats is not None:
            out["val_exact_nats"], out["val_exact_windows"] = self.exact_nats, self.exact_windows
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalRow:
        unit, data_unit = _unit_of(d) or "char", _data_unit_of(d) or "chars"
        return cls(d["step"], d.get("train_loss"), unit, d.get(val_key(unit)), d.get("val_nats"), d.get("val_kind"),
                   d.get("val_windows"), d.get("lr"), data_unit, d.get(rate_key(data_unit)), d.get("elapsed"),
                   d.get("mfu"), d.get("val_exact_nats"), d.get("val_exact_windows"))


@dataclass
class TrainRow:
    """A train row: means over the steps since the previous one (loss, pre-clip gradient norm), the
    learning rate of its last step, the throughput in data units and, for text, in positions the network
    processes (``tokens_per_s``)."""

    step: int
    train_loss: float
    lr: float
    grad_norm: float
    grad_norm_max: float
    data_unit: str  # "chars" | "images"
    rate: float
    elapsed: float
    tokens_per_s: float | None = None
    mfu: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "kind": TRAIN_KIND, "train_loss": self.train_loss, "lr": self.lr,
                               "grad_norm": self.grad_norm, "grad_norm_max": self.grad_norm_max,
                               rate_key(self.data_unit): self.rate}
        if self.tokens_per_s is not None:
            out["tokens_per_s"] = self.tokens_per_s
        out["elapsed"] = self.elapsed
        if self.mfu is not None:
            out["mfu"] = self.mfu
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainRow:
        data_unit = _data_unit_of(d) or "chars"
        return cls(d["step"], d.get("train_loss"), d.get("lr"), d.get("grad_norm"), d.get("grad_norm_max"),
                   data_unit, d.get(rate_key(data_unit)), d.get("elapsed"), d.get("tokens_per_s"), d.get("mfu"))


MetricsRow = EvalRow | TrainRow


def row_kind(row: dict[str, Any]) -> str:
    """``"train"`` for a train row's JSON, ``"eval"`` for an evaluation row's (which carries no ``kind``)."""
    kind = row.get("kind", "eval")
    return kind if isinstance(kind, str) else "eval"


def parse_row(d: dict[str, Any]) -> MetricsRow:
    return TrainRow.from_json(d) if row_kind(d) == TRAIN_KIND else EvalRow.from_json(d)


def _row_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The readable rows of a metrics file with their lines: a line cut short by a kill, or one that is not
    a row with an integer step, is skipped (the rest is still good)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = parse_json(line)
        except JSONProblem:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            out.append((line, row))
    return out


def read_metrics(run_dir: Path | str) -> list[MetricsRow]:
    """The rows of a run's metrics.jsonl, in order (none when it has no file)."""
    return [parse_row(row) for _, row in _row_lines(Path(run_dir) / METRICS)]


def held_nonfinite(row: MetricsRow) -> bool:
    """Whether ``row`` held a NaN or an infinity: one still bare in a file written before they were written as
    null, or a null where the row always has a number (a train row's loss, a measured evaluation's value)."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in asdict(row).values()):
        return True
    if isinstance(row, TrainRow):
        return row.train_loss is None or row.grad_norm is None
    return row.kind is not None and (row.bits is None or row.nats is None)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the rows up to ``step`` (the checkpoint a run resumes from: later ones will be recomputed), as
    they were written, and drop a last line cut short by a kill. One atomic rewrite, so a crash mid-write
    cannot cost the rows already recorded."""
    path = Path(run_dir) / METRICS
    if path.exists():
        keep = [line for line, row in _row_lines(path) if row["step"] <= step]
        write_text(path, "".join(ln + "\n" for ln in keep))


# ---- eval.json of a text run -----------------------------------------------------------------------------
@dataclass
class Quality:
    """The judge's scores of a set of texts (:meth:`textdiffusion.evaluate.TrainingReference.quality`)."""

    judge_ppl: float
    word_validity: float
    distinct_2: float
    repetition: float
    copy_rate: float
    words: int
    char_entropy: float = math.nan  # bits; missing from records written before it was measured

    def to_json(self) -> dict[str, Any]:
        """In the order ``TrainingReference.quality`` reports them (eval.json's)."""
        return {"judge_ppl": self.judge_ppl, "word_validity": self.word_validity, "distinct_2": self.distinct_2,
                "repetition": self.repetition, "copy_rate": self.copy_rate, "char_entropy": self.char_entropy,
                "words": self.words}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quality:
        """Raises TypeError for scores written in another shape (a required one missing)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class SampleDistance:
    """How far samples are from real held-out text as character n-gram distributions
    (:func:`textdiffusion.sample_distance.sample_distance`): the Jensen-Shannon divergence in bits averaged
    over ``orders``, and the floor, the value a second slice of real text of the same size reaches."""

    js_bits: float
    floor_bits: float
    orders: list[int]
    per_order: list[float]  # JS of each order, bits
    floor_per_order: list[float]
    texts: int  # samples compared (the first ones, when the held-out text holds fewer than all)
    texts_of: int  # samples given
    chars: int  # characters of the samples compared; each real slice has as many

    @property
    def excess(self) -> float:
        """What the sampler costs beyond the sampling noise of real text: ``js_bits - floor_bits``."""
        return self.js_bits - self.floor_bits

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> SampleDistance | None:
        """None for a record of another shape (or none)."""
        if not isinstance(d, dict):
            return None
        try:
            return cls(**{f.name: d[f.name] for f in fields(cls)})
        except KeyError:
            return None


@dataclass
class ValScore:
    """eval.json's ``val``: the validation number in bits and nats per character, whether it is exact, what
    was scored, and the method's own terms (``details``, spliced flat into the JSON)."""

    bpc: float
    nats_per_char: float
    kind: str
    windows: int
    chars: int
    details: dict[str, Any] = field(default_factory=dict)
    reused_from: str | None = None  # the record whose identical score was returned (final.json), if one was
    windows_of: int | None = None  # the validation split's windows, when a reused score covered fewer

    def to_json(self) -> dict[str, Any]:
        out = {"bpc": self.bpc, "nats_per_char": self.nats_per_char, "kind": self.kind, "windows": self.windows,
               "chars": self.chars, **self.details}
        if self.reused_from is not None:
            out["reused_from"] = self.reused_from
        if self.windows_of is not None:
            out["windows_of"] = self.windows_of
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ValScore:
        names = ("bpc", "nats_per_char", "kind", "windows", "chars")
        extra = (*names, "reused_from", "windows_of")
        return cls(*(_measured(d, k) for k in names), {k: v for k, v in d.items() if k not in extra},
                   d.get("reused_from"), d.get("windows_of"))


@dataclass
class SampleSettings:
    """eval.json's ``samples``: how the scored samples were drawn, and the first few of them."""

    n: int
    length: int
    sampler: str
    steps: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    overrides: list[str]
    examples: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SampleSettings:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass
class SampleSpeed:
    """eval.json's ``speed``: sampling time, generated characters per second, network evaluations per sample
    and the method's own per-sample numbers (``stats``, spliced flat)."""

    seconds: float | None
    sample_chars_per_s: float | None
    nfe_per_sample: float
    stats: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "sample_chars_per_s": self.sample_chars_per_s,
                "nfe_per_sample": self.nfe_per_sample, **self.stats}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SampleSpeed:
        names = ("seconds", "sample_chars_per_s", "nfe_per_sample")
        return cls(*(d.get(k) for k in names), {k: v for k, v in d.items() if k not in names})


@dataclass
class LabelNote:
    """eval.json's ``labels`` (a run trained on labels): their names, and what the samples and the validation
    number are conditioned on."""

    names: list[str]
    samples: str
    val: str


@dataclass
class TextEval:
    """``textdiffusion eval``'s result, written as the run's eval.json."""

    run: str
    method: str
    preset: str
    step: int
    weights: str  # "ema"
    parameters: int
    device: str
    val: ValScore
    samples: SampleSettings
    quality: Quality | None
    reference: Quality | None  # real validation text, scored like the samples
    reference_what: str
    speed: SampleSpeed
    judge: dict[str, Any]  # kind, fitted_on, chars
    labels: LabelNote | None = None
    exact: ExactScore | None = None  # beside a bound (masked, block): the exact NLL of the left_to_right sampler
    distance: SampleDistance | None = None  # n-gram distance from held-out text; None in older files
    not_written: str = ""  # why eval.json could not be written (a read-only run, a full disk); not in the file

    def to_json(self) -> dict[str, Any]:
        out = {"run": self.run, "method": self.method, "preset": self.preset, "step": self.step,
               "weights": self.weights, "parameters": self.parameters, "device": self.device,
               "val": self.val.to_json(), **({"exact": self.exact.to_json()} if self.exact else {}),
               "samples": self.samples.to_json(),
               "quality": self.quality.to_json() if self.quality else None,
               "reference": {**(self.reference.to_json() if self.reference else {}), "what": self.reference_what},
               "speed": self.speed.to_json(), "judge": self.judge}
        if self.labels is not None:
            out["labels"] = asdict(self.labels)
        if self.distance is not None:
            out["distance"] = self.distance.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TextEval:
        """Raises KeyError or TypeError for a file that is not a text run's eval.json."""
        def quality(part: Any) -> Quality | None:
            try:
                return Quality.from_json(part) if isinstance(part, dict) else None
            except TypeError:
                return None

        ref = d.get("reference") if isinstance(d.get("reference"), dict) else {}
        labels = d.get("labels")
        return cls(d.get("run"), d.get("method"), d.get("preset"), d.get("step"), d.get("weights"),
                   d.get("parameters"), d.get("device"), ValScore.from_json(d["val"]),
                   SampleSettings.from_json(d["samples"]), quality(d.get("quality")), quality(ref),
                   ref.get("what", ""), SampleSpeed.from_json(d.get("speed") or {}), d.get("judge") or {},
                   LabelNote(**labels) if isinstance(labels, dict) else None, ExactScore.from_json(d.get("exact")),
                   SampleDistance.from_json(d.get("distance")))

    def write(self, run_dir: Path) -> None:
        from textdiffusion.checkpoint import write_json

        write_json(Path(run_dir) / EVAL, self.to_json())


# ---- eval.json of an image run ---------------------------------------------------------------------------
@dataclass
class ImageEval:
    """``textdiffusion mnist eval``'s result (eval.json of an image run): FID and class accuracy of the
    generated images in the evaluation classifier's features, how they were drawn, and the sampling time.
    ``info`` holds what else the file records (the sampler's own numbers), in its order."""

    step: int | None
    samples: int | None
    sampler: str | None
    steps: int | None
    eta: float | None
    guidance: float | None
    fid: float | None
    class_accuracy: float | None
    classifier_test_accuracy: float | None  # the evaluation classifier's accuracy on the test split
    seconds: float | None  # sampling time of all the images
    seconds_per_image: float | None
    device: str | None
    info: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()  # the record's keys in the order it was written, so a re-write keeps it
    not_written: str = ""  # why eval.json could not be written (a read-only run, a full disk); not in the file

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageEval:
        names = [f.name for f in fields(cls) if f.name not in ("info", "keys", "not_written")]
        return cls(**{k: d.get(k) for k in names}, info={k: v for k, v in d.items() if k not in names},
                   keys=tuple(d))

    def to_json(self) -> dict[str, Any]:
        """The record as written: its keys in their order, each named field's value, the rest from ``info``."""
        own = {f.name for f in fields(self)} - {"info", "keys", "not_written"}
        return {k: getattr(self, k) if k in own else self.info[k] for k in self.keys}


def read_eval(run_dir: Path | str) -> dict[str, Any] | None:
    """A run's eval.json as written (a text or an image run's), or None when it has none or it is unreadable."""
    return read_json_object(Path(run_dir) / EVAL)
