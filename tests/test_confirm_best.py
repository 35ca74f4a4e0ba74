"""benchmarks/confirm_best.py: the paired difference and its standard error."""

from __future__ import annotations

import math

import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def confirm():
    return benchmark_module("confirm_best")


def test_the_standard_error_is_the_sample_deviation_over_root_n(confirm):
    mean, err = confirm.mean_and_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and err == pytest.approx(math.sqrt((1.5**2 + 0.5**2) * 2 / 3) / 2)
    assert math.isnan(confirm.mean_and_stderr([1.0])[1])


def test_a_shared_window_difficulty_cancels_in_the_paired_difference(confirm):
    hard = [2.0 + 0.5 * math.sin(i) for i in range(200)]  # windows differ a lot in difficulty
    better = [h - 0.02 + 0.001 * math.cos(3 * i) for i, h in enumerate(hard)]
    diff, err, z = confirm.paired(hard, better)
    assert diff == pytest.approx(-0.02, abs=1e-3) and err < 1e-3 and z < -20
    unpaired = math.hypot(confirm.mean_and_stderr(hard)[1], confirm.mean_and_stderr(better)[1])
    assert unpaired > 20 * err  # what the same numbers would say compared as two independent samples
    with pytest.raises(ValueError, match="same windows"):
        confirm.paired(hard, better[:-1])
