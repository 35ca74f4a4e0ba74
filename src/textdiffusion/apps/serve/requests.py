"""Checking a sampling request: raw parameters (query strings or JSON values) in, :class:`Settings` out, or a
:class:`RequestError` with one sentence that names the problem and the fix.

Two stages. :func:`parse_request` checks each parameter's type and range against the run's limits, which
needs no tokenizer. Then one call to the method's own ``prepare`` encodes the text and builds the initial
state; its refusals speak in CLI flags, so :func:`_refusal` says them again in the page's words. Nothing
here runs the model, so the event loop can check a request inline."""

from __future__ import annotations

import contextlib
import math
import secrets
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from textdiffusion.config import ConfigError
from textdiffusion.data.corpus import DataError
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.methods import REGISTRY, SampleRequest
from textdiffusion.viz.trajectory import decode_masked

from .served import MAX_GUIDANCE, ServedRun

MAX_PACE_MS = 1000  # a slower pace is no longer "watching", it is waiting
MAX_TEMPERATURE = 10.0
PARAMETERS = ("run", "prompt", "infill", "placeholder", "sampler", "steps", "length", "temperature", "top_k",
              "top_p", "seed", "pace", "label", "guidance")
CPU = torch.device("cpu")  # the checked initial state is only read for frame 0 and the fixed positions


class RequestError(Exception):
    """A refused request: answered as ``{"error": message}`` with ``status`` before anything streams."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Settings:
    """A checked request: everything the worker needs, and what the ``start`` event reports."""

    served: ServedRun
    req: SampleRequest
    seed: int
    pace_ms: int
    steps: int
    initial: torch.Tensor  # (length,) the prepared state, fully masked where the model writes
    fixed: list[int]  # character positions the user gave

    def start_event(self) -> dict[str, Any]:
        r = self.req
        return {"run": self.served.name, "method": self.served.method.name, "sampler": r.sampler,
                "steps": self.steps, "length": int(self.initial.shape[0]),
                "mode": "infill" if r.infill is not None else "prompt",
                "temperature": r.temperature, "top_k": r.top_k, "top_p": r.top_p, "seed": self.seed,
                "pace": self.pace_ms, "fixed": self.fixed, "mask_char": r.placeholder, "label": r.label,
                "guidance": r.guidance, "rule": r.rule}


@dataclass
class Parsed:
    """A request whose parameters each have the right type and range; the text is not encoded yet."""

    served: ServedRun
    req: SampleRequest  # steps 0: the run's default; length 0 (infill only): the template's own length
    seed: int | None
    pace_ms: int

    @property
    def label(self) -> str:
        return "infill text" if self.req.infill is not None else "prompt"


def check_request(params: Mapping[str, Any], runs: Mapping[str, ServedRun], max_steps: int) -> Settings:
    """The whole check: parse, then one call to the method's ``prepare``, then the step count, which for a
    method that takes one step per token is only known once the prompt is encoded."""
    parsed = parse_request(params, runs, max_steps)
    initial, fixed = _prepare(parsed)
    steps = _steps(parsed, int((~fixed).sum()), max_steps)
    seed = secrets.randbelow(2**31) if parsed.seed is None else parsed.seed
    return Settings(parsed.served, parsed.req, seed, parsed.pace_ms, steps, initial,
                    _fixed_chars(parsed.served, initial, fixed))


# ----------------------------------------------------------------------------------------------------------
# stage 1: types and ranges


def parse_request(params: Mapping[str, Any], runs: Mapping[str, ServedRun], max_steps: int) -> Parsed:
    """Every parameter checked on its own, against the run's limits and the server's ``max_steps``."""
    unknown = sorted(k for k in params if k not in PARAMETERS)
    if unknown:
        raise RequestError(f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(PARAMETERS)}")
    served = _pick_run(params, runs)
    prompt, infill, placeholder = _parse_text(params, served)
    sampler = _parse_sampler(params, served)
    steps = _parse_steps(params, served, max_steps)
    length = _int(params, "length", 1, served.max_length,
                  f"a whole number of {served.unit} from 1 to {served.max_length} (run {served.name}'s limit)")
    temperature = _float(params, "temperature", lambda v: 0 < v <= MAX_TEMPERATURE,
                         f"a number above 0 and at most {MAX_TEMPERATURE:g} (1 samples the model as trained)")
    top_k = _int(params, "top_k", 0, served.tok.n_symbols,
                 f"a whole number from 0 (off) to {served.tok.n_symbols} (the run's vocabulary)")
    top_p = _float(params, "top_p", lambda v: 0 < v <= 1, "a number above 0 and at most 1 (1 is off)")
    seed = _int(params, "seed", 0, 2**63 - 1, "a whole number from 0 to 2**63-1 (or empty for a random one)")
    pace = _int(params, "pace", 0, MAX_PACE_MS, f"a whole number of milliseconds from 0 to {MAX_PACE_MS}")
    label = _text(params, "label") or ""
    rule = served.info.get("guidance_rule", "") if label else ""  # the run's: its labels, or its classifier's
    guidance = _float(params, "guidance", lambda v: 0 <= v <= MAX_GUIDANCE,
                      f"a number from 0 (unconditional) to {MAX_GUIDANCE:g}; 1 is the plain conditional model")
    defaults = served.method.cfg  # the run's own sampling options
    req = SampleRequest(n=1, length=length or (0 if infill is not None else served.default_length), prompt=prompt,
                        infill=infill, placeholder=placeholder, sampler=sampler, steps=steps or 0,
                        temperature=defaults.temperature if temperature is None else temperature,
                        top_k=defaults.top_k if top_k is None else top_k,
                        top_p=defaults.top_p if top_p is None else top_p, label=label,
                        guidance=1.0 if guidance is None else guidance, rule=rule)
    try:  # a label the run knows; guidance only with one (the method says which, in the page's words)
        served.method.request_label(req)
    except ConfigError as e:
        raise RequestError(str(e).replace("--label NAME", "a speaker").replace("--label", "label")
                           .replace("--guidance", "guidance")) from None
    return Parsed(served, req, seed, pace or 0)


def _pick_run(params: Mapping[str, Any], runs: Mapping[str, ServedRun]) -> ServedRun:
    name = _text(params, "run")
    if not name:
        if len(runs) != 1:
            raise RequestError(f"say which run to sample with run=NAME; the runs are {', '.join(runs)}")
        name = next(iter(runs))
    if name not in runs:
        raise RequestError(f"unknown run {_show(name)}; the runs are {', '.join(runs)}")
    return runs[name]


def _parse_text(params: Mapping[str, Any], served: ServedRun) -> tuple[str, str | None, str]:
    """(prompt, infill, placeholder): at most one of the two texts, no longer than the run takes, and an
    infill only for a method that fills blanks."""
    placeholder = _text(params, "placeholder") or "_"
    if len(placeholder) != 1:
        raise RequestError(f"placeholder must be exactly one character, got {_show(placeholder)}")
    prompt, infill = _text(params, "prompt") or "", _text(params, "infill") or None
    if prompt and infill:
        raise RequestError("give either a prompt or an infill text, not both (a prompt is an infill text whose "
                           "blanks are all at the end)")
    text, label = (infill, "infill text") if infill is not None else (prompt, "prompt")
    if len(text) > served.max_chars:
        raise RequestError(f"the {label} has {len(text):,} characters but run {served.name} takes at most "
                           f"{served.max_chars:,}; shorten it")
    if infill is not None and not served.method.supports_infill:
        raise RequestError(f"run {served.name} ({served.method.name}) can only continue a prompt; use a prompt, "
                           f"or pick a {_infill_methods()} run to fill blanks{served.method.infill_hint}")
    return prompt, infill, placeholder


def _infill_methods() -> str:
    """The registered text methods that fill blanks, as "a, b or c"."""
    names = sorted(name for name, cls in REGISTRY.items() if cls.family == "text" and cls.supports_infill)
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names) or "bidirectional"


def _parse_sampler(params: Mapping[str, Any], served: ServedRun) -> str:
    sampler = _text(params, "sampler") or served.default_sampler
    if sampler not in served.samplers:
        extra = f" (its {sampler} sampler is not offered on the live page)" if sampler in served.method.samplers else ""
        raise RequestError(f"run {served.name} ({served.method.name}) has no sampler {_show(sampler)} here; "
                           f"choose one of {', '.join(served.samplers)}{extra}")
    return sampler


def _parse_steps(params: Mapping[str, Any], served: ServedRun, max_steps: int) -> int | None:
    """Within the server's ``--max-steps``, and the run's own limit (its training grid) if that is smaller."""
    steps = _int(params, "steps", 1, max_steps, f"a whole number from 1 to {max_steps} (the server's --max-steps)")
    if steps is not None and steps > served.max_steps:
        raise RequestError(f"run {served.name} was trained with {served.max_steps} diffusion steps, so steps must "
                           f"be at most {served.max_steps}, got {steps}")
    return steps


def _given(params: Mapping[str, Any], name: str) -> Any:
    """The parameter, or None when absent or empty (an empty form field means "the default")."""
    value = params.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _int(params: Mapping[str, Any], name: str, lo: int, hi: int, what: str) -> int | None:
    """A whole number in lo..hi from a JSON number or a query string, or None for "the default"."""
    value = _given(params, name)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = int(value.strip())
    if number is None or not lo <= number <= hi:
        raise RequestError(f"{name} must be {what}, got {_show(value)}")
    return number


def _float(params: Mapping[str, Any], name: str, ok: Callable[[float], bool], what: str) -> float | None:
    """A finite number that ``ok`` accepts, or None for "the default"."""
    value = _given(params, name)
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    if number is None or not math.isfinite(number) or not ok(number):
        raise RequestError(f"{name} must be {what}, got {_show(value)}")
    return number


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a text, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# ----------------------------------------------------------------------------------------------------------
# stage 2: the method's own prepare


def _prepare(parsed: Parsed) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's initial state and fixed positions for the first sample, (length,) each."""
    served, req = parsed.served, parsed.req
    try:
        initial, fixed = served.method.prepare(req, CPU)
    except (ConfigError, DataError) as e:
        raise _refusal(parsed, e) from None
    n = int(initial.shape[1])
    if n > served.max_length:  # an infill is as long as its template, which BPE or WordPiece may make too long
        raise RequestError(f"the infill text is {n} {served.unit} long but run {served.name} takes at most "
                           f"{served.max_length}; shorten it")
    return initial[0], fixed[0]


def _refusal(parsed: Parsed, error: Exception) -> RequestError:
    """``prepare``'s refusal in the page's words: it names CLI flags, the page names its fields and the run's
    limits. Finding out which check failed costs a look at the text, and only on the way out."""
    served, req = parsed.served, parsed.req
    if req.infill is not None and req.placeholder not in req.infill:
        return RequestError(f"the infill text has no {req.placeholder!r} placeholders; mark each character to "
                            f"generate with {req.placeholder!r}")
    unseen = _unseen(parsed)
    if unseen is not None:
        return unseen
    if isinstance(error, DataError):
        return RequestError(f"the {parsed.label} cannot be encoded: {error}")
    if req.infill is not None:
        return RequestError(f"length {req.length} is shorter than the infill text; leave length empty to use the "
                            f"text's length")
    return _prompt_too_long(served, len(served.tok.encode(req.prompt)), req.length)


def _unseen(parsed: Parsed) -> RequestError | None:
    """The characters of the user's text that a char tokenizer has no token for, named one by one."""
    req, tok = parsed.req, parsed.served.tok
    known = req.infill.replace(req.placeholder, "") if req.infill is not None else req.prompt
    unseen = tok.unknown_chars(known) if isinstance(tok, CharTokenizer) else []
    if not unseen:
        return None
    one = len(unseen) == 1
    return RequestError(f"the {parsed.label} contains {'a character' if one else 'characters'} run "
                        f"{parsed.served.name} never saw in training: {_describe_chars(unseen)}; remove or replace "
                        f"{'it' if one else 'them'}")


def _prompt_too_long(served: ServedRun, n: int, length: int) -> RequestError:
    """The prompt has ``n`` tokens and fills the whole ``length``: say whether a longer length would do."""
    if n >= served.max_length:
        return RequestError(f"the prompt is {n} {served.unit} long, which leaves nothing to generate: run "
                            f"{served.name} writes at most {served.max_length}; shorten the prompt")
    return RequestError(f"the prompt is {n} {served.unit} long, which leaves nothing to generate in a length of "
                        f"{length}; shorten the prompt or raise the length (at most {served.max_length})")


def _describe_chars(chars: list[str]) -> str:
    def one(c: str) -> str:
        name = unicodedata.name(c, "")
        return f"{c!r} (U+{ord(c):04X}{' ' + name if name else ''})"

    shown = ", ".join(one(c) for c in chars[:5])
    return shown + (f" and {len(chars) - 5} more" if len(chars) > 5 else "")


def _steps(parsed: Parsed, generated: int, max_steps: int) -> int:
    """The steps the sampling takes, also set on the request where they are a choice. A method whose step
    count is not a choice (or a sampler's: masked's left_to_right) takes one per generated token (any ``steps``
    asked for was checked but is not used; the request keeps 0), which must fit in the server's limit."""
    served, req = parsed.served, parsed.req
    if served.default_steps is not None and served.method.default_steps(generated, req.sampler) is not None:
        req.steps = req.steps or served.default_steps
        return req.steps
    req.steps = 0
    if generated > max_steps:
        raise RequestError(f"run {served.name} ({served.method.name}) writes one {served.unit[:-1]} per step, and "
                           f"{generated} steps exceed the server's --max-steps {max_steps}; lower the length")
    return generated


def _fixed_chars(served: ServedRun, state: torch.Tensor, fixed: torch.Tensor) -> list[int]:
    """Character positions of the user's text in the frames. For a char tokenizer these are the token
    positions; otherwise only the prompt prefix (before the first blank) keeps its character positions
    while tokens are filled in, so only that is marked."""
    if served.tok.kind == "char":
        return fixed.nonzero().flatten().tolist()
    _, masked = decode_masked(served.tok, state.tolist())
    return list(range(masked[0] if masked else len(served.tok.decode(state.tolist()))))
