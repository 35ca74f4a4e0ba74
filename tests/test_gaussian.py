"""The shared Gaussian machinery: schedules, parameterisations, DDPM/DDIM steps."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.diffusion.gaussian import (
    ABAR_MAX,
    ABAR_MIN,
    GaussianSampler,
    eps_from_x0,
    gaussian_prior_kl,
    make_noise_schedule,
    posterior_mean_var,
    q_sample,
    split_prediction,
    training_target,
)

ENDPOINTS = {  # abar(0), abar(1) of each schedule
    "linear": (ABAR_MAX, math.exp(-1000 * (1e-4 + 0.5 * (0.02 - 1e-4)))),
    "cosine": (ABAR_MAX, ABAR_MIN),
    "sqrt": (1.0 - math.sqrt(1e-4), ABAR_MIN),
}


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_schedule_endpoints_and_monotone(name):
    sched = make_noise_schedule(name)
    a0, a1 = ENDPOINTS[name]
    assert float(sched.alpha_bar(torch.tensor(0.0))) == pytest.approx(a0, rel=1e-5)
    assert float(sched.alpha_bar(torch.tensor(1.0))) == pytest.approx(a1, rel=1e-3)
    grid = sched.alpha_bar(torch.linspace(0, 1, 1001))
    assert (grid[1:] <= grid[:-1]).all()


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_snr_derivative_matches_finite_difference(name):
    sched = make_noise_schedule(name)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    h = 1e-5
    fd = (sched.snr(t + h).double() - sched.snr(t - h).double()) / (2 * h)
    assert torch.allclose(sched.snr_derivative(t).double(), fd, rtol=1e-2)
    assert (sched.snr_derivative(t) < 0).all()


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of linear, cosine, sqrt"):
        make_noise_schedule("quadratic")


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_parameterisations_round_trip(target):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 5, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    abar = torch.tensor([0.9, 0.5, 0.1, 0.01])
    x_t = q_sample(x0, abar, eps)
    x0_hat, eps_hat = split_prediction(training_target(x0, eps, abar, target), x_t, abar, target)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(eps_hat, eps, atol=1e-4)
    assert torch.allclose(eps_from_x0(x_t, x0, abar), eps, atol=1e-4)


def test_ddpm_step_is_a_draw_from_the_posterior():
    sched = make_noise_schedule("cosine")
    g = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    t, s = 0.6, 0.5
    abar_t, abar_s = sched.alpha_bar(torch.tensor(t)), sched.alpha_bar(torch.tensor(s))
    step = GaussianSampler(sched, "ddpm", steps=10)
    out = step.step(x_t, x0, eps_from_x0(x_t, x0, abar_t), t, s, torch.Generator().manual_seed(7))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
    mean, var = posterior_mean_var(x_t, x0, abar_t, abar_s)
    assert torch.allclose(out, mean + var.sqrt() * z, atol=1e-5)


def test_ddim_with_fewer_steps_follows_the_exact_trajectory():
    """With a perfect x0 predictor, deterministic DDIM keeps eps fixed, so every intermediate state is
    q_sample(x0, abar_s, eps) and 10 steps out of T = 1000 land exactly on x0."""
    sched = make_noise_schedule("sqrt")
    sampler = GaussianSampler(sched, "ddim", steps=10, timesteps=1000, eta=0.0)
    times = sampler.times()
    assert len(times) == 10 and times[0][0] == 1.0 and times[-1][1] == 0.0
    assert all(round(t * 1000) == t * 1000 for t, _ in times)  # on the training grid
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 7, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    x = q_sample(x0, sched.alpha_bar(torch.tensor(1.0)), eps)
    for t, s in times:
        abar_t = sched.alpha_bar(torch.tensor(t))
        x = sampler.step(x, x0, eps_from_x0(x, x0, abar_t), t, s, None)
        if s > 0:
            assert torch.allclose(x, q_sample(x0, sched.alpha_bar(torch.tensor(s)), eps), atol=1e-3)
    assert torch.equal(x, x0)


def test_time_difference_makes_intervals_asymmetric():
    sched = make_noise_schedule("cosine")
    plain = GaussianSampler(sched, steps=4).times()
    shifted = GaussianSampler(sched, steps=4, time_difference=0.5).times()
    assert [t for t, _ in plain] == [t for t, _ in shifted]
    assert shifted[0][1] == pytest.approx(plain[0][1] - 0.125)
    assert shifted[-1][1] == 0.0


def test_sampler_rejects_bad_settings():
    sched = make_noise_schedule("sqrt")
    with pytest.raises(ValueError, match="exceed the 100 steps"):
        GaussianSampler(sched, steps=200, timesteps=100)
    with pytest.raises(ValueError, match="eta"):
        GaussianSampler(sched, eta=2.0)
    with pytest.raises(ValueError, match="unknown Gaussian sampler"):
        GaussianSampler(sched, kind="euler")


def test_prior_kl_is_zero_only_without_signal():
    x0 = torch.randn(3, 8)
    assert float(gaussian_prior_kl(x0, torch.tensor(0.0)).abs().max()) < 1e-6
    assert (gaussian_prior_kl(x0, torch.tensor(0.5)) > 0).all()


@pytest.mark.parametrize("abar", [0.9, 0.5, 0.01])
def test_q_sample_has_the_forward_process_moments(abar):
    """x_t | x_0 ~ N(sqrt(abar) x_0, (1 - abar) I), checked on 200k draws."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7)
    xt = q_sample(x0, torch.tensor(abar), torch.randn(x0.shape, generator=gen))
    assert float(xt.mean()) == pytest.approx(math.sqrt(abar) * 0.7, abs=5e-3)
    assert float(xt.var()) == pytest.approx(1.0 - abar, rel=2e-2)
