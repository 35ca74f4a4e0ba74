r"""The discrete reverse process, apart from any network and any noise symbol: a sampler object that fills the
*unknown* positions of a token state, given a forward function that predicts them.

It knows nothing of ``[MASK]``. The caller says which positions are still unknown (a boolean tensor) and what
fraction of them survives to time t (``alpha``: the unknown fraction at t is 1 - alpha(t)); the state may hold a
mask id, a fixed noise symbol or random symbols at those positions, whatever the method's network was trained
to read. Masked diffusion (:mod:`textdiffusion.methods.masked`) and block diffusion (inside each block) use it,
and so can a method whose noise is not a mask (``tests/test_toy_method.py`` defines one).

``forward(state, t, rows=None)`` returns logits over the symbols at every position of ``state``; ``t`` holds one
time per row; ``rows`` says which sequences of the batch ``state`` holds when only some are re-run (the cached
sampler), for a forward that keeps per-sequence state (block diffusion's KV cache).

Six rules reveal positions:

* ``ancestral``: MDLM's reverse process (Sahoo et al. 2024, Eq. 7) on a time grid 1 = t_0 > ... > t_S = 0.
  From t to s < t every unknown position is revealed with probability

      (alpha(s) - alpha(t)) / (1 - alpha(t)),

  its token drawn from p_theta(x | z_t); the last step reveals every position left.
* ``cached``: the same draws, but a sequence whose last step revealed nothing reuses the network's output (its
  input did not change), so only the changed rows are re-run: identical samples with fewer network evaluations
  (MDLM Sec. 4.2). Exact only for a forward that does not read t.
* ``topk``: confidence-ordered parallel decoding (MaskGIT, Chang et al. 2022): each step predicts every unknown
  position and reveals the ceil(remaining / steps_left) most confident predictions per sequence.
* ``confidence``: ``topk``, plus every prediction whose probability is >= ``threshold`` (Fast-dLLM's rule), so
  easy text finishes in fewer steps.
* ``left_to_right``: one position per step, the leftmost unknown of each sequence, its token drawn from the
  network's prediction there; ``steps`` is not a choice (one per unknown position). Its draws have exactly the
  probability of the left-to-right chain rule (:mod:`textdiffusion.diffusion.chain_rule`), so the exact NLL
  that ``exact_nll`` reports is the likelihood of this sampler; ``log_prob`` keeps, per sequence, the
  log-probability (float64) that the last run's draws had.
* ``remdm``: ``ancestral``, but a written position may return to the noise with probability sigma_t (ReMDM,
  Wang et al. 2025), so more steps keep correcting the text: :mod:`textdiffusion.diffusion.remasking`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from textdiffusion.diffusion.remasking import Remasking, remask_run
from textdiffusion.diffusion.tokens import TokenDraw, gumbel_sample

RULES = ("ancestral", "cached", "confidence", "topk", "left_to_right", "remdm")
LEFT_TO_RIGHT = "left_to_right"  # the rule whose likelihood the chain rule computes exactly

# forward(state, t, rows=None) -> logits (n, L, V): the network on a state (see the module docstring)
Forward = Callable[..., torch.Tensor]
# on_step(step, state, info): called after every step with a copy of the state
StepReport = Callable[[int, torch.Tensor, dict[str, Any]], None]


def uniform_grid(steps: int, device: torch.device) -> torch.Tensor:
    """Times 1 = t_0 > t_1 > ... > t_steps = 0, evenly spaced."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


@dataclass
class DiscreteSampler:
    """Fills the unknown positions of a state in at most ``steps`` network evaluations by one of :data:`RULES`.

    ``alpha(t)`` is the process's survival function (a position is still unknown at t with probability
    1 - alpha(t)); only the ancestral rules read it, on the time ``grid``. ``threshold`` is the confidence rule's.
    ``time_at(fraction)`` is the time at which a state with that fraction of known positions is typical: the
    left_to_right rule gives a time-conditioned network the time the chain rule gives it (None: 1 - fraction,
    the loglinear schedule's). ``remasking`` is the remdm rule's, whose loop schedule also reads
    ``time_at``."""

    rule: str
    steps: int
    draw: TokenDraw = field(default_factory=TokenDraw)
    alpha: Callable[[torch.Tensor], torch.Tensor] | None = None
    threshold: float = 0.9
    grid: Callable[[int, torch.device], torch.Tensor] = uniform_grid
    remasking: Remasking = field(default_factory=Remasking)
    time_at: Callable[[torch.Tensor], torch.Tensor] | None = None
    # after a left_to_right run: per sequence, the log-probability of its draws under the draw (float64)
    log_prob: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown discrete sampler {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.steps < 1:
            raise ValueError("the number of sampling steps must be >= 1")
        if self.rule in ("ancestral", "cached", "remdm") and self.alpha is None:
            raise ValueError(f"the {self.rule} sampler reveals positions by the schedule: give alpha")

    def run(self, forward: Forward, state: torch.Tensor, unknown: torch.Tensor, generator: torch.Generator,
            on_step: StepReport | None = None) -> tuple[torch.Tensor, float]:
        """(n, L) ``state`` with ``unknown`` (n, L) positions -> (the filled state, network evaluations per
        sequence). Positions that are known are never changed."""
        if self.rule == "remdm":
            assert self.alpha is not None
            plan = self.remasking.plan(self.grid(self.steps, state.device), self.alpha, self.time_at)
            return remask_run(plan, self.draw, forward, state, unknown, generator, on_step)
        if self.rule in ("ancestral", "cached"):
            return self._ancestral(forward, state, unknown, generator, on_step)
        if self.rule == LEFT_TO_RIGHT:
            return self._left_to_right(forward, state, unknown, generator, on_step)
        return self._by_confidence(forward, state, unknown, generator, on_step)

    def _ancestral(self, forward: Forward, state: torch.Tensor, unknown: torch.Tensor, generator: torch.Generator,
                   on_step: StepReport | None) -> tuple[torch.Tensor, float]:
        assert self.alpha is not None
        cached = self.rule == "cached"
        grid = self.grid(self.steps, state.device)
        n = state.shape[0]
        logits: torch.Tensor | None = None
        stale = torch.ones(n, dtype=torch.bool, device=state.device)  # rows whose cached output is outdated
        row_evals = 0
        for i in range(self.steps):
            if not unknown.any():
                break
            t, s = grid[i], grid[i + 1]
            if logits is None or not cached:
                logits = forward(state, t.expand(n))
                row_evals += n
            elif stale.any():
                rows = stale.nonzero().flatten()
                logits[rows] = forward(state[rows], t.expand(len(rows)), rows).to(logits.dtype)
                row_evals += len(rows)
            a_t, a_s = self.alpha(t), self.alpha(s)
            # the last step goes to t = 0 where alpha = 1: every remaining unknown is revealed
            p_reveal = ((a_s - a_t) / (1.0 - a_t)).clamp(0.0, 1.0) if i < self.steps - 1 else torch.ones_like(a_t)
            tokens = self.draw(logits, generator)
            reveal = unknown & (torch.rand(state.shape, generator=generator, device=state.device) < p_reveal)
            state = torch.where(reveal, tokens, state)
            unknown = unknown & ~reveal
            stale = reveal.any(dim=1)
            if on_step:
                on_step(i + 1, state.clone(), {"t": float(s), "nfe": row_evals / n})
        return state, row_evals / n

    def _by_confidence(self, forward: Forward, state: torch.Tensor, unknown: torch.Tensor,
                       generator: torch.Generator, on_step: StepReport | None) -> tuple[torch.Tensor, float]:
        threshold = self.threshold if self.rule == "confidence" else None
        L = state.shape[1]
        nfe = 0
        for i in range(self.steps):
            remaining = unknown.sum(1)
            if int(remaining.max()) == 0:
                break
            t = remaining.float() / L
            filtered = self.draw.filter(forward(state, t))
            nfe += 1
            tokens = gumbel_sample(filtered, generator)
            conf = filtered.softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
            conf = conf.masked_fill(~unknown, -1.0)
            k = torch.ceil(remaining / (self.steps - i)).long()
            rank = conf.argsort(dim=1, descending=True).argsort(dim=1)
            reveal = unknown & (rank < k[:, None])
            if threshold is not None:
                reveal |= unknown & (conf >= threshold)
            state = torch.where(reveal, tokens, state)
            unknown = unknown & ~reveal
            if on_step:
                on_step(i + 1, state.clone(), {"t": float(1 - (i + 1) / self.steps), "nfe": nfe})
        return state, nfe

    def _left_to_right(self, forward: Forward, state: torch.Tensor, unknown: torch.Tensor,
                       generator: torch.Generator, on_step: StepReport | None) -> tuple[torch.Tensor, float]:
        """Reveal the leftmost unknown position of every sequence, one per network evaluation, drawn from the
        prediction there: sequence x is written with probability prod_j p(x^{o_j} | z^j), the chain rule.
        What each draw had is summed into ``log_prob`` in float64, from the very logits that drew it."""
        n, L = state.shape
        rows = torch.arange(n, device=state.device)
        self.log_prob = torch.zeros(n, dtype=torch.float64, device=state.device)
        state, unknown = state.clone(), unknown.clone()
        nfe = 0
        while bool(unknown.any()):
            known = (L - unknown.sum(1)).double() / L
            t = (self.time_at(known) if self.time_at is not None else 1.0 - known).float()
            active = unknown.any(1)
            at = unknown.int().argmax(dim=1)  # the leftmost unknown position (0 in a finished row: not written)
            logits = self.draw.filter(forward(state, t)[rows, at])
            nfe += 1
            token = gumbel_sample(logits[:, None], generator)[:, 0]
            drawn = logits.double().log_softmax(-1).gather(-1, token[:, None])[:, 0]
            self.log_prob += torch.where(active, drawn, torch.zeros_like(drawn))
            write = rows[active], at[active]
            state[write] = token[active]
            unknown[write] = False
            if on_step:
                on_step(nfe, state.clone(), {"t": float(unknown.sum(1).max()) / L, "nfe": nfe})
        return state, float(nfe)
