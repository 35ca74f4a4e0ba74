r"""Repairing corrupted text with a trained run: the request, its checks, and the windows a long text is cut into.

Each method family repairs in its own way, on the method contract (:meth:`TextMethod.repair
<textdiffusion.methods.base.TextMethod.repair>`):

* ``uniform`` reads the noisy text as its own forward process at the time whose changed fraction is the rate,
  and runs its reverse process from there to t = 0 (:func:`textdiffusion.diffusion.uniform.time_for_rate`);
* ``masked`` and ``block`` mask the characters least likely clean (:mod:`textdiffusion.suspicion`) and fill them,
  the rest fixed, each draw weighted by the channel (:class:`~textdiffusion.corruption.ChannelSteer`);
* ``ar`` decodes the prior times the channel with a small beam (:mod:`textdiffusion.noisy_channel`).

A text longer than the context is repaired window after window, as sampling chains windows: each window after
the first starts with what the window before kept, fixed, so every window is read whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from textdiffusion.config import SEED, ConfigError
from textdiffusion.corruption import CHANNELS, Channel, make_channel
from textdiffusion.data.tokenizer import Tokenizer
from textdiffusion.methods.base import TextMethod
from textdiffusion.methods.requests import window_starts

MAX_BEAM = 64
MAX_CANDIDATES = 1024
MAX_GROUPS = 64
MAX_STEPS = 100_000


@dataclass(frozen=True)
class RepairRequest:
    """How to repair: the channel that corrupted the text and its rate, and each family's one setting."""

    rate: float = 0.1  # the fraction of characters believed changed
    channel: str = "uniform"  # one of corruption.CHANNELS
    beam: int = 4  # ar: prefixes the beam keeps
    candidates: int = 8  # ar: characters tried per position, the likeliest under the prior (plus the observed one)
    groups: int = 8  # masked, block: disjoint groups of positions, one forward each, to score every character
    threshold: float = 0.0  # masked, block: mask the characters less likely clean than this (0 = the rate's share)
    steps: int = 0  # uniform: reverse steps from the matched time to 0 (0 = one: the posterior's argmax)
    seed: int = 0

    def check(self) -> None:
        """Refuse a request no repairer can use, in one line naming the fix."""
        if self.channel not in CHANNELS:
            raise ConfigError(f"unknown channel {self.channel!r}; choose one of {', '.join(CHANNELS)}")
        if not 0.0 < self.rate < 1.0:
            raise ConfigError(f"--rate must be between 0 and 1 (exclusive), the fraction of characters changed, e.g. "
                              f"0.1; got {self.rate}")
        for name, value, top in (("beam", self.beam, MAX_BEAM), ("candidates", self.candidates, MAX_CANDIDATES),
                                 ("groups", self.groups, MAX_GROUPS)):
            if not 1 <= value <= top:
                raise ConfigError(f"--{name} must be between 1 and {top}, got {value}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"--threshold must be between 0 and 1, a probability of being clean (0 = mask the "
                              f"rate's share), got {self.threshold}")
        if not 0 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"--steps must be between 1 and {MAX_STEPS} (or 0 for the default), got {self.steps}")
        if not SEED.allows(self.seed):
            raise ConfigError(f"--seed must be {SEED.describe()}, got {self.seed}")


@dataclass
class Repaired:
    """A repaired text: what came out, how many characters changed from what went in, and the work done."""

    text: str
    changed: int
    windows: int
    seconds: float


def check_text(text: str, tok: Tokenizer, run_dir: str = "the run") -> None:
    """Refuse an empty text or one holding characters the run never saw (named, at most five)."""
    if not text:
        raise ConfigError("the text to repair is empty; give a file with the noisy text in it")
    unknown = tok.unknown_chars(text) if hasattr(tok, "unknown_chars") else []
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ConfigError(f"the text holds characters outside {run_dir}'s vocabulary: {shown}; remove or replace "
                          f"them (a repairer only writes characters it was trained on)")


def repair_ids(method: TextMethod, model: torch.nn.Module, noisy: torch.Tensor, channel: Channel, req: RepairRequest,
               progress: bool = False) -> tuple[torch.Tensor, int]:
    """(L,) noisy ids -> (repaired ids, windows), window after window (the method's ``window``, overlapping by half
    of it), each repaired by ``method.repair`` with what the windows before kept fixed. A window keeps its repair
    up to the middle of its overlap with the next one, and leaves the rest to it: every character kept was read
    with a quarter window or more of text after it (but the text's last), which a bidirectional model reads."""
    window = method.window
    starts = window_starts(noisy.shape[0], window, max(1, window // 2))
    generator = torch.Generator(device=noisy.device).manual_seed(req.seed)
    ids = noisy.clone()
    done = 0  # ids[:done] are repaired
    bar = None
    if progress:
        from textdiffusion.progress import progress_bar

        bar = progress_bar(total=len(starts), desc=f"repairing {noisy.shape[0]:,} chars", unit="window")
    try:
        for k, start in enumerate(starts):
            span = slice(start, min(start + window, noisy.shape[0]))
            state = ids[span][None].clone()
            fixed = torch.arange(span.start, span.stop, device=ids.device)[None] < done
            out = method.repair(model, state, fixed, channel, req, generator)[0]
            keep = span.stop if k + 1 == len(starts) else (starts[k + 1] + span.stop) // 2
            ids[start:keep] = out[:keep - start]
            done = keep
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return ids, len(starts)


# what a caller may set beside the rate and the channel
SETTINGS = ("beam", "candidates", "groups", "threshold", "steps", "seed")
METHOD_OF = {"beam": "ar's noisy-channel decoder", "candidates": "ar's noisy-channel decoder",
             "groups": "masked and block's scoring", "threshold": "masked and block's scoring",
             "steps": "uniform's reverse process"}


def check_settings(method: TextMethod, given: Iterable[str]) -> None:
    """Refuse a method that cannot repair, a setting its repair would ignore (``--beam`` for a masked run), or one
    that is no setting at all."""
    method.check_repair()
    for name in given:
        if name not in SETTINGS:
            raise ConfigError(f"repair has no setting {name!r}; choose from rate, channel, {', '.join(SETTINGS)}")
        if name != "seed" and name not in (method.repair_options or ()):
            raise ConfigError(f"--{name} applies to {METHOD_OF[name]}, not to the {method.name} method's repair; "
                              f"leave it out")


def repair_text(method: TextMethod, model: torch.nn.Module, tok: Tokenizer, text: str, req: RepairRequest,
                progress: bool = False, run_dir: str = "the run") -> Repaired:
    """The repaired ``text`` under a run's method and network: checks, the channel, the windows."""
    method.check_repair()
    req.check()
    channel = make_channel(req.channel, req.rate, tok)
    check_text(text, tok, run_dir)
    device = next(model.parameters()).device
    noisy = torch.tensor(tok.encode(text), dtype=torch.long, device=device)
    tic = time.perf_counter()
    with torch.no_grad():
        ids, windows = repair_ids(method, model, noisy, channel, req, progress)
    out = tok.decode(ids.cpu().tolist())
    return Repaired(out, sum(a != b for a, b in zip(out, text, strict=True)), windows, time.perf_counter() - tic)
