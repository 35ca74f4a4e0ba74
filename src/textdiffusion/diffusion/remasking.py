r"""ReMDM: a masked-diffusion sampler that may take back what it wrote (Wang, Schiff, Sahoo and Kuleshov 2025,
"Remasking Discrete Diffusion Models with Inference-Time Scaling").

MDLM's reverse step never touches a written token, so an early mistake stays for good and more steps stop
helping once every position is written. ReMDM's reverse step returns a written token to the noise with
probability sigma_t, so a later step, which sees more of the text, may write it again. From t to s < t, with
a_t = alpha(t) and a_s = alpha(s) (alpha: the fraction of written positions, as in
:mod:`textdiffusion.diffusion.masking`):

    written, z_t = x:  q(z_s | z_t = x) = (1 - sigma_t) x  +  sigma_t m                     <- ``RemaskStep.sigma``
    masked,  z_t = m:  q(z_s | z_t = m) = (a_s - (1 - sigma_t) a_t) / (1 - a_t) p_theta(. | z_t)
                                          + (1 - a_s - sigma_t a_t) / (1 - a_t) m          <- ``RemaskStep.reveal``

Either way a position is written at s with probability a_s, the marginal q(z_s | x) of the forward process, for
every sigma_t; sigma_t = 0 is MDLM's step. Both lines are distributions exactly when

    0 <= sigma_t <= sigma_max(t) = min(1, (1 - a_s) / a_t)                                  <- ``sigma_max``

and the three schedules choose sigma_t inside that range:

* ``cap``:      sigma_t = min(eta, sigma_max(t))
* ``rescale``:  sigma_t = eta * sigma_max(t)
* ``loop``:     three phases on the sampler's clock. From t = 1 to t_on, MDLM's step (sigma = 0) with alpha rising
  linearly from alpha(1) to ``alpha_on``; from t_on to t_off alpha is *held* at ``alpha_on`` and every step
  remasks with sigma = min(eta, sigma_max) = min(eta, (1 - alpha_on) / alpha_on), revealing as many positions as
  it remasks on average; from t_off to 0, MDLM's step again with alpha rising linearly to 1. The loop phase is
  where the extra steps buy corrections; its steps are counted in ``steps`` like any other.

The paper's recommended settings (OpenWebText, 1,024 tokens, nucleus 0.9): cap eta = 0.008, rescale eta = 0.015,
loop eta = 0.02 with t_on = 0.55, t_off = 0.05, alpha_on = 0.9.

Randomness per step is exactly the ancestral sampler's (:mod:`textdiffusion.diffusion.discrete`): one float64
Gumbel-max token draw (:func:`textdiffusion.diffusion.tokens.gumbel_sample`) and one uniform per position. A
position is masked or written, never both, so that one uniform decides whichever of reveal or remask applies to
it, compared with the step's float64 probability; with sigma = 0 the draws, and so the text, are the ancestral
sampler's. A remasked position returns to the symbol it started the draw from (``[MASK]`` for masked diffusion),
so this module, like the discrete sampler, knows nothing of the mask id. Positions that were known when the draw
began (a prompt, an infill template's text, earlier blocks) are never remasked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

SCHEDULES = ("cap", "rescale", "loop")
_SLACK = 1e-6  # far above float32's rounding of a time in [0, 1], far below any step of a grid


def sigma_max(alpha_t: float, alpha_s: float) -> float:
    """The largest remasking probability that keeps the step's posterior a distribution: min(1, (1 - a_s) / a_t);
    1 where a_t = 0 (nothing is written yet, so nothing can be remasked)."""
    return 1.0 if alpha_t <= 0.0 else min(1.0, max(0.0, 1.0 - alpha_s) / alpha_t)


@dataclass(frozen=True)
class RemaskStep:
    """One reverse step from t to s: the network's time input, the clean fractions at both ends and sigma_t."""

    t: torch.Tensor  # 0-d: the time the network is given at this step
    s: float  # where the step lands on the sampler's clock (what a trajectory reports)
    alpha_t: float
    alpha_s: float
    sigma: float

    @property
    def reveal(self) -> float:
        """P(a masked position is written at s) = (a_s - (1 - sigma_t) a_t) / (1 - a_t)."""
        if self.alpha_t >= 1.0:
            return 1.0
        return min(1.0, max(0.0, (self.alpha_s - (1.0 - self.sigma) * self.alpha_t) / (1.0 - self.alpha_t)))


@dataclass(frozen=True)
class Remasking:
    """A remasking schedule and its parameters (see the module docstring); ``t_on``, ``t_off`` and ``alpha_on``
    are the loop schedule's."""

    schedule: str = "loop"
    eta: float = 0.02
    t_on: float = 0.55
    t_off: float = 0.05
    alpha_on: float = 0.9

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown remasking schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"the remasking eta is a probability, got {self.eta}")
        if not 0.0 <= self.t_off < self.t_on < 1.0:
            raise ValueError(f"the loop needs 0 <= t_off < t_on < 1, got t_off={self.t_off}, t_on={self.t_on}")
        if not 0.0 < self.alpha_on < 1.0:
            raise ValueError(f"alpha_on is a clean fraction strictly between 0 and 1, got {self.alpha_on}")

    def sigma(self, alpha_t: float, alpha_s: float) -> float:
        """sigma_t of the cap and rescale schedules, and of a loop-phase step."""
        if self.schedule == "rescale":
            return self.eta * sigma_max(alpha_t, alpha_s)
        return min(self.eta, sigma_max(alpha_t, alpha_s))

    def loop_alpha(self, t: float, alpha_one: float) -> float:
        """The loop schedule's clean fraction at t: linear from alpha(1) at t = 1 to ``alpha_on`` at t_on, held
        there down to t_off, then linear to 1 at t = 0. A time within ``_SLACK`` of t_on or t_off counts as the
        loop phase's: a float32 time grid puts 0.55 at 0.55000001."""
        if t > self.t_on + _SLACK:
            return alpha_one + (self.alpha_on - alpha_one) * (1.0 - t) / (1.0 - self.t_on)
        if t >= self.t_off - _SLACK:
            return self.alpha_on
        return self.alpha_on + (1.0 - self.alpha_on) * (self.t_off - t) / self.t_off

    def plan(self, grid: torch.Tensor, alpha: Callable[[torch.Tensor], torch.Tensor],
             time_at: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[RemaskStep]:
        """The steps of a draw on the time ``grid`` (1 = t_0 > ... > t_S = 0) of a process with survival function
        ``alpha``. The loop schedule moves alpha on its own clock and gives the network the time ``time_at``
        names for that clean fraction (the time where such a state is typical); the last step writes every
        position left (a_s = 1, sigma = 0)."""
        steps = []
        last = len(grid) - 2
        if self.schedule == "loop":
            if time_at is None:
                raise ValueError("the loop schedule gives the network the time of its clean fraction: give time_at")
            a1 = float(alpha(grid[:1])[0])
            for i in range(last + 1):
                t, s = float(grid[i]), float(grid[i + 1])
                a_t, a_s = self.loop_alpha(t, a1), (1.0 if i == last else self.loop_alpha(s, a1))
                looping = a_s == a_t and i < last  # both ends inside [t_off, t_on]: alpha is held
                net_t = time_at(torch.tensor(a_t, dtype=grid.dtype, device=grid.device))
                steps.append(RemaskStep(net_t, s, a_t, a_s, self.sigma(a_t, a_s) if looping else 0.0))
            return steps
        alphas = alpha(grid).double().tolist()
        for i in range(last + 1):
            a_t, a_s = alphas[i], (1.0 if i == last else alphas[i + 1])
            steps.append(RemaskStep(grid[i], float(grid[i + 1]), a_t, a_s, 0.0 if i == last else self.sigma(a_t, a_s)))
        return steps


# forward(state, t) -> logits (n, L, V); draw(logits, generator) -> tokens (n, L); on_step(step, state, info)
Forward = Callable[..., torch.Tensor]
Draw = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
StepReport = Callable[[int, torch.Tensor, dict[str, Any]], None]


def remask_run(steps: list[RemaskStep], draw: Draw, forward: Forward, state: torch.Tensor, unknown: torch.Tensor,
               generator: torch.Generator, on_step: StepReport | None = None) -> tuple[torch.Tensor, float]:
    """Run the planned ``steps`` on the (n, L) ``state`` whose ``unknown`` positions are noise: -> (the state, network
    evaluations per sequence). One evaluation per step, so the count equals the steps, unless nothing is left to
    write and no later step remasks (then, as in the ancestral sampler, the draw is finished)."""
    free = unknown.clone()  # the positions this draw writes: the only ones it may remask
    noise = state.clone()  # what a remasked position returns to: the symbol it started from
    n = state.shape[0]
    quiet = max((i + 1 for i, step in enumerate(steps) if step.sigma > 0.0), default=0)  # no remasking from here
    nfe = 0
    for i, step in enumerate(steps):
        if not unknown.any() and (i >= quiet or not free.any()):
            break
        logits = forward(state, step.t.expand(n))
        nfe += 1
        tokens = draw(logits, generator)
        u = torch.rand(state.shape, generator=generator, device=state.device).to(_float64(state.device))
        reveal = unknown & (u < step.reveal)
        remask = free & ~unknown & (u < step.sigma)
        state = torch.where(reveal, tokens, torch.where(remask, noise, state))
        unknown = (unknown & ~reveal) | remask
        if on_step:
            on_step(i + 1, state.clone(), {"t": step.s, "nfe": float(nfe)})
    return state, float(nfe)


def _float64(device: torch.device) -> torch.dtype:
    """float64 where the device has it (Apple's MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64
