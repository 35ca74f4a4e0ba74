"""The typed records of a comparison: what ``textdiffusion compare`` gathers and measures for each run, and
what :mod:`textdiffusion.viz.report` renders. ``to_json`` gives ``comparison.json``.

They live in the library (not beside the ``compare`` command) so the report reads them without depending on the
entry point that fills them in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from textdiffusion.records import ImageEval, InitRecord, Quality, SampleDistance, TextEval

FORMAT = "textdiffusion-comparison/1"
JUDGE = "character 5-gram, interpolated Witten-Bell (textdiffusion.evaluate.CharNgramJudge)"


# ---- the records ------------------------------------------------------------------------------------------
# Field order is the key order of comparison.json, which users and the tests read: keep it.
@dataclass
class ValEntry:
    """A run's validation number and what it is: the exact likelihood or an upper bound, where it was read."""

    value: float
    kind: str  # "exact" | "bound"
    unit: str  # "bits/char" | "bits/dim"
    stderr: float | None  # bits; one standard error of a Monte-Carlo bound, None when exact
    windows: Any  # held-out text windows or images scored, as recorded
    source: str  # the file it came from
    time_samples: int | None  # diffusion times drawn per window or image (bounds only)
    what: str  # the sentence the report's tooltip shows
    sampler: str | None = None  # the sampler an exact number of a diffusion method is the likelihood of
    sampler_note: str | None = None  # a bound that belongs to another sampler than the run's own says so here

    @classmethod
    def of(cls, value: float | None, kind: str | None, unit: str, source: str, windows: Any = None,
           stderr_nats: float | None = None, details: dict[str, Any] | None = None) -> ValEntry | None:
        """None unless the file recorded both the number and its kind: an unlabelled number is not shown."""
        if value is None or kind not in ("exact", "bound"):
            return None
        stderr = stderr_nats / math.log(2) if stderr_nats is not None and math.isfinite(stderr_nats) else None
        details = details or {}
        samples = details.get("time_samples_per_window") or details.get("time_samples_per_image")
        what = ("exact negative log-likelihood" if kind == "exact" else
                "upper bound on the negative log-likelihood (NELBO), a Monte-Carlo estimate")
        note = details.get("sampler_note")
        if note:
            what += f"; {note}"
        return cls(value, kind, unit, stderr, windows, source, samples, what, sampler_note=note)


@dataclass
class TrainSpeed:
    value: float | None
    unit: str  # "chars/s" | "images/s"


@dataclass
class Reference:
    """Real validation text scored like the samples, ``chars`` characters per window."""

    quality: Quality
    chars: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.quality), "chars": self.chars}


@dataclass
class SweepPoint:
    """One step count of the quality-vs-speed sweep: ``n`` samples, scored and timed."""

    requested_steps: int  # 0: the method's default step count
    steps: int  # the steps the sampler took
    sampler: str
    nfe: float  # network evaluations per sample
    sample_chars_per_s: float
    seconds: float
    quality: Quality  # spliced flat into the JSON here
    n: int
    seeds: int
    seed: int
    length: int
    chars_per_sample: float
    examples: list[str]
    distance: SampleDistance | None = None  # n-gram distance from held-out text (None: the split was too small)

    @property
    def default(self) -> bool:
        return self.requested_steps == 0

    def to_json(self) -> dict[str, Any]:
        """Flat, as in comparison.json and sweep.json; the default point says so with ``"default": true``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "distance":
                out["distance"] = value.to_json() if value is not None else None
            else:
                out.update(asdict(value) if f.name == "quality" else {f.name: value})
        return {**out, "default": True} if self.default else out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepPoint:
        """Raises KeyError or TypeError for a point written in another shape (one without ``distance``
        included: it was measured before the distance was)."""
        def read(name: str) -> Any:
            if name == "quality":
                return Quality.from_json(data)
            return SampleDistance.from_json(data["distance"]) if name == "distance" else data[name]

        return cls(**{f.name: read(f.name) for f in fields(cls)})


@dataclass
class FrontierPoint:
    """One temperature of a run's frontier (``compare --temperatures``): ``n`` samples drawn with the run's
    default sampler and steps at ``temperature``, scored like the sweep's points. Lowering the temperature
    buys judge perplexity with character entropy; the n-gram distance says what the trade cost."""

    temperature: float
    sampler: str
    steps: int
    n: int
    seed: int
    length: int
    seconds: float  # sampling only
    quality: Quality
    distance: SampleDistance | None
    example: str

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("quality", "distance")},
                "quality": self.quality.to_json(),
                "distance": self.distance.to_json() if self.distance is not None else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrontierPoint:
        """Raises KeyError or TypeError for a point written in another shape."""
        plain = {f.name: data[f.name] for f in fields(cls) if f.name not in ("quality", "distance")}
        return cls(**plain, quality=Quality.from_json(data["quality"]),
                   distance=SampleDistance.from_json(data["distance"]))


@dataclass
class SkippedPoint:
    steps: int
    why: str


@dataclass
class SampleSet:
    """The samples shown for a text run: the first few of the default sweep point."""

    texts: list[str]
    sampler: str
    steps: int
    seed: int
    length: int


@dataclass
class Frame:
    """One step of a denoising trajectory: the decoded text, its still-masked character positions and how
    many characters changed since the previous kept frame."""

    step: int
    t: float | None
    nfe: float | None
    text: str
    masked: list[int]
    changed: int


@dataclass
class Trajectory:
    sampler: str
    nfe: float
    steps_total: int
    frames_kept: int
    mask_char: str
    frames: list[Frame]
    final: str


@dataclass
class TextResults:
    """What ``compare`` measures for a text run."""

    judge_corpus: str
    reference: Reference
    sweep: list[SweepPoint]  # by steps
    samples: SampleSet
    trajectory: Trajectory
    device_measured: str
    sweep_skipped: list[SkippedPoint] = field(default_factory=list)
    # not in the JSON: the method takes no step count (ar writes one token per network evaluation), so the
    # sweep has one point and the trajectory grows left to right
    steps_fixed: bool = False
    frontier: list[FrontierPoint] = field(default_factory=list)  # by temperature; empty unless asked for

    @property
    def default_point(self) -> SweepPoint:
        return next(p for p in self.sweep if p.default)

    def to_json(self) -> dict[str, Any]:
        skipped = {"sweep_skipped": [asdict(s) for s in self.sweep_skipped]} if self.sweep_skipped else {}
        frontier = {"frontier": [p.to_json() for p in self.frontier]} if self.frontier else {}
        return {"judge_corpus": self.judge_corpus, "reference": self.reference.to_json(), **skipped,
                "sweep": [p.to_json() for p in self.sweep], **frontier, "samples": asdict(self.samples),
                "trajectory": asdict(self.trajectory), "device_measured": self.device_measured}


@dataclass
class ImagePictures:
    """What ``compare`` draws for an image run; ``files`` are relative to the output folder."""

    files: dict[str, str]  # "grid" | "strip" | "gif" -> path
    n: int
    sampler: str | None
    steps: int | None
    seconds_per_image: float
    seed: int
    conditional: bool


@dataclass
class GuidancePoint:
    """One scale w of a guidance curve: the samples drawn for every label at w, scored for how often the judge
    (text: the speaker judge; images: the evaluation classifier) names the label asked for, and for fluency
    (text: the evaluation judge's perplexity, word validity, distinct-2; images: FID). The fields of the other
    kind are None."""

    rule: str  # "free": classifier-free guidance (the backbone's own label embedding)
    w: float
    accuracy: float  # share of samples the judge assigns the requested label
    samples: int  # over all labels
    seed: int
    seconds: float  # sampling only
    judge_ppl: float | None = None  # text
    word_validity: float | None = None
    distinct_2: float | None = None
    chars_per_s: float | None = None
    length: int | None = None  # tokens per sample
    chars_per_sample: float | None = None
    example: str | None = None  # the first sample written as the first label
    fid: float | None = None  # images
    images_per_s: float | None = None
    sampler: str | None = None
    steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Only the fields of its kind, as in comparison.json and the cache."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuidancePoint:
        """Raises KeyError or TypeError for a point written in another shape."""
        names = {f.name for f in fields(cls)}
        if not names >= set(data):
            raise KeyError(sorted(set(data) - names))
        return cls(**data)


@dataclass
class GuidanceCurve:
    """Accuracy against fluency over the guidance scale, for a run trained with labels (``compare --guidance``).

    ``reference_accuracy`` is the scale: the same judge on real data (text: held-out real speeches cut to the
    samples' length; images: the classifier's test accuracy), so a point at that accuracy is as recognisable
    as the real thing. ``chance`` is 1 / number of labels."""

    kind: str  # "text" | "image"
    rule: str
    judge: str  # what scores accuracy
    labels: list[str]
    chance: float
    reference_accuracy: float | None
    reference_what: str
    points: list[GuidancePoint]  # by w

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "points"},
                "points": [p.to_json() for p in self.points]}


@dataclass
class RunRecord:
    """One run in the comparison: what its directory holds (:func:`read_run`), then what ``compare``
    measured (``text_results`` or ``images``)."""

    name: str
    path: str
    kind: str  # "text" | "image"
    method: str
    preset: str
    parameters: int | None
    step: int
    train_steps: int | None
    elapsed: float | None
    seed: int | None
    device: str | None
    created: str | None
    tokenizer: str | None  # text runs
    context: int | None  # text runs
    corpus: dict[str, Any]
    sampling_config: dict[str, Any]
    val: ValEntry | None
    train_speed: TrainSpeed
    curves: list[dict[str, float]]  # metrics.jsonl rows: step, elapsed, train_loss, curve_val_key
    curve_val_key: str
    eval: dict[str, Any] | None  # eval.json as written, when it is of this checkpoint (copied into the JSON)
    eval_note: str | None  # why there is no (current) eval.json
    text_results: TextResults | None = None
    images: ImagePictures | None = None
    guidance: list[GuidanceCurve] = field(default_factory=list)  # one per guidance rule; none for unlabelled runs
    init: InitRecord | None = None  # the run whose weights this one started from (train.init_from)
    # the exact NLL: ar's validation number; masked and block's of their left_to_right sampler (eval.json, else
    # final.json); None where the run has none
    exact: ValEntry | None = None

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    @property
    def text_eval(self) -> TextEval | None:
        """A text run's eval.json as its record; None without one, or for one of another shape."""
        if not self.is_text or not self.eval:
            return None
        try:
            return TextEval.from_json(self.eval)
        except (KeyError, TypeError, AttributeError):
            return None

    @property
    def image_eval(self) -> ImageEval | None:
        """An image run's eval.json as its record (None without one)."""
        return ImageEval.from_json(self.eval) if not self.is_text and self.eval else None

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("text_results", "images", "guidance", "init")}
        out.update(val=asdict(self.val) if self.val else None, train_speed=asdict(self.train_speed),
                   exact=asdict(self.exact) if self.exact else None)
        if self.text_results is not None:
            out.update(self.text_results.to_json())
        if self.images is not None:
            out["images"] = asdict(self.images)
        if self.guidance:
            out["guidance"] = [c.to_json() for c in self.guidance]
        if self.init is not None:
            out["init_from"] = self.init.to_json()
        return out


@dataclass
class Settings:
    samples: int
    seeds: int
    seed: int
    length: int  # the common sample length (tokens of each run's tokenizer)
    sweep: list[int]
    device: str
    image_sampler: dict[str, Any]
    max_frames: int
    seconds: float
    guidance: list[float] = field(default_factory=list)  # the scales of the guidance curves (labelled runs)
    temperatures: list[float] = field(default_factory=list)  # the frontier's temperatures (none: no frontier)


@dataclass
class Comparison:
    """Everything ``compare`` writes; :meth:`to_json` is ``comparison.json``."""

    created: str
    versions: dict[str, str]
    settings: Settings
    judge_corpora: list[str]
    runs: list[RunRecord]
    judge_kind: str = JUDGE

    @property
    def text_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.is_text]

    @property
    def image_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.is_text]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "created": self.created, "versions": self.versions,
                "settings": asdict(self.settings), "judge": {"kind": self.judge_kind, "corpora": self.judge_corpora},
                "runs": [r.to_json() for r in self.runs]}


# ---- what a run directory already holds ----------------------------------------------------------------
