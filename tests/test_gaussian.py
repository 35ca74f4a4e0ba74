"""The shared Gaussian machinery: schedules, parameterisations, DDPM/DDIM steps, and the VDM bound: its term
weights against closed-form integrals, and the bound of each Gaussian method never below a known entropy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.diffusion.gaussian import (
    ABAR_MAX,
    ABAR_MIN,
    GaussianSampler,
    NoiseSchedule,
    diffusion_term_weights,
    eps_from_x0,
    gaussian_prior_kl,
    make_noise_schedule,
    posterior_mean_var,
    q_sample,
    split_prediction,
    training_target,
)
from textdiffusion.methods.configs import make_config
from textdiffusion.runs import build

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


# ---- the VDM bound's diffusion term ---------------------------------------------------------------------------
def _snr(schedule: NoiseSchedule, t: float) -> float:
    return float(schedule.snr(torch.tensor(t)))


def _gaussian_mmse(schedule: NoiseSchedule, t: torch.Tensor, var: float) -> torch.Tensor:
    """The best denoiser's squared error for x_0 ~ N(0, var): E||x_0 - E[x_0 | x_t]||^2 = var / (1 + var SNR(t))."""
    return var / (1.0 + var * schedule.snr(t).double())


def _i_mmse(schedule: NoiseSchedule, t0: float, var: float) -> float:
    """1/2 int_{t0}^1 -SNR'(t) mmse(t) dt = 1/2 int var / (1 + var snr) dsnr, in closed form (the I-MMSE
    relation of Guo, Shamai & Verdu 2005): 1/2 [log(1 + var SNR(t0)) - log(1 + var SNR(1))]."""
    return 0.5 * (math.log1p(var * _snr(schedule, t0)) - math.log1p(var * _snr(schedule, 1.0)))


@pytest.mark.parametrize("var", [0.25, 4.0])
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_continuous_diffusion_weight_integrates_to_the_closed_form(name, var):
    """The continuous-time weight 1/2 (1 - t_min) (-SNR'(t)) of ``diffusion_term_weights``, averaged over a fine
    midpoint grid of u (so t covers [t_min, 1] evenly), times the error of the best denoiser of Gaussian data,
    is the integral the bound's diffusion term stands for, known in closed form."""
    schedule, t_min, n = make_noise_schedule(name), 1e-3, 200_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    t, weight = diffusion_term_weights(schedule, u, 0, t_min)
    assert float(t.min()) >= t_min and float(t.max()) <= 1.0
    estimate = float((weight.double() * _gaussian_mmse(schedule, t, var)).mean())
    assert estimate == pytest.approx(_i_mmse(schedule, t_min, var), rel=1e-4)


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_discrete_diffusion_weights_sum_the_snr_steps(name):
    """With T steps the term is sum_{i=2..T} 1/2 (SNR(s_i) - SNR(t_i)) ||.||^2 (VDM, Eq. 13). One u per step
    (u in its i-th interval picks step i): the mean of the weights telescopes to 1/2 (SNR(1/T) - SNR(1)); with
    the best denoiser of Gaussian data each step charges the error of its noisier end, so the sum lies above the
    continuous integral over [1/T, 1] and closes in on it as T grows (more steps, a tighter bound)."""
    schedule = make_noise_schedule(name)
    gaps = []
    for T in (10, 100, 1000):
        i = torch.arange(2, T + 1, dtype=torch.float64)
        t, weight = diffusion_term_weights(schedule, (i - 1.5) / (T - 1), T, 1.0 / T)
        assert torch.allclose(t, i / T)
        telescoped = 0.5 * (_snr(schedule, 1.0 / T) - _snr(schedule, 1.0))
        assert float(weight.double().mean()) == pytest.approx(telescoped, rel=1e-6)
        discrete = float((weight.double() * _gaussian_mmse(schedule, t, 1.0)).mean())
        gaps.append(discrete / _i_mmse(schedule, 1.0 / T, 1.0) - 1.0)  # relative: the range grows with T
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps


# ---- the bound of each Gaussian text method, against a known entropy -----------------------------------------
SOURCE = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)  # i.i.d. tokens over "abcd"


class BayesDenoiser(nn.Module):
    """The best possible x0 predictor for i.i.d. tokens from ``SOURCE`` embedded by ``table``: the posterior mean
    E[x_0 | x_t] = sum_w p(w | x_t) E_w, with p(w | x_t) proportional to SOURCE_w N(x_t; sqrt(abar) E_w, 1 - abar).
    It stands in for the trained network of an embedding or bits run (a frozen table, no rounding head)."""

    def __init__(self, table: torch.Tensor, schedule: NoiseSchedule):
        super().__init__()
        self.embed, self.head, self.dim, self.schedule = None, None, table.shape[1], schedule
        self.register_buffer("frozen", table.detach().clone())
        self.anchor = nn.Parameter(torch.zeros(()))  # the sampler reads the device off the parameters

    def table(self) -> torch.Tensor:
        return self.frozen

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        e = self.frozen.double()
        a = self.schedule.alpha_bar(t).double()[:, None, None]
        logits = SOURCE.log() + (a.sqrt() * x_t.double() @ e.T - 0.5 * a * e.pow(2).sum(-1)) / (1.0 - a)
        return (logits.softmax(-1) @ e).float()


@pytest.mark.parametrize("method, sets", [
    ("embedding", ["method.decoder=l2"]),  # T = 2000 on the sqrt schedule
    ("embedding", ["method.decoder=l2", "method.timesteps=0"]),
    ("bits", []),  # continuous time, cosine, self-conditioning
    ("bits", ["method.timesteps=2000"]),
])
def test_vdm_bound_never_below_the_entropy_and_tight_for_the_best_denoiser(method, sets):
    """-log p(w) <= the bound for any network, so on tokens drawn from a known law the bound (per character) is
    never below the windows' true negative log-likelihood, up to its Monte-Carlo error. With the Bayes-optimal
    denoiser the continuous-time bound *is* -log p(w) (plus the prior's tiny KL), and T = 2000 steps add little:
    so the bound lands on the floor, which a wrong weight, term or sign in the estimator would miss."""
    cfg = make_config(method, "tiny", [*sets, "method.x0_ce_weight=0", "method.eval_time_samples=32"])
    gaussian, network = build(cfg, CharTokenizer.from_text("abcd"))
    windows = torch.multinomial(SOURCE.float(), 512 * 32, replacement=True,
                                generator=torch.Generator().manual_seed(0)).view(512, 32)
    floor = float(-SOURCE.log()[windows].mean())  # exact nats per character of these very windows
    best = gaussian.nll(BayesDenoiser(network.table(), gaussian.schedule), windows)
    slack = 3 * best.details["stderr_nats"]
    assert best.kind == "bound" and best.units == windows.numel()
    assert floor - slack <= best.nats_per_unit <= floor + slack + 0.01, (best.nats_per_unit, floor, slack)
    untrained = gaussian.nll(network, windows[:64])
    assert untrained.nats_per_unit >= float(-SOURCE.log()[windows[:64]].mean())
