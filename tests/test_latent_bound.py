"""The LSGM bound of latent diffusion (diffusion/latent_bound.py) against closed forms: the encoder's entropy,
the latent term on a Gaussian latent whose exact denoiser is known, and the whole bound against the exact NLL of
a model whose likelihood can be integrated."""

from __future__ import annotations

import math

import torch

from textdiffusion.diffusion.gaussian import make_noise_schedule
from textdiffusion.diffusion.latent_bound import (
    LSGMBound,
    gaussian_decoder_nats,
    gaussian_entropy,
    time_of_abar,
)

T_MIN = 1e-3


def gaussian_denoiser(schedule, s2: float):
    """E[x | x_t] for x ~ N(0, s2 I): sqrt(a) s2 / (a s2 + 1 - a) x_t, the exact denoiser of a Gaussian."""
    def predict(x_t, t, _eps):
        a = schedule.alpha_bar(t).reshape(-1, *([1] * (x_t.dim() - 1)))
        return a.sqrt() * s2 / (a * s2 + 1.0 - a) * x_t
    return predict


def test_entropy_and_decoder_term_are_their_closed_forms():
    g = torch.Generator().manual_seed(0)
    sigma, dims = 0.3, 5
    z = sigma * torch.randn(200_000, dims, generator=g)
    monte_carlo = float((0.5 * (z / sigma).pow(2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)).sum(1).mean())
    assert abs(gaussian_entropy(sigma, dims) - monte_carlo) < 0.01
    a0 = 0.99
    x = torch.randn(200_000, dims, generator=g)
    x0 = math.sqrt(a0) * x + math.sqrt(1 - a0) * torch.randn(x.shape, generator=g)
    var = (1 - a0) / a0
    nll = (0.5 * (x - x0 / math.sqrt(a0)).pow(2) / var + 0.5 * math.log(2 * math.pi * var)).sum(1).mean()
    assert abs(gaussian_decoder_nats(a0, dims) - float(nll)) < 0.01


def test_time_of_abar_inverts_the_schedule():
    for name in ("cosine", "linear", "sqrt"):
        schedule = make_noise_schedule(name)
        t = torch.linspace(0.01, 0.99, 50)
        assert torch.allclose(time_of_abar(schedule, schedule.alpha_bar(t)), t, atol=1e-5)


def test_the_latent_term_of_a_gaussian_latent_is_its_exact_nll():
    """z ~ N(0, s2 I) with its exact denoiser: VDM's bound on -log p(z), sampled in log SNR, matches the exact
    -log N(z; 0, s2 I) on average (the gap is the t_min and prior ends, tiny here), and so at any scale."""
    schedule = make_noise_schedule("cosine")
    s2, dims, n = 0.5, 4, 20_000
    z = math.sqrt(s2) * torch.randn(n, 1, dims, generator=torch.Generator().manual_seed(1))
    exact = float((0.5 * z.pow(2) / s2 + 0.5 * math.log(2 * math.pi * s2)).flatten(1).sum(1).mean())
    for scale in (1.0, 3.0):
        bound = LSGMBound(schedule, T_MIN, 8, sigma=1.0, scale=scale)
        bound.add(torch.zeros(n), z, gaussian_denoiser(schedule, scale * scale * s2), torch.Generator().manual_seed(2))
        terms = bound.result(n)
        assert terms.stderr < 0.06 and abs(terms.latent - exact) < 4 * terms.stderr, (scale, terms, exact)


def test_the_bound_is_above_the_exact_nll_of_a_model_that_can_be_integrated():
    """One character of two symbols, encoder means -1 and +1 with sigma = 0.5, latent density N(0, 1.25) (the
    aggregate's own variance) given by its exact denoiser, decoder p(x | z) = sigmoid(+-3 z). -log p(x) is
    integrated on a grid; the LSGM bound must sit above it, and not far (q is close to the true posterior)."""
    schedule = make_noise_schedule("cosine")
    sigma, s2 = 0.5, 1.25
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    density = torch.exp(-0.5 * grid.pow(2) / s2) / math.sqrt(2 * math.pi * s2)
    for x in (0, 1):
        sign = 1.0 if x else -1.0
        p_x = float((density * torch.sigmoid(sign * 3.0 * grid)).sum() * (grid[1] - grid[0]))
        n = 40_000
        g = torch.Generator().manual_seed(3 + x)
        z = sign + sigma * torch.randn(n, 1, 1, generator=g)
        reconstruction = -torch.nn.functional.logsigmoid(sign * 3.0 * z.flatten())
        bound = LSGMBound(schedule, T_MIN, 4, sigma)
        bound.add(reconstruction, z, gaussian_denoiser(schedule, s2), g)
        terms = bound.result(n)
        print(x, terms, -math.log(p_x))
        assert -math.log(p_x) + 3 * terms.stderr < terms.total < -math.log(p_x) + 0.5, (x, terms, -math.log(p_x))
