r"""Which characters of a noisy text are wrong: the masked repairers' first half.

A masked model predicts a character from the others, p(y_i | x_{-i}). Masking one position per forward would
take L forwards; instead the positions are cut into G disjoint groups (i mod G), each group masked in one
forward, so every character is predicted with all but every G-th neighbour visible: G forwards in all, one
batched call, no loop over positions.

With the channel q(x | y) (:mod:`textdiffusion.corruption`), Bayes' rule gives the probability that the observed
character x_i is the clean one:

    P(y_i = x_i | x) = p(x_i | x_{-i}) q(x_i | x_i) / sum_y p(y | x_{-i}) q(x_i | y)          <- ``clean_probability``

For the uniform channel this ranks exactly as p(x_i | x_{-i}) does; the keyboard channel also asks whether a
likely character could have become x_i. The repairer masks the k characters least likely clean
(:func:`suspects`), then fills them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# logits(z) -> (n, L, N): the network's prediction at every position of z, in which some positions are masked
LeaveOut = Callable[[torch.Tensor], torch.Tensor]


def group_masks(length: int, groups: int, device: torch.device) -> torch.Tensor:
    """(G, L) bool: row g marks positions i with i mod G = g, so every position is in exactly one row."""
    g = max(1, min(groups, length))
    return torch.arange(length, device=device)[None] % g == torch.arange(g, device=device)[:, None]


def clean_probability(logits: LeaveOut, state: torch.Tensor, log_q: torch.Tensor, mask_id: int,
                      groups: int) -> torch.Tensor:
    """P(y_i = x_i | x) at every position of the (1, L) ``state``, from one forward per group, all groups in one
    batch. ``log_q`` (1, L, N) is log q(x_i | y) for every y (:meth:`~textdiffusion.corruption.Channel.
    log_likelihood`)."""
    masks = group_masks(state.shape[1], groups, state.device)
    z = torch.where(masks, mask_id, state.expand(masks.shape[0], -1))
    log_prior = logits(z).float().log_softmax(-1)  # (G, L, N): row g predicts the positions of group g
    log_prior = (log_prior * masks[..., None]).sum(0, keepdim=True)  # each position from the one row that hid it
    joint = log_prior + log_q
    observed = state[..., None]
    return (joint.gather(-1, observed) - joint.logsumexp(-1, keepdim=True)).exp()[..., 0]


def suspects(clean: torch.Tensor, free: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` positions among ``free`` least likely clean, as a bool mask like ``clean`` (fewer when fewer
    are free)."""
    score = clean.masked_fill(~free, float("inf"))
    k = min(k, int(free.sum()))
    chosen = torch.zeros_like(free)
    if k > 0:
        chosen.view(-1)[score.view(-1).topk(k, largest=False).indices] = True
    return chosen
