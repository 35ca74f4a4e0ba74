"""How many validation windows the end-of-training score takes, and how ``eval`` recognises that score again.

**The budget.** Scoring a bound costs K network passes per window (``method.eval_time_samples``), so the whole
split can cost a short run twice its training: a 400-step ``masked`` run of the ``cpu`` preset trained 37 s and
scored 74 s. With ``train.final_eval_budget`` (and ``train.final_eval_windows=0``) the trainer first scores the
periodic evaluation's evenly spread windows, timing them, and then takes the largest count the rest of the
budget pays for from a fixed ladder: that count doubled and doubled again, or the whole split. Windows of a
count are always the same evenly spread ones (:meth:`~textdiffusion.data.batches.TextData.tiled_windows`), so a
recorded count reproduces its number exactly (``eval --val-windows N``); the ladder makes the count itself
change only when the machine's speed changes by about a factor of two.

**The identity.** A score is a function of the weights, the windows and the estimator's settings. A
:class:`~textdiffusion.records.ScoreKey` names each (a digest of the EMA tensors, the window count, a digest of
the method's options, the network, the data options, the precision and the batch size), final.json records
it, and ``eval`` returns the recorded number instead of recomputing it when its own key is equal.
"""

from __future__ import annotations

import hashlib
import json

import torch

from textdiffusion import precision
from textdiffusion.config import Config
from textdiffusion.records import ScoreKey


def budget_count(total: int, probe: int, probe_seconds: float, budget_seconds: float, passes: int = 1) -> int:
    """The windows the final score takes: ``total`` (the whole split) when the rest of the budget pays for it,
    else the largest of ``probe`` * 2, * 4, ... below ``total`` that it pays for, else ``probe`` (already
    scored, in ``probe_seconds``, by one of the ``passes`` weight sets scored: 2 with the raw weights too).

    The spend is what is left of ``budget_seconds`` after the probe; each window of a larger count costs
    ``passes`` times the probe's time per window, since the probe's windows are not a prefix of the larger set."""
    if probe >= total:
        return total
    per_window = probe_seconds / max(probe, 1) * passes
    left = budget_seconds - probe_seconds
    if total * per_window <= left:
        return total
    count, best = probe * 2, probe
    while count < total and count * per_window <= left:
        best, count = count, count * 2
    return best


def weights_digest(model: torch.nn.Module) -> str:
    """A sha256 of every tensor of ``model``'s state (name, dtype, shape and bytes), in name order: equal exactly
    when the weights are, wherever they were loaded from."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# Options added after runs had recorded score keys, at the value that behaves as those runs did (the whole
# training split; no fill-in-the-middle windows; their PSM order): left out of the digest, so the keys in existing
# final.json files still name their scores and `eval` goes on reusing them.
NEUTRAL_ADDITIONS: dict[str, dict[str, object]] = {"data": {"train_chars": 0},
                                                   "method": {"fim_rate": 0.0, "fim_mode": "psm"}}


def _without_neutral(section: dict[str, object], name: str) -> dict[str, object]:
    neutral = NEUTRAL_ADDITIONS.get(name, {})
    return {k: v for k, v in section.items() if not (k in neutral and v == neutral[k])}


def settings_digest(cfg: Config, device: torch.device, batch_size: int) -> str:
    """A sha256 of everything besides the weights and the windows that can move a validation number: the
    method's options (its estimator, draws and seed), the network and data sections, the precision of the
    forward passes (TF32 included, on a GPU) and the batch the windows are scored in."""
    d = cfg.to_dict()
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    method, data = _without_neutral(d["method"], "method"), _without_neutral(d["data"], "data")
    what = {"method": method, "network": d[cfg.method.network], "data": data, "device": device.type,
            "precision": precision.resolve(cfg.train.amp, device), "tf32": tf32, "batch": batch_size}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def score_key(cfg: Config, model: torch.nn.Module, step: int, windows: int, device: torch.device,
              batch_size: int) -> ScoreKey:
    """The identity of a score of ``windows`` evenly spread validation windows by ``model`` at ``step``."""
    return ScoreKey(step, weights_digest(model), windows, settings_digest(cfg, device, batch_size))


def budget_label(fraction: float) -> str:
    """A budget as a reader says it: 0.33 -> "1/3", 0.5 -> "1/2", 0.4 -> "40%"."""
    inverse = 1 / fraction if fraction > 0 else 0.0
    if inverse >= 2 and abs(inverse - round(inverse)) < 0.05:
        return f"1/{round(inverse)}"
    return f"{fraction:.0%}"
