"""benchmarks/nearby_text.py: the stretches a prefix run is scored on lie where their names say."""

from __future__ import annotations

import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def nearby():
    return benchmark_module("nearby_text")


def test_the_stretches_split_seen_nearby_unseen_and_validation_text(nearby):
    seen, near, rest, val = nearby.stretches(prefix=100_000, val_start=1_003_854, total=1_115_394, span=10_000)
    assert (seen.start, seen.end) == (90_000, 100_000)  # the prefix's own end: trained on
    assert (near.start, near.end) == (100_000, 110_000)  # starts where training text stops
    assert (rest.start, rest.end) == (100_000, 1_003_854)
    assert (val.start, val.end) == (1_003_854, 1_115_394)
    short = nearby.stretches(prefix=5_000, val_start=12_000, total=13_000, span=10_000)
    assert (short[0].start, short[1].end) == (0, 12_000)  # clipped to the corpus and the split


def test_a_run_on_the_whole_split_is_refused_in_one_line(nearby):
    for prefix in (0, 1_003_854):
        with pytest.raises(SystemExit, match="nothing after its prefix is unseen"):
            nearby.stretches(prefix=prefix, val_start=1_003_854, total=1_115_394, span=10_000)
