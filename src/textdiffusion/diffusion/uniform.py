r"""Uniform-state discrete diffusion in continuous time: UDLM (Schiff et al., ICLR 2025, "Simple Guidance
Mechanisms for Discrete Diffusion Models"), restated by Duo (Sahoo et al., ICML 2025).

Each character of a clean sequence x is kept with probability alpha(t) and otherwise replaced by a symbol
drawn uniformly from the N ordinary symbols (possibly itself); there is no mask token:

    q(z_t | x) = Cat(z_t; alpha_t x + (1 - alpha_t) 1/N)                       <- ``corrupt``

on the schedules of :mod:`textdiffusion.diffusion.masking` (loglinear alpha = 1 - t by default). The process
from s to t > s is the same kind of kernel with alpha_{t|s} = alpha_t / alpha_s, so Bayes' rule gives the
exact posterior, for every symbol y of z_s and the observed symbol z of z_t:

    q(z_s = y | z_t = z, x) = [alpha_{t|s} [y = z] + (1 - alpha_{t|s}) / N] [alpha_s x_y + (1 - alpha_s) / N]
                              / [alpha_t x_z + (1 - alpha_t) / N]                <- ``posterior``

The formula is a function of the vector x, so a network's predicted distribution x_theta(z_t) can stand in for
the one-hot x: p_theta(z_s | z_t) = q(z_s | z_t, x = x_theta). That is the reverse step of the ancestral sampler
(:class:`UniformSampler`, which also holds tiny-diffusion's heuristic ``redraw`` loop).

The continuous-time NELBO. The forward process is a Markov chain with rate beta_t = -alpha'_t / alpha_t of
jumping to a uniform symbol, so a jump y -> z has rate beta_t / N. Conditioned on x, the reverse chain jumps
z -> y with rate (beta_t / N) xbar_y / xbar_z, where xbar = N alpha_t x + (1 - alpha_t) 1 is N q(. | x); the model
uses the same rate with xbar_theta = N alpha_t x_theta + (1 - alpha_t) 1. Letting the sum of posterior KLs of
the discrete-time ELBO go to infinitely many steps leaves, per position (Campbell et al. 2022; UDLM Eq. 12):

    NELBO(x) = int_0^1 E_{z_t ~ q(.|x)} (beta_t / N) sum_y r_y (e^{d_y} - 1 - d_y) dt + KL(q(z_1|x) || U)
    r_y = xbar_y / xbar_z,   d_y = log(xbar_theta_y / xbar_theta_z) - log(xbar_y / xbar_z)
                                                                                 <- ``nelbo_integrand``

which is UDLM's (alpha'/(N alpha)) [N/xbar_z - N/xbar_theta_z - sum_y (xbar_y/xbar_z) log(...)] rewritten: the
terms y = z vanish, and sum_y xbar_y = N turns the two first terms into the sum of r_y e^{d_y} - r_y. In this
form every term is >= 0 (e^d >= 1 + d), and zero exactly when the model's reverse rates equal the true ones.
The prior term is zero when alpha(1) = 0 and otherwise KL(Cat(alpha_1 x + (1 - alpha_1)/N) || U)
                                                                                 <- ``prior_kl``

Which denoiser makes the bound tight. The true reverse rate of the data (not conditioned on x) at position l is
(beta/N) q_t(y^l, z^{-l}) / q_t(z), and q_t(y^l, z^{-l}) is proportional to sum_x p(x^l | z_t^{-l}) q(y^l | x^l):
so the model's rate is exact when x_theta^l(z_t) = p(x^l | z_t^{-l}), the distribution of the clean character
given the *other* noisy characters. E[x^l | z_t], which also reads the noisy character z_t^l itself, is not the
optimum under this parameterisation (the substitution q(. | x = E[x | z_t]) is not the mixture of posteriors
the true reverse step is); ``tests/test_uniform.py`` shows both by enumeration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from textdiffusion.diffusion.masking import MaskSchedule
from textdiffusion.diffusion.tokens import TokenDraw, gumbel_sample

ALPHA_MIN = 1e-6  # alpha_t at the noisy end: beta_t = -alpha'/alpha stays finite and the integrand ~ alpha_t there


def corrupt(x: torch.Tensor, alpha: torch.Tensor, n_symbols: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw z_t ~ q(z_t | x): each token independently replaced, with probability 1 - alpha (one per row), by a
    symbol drawn uniformly from the ``n_symbols`` ordinary ones (which may be the token itself).

    Returns ``(z_t, resampled)``: ``resampled`` marks the positions that were drawn afresh (not necessarily
    changed: a fresh draw equals the old symbol with probability 1/N)."""
    resampled = torch.rand(x.shape, generator=generator, device=x.device) < (1.0 - alpha).reshape(-1, 1)
    noise = torch.randint(0, n_symbols, x.shape, generator=generator, device=x.device)
    return torch.where(resampled, noise, x), resampled


def marginal(x_probs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """q(z_t | x) = alpha x + (1 - alpha)/N for a distribution (or one-hot) ``x_probs`` (..., N); ``alpha``
    broadcasts against the leading dimensions."""
    n = x_probs.shape[-1]
    a = alpha[..., None]
    return a * x_probs + (1.0 - a) / n


def posterior(z: torch.Tensor, x_probs: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor) -> torch.Tensor:
    """q(z_s | z_t = z, x) for s < t (alpha_s >= alpha_t): (..., N) probabilities over z_s, for observed symbols
    ``z`` (...) and clean-data distributions ``x_probs`` (..., N), one-hot for the true posterior or a network's
    x_theta for the reverse step p_theta(z_s | z_t). ``alpha_t``, ``alpha_s`` broadcast against ``z``.

    Bayes' rule (module docstring): the kernel from s to t times q(z_s | x), normalised. The normaliser is
    q(z_t | x) analytically; it is computed as the sum, which keeps the result a distribution in floating point."""
    n = x_probs.shape[-1]
    # two times with nothing left of x (alpha_s = 0, a linear schedule's far end): nothing happens between them
    a_ts = torch.where(alpha_s > 0, alpha_t / alpha_s, torch.ones_like(alpha_s))[..., None]
    stay = torch.nn.functional.one_hot(z, n).to(x_probs.dtype)
    kernel = a_ts * stay + (1.0 - a_ts) / n  # q(z_t = z | z_s = y) for every y
    joint = kernel * marginal(x_probs, alpha_s)
    return joint / joint.sum(-1, keepdim=True)


def jump_rate(schedule: MaskSchedule, t: torch.Tensor) -> torch.Tensor:
    """beta_t = -alpha'(t) / alpha(t), the rate at which a character is redrawn, from the mask schedule's own weight
    w(t) = -alpha'/(1 - alpha): beta = w (1 - alpha) / alpha (loglinear: 1 / (1 - t); linear: sigma_max)."""
    a = schedule.alpha(t)
    return schedule.weight(t) * (1.0 - a) / a


def nelbo_integrand(log_x_theta: torch.Tensor, x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                    rate: torch.Tensor) -> torch.Tensor:
    """The NELBO integrand at each position (nats per unit time): (beta/N) sum_y r_y (e^{d_y} - 1 - d_y).

    ``log_x_theta`` (..., N) is the network's log-distribution over the clean symbol, ``x`` and ``z`` (...) the clean
    and noisy symbols, ``alpha`` and ``rate`` (beta_t) broadcast against ``x``. Computed in float64: near t = 0 the
    ratios xbar_y / xbar_z reach N / t, and near t = 1 the terms cancel to O(alpha^2)."""
    n = log_x_theta.shape[-1]
    a = alpha.double()[..., None]
    log_na, log_1ma = torch.log(n * a), torch.log1p(-a)
    log_xbar_theta = torch.logaddexp(log_na + log_x_theta.double().log_softmax(-1), log_1ma.expand_as(log_x_theta))
    # xbar = N alpha x + (1 - alpha): (1 - alpha) everywhere, N alpha + 1 - alpha at the clean symbol
    clean = torch.nn.functional.one_hot(x, n).bool()
    log_xbar = torch.where(clean, torch.logaddexp(log_na, log_1ma), log_1ma)
    at_z = z[..., None]
    log_r = log_xbar - log_xbar.gather(-1, at_z)
    d = (log_xbar_theta - log_xbar_theta.gather(-1, at_z)) - log_r
    terms = log_r.exp() * (torch.expm1(d) - d)
    return rate.double() / n * terms.sum(-1)


def prior_kl(alpha_one: float, n_symbols: int) -> float:
    """KL(q(z_1 | x) || Uniform) per position, in nats: the prior term of the NELBO (0 when alpha(1) = 0).
    q(z_1 | x) puts alpha_1 + (1 - alpha_1)/N on x and (1 - alpha_1)/N on each of the N - 1 others."""
    if alpha_one <= 0:
        return 0.0
    n = n_symbols
    on = alpha_one + (1.0 - alpha_one) / n
    off = (1.0 - alpha_one) / n
    return on * math.log(n * on) + ((n - 1) * off * math.log(n * off) if off > 0 else 0.0)


def nelbo_terms(log_x_theta: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                schedule: MaskSchedule) -> torch.Tensor:
    """One Monte-Carlo sample of the NELBO's time integral per row, summed over positions (nats): the integrand at
    each row's time ``t`` (a draw of t ~ U(0, 1) stands in for the integral). ``z`` must be drawn from
    q(z_t | x) at that t (:func:`corrupt`); cap a drawn t with :func:`time_before` first, so beta_t is finite."""
    a, rate = schedule.alpha(t.double()), jump_rate(schedule, t.double())
    return nelbo_integrand(log_x_theta, x, z, a[:, None], rate[:, None]).sum(-1)


def time_before(schedule: MaskSchedule, t: torch.Tensor) -> torch.Tensor:
    """The largest time whose alpha is still >= :data:`ALPHA_MIN`, capping a draw of t so the integrand stays
    finite; for alpha(1) = 0 that leaves out a sliver of [0, 1] where the integrand is itself ~ alpha_t."""
    limit = schedule.time_at(torch.full_like(t, ALPHA_MIN))
    return torch.minimum(t, limit)


def time_for_rate(schedule: MaskSchedule, rate: float, n_symbols: int) -> float:
    """The time t at which the forward process has changed a fraction ``rate`` of the characters. A position is
    redrawn with probability 1 - alpha_t and the draw lands on another symbol with probability (N - 1)/N, so

        (1 - alpha_t) (N - 1) / N = p   =>   alpha_t = 1 - p N / (N - 1),   t = schedule.time_at(alpha_t)

    A text corrupted at rate p is then a typical z_t, from which the reverse process repairs it. Rates of
    (N - 1)/N and above are noise through and through (alpha_t <= 0): no time matches them."""
    alpha = 1.0 - rate * n_symbols / (n_symbols - 1)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"a rate of {rate} changes no character or more than uniform noise does (at most "
                         f"{(n_symbols - 1) / n_symbols:.3f} of {n_symbols} symbols)")
    return float(schedule.time_at(torch.tensor(alpha, dtype=torch.float64)))


ANCESTRAL, REDRAW = "ancestral", "redraw"

# forward(state, t, rows=None) -> logits (n, L, N): the network on a state, as the shared discrete sampler's
Forward = Callable[..., torch.Tensor]
# on_step(step, state, info): called after every step with a copy of the state
StepReport = Callable[[int, torch.Tensor, dict[str, Any]], None]


@dataclass
class UniformSampler:
    """The draw loops of uniform-state noise, apart from any network: every free position is redrawn at every
    step, on the time grid 1 = t_0 > ... > t_steps = 0 (``start`` = t_0 < 1: from a state already part clean).

    * ``ancestral``: z_s ~ p_theta(z_s | z_t) = q(z_s | z_t, x_theta) (:func:`posterior`), x_theta the network's
      distribution after the token draw's temperature, top-k and top-p. The last step, to s = 0, is the same
      formula at alpha_s = 1: a draw from x_theta reweighted by the chance of having seen z_t from each symbol,
      q(z_t | z_0) x_theta(z_0). It is the reverse step the bound scores (its reconstruction term), and a draw
      rather than an argmax, so the sampler keeps the distribution the bound is a bound for.
    * ``redraw``: tiny-diffusion's heuristic: each step replaces every free position by a draw from x_theta itself,
      keeping nothing of z_t but what the network reads. It is no reverse process of the forward one, so no
      likelihood belongs to it.
    """

    rule: str
    steps: int
    draw: TokenDraw = field(default_factory=TokenDraw)
    alpha: Callable[[torch.Tensor], torch.Tensor] | None = None
    start: float = 1.0  # the time the state is at: 1 from the prior, earlier to repair a partly noisy text
    # ancestral: the last step, to t = 0, takes the posterior's likeliest symbol instead of a draw (a repair wants
    # the likeliest text; the steps before still draw, so the chain can move away from what it read)
    greedy_end: bool = False

    def __post_init__(self) -> None:
        if self.rule not in (ANCESTRAL, REDRAW):
            raise ValueError(f"unknown uniform sampler {self.rule!r}; choose {ANCESTRAL} or {REDRAW}")
        if self.steps < 1:
            raise ValueError("the number of sampling steps must be >= 1")
        if self.rule == ANCESTRAL and self.alpha is None:
            raise ValueError("the ancestral sampler steps through the schedule: give alpha")

    def run(self, forward: Forward, state: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator,
            on_step: StepReport | None = None) -> tuple[torch.Tensor, float]:
        """(n, L) ``state`` -> (the state at t = 0, network evaluations per sequence). ``fixed`` positions are
        never changed."""
        grid = torch.linspace(self.start, 0.0, self.steps + 1, device=state.device)
        n = state.shape[0]
        for i in range(self.steps):
            t, s = grid[i], grid[i + 1]
            logits = self.draw.filter(forward(state, t.expand(n)))
            if self.rule == REDRAW:
                drawn = gumbel_sample(logits, generator)
            else:
                assert self.alpha is not None
                x_theta = logits.double().softmax(-1)
                step = posterior(state, x_theta, self.alpha(t.double()), self.alpha(s.double()))
                last = self.greedy_end and i == self.steps - 1
                drawn = step.argmax(-1) if last else gumbel_sample(step.log(), generator)
            state = torch.where(fixed, state, drawn)
            if on_step:
                on_step(i + 1, state.clone(), {"t": float(s), "nfe": i + 1})
        return state, float(self.steps)
