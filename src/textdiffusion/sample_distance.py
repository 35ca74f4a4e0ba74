"""How far a set of samples is from real text, as distributions: a number a collapsing sampler cannot game.

Judge perplexity rewards a sampler that writes only what the judge finds likely: repeating "the the the"
scores better than Shakespeare does. Character entropy shows the collapse but not its cost. A divergence
between distributions charges both ways: mass the samples put where real text puts little (gibberish) *and*
mass real text puts where the samples put little (what a collapsed sampler never writes).

For each order n, P_n is the distribution of the character n-grams of the samples (counted inside each
sample, never across two) and Q_n the one of real held-out text cut into windows of the very same lengths.
The distance is their Jensen-Shannon divergence in bits, averaged over the orders:

    JS(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),   M = (P + Q) / 2,     D = mean_n JS(P_n, Q_n)

JS is symmetric, needs no smoothing (M is positive wherever P or Q is) and lies in [0, 1] bits: 0 for
identical distributions, 1 for disjoint ones. Orders 1-4: n = 1 sees the collapse of the character law
(what entropy sees), n = 2, 3 spelling and n = 4 word pieces; at the few thousand characters an ``eval``
draws, real text already shares few of its 5-grams with another slice of real text, so higher orders add
sampling noise more than signal.

Two finite samples of one law still differ, so D of a perfect sampler is not 0: the **real-text floor** is D
between the reference and a second, disjoint slice of held-out text of the same lengths, the number a
sampler indistinguishable from real text reaches at this sample size. It shrinks as the samples grow;
``excess = D - floor`` is what the sampler itself costs. Both slices interleave along the held-out split
(reference window, floor window, reference window, ...), so neither sees a different play than the other.

Sums are taken with :func:`math.fsum`, so the result does not depend on the order of the samples, bit for bit.
The module imports no torch: it is plain counting.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from textdiffusion.records import SampleDistance

ORDERS = (1, 2, 3, 4)


def ngram_counts(texts: Iterable[str], n: int) -> Counter[str]:
    """The character n-grams of ``texts``, each text counted on its own: an n-gram spanning two samples is no
    n-gram any sampler wrote."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text[i:i + n] for i in range(len(text) - n + 1))
    return counts


def js_divergence(p: Counter[str], q: Counter[str]) -> float:
    """Jensen-Shannon divergence in bits between two count tables, each normalised to a distribution. With
    p = a/A and q = b/B for the counts a, b of one n-gram, its share of JS is
    1/2 p log2(2p / (p + q)) + 1/2 q log2(2q / (p + q)). NaN when either table is empty (nothing to compare)."""
    total_p, total_q = sum(p.values()), sum(q.values())
    if not total_p or not total_q:
        return math.nan
    terms = []
    for key in p.keys() | q.keys():
        a, b = p.get(key, 0) / total_p, q.get(key, 0) / total_q
        m = a + b
        if a:
            terms.append(a * math.log2(2 * a / m))
        if b:
            terms.append(b * math.log2(2 * b / m))
    return max(0.0, math.fsum(terms) / 2)


def divergences(texts: Sequence[str], reference: Sequence[str], orders: Sequence[int] = ORDERS) -> list[float]:
    """JS(P_n, Q_n) in bits for each order n in ``orders``."""
    return [js_divergence(ngram_counts(texts, n), ngram_counts(reference, n)) for n in orders]


def real_slices(held_out: str, lengths: Sequence[int]) -> tuple[list[str], list[str]]:
    """Two disjoint sets of windows of ``held_out``, each with one window per entry of ``lengths`` (of that
    length): the reference and the floor's slice. The 2k windows alternate (reference, floor, ...) and are
    spread evenly over the whole text, with equal gaps between them. Raises ValueError when they do not fit."""
    sizes = [size for size in lengths for _ in range(2)]
    slack = len(held_out) - sum(sizes)
    if slack < 0:
        raise ValueError(f"{len(held_out):,} held-out characters cannot hold two disjoint slices of "
                         f"{sum(lengths):,}")
    gaps = max(len(sizes) - 1, 1)
    windows, start = [], 0
    for j, size in enumerate(sizes):
        at = start + j * slack // gaps
        windows.append(held_out[at:at + size])
        start += size
    return windows[0::2], windows[1::2]


def fitting(lengths: Sequence[int], held_out_chars: int) -> int:
    """How many of the samples (the first ones) two disjoint slices of ``held_out_chars`` characters can match."""
    used, k = 0, 0
    for size in lengths:
        if 2 * (used + size) > held_out_chars:
            break
        used, k = used + size, k + 1
    return k


def sample_distance(texts: Sequence[str], held_out: str, orders: Sequence[int] = ORDERS) -> SampleDistance:
    """The n-gram distance of ``texts`` from real text, with the real-text floor at the same size.

    ``held_out``: text the model never trained on (the validation split). When it cannot hold two slices
    as large as all the samples, the first samples that fit are compared, and the record says how many."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no samples to compare with real text")
    k = fitting([len(t) for t in texts], len(held_out))
    if k == 0:
        raise ValueError(f"a sample of {len(texts[0]):,} characters is longer than half the held-out text "
                         f"({len(held_out):,} characters)")
    used = texts[:k]
    reference, second = real_slices(held_out, [len(t) for t in used])
    per_order = divergences(used, reference, orders)
    floor_per_order = divergences(second, reference, orders)
    return SampleDistance(js_bits=math.fsum(per_order) / len(orders),
                          floor_bits=math.fsum(floor_per_order) / len(orders),
                          orders=list(orders), per_order=per_order, floor_per_order=floor_per_order,
                          texts=k, texts_of=len(texts), chars=sum(len(t) for t in used))
