"""What a text request is, and how it becomes the initial state of a sampler: the prompt or the infill template
encoded, the blanks marked unknown, the length checked against what the method can write.

The initial state is (n, length) ids with ``tokenizer.mask_id`` at every position to generate, and a boolean
tensor of the positions the user gave. A method whose noise is not a mask reads the unknown positions from that
boolean tensor and writes its own noise there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from textdiffusion.config import ConfigError
from textdiffusion.data.tokenizer import Tokenizer

# on_step(step, state, info): state is (n, length) ids with tokenizer.mask_id where still unknown
StepCallback = Callable[[int, torch.Tensor, dict[str, Any]], None]


@dataclass
class SampleRequest:
    """What the user asked for. ``length`` counts every token of the output (characters for the char
    tokenizer), prompt included."""

    n: int = 1
    length: int = 0  # 0 = the model's context
    prompt: str = ""
    infill: str | None = None
    placeholder: str = "_"
    sampler: str = ""
    steps: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    label: str = ""  # a labelled run's label (a speaker's name) to write as; "" = none (unconditional)
    guidance: float = 1.0  # guidance scale: 0 unconditional, 1 plain conditional (Bayes' rule), above 1 sharper
    rule: str = ""  # how to steer toward ``label``: "free" (classifier-free, a labelled run), "classifier" (a noisy
    # classifier beside any run; see textdiffusion.guidance.classifier); "" = free
    overlap: int = 0  # text past one window, chained: tokens each window shares with the one before; 0 = half


@dataclass
class SampleResult:
    ids: torch.Tensor  # (n, length)
    nfe: float  # network evaluations per sequence (a forward of the whole batch counts 1)
    fixed: torch.Tensor | None = None  # (n, length) bool: positions the user gave (prompt/infill)
    info: dict[str, Any] = field(default_factory=dict)


def unit_name(tok: Tokenizer) -> str:
    """What lengths count, in messages: characters for the char tokenizer, tokens for any other."""
    return "characters" if tok.kind == "char" else "tokens"


def initial_state(req: SampleRequest, tok: Tokenizer, context: int, device: torch.device, method: str,
                  supports_infill: bool, hint: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The initial state from the prompt or the infill template: (n, length) ids with masks at unknown positions,
    and a bool tensor of the positions that are fixed by the user.

    Lengths count tokens (characters for a char tokenizer). In an infill template every placeholder character
    is one masked token, and each run of known text between placeholders is encoded as a whole: a
    multi-character tokenizer (BPE, WordPiece) can only tokenise text, not single characters. ``hint`` ends the
    refusal of an infill by a method that cannot (how a run of it could)."""
    ids = (infill_ids(req, tok, method, supports_infill, hint) if req.infill is not None
           else prompt_ids(req, tok, context))
    state = torch.tensor(ids, dtype=torch.long, device=device).repeat(req.n, 1)
    return state, state != tok.mask_id


def prompt_ids(req: SampleRequest, tok: Tokenizer, context: int) -> list[int]:
    """The prompt's ids, then masks up to the length (the context by default)."""
    length = req.length or context
    ids = tok.encode(req.prompt) if req.prompt else []
    if len(ids) >= length:
        raise ConfigError(f"the prompt has {len(ids)} {unit_name(tok)}, so nothing is left to generate "
                          f"in --length {length}; use a shorter prompt or a larger --length")
    return ids + [tok.mask_id] * (length - len(ids))


def infill_ids(req: SampleRequest, tok: Tokenizer, method: str, supports_infill: bool, hint: str = "") -> list[int]:
    """The template's ids with a mask per placeholder, then masks up to ``req.length`` if that is longer."""
    assert req.infill is not None
    if not supports_infill:
        raise ConfigError(f"the {method} method only continues a prefix; --infill needs a bidirectional "
                          f"method such as --method masked (use --prompt here){hint}")
    if req.prompt:
        raise ConfigError("use either --prompt or --infill, not both (a prompt is an infill template "
                          "whose blanks are all at the end)")
    if not req.placeholder or len(req.placeholder) != 1:
        raise ConfigError("--placeholder must be exactly one character")
    template = req.infill
    if req.placeholder not in template:
        raise ConfigError(f"the --infill text has no {req.placeholder!r} placeholders to fill; mark the "
                          f"characters to generate with {req.placeholder!r} (or pick --placeholder)")
    tok.encode(template.replace(req.placeholder, ""))  # one clear error for unseen characters
    ids = encode_template(tok, template, req.placeholder)
    length = req.length or len(ids)  # an infill's output is the filled template
    if len(ids) > length:
        raise ConfigError(f"the infill template has {len(ids)} {unit_name(tok)} but --length is {length}")
    return ids + [tok.mask_id] * (length - len(ids))


def encode_template(tok: Tokenizer, template: str, placeholder: str) -> list[int]:
    """Ids of an infill template: each known run encoded whole, each placeholder one mask id."""
    ids: list[int] = []
    start = 0
    while start < len(template):
        if template[start] == placeholder:
            ids.append(tok.mask_id)
            start += 1
            continue
        end = template.find(placeholder, start)
        end = len(template) if end < 0 else end
        ids += tok.encode(template[start:end])
        start = end
    return ids


def check_length(length: int, tok: Tokenizer, context: int, method: str, extends_past_context: bool) -> None:
    """One window at a time, unless the method can slide past its context."""
    if not extends_past_context and length > context:
        raise ConfigError(f"--length {length} exceeds the model's context of {context} {unit_name(tok)}; the "
                          f"{method} method denoises one window at a time, use --length <= {context}")


def check_overlap(overlap: int, window: int, method: str, chains_windows: bool) -> int:
    """The overlap of chained windows: the request's, else half the window. Each window after the first starts
    with the last ``overlap`` tokens written, so it must leave at least one new token and share at least one."""
    if not overlap:
        return max(1, window // 2)
    if not chains_windows:
        raise ConfigError(f"--overlap applies to methods that chain windows past their context; the {method} method "
                          f"writes any length without them; leave --overlap out")
    if not 0 < overlap < window:
        raise ConfigError(f"--overlap {overlap} must be between 1 and {window - 1}: each window of {window} tokens "
                          f"starts with the last --overlap tokens written so far; use e.g. --overlap {window // 2}")
    return overlap


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Where each window of a chained sampling of ``length`` tokens starts: one window when it fits, else every
    ``window - overlap`` tokens, the last moved back to end exactly at ``length`` (so every window is a full
    one, as in training, and the last shares ``overlap`` tokens or more with the one before)."""
    if length <= window:
        return [0]
    return [*range(0, length - window, window - overlap), length - window]
