r"""The likelihood of latent diffusion: the LSGM bound (Vahdat, Kreis & Kautz 2021, Eq. 2).

Text x is encoded by a stochastic encoder q(z | x) = N(mu(x), sigma^2 I), the diffusion models the density
p(z) of the latents, and a decoder gives p(x | z). For any q, Jensen's inequality on
log p(x) = log E_q[p(x | z) p(z) / q(z | x)] gives

    -log p(x) <= E_q[-log p(x | z)]          reconstruction: the decoder's cross-entropy on a draw z
               + E_q[-log p(z)]              the latent's cross-entropy under the diffusion
               - H(q(z | x))                 the encoder's entropy, in closed form: :func:`gaussian_entropy`

The middle term is itself only bounded, by VDM's bound for continuous data (Kingma et al. 2021) with z as the
data (:class:`~textdiffusion.diffusion.gaussian.VDMBound`): its prior and diffusion terms as for every Gaussian
method, and its decoder term the density of z given z_{t_min} = sqrt(a_0) z + sqrt(1 - a_0) eps,

    p(z | z_{t_min}) = N(z; z_{t_min} / sqrt(a_0), (1 - a_0) / a_0 I),
    E[-log p(z | z_{t_min})] = D/2 (log(2 pi (1 - a_0) / a_0) + 1)               (:func:`gaussian_decoder_nats`)

Both the entropy and this decoder term are densities of a continuous variable, so each alone can have either
sign and grows without bound as its variance shrinks; only their difference matters: a decoder at t_min whose
noise (1 - a_0) / a_0 is well below the encoder's sigma^2 costs little against the entropy the encoder's noise
earns back. The total is an upper bound on -log p(x) for any encoder, decoder and denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from textdiffusion.diffusion.gaussian import NoiseSchedule, gaussian_prior_kl, q_sample
from textdiffusion.diffusion.stratified import per_row


def gaussian_entropy(sigma: float, dims: int) -> float:
    """H(N(mu, sigma^2 I_dims)) = dims/2 log(2 pi e sigma^2) nats, whatever mu."""
    return 0.5 * dims * math.log(2.0 * math.pi * math.e * sigma * sigma)


def gaussian_decoder_nats(abar0: float, dims: int) -> float:
    """E[-log N(z; z_0 / sqrt(a_0), (1 - a_0) / a_0 I)] for z_0 ~ q(z_0 | z): the VDM decoder term of a continuous
    z of ``dims`` dimensions at signal level a_0 = ``abar0``. z_0 / sqrt(a_0) - z = sqrt((1 - a_0) / a_0) eps, so
    the squared error over the variance is ||eps||^2 with mean ``dims``: no draw is needed."""
    var = (1.0 - abar0) / abar0
    return 0.5 * dims * (math.log(2.0 * math.pi * var) + 1.0)


def time_of_abar(schedule: NoiseSchedule, abar: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """The time t in [0, 1] at which ``schedule`` leaves signal ``abar``, by bisection (abar(t) is decreasing), so
    any schedule given only its abar formula can be sampled by noise level."""
    lo, hi = torch.zeros_like(abar), torch.ones_like(abar)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = schedule.alpha_bar(mid) > abar  # still too much signal at mid: t lies later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def log_snr_range(schedule: NoiseSchedule, t_min: float) -> tuple[float, float]:
    """(log SNR(1), log SNR(t_min)): the noise levels the diffusion term integrates over."""
    ends = schedule.snr(torch.tensor([1.0, t_min])).log()
    return float(ends[0]), float(ends[1])


def latent_diffusion_term(schedule: NoiseSchedule, t_min: float, z: torch.Tensor, u: torch.Tensor,
                          predict_z: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                          generator: torch.Generator) -> torch.Tensor:
    r"""A one-sample estimate per row of VDM's continuous-time diffusion term (Kingma et al. 2021, Eq. 17) for
    z (B, ...), with the noise level drawn uniform in log SNR rather than in t:

        1/2 int_{t_min}^1 -SNR'(t) ||z - z_hat(z_t, t)||^2 dt = 1/2 int_{lam_min}^{lam_max} e^lam ||.||^2 dlam

    (lam = log SNR; the two are the same integral). For a density at the scale of the encoder's noise the
    denoiser's error is about D / SNR at high SNR, so the integrand in lambda is nearly flat and a few draws
    estimate it well; the same error weighted by -SNR'(t) with t uniform puts almost all its mass in a sliver
    near t_min that a few draws miss, and an estimate with a mean that is right but that is usually far too low.
    ``u`` (B,) are the uniforms; one eps is drawn per row."""
    lam_lo, lam_hi = log_snr_range(schedule, t_min)
    lam = lam_lo + (lam_hi - lam_lo) * u
    abar = torch.sigmoid(lam)
    t = time_of_abar(schedule, abar)
    eps = torch.randn(z.shape, generator=generator, device=z.device)
    z_t = q_sample(z, abar, eps)
    err = (z - predict_z(z_t, t, eps)).pow(2).flatten(1).sum(1)
    return 0.5 * (lam_hi - lam_lo) * lam.exp() * err


@dataclass(frozen=True)
class LSGMTerms:
    """The bound and its terms, in nats per unit (character): ``total`` = ``reconstruction`` + ``latent`` -
    ``entropy``, and ``latent`` = ``latent_decoder`` + ``latent_prior`` + ``latent_diffusion`` (VDM on x = s z, its
    decoder term a density of z: -D log s for the change of variables)."""

    total: float
    reconstruction: float
    latent: float
    entropy: float
    latent_decoder: float
    latent_prior: float
    latent_diffusion: float
    stderr: float  # standard error of ``total`` over the windows scored


class LSGMBound:
    """Accumulates the LSGM bound over batches of windows: per window a draw z ~ q(z | x), the decoder's
    -log p(x | z) on it, VDM's bound on -log p(z) (decoder term at t_min, prior KL, and the diffusion term by
    ``samples`` stratified noise levels, :func:`latent_diffusion_term`) and the encoder's entropy (the same for
    every window: sigma is fixed)."""

    def __init__(self, schedule: NoiseSchedule, t_min: float, samples: int, sigma: float, scale: float = 1.0):
        self.schedule, self.t_min, self.samples, self.sigma = schedule, t_min, max(1, samples), sigma
        self.scale = scale  # the diffusion models x = scale * z
        self.abar0 = float(schedule.alpha_bar(torch.tensor(t_min)))
        self.terms: dict[str, list[torch.Tensor]] = {k: [] for k in ("reconstruction", "decoder", "prior",
                                                                     "diffusion", "entropy")}

    def add(self, reconstruction: torch.Tensor, z: torch.Tensor,
            predict_z: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
            generator: torch.Generator) -> None:
        """One batch: ``reconstruction`` (B,) is -log p(x | z) of the draws ``z`` (B, k, d); ``predict_z(x_t, t,
        eps)`` the denoiser's estimate of x = scale * z. Random numbers are drawn in a fixed order. The density of
        z is that of x times the Jacobian scale^D: -log p(z) = -log p(x) - D log scale."""
        n, dims = z.shape[0], z[0].numel()
        z = self.scale * z
        u = per_row(n, self.samples, generator, z.device)
        diffusion = torch.stack([latent_diffusion_term(self.schedule, self.t_min, z, u[:, j], predict_z, generator)
                                 for j in range(self.samples)], 1).mean(1)
        abar_one = self.schedule.alpha_bar(torch.tensor(1.0, device=z.device))
        # the decoder term at t_min as a density of z: p(x | x_tmin) scale^D, the change of variables x = scale z
        decoder = gaussian_decoder_nats(self.abar0, dims) - dims * math.log(self.scale)
        found = {"reconstruction": reconstruction, "decoder": torch.full((n,), decoder),
                 "prior": gaussian_prior_kl(z.flatten(1), abar_one), "diffusion": diffusion,
                 "entropy": torch.full((n,), gaussian_entropy(self.sigma, dims))}
        for key, value in found.items():
            self.terms[key].append(value.detach().double().cpu())

    def result(self, units: int) -> LSGMTerms:
        rec, dec, pri, dif, ent = (torch.cat(self.terms[k]) for k in ("reconstruction", "decoder", "prior",
                                                                       "diffusion", "entropy"))
        per_window = rec + dec + pri + dif - ent
        n = per_window.numel()
        stderr = float(per_window.std() / math.sqrt(n)) / (units / n) if n > 1 else float("nan")
        per = [float(v.sum()) / units for v in (per_window, rec, dec + pri + dif, ent, dec, pri, dif)]
        return LSGMTerms(*per, stderr=stderr)
