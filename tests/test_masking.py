from __future__ import annotations

import math

import pytest
import torch

from textdiffusion.diffusion.masking import corrupt, corrupt_exactly, make_schedule, sample_counts, sample_times


@pytest.mark.parametrize("name", ["loglinear", "linear"])
def test_schedule_endpoints_and_weight_is_minus_alpha_prime_over_one_minus_alpha(name):
    s = make_schedule(name, sigma_max=8.0)
    assert float(s.alpha(torch.tensor(0.0))) == pytest.approx(1.0)
    assert s.alpha_one() < 1e-3
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    a = s.alpha(t)
    assert bool((a[1:] < a[:-1]).all())  # monotone
    h = 1e-6
    dalpha = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.weight(t), -dalpha / (1 - a), rtol=1e-4)


def test_prior_kl_zero_only_when_all_masked_at_t1():
    assert make_schedule("loglinear").prior_kl_per_token(65) == 0.0
    lin = make_schedule("linear", sigma_max=10.0)
    assert lin.prior_kl_per_token(65) == pytest.approx(math.exp(-10) * math.log(65))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown mask schedule"):
        make_schedule("cosine-ish")


def test_antithetic_times_are_stratified():
    g = torch.Generator().manual_seed(0)
    t = sample_times(8, True, g, torch.device("cpu"))
    assert bool(((t > 0) & (t <= 1)).all())
    # exactly one time in each eighth of [0, 1]
    assert sorted((t * 8).ceil().long().clamp(1, 8).tolist()) == list(range(1, 9))


def test_exact_count_corruption_and_stratified_counts():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(10).repeat(5, 1)
    k = torch.tensor([1, 3, 5, 9, 10])
    z, masked = corrupt_exactly(x, k, mask_id=99, generator=g)
    assert masked.sum(1).tolist() == k.tolist()
    assert bool((z[masked] == 99).all()) and bool((z[~masked] == x[~masked]).all())
    counts = sample_counts(10, 10, True, g, torch.device("cpu"))
    assert sorted(counts.tolist()) == list(range(1, 11))  # one per stratum


def test_corrupt_masks_at_the_expected_rate():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 20000, dtype=torch.long)
    alpha = torch.tensor([1.0, 0.75, 0.25, 0.0])
    z, masked = corrupt(x, alpha, mask_id=9, generator=g)
    rates = masked.float().mean(1)
    assert torch.allclose(rates, 1 - alpha, atol=0.02)
    assert bool((z[masked] == 9).all()) and bool((z[~masked] == 0).all())
