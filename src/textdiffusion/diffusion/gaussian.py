r"""Gaussian diffusion, shared by every continuous method (text embeddings, analog bits, image pixels).

The network never sees this module and this module never sees the network: a schedule says how much
signal is left at time t, the parameterisation helpers convert between the three things a denoiser can
predict, and :class:`GaussianSampler` is a short loop of :meth:`GaussianSampler.step` calls (the HF
diffusers split between model and scheduler). :func:`reverse_process` is the one reverse loop and
:class:`VDMBound` the one likelihood bound: embedding, bits and image diffusion each supply only their
denoiser, their projection of x0_hat (snap to an embedding, clip to the pixel range, impute known
positions) and their decoder term.

Forward process (Ho et al. 2020, Eq. 4), for t in [0, 1]:

    x_t = sqrt(abar(t)) x_0 + sqrt(1 - abar(t)) eps,        eps ~ N(0, I)

Time is continuous; a *discrete* process with T steps simply restricts t to the grid {1/T, ..., 1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from textdiffusion.diffusion.stratified import per_row, stratified

# abar is kept inside [ABAR_MIN, ABAR_MAX]: the clean end keeps a tiny noise (so q(x_0|w) is a proper
# density and the likelihood bound is finite) and the noisy end keeps a tiny signal (so SNR > 0).
ABAR_MIN, ABAR_MAX = 1e-6, 1.0 - 1e-6
SCHEDULES = ("linear", "cosine", "sqrt")
TARGETS = ("eps", "x0", "v")


class NoiseSchedule:
    """abar(t): the fraction of signal *variance* left at time t (decreasing from ~1 to ~0)."""

    name: str

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self._abar(t.float()).clamp(ABAR_MIN, ABAR_MAX)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) (Kingma et al. 2021, "VDM")."""
        a = self.alpha_bar(t)
        return a / (1.0 - a)

    def snr_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """d SNR / dt by autograd, so a new schedule needs only its abar formula. <= 0 everywhere."""
        with torch.enable_grad():
            tt = t.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.snr(tt).sum(), tt)
        return grad


class LinearSchedule(NoiseSchedule):
    r"""DDPM's linear betas (Ho et al. 2020: beta from 1e-4 to 0.02 over 1000 steps), in continuous time:
    -log abar(t) = N (beta_0 t + (beta_1 - beta_0) t^2 / 2) with N = 1000, the limit of
    prod (1 - beta_i) for small betas. abar(1) = exp(-10.05) = 4.3e-5."""

    name = "linear"

    def __init__(self, beta0: float = 1e-4, beta1: float = 0.02, n: int = 1000):
        self.beta0, self.beta1, self.n = beta0, beta1, n

    def _abar(self, t):
        return torch.exp(-self.n * (self.beta0 * t + 0.5 * (self.beta1 - self.beta0) * t * t))


class CosineSchedule(NoiseSchedule):
    r"""Nichol & Dhariwal 2021, Eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t + s) / (1 + s)), s = 0.008."""

    name = "cosine"

    def __init__(self, s: float = 0.008):
        self.s = s

    def _f(self, t):
        return torch.cos(0.5 * math.pi * (t + self.s) / (1.0 + self.s)) ** 2

    def _abar(self, t):
        return self._f(t) / self._f(torch.zeros_like(t))


class SqrtSchedule(NoiseSchedule):
    r"""Li et al. 2022 (Diffusion-LM), Sec. 4.3: abar(t) = 1 - sqrt(t + s), s = 1e-4.

    Noise rises steeply at the start: a word embedding survives small Gaussian noise almost intact, so
    the linear and cosine schedules waste their first steps on inputs that are still trivially decodable."""

    name = "sqrt"

    def __init__(self, s: float = 1e-4):
        self.s = s

    def _abar(self, t):
        return 1.0 - torch.sqrt(t + self.s)


def make_noise_schedule(name: str) -> NoiseSchedule:
    table = {"linear": LinearSchedule, "cosine": CosineSchedule, "sqrt": SqrtSchedule}
    if name not in table:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return table[name]()


# ---- forward process and the three parameterisations ---------------------------------------------------
def _coefs(abar: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(abar), sqrt(1 - abar) shaped to broadcast against ``like`` (batch first)."""
    shape = (-1,) + (1,) * (like.dim() - 1)
    abar = abar.to(like.dtype).reshape(shape) if abar.dim() else abar.to(like.dtype)
    return abar.sqrt(), (1.0 - abar).sqrt()


def q_sample(x0: torch.Tensor, abar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    a, s = _coefs(abar, x0)
    return a * x0 + s * eps


def training_target(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, target: str) -> torch.Tensor:
    """What the network regresses onto: eps (Ho et al. 2020), x0 (Li et al. 2022) or
    v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        a, s = _coefs(abar, x0)
        return a * eps - s * x0
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def split_prediction(out: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor,
                     target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Network output -> (x0_hat, eps_hat), consistent with x_t = a x0_hat + s eps_hat.

    eps-prediction divides by sqrt(abar) to get x0, which amplifies errors ~1/sqrt(abar) at high noise;
    x0- and v-prediction do not (one reason Diffusion-LM predicts x0)."""
    a, s = _coefs(abar, x_t)
    if target == "eps":
        return (x_t - s * out) / a, out
    if target == "x0":
        return out, (x_t - a * out) / s
    if target == "v":
        return a * x_t - s * out, s * x_t + a * out
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The noise implied by x_t and a (possibly clamped) x0."""
    a, s = _coefs(abar, x_t)
    return (x_t - a * x0) / s


def gaussian_prior_kl(x0: torch.Tensor, abar_one: torch.Tensor) -> torch.Tensor:
    """KL(q(x_1 | x_0) || N(0, I)) summed over the last axis (nats): the prior term of the bound."""
    a = abar_one.to(x0.dtype)
    return 0.5 * (a * x0.pow(2) + (1.0 - a) - 1.0 - torch.log1p(-a)).sum(-1)


def training_times(n: int, timesteps: int, t_min: float, generator: torch.Generator,
                   device: torch.device | str) -> torch.Tensor:
    """n training times, uniform but stratified (one random offset per batch, then shuffled): every batch
    covers [0, 1] evenly, which lowers the variance of the batch loss at no cost. On the grid {1/T, ..., 1}
    for a discrete process, in [t_min, 1] for a continuous one."""
    u = stratified(torch.rand(1, generator=generator, device=device), n)  # n points covering [0, 1) evenly
    u = u[torch.randperm(n, generator=generator, device=device)] if n > 1 else u
    if timesteps:
        return (torch.floor(u * timesteps) + 1.0) / timesteps
    return (1.0 - u).clamp_min(t_min)


def diffusion_term_weights(schedule: NoiseSchedule, u: torch.Tensor, timesteps: int,
                           t_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Times t and weights for a one-sample estimate of the diffusion term of the VDM bound (Kingma et al.
    2021), from uniforms ``u``: the term is ``weight * ||x0 - x0_hat(x_t, t)||^2`` (summed over dimensions).

    Discrete T (Eq. 13): sum over i = 2..T of 1/2 (SNR(s_i) - SNR(t_i)) ||.||^2 with s_i = (i - 1)/T; one
    i drawn uniformly, so the weight carries the factor T - 1. (Step 1 is the reconstruction term's.)
    Continuous time (Eq. 17): 1/2 E_t[-SNR'(t) ||.||^2] for t uniform on [t_min, 1].
    Shared by every Gaussian method so their bounds are the same estimator."""
    if timesteps:
        i = torch.floor(u * (timesteps - 1)) + 2.0
        t, s = i / timesteps, (i - 1.0) / timesteps
        return t, (timesteps - 1) * 0.5 * (schedule.snr(s) - schedule.snr(t))
    t = t_min + (1.0 - t_min) * u
    return t, 0.5 * (1.0 - t_min) * -schedule.snr_derivative(t)


# ---- sampling ---------------------------------------------------------------------------------------
SAMPLERS = ("ddpm", "ddim")


@dataclass
class GaussianSampler:
    """Reverse process on a grid of times: DDPM ancestral steps or DDIM (Song et al. 2021) with ``eta``.

    ``timesteps`` = T > 0 restricts times to the training grid {k / T}; 0 is continuous time.
    ``steps`` <= T network evaluations are spread evenly over it. ``time_difference`` (Chen et al. 2022,
    "Analog Bits", Sec. 3.3) makes the intervals asymmetric: the network is asked at t but the step goes
    to t_next - td / steps, as if the prediction were cleaner than it is.
    """

    schedule: NoiseSchedule
    kind: str = "ddim"
    steps: int = 100
    timesteps: int = 0
    eta: float = 0.0
    time_difference: float = 0.0

    def __post_init__(self):
        if self.kind not in SAMPLERS:
            raise ValueError(f"unknown Gaussian sampler {self.kind!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ValueError("the number of sampling steps must be >= 1")
        if self.timesteps and self.steps > self.timesteps:
            raise ValueError(f"{self.steps} sampling steps exceed the {self.timesteps} steps the model was trained "
                             f"with; use at most {self.timesteps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.time_difference < 0:
            raise ValueError(f"the time difference must be >= 0, got {self.time_difference}")

    def _snap(self, t: float) -> float:
        if self.timesteps:
            return round(t * self.timesteps) / self.timesteps
        return t

    def times(self) -> list[tuple[float, float]]:
        """(t_now, t_next) pairs from t = 1 down to t_next = 0."""
        out = []
        for k in range(self.steps):
            t_now = self._snap(1.0 - k / self.steps)
            t_next = max(0.0, self._snap(1.0 - (k + 1 + self.time_difference) / self.steps))
            out.append((t_now, t_next))
        return out

    def step(self, x_t: torch.Tensor, x0_hat: torch.Tensor, eps_hat: torch.Tensor, t: float, s: float,
             generator: torch.Generator | None) -> torch.Tensor:
        r"""One step from t to s < t.

        DDIM (Song et al. 2021, Eq. 12): x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).
        With eta = 1 this *is* DDPM's ancestral step, a draw from the posterior q(x_s | x_t, x0_hat)
        (Ho et al. 2020, Eq. 7), so ``ddpm`` is DDIM with eta forced to 1. At s = 0 it returns x0_hat.
        """
        if s <= 0.0:
            return x0_hat
        dev = x_t.device
        abar_t = self.schedule.alpha_bar(torch.tensor(t, device=dev))
        abar_s = self.schedule.alpha_bar(torch.tensor(s, device=dev))
        eta = 1.0 if self.kind == "ddpm" else self.eta
        sigma2 = eta**2 * (1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)
        sigma2 = sigma2.clamp_min(0.0)
        x_s = abar_s.sqrt() * x0_hat + (1.0 - abar_s - sigma2).clamp_min(0.0).sqrt() * eps_hat
        if eta > 0:
            z = torch.randn(x_t.shape, generator=generator, device=dev, dtype=x_t.dtype)
            x_s = x_s + sigma2.sqrt() * z
        return x_s


def posterior_mean_var(x_t: torch.Tensor, x0: torch.Tensor, abar_t: torch.Tensor,
                       abar_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(x_s | x_t, x_0) for s < t (Ho et al. 2020, Eqs. 6-7, with alpha_{t|s} = abar_t / abar_s):
    written out separately so the tests can check :meth:`GaussianSampler.step` against it."""
    alpha_ts = abar_t / abar_s
    beta_ts = 1.0 - alpha_ts
    mean = (abar_s.sqrt() * beta_ts / (1.0 - abar_t)) * x0 + (alpha_ts.sqrt() * (1.0 - abar_s) / (1.0 - abar_t)) * x_t
    var = (1.0 - abar_s) / (1.0 - abar_t) * beta_ts
    return mean, var


# on_step(step, x_s, x0_hat, s) after each reverse step; each method turns it into its own callback
LoopCallback = Callable[[int, torch.Tensor, torch.Tensor, float], None]
# (x_t, t (n,), x0_prev or None) -> (x0_hat, eps_hat), both float
Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


def reverse_process(sampler: GaussianSampler, x: torch.Tensor, denoise: Denoiser, generator: torch.Generator,
                    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    renoise: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
                    on_step: LoopCallback | None = None,
                    steer: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
    r"""Run the reverse process from x = x_1 (pure noise) to x0; return the last x0_hat.

    Each step asks the denoiser for (x0_hat, eps_hat) at time t, lets the method ``project`` x0_hat onto
    what it knows data looks like (nearest embedding, the pixel range, the user's known tokens), re-derives
    eps_hat from the projected x0_hat so the two stay consistent with x_t, and takes the sampler's step to
    s. ``renoise(x_s, s)`` may then overwrite parts of x_s (imputation: known positions are redrawn from
    q(x_s | x0), Song et al. 2021). The previous projected x0_hat is handed back to the denoiser, for
    self-conditioning (Chen et al. 2022); a denoiser that does not self-condition ignores it. ``steer(x_s, s)``,
    if given, moves each new x_s before that (classifier guidance: Diffusion-LM's gradient steps).
    """
    n, dtype = x.shape[0], x.dtype
    x0_prev: torch.Tensor | None = None
    x0_hat = x
    for i, (t, s) in enumerate(sampler.times()):
        tt = torch.full((n,), t, device=x.device)
        x0_hat, eps_hat = denoise(x, tt, x0_prev)
        if project is not None:
            x0_hat = project(x0_hat)
            eps_hat = eps_from_x0(x.float(), x0_hat, sampler.schedule.alpha_bar(tt))
        x = sampler.step(x.float(), x0_hat, eps_hat, t, s, generator).to(dtype)
        if steer is not None and s > 0:
            x = steer(x, s)
        if renoise is not None and s > 0:
            x = renoise(x, s)
        x0_prev = x0_hat.to(dtype)
        if on_step:
            on_step(i + 1, x, x0_hat, s)
    return x0_hat


class VDMBound:
    r"""The variational bound of VDM (Kingma et al. 2021, Eqs. 11-17) on -log p(data), accumulated over
    batches of examples and reported per unit (character or pixel dimension):

        -log p(w) <= E[-log p(w | z_{t_min})]              reconstruction: the method's decoder term
                   + KL(q(z_1 | x_0) || N(0, I))            prior
                   + 1/2 E_t[-SNR'(t) ||x_0 - x0_hat(z_t, t)||^2]   diffusion (continuous time)

    with T discrete steps the last term is sum_i 1/2 (SNR(s_i) - SNR(t_i)) ||x_0 - x0_hat||^2
    (:func:`diffusion_term_weights`). The diffusion term is estimated with ``samples`` stratified times per
    example. A method supplies x0 (B, ...), its decoder term and a function x_t, t -> x0_hat.
    """

    def __init__(self, schedule: NoiseSchedule, timesteps: int, t_min: float, samples: int):
        self.schedule, self.timesteps, self.t_min, self.samples = schedule, timesteps, t_min, max(1, samples)
        self.recon: list[torch.Tensor] = []
        self.prior: list[torch.Tensor] = []
        self.diffusion: list[torch.Tensor] = []

    def add(self, x0: torch.Tensor, reconstruction: Callable[[torch.Tensor], torch.Tensor],
            predict_x0: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
            generator: torch.Generator) -> None:
        """Score one batch of x0 (B, ...). ``reconstruction(x0)`` returns -log p(data | z_{t_min}) per example
        (it draws its own z); ``predict_x0(x_t, t, eps)`` the denoiser's x0_hat (``eps`` is the noise in x_t,
        for a method that also reports its training loss). Random numbers are drawn in a fixed order."""
        dev = x0.device
        self.recon.append(reconstruction(x0))
        abar_one = self.schedule.alpha_bar(torch.tensor(1.0, device=dev))
        prior = gaussian_prior_kl(x0, abar_one)
        self.prior.append(prior.flatten(1).sum(1) if prior.dim() > 1 else prior)
        u = per_row(x0.shape[0], self.samples, generator, dev)
        terms = []
        for k in range(self.samples):
            t, weight = diffusion_term_weights(self.schedule, u[:, k], self.timesteps, self.t_min)
            eps = torch.randn(x0.shape, generator=generator, device=dev)
            x_t = q_sample(x0, self.schedule.alpha_bar(t), eps)
            terms.append(weight * (x0 - predict_x0(x_t, t, eps)).pow(2).flatten(1).sum(1))
        self.diffusion.append(torch.stack(terms, 1).mean(1))

    def result(self, units: int) -> tuple[float, dict[str, Any]]:
        """(nats per unit, the three terms per unit and the standard error of the total)."""
        rec, pri, dif = (torch.cat(v).double().sum().item() for v in (self.recon, self.prior, self.diffusion))
        per_example = (torch.cat(self.recon) + torch.cat(self.prior) + torch.cat(self.diffusion)).double().cpu()
        n = per_example.numel()
        stderr = float(per_example.std() / math.sqrt(n)) / (units / n) if n > 1 else float("nan")
        return (rec + pri + dif) / units, {"reconstruction": rec / units, "prior": pri / units,
                                           "diffusion": dif / units, "stderr_nats": stderr}
