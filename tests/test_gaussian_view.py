"""Duo's Gaussian view of uniform-state diffusion: the diffusion transformation against a Monte-Carlo argmax of
Gaussian draws, its inverse, the coupled trajectories, the curriculum's temperature and soft input."""

from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.config import ModelConfig
from textdiffusion.diffusion.consistency import KL_DIRECTIONS, consistency_kl, teacher_time
from textdiffusion.diffusion.gaussian_view import (
    DiffusionTransform,
    argmax_accuracy,
    curriculum_state,
    curriculum_temperature,
    draw_eps,
    gaussian_latent,
    tempered,
    trajectory,
)
from textdiffusion.nn.transformer import Transformer


@pytest.mark.parametrize("alpha_tilde", [0.05, 0.2, 0.4, 0.6])
def test_the_transformation_is_the_argmax_of_gaussian_draws(alpha_tilde: float) -> None:
    K, n = 65, 200_000
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, K, (n, 1), generator=g)
    w = gaussian_latent(x, torch.full((n,), alpha_tilde), K, draw_eps(x, K, g))
    hit = (w.argmax(-1) == x).double().mean()
    measured = (K * hit - 1) / (K - 1)
    stderr = K / (K - 1) * math.sqrt(float(hit) * (1 - float(hit)) / n)
    predicted = DiffusionTransform(K).alpha(torch.tensor(alpha_tilde, dtype=torch.float64))
    assert abs(float(measured - predicted)) < 4 * stderr


def test_wrong_symbols_are_uniform_under_the_argmax() -> None:
    """The argmax is the uniform-state process: given it is wrong, every other symbol equally likely."""
    K, n = 8, 400_000
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(n, 1, dtype=torch.long)
    z = gaussian_latent(x, torch.full((n,), 0.5), K, draw_eps(x, K, g)).argmax(-1).flatten()
    counts = torch.bincount(z[z != 0], minlength=K)[1:].double()
    assert float((counts / counts.mean() - 1).abs().max()) < 0.02


def test_the_transformation_runs_from_noise_to_clean_and_inverts() -> None:
    T = DiffusionTransform(65)
    grid = torch.linspace(0.0, 0.999, 200, dtype=torch.float64)
    a = T.alpha(grid)
    assert float(a[0]) < 1e-4 and float(T.alpha(torch.tensor(0.9999, dtype=torch.float64))) > 0.999
    assert bool((a[1:] >= a[:-1]).all())
    alphas = torch.tensor([1e-3, 0.01, 0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    assert torch.allclose(T.alpha(T.alpha_tilde(alphas)), alphas, rtol=1e-4, atol=1e-6)


def test_two_symbols_have_a_closed_form() -> None:
    """K = 2: the true coordinate wins when nu + e1 > e2, P = Phi(nu / sqrt 2)."""
    nu = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(nu / 2))
    assert torch.allclose(argmax_accuracy(nu, 2), exact, atol=1e-9)


def test_a_trajectory_shares_its_noise_and_has_the_process_marginals() -> None:
    K, n = 65, 100_000
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, K, (n, 1), generator=g)
    z_t, z_s = trajectory(x, torch.full((n,), 0.3), torch.full((n,), 0.6), K, g)
    for z, alpha in ((z_t, 0.3), (z_s, 0.6)):
        hit = float((z == x).double().mean())
        assert abs(hit - (alpha + (1 - alpha) / K)) < 0.01
    # coupled: a position right at t stays right at s far more often than independent draws would
    right_t = z_t == x
    assert float((z_s == x)[right_t].double().mean()) > 0.95


def test_the_curriculum_state_is_the_process_with_a_soft_input_around_it() -> None:
    K, n = 65, 50_000
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, K, (n, 1), generator=g)
    alpha = torch.full((n,), 0.4)
    z, soft = curriculum_state(x, alpha, K, 0.1, g)
    assert abs(float((z == x).double().mean()) - (0.4 + 0.6 / K)) < 0.01
    assert soft.shape == (n, 1, K) and torch.allclose(soft.sum(-1), torch.ones(n, 1))
    assert torch.equal(soft.argmax(-1), z)  # the soft input peaks where the discrete state is
    assert float(soft.max(-1).values.mean()) < 0.99  # ... without being its one-hot at tau = 0.1


def test_the_curriculum_anneals_then_ends_in_the_argmax() -> None:
    assert curriculum_temperature(0, 100, 0.1, 0.01) == pytest.approx(0.1)
    assert curriculum_temperature(50, 100, 0.1, 0.01) == pytest.approx(math.sqrt(0.1 * 0.01))
    assert curriculum_temperature(100, 100, 0.1, 0.01) == 0.0
    w = torch.tensor([[[0.3, 0.9, 0.1]]])
    assert torch.allclose(tempered(w, 1e-3), torch.tensor([[[0.0, 1.0, 0.0]]]))


def test_the_backbone_reads_a_distribution_as_its_expected_embedding() -> None:
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, context=8)
    net = Transformer(cfg, vocab_size=10, attention="bidirectional").eval()
    ids = torch.randint(0, 7, (2, 8))
    one_hot = torch.nn.functional.one_hot(ids, 7).float()
    assert torch.allclose(net(one_hot), net(ids), atol=1e-5)
    soft = torch.softmax(torch.randn(2, 8, 7), -1)
    mixed = net.input(soft)
    assert torch.allclose(mixed, soft @ net.input.embed.weight[:7], atol=1e-6)


# ---- Discrete Consistency Distillation's pieces (diffusion/consistency.py) --------------------------------------
def test_the_teacher_reads_the_students_state_at_one_substep_and_the_midpoint_at_two() -> None:
    t, s = torch.tensor([1.0, 0.5]), torch.tensor([0.875, 0.375])
    assert torch.equal(teacher_time(t, s, 1), t)
    assert torch.allclose(teacher_time(t, s, 2), (t + s) / 2)
    assert torch.allclose(teacher_time(t, s, 4), t - 3 * (t - s) / 4)


def test_the_consistency_kl_is_zero_only_between_equal_predictions() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    for direction in KL_DIRECTIONS:
        assert float(consistency_kl(a, a, direction)) == pytest.approx(0.0, abs=1e-6)
        assert float(consistency_kl(a, b, direction)) > 0.01
    p, q = a.log_softmax(-1), b.log_softmax(-1)
    assert float(consistency_kl(a, b, "reverse")) == pytest.approx(float((p.exp() * (p - q)).sum(-1).mean()),
                                                                   rel=1e-5)
    assert float(consistency_kl(a, b, "forward")) == pytest.approx(float((q.exp() * (q - p)).sum(-1).mean()),
                                                                   rel=1e-5)
    where = torch.zeros(2, 5)
    where[0, 1] = 1
    assert float(consistency_kl(a, b, "reverse", where)) == pytest.approx(
        float((p.exp() * (p - q)).sum(-1)[0, 1]), rel=1e-5)
    with pytest.raises(ValueError, match="unknown KL direction"):
        consistency_kl(a, b, "sideways")
