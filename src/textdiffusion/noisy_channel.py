r"""The noisy-channel decoder: an autoregressive prior times a known corruption channel, decoded left to right
with a small beam. Given the observed text x, it looks for

    y* = argmax_y  log p_ar(y) + log q(x | y) = argmax_y  sum_i [ log p_ar(y_i | y_<i) + log q(x_i | y_i) ]

(Shannon's noisy channel, as a spelling corrector uses it). Both terms split over positions, so a beam of the
``width`` best prefixes extends one position at a time: every prefix's next-character log-probabilities come from
one forward of the whole beam against a KV cache, the channel adds log q(x_i | y) for every candidate y, and the
``width`` best (prefix, y) pairs go on. The candidates at a position are the ``candidates`` likeliest characters
under the prior plus the observed one: a mask on the (width, N) score tensor, so each position is one batched
computation, not a loop over the vocabulary.

A beam is not the exact argmax (Viterbi needs a Markov prior, and an autoregressive one is not), but at width 1
it is already the greedy posterior decoder, and a wider beam can only find a better-scoring text among the paths
it keeps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textdiffusion.nn.transformer import KVCache

# next_logits(inputs (W, l), cache) -> (W, N): the prior's logits for the character after each row of inputs
NextLogits = Callable[[torch.Tensor, KVCache], torch.Tensor]


def reorder(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """The cache of the beam after a step: row j holds what row ``rows[j]`` held."""
    keys = [None if k is None else k[rows] for k in cache.keys]
    values = [None if v is None else v[rows] for v in cache.values]
    return KVCache(cache.max_len, keys, values, cache.next_pos)


def beam_decode(next_logits: NextLogits, log_q: torch.Tensor, observed: torch.Tensor, prefix: int, bos_id: int,
                n_layer: int, context: int, width: int = 4, candidates: int = 8) -> torch.Tensor:
    """The best text of a beam search for y* over the (L,) ``observed`` ids, whose first ``prefix`` are fixed
    (already repaired). ``log_q`` (L, N) is log q(x_i | y) for every y. Past the ``context``, the cache is rebuilt
    from the latest half context of every prefix, as ``ar``'s sampler does. -> (L,) ids."""
    length = observed.shape[0]
    device = observed.device
    text = observed[None].clone()  # (W, L): each beam's text; positions past the one written hold x
    bos = torch.full((1, 1), bos_id, dtype=torch.long, device=device)
    cache = KVCache.empty(n_layer, context)
    logits = next_logits(torch.cat((bos, text[:, :prefix]), dim=1)[:, -context:], cache)
    scores = torch.zeros(1, dtype=torch.float64, device=device)
    for pos in range(prefix, length):
        log_prior = logits.double().log_softmax(-1)  # (W, N)
        allowed = torch.zeros_like(log_prior, dtype=torch.bool)
        allowed.scatter_(1, log_prior.topk(min(candidates, log_prior.shape[1]), dim=1).indices, True)
        allowed[:, observed[pos]] = True
        total = (scores[:, None] + log_prior + log_q[pos].double()).masked_fill(~allowed, float("-inf"))
        keep = min(width, int(torch.isfinite(total).sum()))
        best, flat = total.view(-1).topk(keep)
        rows, chars = flat // total.shape[1], flat % total.shape[1]
        text = text[rows].clone()
        text[:, pos] = chars
        scores = best
        if pos + 1 == length:
            break
        if cache.next_pos >= context:
            cache = KVCache.empty(n_layer, context)
            logits = next_logits(text[:, pos + 1 - context // 2:pos + 1], cache)
        else:
            cache = reorder(cache, rows)
            logits = next_logits(text[:, pos:pos + 1], cache)
    return text[0]
