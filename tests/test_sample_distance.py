"""The n-gram distance of samples from real text: the maths of Jensen-Shannon, the real-text floor, and that a
collapsing sampler, which judge perplexity rewards, loses on it."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from textdiffusion.records import SampleDistance
from textdiffusion.sample_distance import (
    ORDERS,
    divergences,
    js_divergence,
    ngram_counts,
    real_slices,
    sample_distance,
)


def held_out(shakespeare: str) -> str:
    """Tiny Shakespeare's validation split, as training cuts it (the last tenth)."""
    return shakespeare[int(len(shakespeare) * 0.9):]


def test_identical_texts_are_at_distance_zero():
    texts = ["To be, or not to be", "that is the question"]
    assert divergences(texts, list(reversed(texts))) == [0.0] * len(ORDERS)


def test_disjoint_alphabets_are_at_the_maximum_of_one_bit():
    assert divergences(["abcabcab"], ["xyzzyxzy"]) == pytest.approx([1.0] * len(ORDERS), abs=1e-12)
    assert js_divergence(Counter("ab"), Counter("cd")) == pytest.approx(1.0, abs=1e-12)


def test_js_is_symmetric_and_matches_its_definition():
    p, q = Counter({"a": 3, "b": 1}), Counter({"a": 1, "b": 1, "c": 2})
    pa, qa = [3 / 4, 1 / 4, 0], [1 / 4, 1 / 4, 1 / 2]

    def kl(x, y):
        return sum(xi * math.log2(xi / yi) for xi, yi in zip(x, y, strict=True) if xi)

    m = [(a + b) / 2 for a, b in zip(pa, qa, strict=True)]
    expected = (kl(pa, m) + kl(qa, m)) / 2
    assert js_divergence(p, q) == pytest.approx(expected, rel=1e-12)
    assert js_divergence(q, p) == js_divergence(p, q)
    assert math.isnan(js_divergence(Counter(), q))


def test_ngrams_are_counted_inside_each_sample_never_across_two():
    assert ngram_counts(["ab", "cd"], 2) == Counter({"ab": 1, "cd": 1})  # no "bc"
    assert ngram_counts(["abc"], 4) == Counter()


def test_the_split_into_windows_moves_no_unigram_and_the_order_of_samples_moves_nothing(shakespeare: str):
    """Unigrams do not see where a text is cut; higher orders see exactly the n-grams a cut removes. The order
    of the samples changes no bit (sums are exact), whatever the process's string hashing."""
    val = held_out(shakespeare)
    text = val[:4096]
    as_64 = [text[i:i + 64] for i in range(0, 4096, 64)]
    as_256 = [text[i:i + 256] for i in range(0, 4096, 256)]
    reference = [val[50_000:54_096]]
    assert divergences(as_64, reference, [1]) == divergences(as_256, reference, [1])
    cut = divergences(as_64, reference, [2])[0]
    assert cut != divergences(as_256, reference, [2])[0]  # 63 bigrams fewer: the definition counts inside samples
    d = sample_distance(as_64, val)
    assert sample_distance(list(reversed(as_64)), val).per_order == d.per_order


def test_the_result_does_not_depend_on_string_hashing(shakespeare: str, tmp_path):
    """Set iteration order follows PYTHONHASHSEED; the distance must not."""
    val = held_out(shakespeare)
    path = tmp_path / "val.txt"
    path.write_text(val, encoding="utf-8")
    code = ("import sys; from textdiffusion.sample_distance import sample_distance; "
            "v = open(sys.argv[1], encoding='utf-8').read(); "
            "print(repr(sample_distance([v[i:i + 64] for i in range(0, 2048, 64)], v).js_bits))")
    outs = {subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_real_slices_are_disjoint_of_the_sample_lengths_and_spread():
    held = "".join(chr(0x4E00 + i) for i in range(1_000))  # no character twice: a window's place is its first
    lengths = [64, 30, 64, 7]
    reference, second = real_slices(held, lengths)
    assert [len(w) for w in reference] == lengths == [len(w) for w in second]
    alternating = [w for pair in zip(reference, second, strict=True) for w in pair]
    spans = [(held.index(w), held.index(w) + len(w)) for w in alternating]
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))  # in turn, disjoint
    assert spans[0][0] == 0 and spans[-1][1] == len(held)  # spread over the whole text
    with pytest.raises(ValueError, match="cannot hold two disjoint slices"):
        real_slices("abcdef", [4])


def test_a_sampler_repeating_a_common_word_games_the_judge_but_not_the_distance(shakespeare: str):
    from textdiffusion.evaluate import CharNgramJudge, char_entropy

    train, val = shakespeare[:int(len(shakespeare) * 0.9)], held_out(shakespeare)
    collapsed = [("the " * 16)[:64]] * 64
    real = [val[i:i + 64] for i in range(1_000, 1_000 + 64 * 97, 97)]
    judge = CharNgramJudge(train)
    assert judge.perplexity(collapsed) < judge.perplexity(real)  # the judge prefers the collapse...
    assert char_entropy(collapsed) < char_entropy(real) - 2
    bad, good = sample_distance(collapsed, val), sample_distance(real, val)
    assert bad.excess > 10 * max(good.excess, 0.01)  # ...the distance does not
    assert bad.js_bits > 0.75 and good.js_bits < 1.5 * good.floor_bits


def test_the_floor_shrinks_as_the_sample_grows(shakespeare: str):
    val = held_out(shakespeare)
    floors = [sample_distance(["x" * 64] * k, val).floor_bits for k in (16, 64, 256)]
    assert floors[0] > floors[1] > floors[2] > 0


def test_only_the_samples_two_real_slices_can_match_are_compared():
    held = "abcdefghij" * 10  # 100 characters: two slices of at most 50
    d = sample_distance(["abcdefghij"] * 8, held)
    assert (d.texts, d.texts_of, d.chars) == (5, 8, 50)
    assert d.js_bits == pytest.approx(d.floor_bits)
    with pytest.raises(ValueError, match="longer than half the held-out text"):
        sample_distance(["a" * 60], held)
    with pytest.raises(ValueError, match="no samples"):
        sample_distance(["", ""], held)


def test_the_record_reads_back_from_json(shakespeare: str):
    d = sample_distance([held_out(shakespeare)[:64]] * 4, held_out(shakespeare))
    again = SampleDistance.from_json(json.loads(json.dumps(d.to_json())))
    assert again == d and again.excess == d.js_bits - d.floor_bits
    assert SampleDistance.from_json({"js_bits": 0.1}) is None and SampleDistance.from_json(None) is None
