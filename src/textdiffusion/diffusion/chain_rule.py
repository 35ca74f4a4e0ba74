r"""The exact likelihood of a masked denoiser under a fixed reveal order: the chain rule.

A sampler that starts from all masks and reveals one position per step, in the order
``order = (o_0, ..., o_{L-1})``, each drawn from the network's prediction at that position, writes x with
probability exactly

    p_order(x) = prod_{j=0..L-1} p_theta(x^{o_j} | z^j),   z^j = x on {o_0..o_{j-1}}, [MASK] elsewhere,

so  -log p_order(x) = sum_j -log p_theta(x^{o_j} | z^j)  is an exact NLL (of that sampler), not a bound.
Left to right (o_j = j) is the sampler "one token per step, left to right".

A time-conditioned network is given, for z^j (j of L positions clean), the time t_j with

    alpha(t_j) = j / L     (loglinear: t_j = (L - j) / L),

the time at which the forward process leaves a fraction j / L of the positions clean in expectation, as the
count estimator does for a window with L - j masks. Any t_j gives a proper distribution (each factor is a
softmax over the symbols); this one feeds the network states that match the times it was trained at.

The NELBO with t integrated out (:mod:`textdiffusion.diffusion.masking`) is the average of these chain rules
over uniformly random orders, so averaging :func:`chain_rule_nll` over random permutations estimates it.

Block diffusion's sampler writes block after block and runs this inside each block given the clean blocks
before it; with its block-causal paired forward, every block's j-th reveal comes from one forward, so a window
takes B copies, not L (:meth:`textdiffusion.methods.block.BlockDiffusion.exact_nll`).

All masked copies of a window (L x L tokens for one position per step) are built at once;
``copies_per_chunk`` bounds the tokens in one forward, so the only loop is over chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from textdiffusion.diffusion.masking import MaskSchedule
from textdiffusion.diffusion.tokens import cross_entropy_per_token

# (z, t, rows) -> logits (copies, L, symbols); ``rows`` are the window indices of the copies (for labels)
ChainNetwork = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def left_to_right(n: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The reveal order of the left-to-right sampler for ``n`` windows: (n, L), each row 0..L-1."""
    return torch.arange(length, device=device).expand(n, length)


def random_orders(n: int, length: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """A uniformly random reveal order per window: (n, L) permutations."""
    return torch.rand((n, length), generator=generator, device=device).argsort(dim=1)


def check_orders(order: torch.Tensor, n: int, length: int) -> None:
    """Refuse an order that is not one permutation of 0..L-1 per window: its product would not be a likelihood."""
    if order.shape != (n, length):
        raise ValueError(f"order has shape {tuple(order.shape)}; give one permutation per window, shape ({n}, "
                         f"{length})")
    if not torch.equal(order.sort(dim=1).values, torch.arange(length, device=order.device).expand(n, length)):
        raise ValueError("order must hold a permutation of 0..L-1 in every row")


def chunks(total: int, size: int) -> Iterator[torch.Tensor]:
    """Indices 0..total-1 in consecutive chunks of at most ``size``."""
    size = max(1, size)
    for start in range(0, total, size):
        yield torch.arange(start, min(start + size, total))


def reveal_steps(order: torch.Tensor) -> torch.Tensor:
    """Reveal orders (n, L) -> the step at which each position is revealed (n, L): their inverse permutations."""
    return order.argsort(dim=1)


@torch.no_grad()
def chain_rule_nll(network: ChainNetwork, windows: torch.Tensor, steps: torch.Tensor, mask_id: int,
                   times: torch.Tensor, copies_per_chunk: int = 64,
                   on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """-log p(x) per window, in nats: (n,) float64 (see the module docstring for the equation).

    ``steps[w, p]`` is the step (0..S-1) at which position p of window w is revealed; several positions may
    share a step when the network predicts them independently given the rest (block diffusion's blocks, each
    at its own offset). Copy (w, j) shows the positions revealed before step j, masks the rest, and adds the
    cross-entropies at the positions revealed at step j; the network gets ``times[j]``. ``on_chunk(done,
    total)`` is told the chunks done."""
    n = windows.shape[0]
    device = windows.device
    steps = steps.to(device)
    S = int(steps.max()) + 1
    total = torch.zeros(n, dtype=torch.float64, device=device)
    parts = list(chunks(n * S, copies_per_chunk))
    if on_chunk:
        on_chunk(0, len(parts))
    for done, idx in enumerate(parts, 1):
        idx = idx.to(device)
        w, j = idx // S, idx % S
        x = windows[w]
        z = torch.where(steps[w] < j[:, None], x, torch.full_like(x, mask_id))
        now = steps[w] == j[:, None]
        ce = cross_entropy_per_token(network(z, times.to(device)[j], w), x)
        total.index_add_(0, w, (ce * now).sum(-1).double())
        if on_chunk:
            on_chunk(done, len(parts))
    return total


def order_nll(network: ChainNetwork, windows: torch.Tensor, order: torch.Tensor, mask_id: int,
              schedule: MaskSchedule, copies_per_chunk: int = 64,
              on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """-log p_order(x) per window for one position revealed per step in ``order`` (n, L), the network at
    t_j with alpha(t_j) = j / L."""
    n, L = windows.shape
    check_orders(order.to(windows.device), n, L)
    times = schedule.time_at(torch.arange(L, dtype=torch.float64) / L).float()
    return chain_rule_nll(network, windows, reveal_steps(order), mask_id, times, copies_per_chunk, on_chunk)
