r"""Absorbing-state ("masked") corruption in continuous time (Sahoo et al. 2024, "MDLM"; Shi et al. 2024).

Each token of a clean sequence x is independently kept with probability alpha(t) and replaced by the
mask token otherwise:  q(z_t | x) = Cat(z_t; alpha(t) x + (1 - alpha(t)) m),  with alpha decreasing from
alpha(0) = 1 (clean) to alpha(1) ~ 0 (all masks).

The NELBO of MDLM (their Eq. 10) only needs alpha and its derivative:

    NELBO(x) = E_{t ~ U(0,1)} E_{z_t ~ q}  [ -alpha'(t) / (1 - alpha(t)) * sum_{l : z_t^l = m} -log p_theta(x^l | z_t) ]
               + KL(q(z_1 | x) || p(z_1))

so a schedule is an object with ``alpha(t)`` and ``weight(t) = -alpha'(t) / (1 - alpha(t))``. The prior
term is zero when alpha(1) = 0; when alpha(1) > 0 we use the prior "mask with probability 1 - alpha(1),
otherwise a uniform symbol", whose KL is exactly alpha(1) * log(V) per token, and the samplers start from
that same prior, so the reported bound and the sampler agree.

Integrating t out. Substituting u = 1 - alpha(t) (so w(t) dt = du / u) and conditioning on the number k
of masked positions, the time integral has a closed form when alpha(1) = 0:

    int_0^1 (1/u) C(L,k) u^k (1-u)^(L-k) du = C(L,k) B(k, L-k+1) = 1/k,

hence  NELBO(x) = sum_{k=1..L} E_{S uniform, |S|=k} [ (1/k) sum_{l in S} -log p_theta(x^l | x_{not S}) ].

Per character that is E_{k ~ U{1..L}} E_S [ mean cross-entropy over the k masked positions ]: the same
bound for *every* schedule with alpha(1) = 0 (MDLM notes this invariance), estimated without the binomial
noise in the number of masks that the 1/t weight has to undo. ``method.estimator = count`` trains and
validates with it; ``time`` is the textbook estimator above.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from textdiffusion.diffusion.stratified import uniforms


class MaskSchedule(ABC):
    name: str

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is still clean at time t."""

    @abstractmethod
    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """The NELBO weight -alpha'(t) / (1 - alpha(t))."""

    @abstractmethod
    def time_at(self, alpha: torch.Tensor) -> torch.Tensor:
        """The time t in [0, 1] whose alpha(t) is ``alpha``: where a state with that clean fraction is typical,
        the time a time-conditioned network is given for it."""

    def alpha_one(self) -> float:
        return float(self.alpha(torch.ones(1))[0])

    def prior_kl_per_token(self, n_symbols: int) -> float:
        """KL(q(z_1|x) || p(z_1)) per token, in nats (see module docstring)."""
        a1 = self.alpha_one()
        return a1 * math.log(n_symbols) if a1 > 0 else 0.0


class LogLinearSchedule(MaskSchedule):
    """alpha(t) = 1 - t: the expected fraction of masks grows linearly; sigma(t) = -log(1 - t) is
    "log-linear" in MDLM's naming. weight(t) = 1 / t."""

    name = "loglinear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / t

    def time_at(self, alpha: torch.Tensor) -> torch.Tensor:
        return 1.0 - alpha


class LinearSchedule(MaskSchedule):
    """sigma(t) = sigma_max * t, alpha(t) = exp(-sigma(t)): total noise rate linear in time (MDLM's
    "linear"). weight(t) = sigma_max / expm1(sigma_max t). alpha(1) = exp(-sigma_max) > 0, so the bound
    carries the small prior term."""

    name = "linear"

    def __init__(self, sigma_max: float = 10.0):
        if sigma_max <= 0:
            raise ValueError("sigma_max must be positive")
        self.sigma_max = sigma_max

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.sigma_max * t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_max / torch.expm1(self.sigma_max * t)

    def time_at(self, alpha: torch.Tensor) -> torch.Tensor:
        # alpha = 0 lies past t = 1 on this schedule; the sampler starts there at t = 1
        return (-torch.log(alpha) / self.sigma_max).clamp(0.0, 1.0)


SCHEDULES = ("loglinear", "linear")


def make_schedule(name: str, sigma_max: float = 10.0) -> MaskSchedule:
    if name == "loglinear":
        return LogLinearSchedule()
    if name == "linear":
        return LinearSchedule(sigma_max)
    raise ValueError(f"unknown mask schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


T_MIN = 1e-6  # keeps weight(t) finite; a t this small masks nothing in practice, so its term is ~0 either way


def times_from(u: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1) -> times in (0, 1]."""
    return (1.0 - u).clamp_min(T_MIN)


def counts_from(u: torch.Tensor, length: int) -> torch.Tensor:
    """Uniforms in [0, 1) -> numbers of masked positions k, uniform on {1..length}."""
    return (u * length).long().clamp_(0, length - 1) + 1


def sample_times(n: int, antithetic: bool, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Times in (0, 1]; antithetic sampling covers [0, 1] evenly so the loss variance drops."""
    return times_from(uniforms(n, antithetic, generator, device))


def sample_counts(n: int, length: int, antithetic: bool, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """Numbers of masked positions k in {1..L}, uniform; antithetic = stratified over the batch."""
    return counts_from(uniforms(n, antithetic, generator, device), length)


def corrupt_exactly(x: torch.Tensor, k: torch.Tensor, mask_id: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask exactly k[i] positions of row i, chosen uniformly at random (ranks of uniform scores)."""
    scores = torch.rand(x.shape, generator=generator, device=x.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    masked = ranks < k[:, None]
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def corrupt(
    x: torch.Tensor, alpha: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw z_t ~ q(z_t | x): mask each token independently with probability 1 - alpha (per row).

    Returns ``(z_t, masked)`` where ``masked`` is the boolean mask of replaced positions."""
    masked = torch.rand(x.shape, generator=generator, device=x.device) < (1.0 - alpha)[:, None]
    return torch.where(masked, torch.full_like(x, mask_id), x), masked
