"""The runs the live page samples from: each opened once at startup, with the limits a request is checked
against. Every limit comes from the run's method (its samplers, step counts, whether it fills blanks or
writes past its context), so nothing here knows one method from another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textdiffusion.api import ImageModel, TextModel, load
from textdiffusion.checkpoint import CheckpointError, recorded_method
from textdiffusion.config import ConfigError
from textdiffusion.data.tokenizer import CharTokenizer, Tokenizer
from textdiffusion.files import file_as_run_message, is_symlink_loop, symlink_loop_message
from textdiffusion.methods import REGISTRY, TextMethod
from textdiffusion.records import TrainSummary

# a method that may write past its context (ar slides its window) could be asked for any length: this factor
# of the context keeps a request short enough to watch
PAST_CONTEXT_FACTOR = 4
MAX_GUIDANCE = 20.0  # the page's guidance slider: past it, text falls apart (BENCHMARKS.md, guidance on text)
OTHER_TOKENIZER_CHARS = 8  # BPE/WordPiece: characters of input allowed per token of context, before tokenizing


@dataclass
class ServedRun:
    """A loaded text run (the Python API's model, which samples it) and the limits a request is checked against."""

    name: str
    model: TextModel
    method: TextMethod
    tok: Tokenizer
    samplers: tuple[str, ...]  # what a request may pick: the method's interactive samplers
    default_sampler: str
    default_steps: int | None  # None: the step count is not a choice (the method takes one step per token)
    max_steps: int  # the server's --max-steps, or the method's training grid if that is smaller
    default_length: int
    max_length: int
    max_chars: int  # the longest input text, in characters, before anything is encoded
    info: dict[str, Any] = field(default_factory=dict)  # what /api/runs says about it

    @property
    def unit(self) -> str:
        """What lengths count, in the words of a message."""
        return "characters" if self.tok.kind == "char" else "tokens"


def load_runs(run_dirs: Sequence[str | Path], device: str = "auto", max_steps: int = 1000,
              max_chars: int | None = None) -> dict[str, ServedRun]:
    """Open every run once. A directory given twice is served once; two runs with the same directory name
    are told apart by their parent directory (and a number if that is not enough)."""
    if not run_dirs:
        raise ConfigError("serve needs at least one text run directory")
    runs: dict[str, ServedRun] = {}
    seen: set[Path] = set()
    for given in run_dirs:
        path = Path(given)
        _check_run_dir(path)
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        name = _unique_name(path, runs)
        runs[name] = serve_run(name, load(path, device=device), max_steps, max_chars)
    return runs


def _check_run_dir(path: Path) -> None:
    """The checks that need no loading: a missing directory, or a run of a method that does not sample
    text, is a one-line error naming the command to use instead."""
    if not path.is_dir() and is_symlink_loop(path):
        raise CheckpointError(symlink_loop_message(path))
    if (problem := file_as_run_message(path)) is not None:
        raise CheckpointError(problem)
    if not path.is_dir():
        raise CheckpointError(f"run directory {path} does not exist; pass the directory `textdiffusion train` or "
                              f"`textdiffusion mnist train` printed (it holds config.json)")
    method = recorded_method(path)
    # the registry, not the name, says what a method samples
    if method in REGISTRY and REGISTRY[method].family != "text":
        raise ConfigError(f"{path} is an image run and the live page is for text; use "
                              f"`textdiffusion mnist sample {path}`")


def _unique_name(path: Path, taken: dict[str, ServedRun]) -> str:
    """The directory's name; its parent's name in front if that is taken, then a number."""
    name = path.resolve().name
    if name in taken:
        name = f"{path.resolve().parent.name}/{name}"
    base, k = name, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    return name


def serve_run(name: str, model: TextModel | ImageModel, max_steps: int, max_chars: int | None = None) -> ServedRun:
    """A loaded run with its limits: ``max_steps`` is the server's cap on steps, ``max_chars`` an optional
    cap on input texts (default: what fits in the run's context)."""
    if not isinstance(model, TextModel):
        raise ConfigError(f"{model.path} is not a text run; the live page samples text")
    method, tok = model.text_method, model.tokenizer
    samplers = method.interactive_samplers()
    if not samplers:
        raise ConfigError(f"{model.path} offers no sampler the live page can run; use `textdiffusion sample`")
    default_sampler = method.default_sampler if method.default_sampler in samplers else samplers[0]
    run_max_steps = min(max_steps, method.max_steps or max_steps)
    context = method.model_cfg.context
    default_steps = method.default_steps(context, default_sampler)
    if default_steps is not None:
        default_steps = min(default_steps, run_max_steps)
    max_length = context * PAST_CONTEXT_FACTOR if method.extends_past_context else context
    chars = max_length if tok.kind == "char" else max_length * OTHER_TOKENIZER_CHARS
    served = ServedRun(name, model, method, tok, samplers, default_sampler, default_steps, run_max_steps, context,
                       max_length, chars if max_chars is None else min(chars, max_chars))
    served.info = describe(served)
    return served


def describe(served: ServedRun) -> dict[str, Any]:
    """What ``/api/runs`` says about a run: everything the page needs to offer its choices and limits."""
    model, method, tok = served.model, served.method, served.tok
    summary = TrainSummary.read(model.path)  # an unreadable final.json only loses its number
    score = summary.score if summary is not None else None
    return {
        "name": served.name, "path": str(model.path), "method": method.name, "preset": model.config.preset,
        "step": model.step, "parameters": model.parameters,
        "val_bpc": score.bits if score is not None else None, "val_kind": score.kind if score is not None else None,
        "samplers": list(served.samplers), "sampler": served.default_sampler,
        "steps": served.default_steps, "steps_fixed": served.default_steps is None, "max_steps": served.max_steps,
        # samplers that write one token per step whatever the steps asked for (masked, block: left_to_right)
        "one_per_token": [s for s in served.samplers if method.default_steps(method.model_cfg.context, s) is None],
        "exact_bpc": score.exact.bits if score is not None and score.exact is not None else None,
        "exact_sampler": score.exact.sampler if score is not None and score.exact is not None else None,
        "context": method.model_cfg.context, "length": served.default_length, "max_length": served.max_length,
        "max_chars": served.max_chars, "tokenizer": tok.kind, "unit": served.unit,
        "alphabet": "".join(tok.chars) if isinstance(tok, CharTokenizer) else None,
        "prompt": True, "infill": method.supports_infill, "placeholder": "_",
        "temperature": method.cfg.temperature, "top_k": method.cfg.top_k, "top_p": method.cfg.top_p,
        **speaker_choices(model), "max_guidance": MAX_GUIDANCE,
    }


def speaker_choices(model: TextModel) -> dict[str, Any]:
    """The speakers the page offers and the rule that steers toward them: a labelled run's own labels
    (classifier-free guidance), else the speakers of a speaker classifier cached for this checkpoint (classifier
    guidance; the page trains none: ``sample --guidance-rule classifier`` does), else none."""
    if model.labels:
        return {"labels": list(model.labels), "guidance_rule": "free"}
    clf = model.cached_classifier()
    if clf is not None:
        return {"labels": list(clf.names), "guidance_rule": "classifier"}
    return {"labels": [], "guidance_rule": ""}
