r"""What turns an ``ar`` network into a denoiser gently: the shift of the inputs and the annealed attention.

An ``ar`` network reads [BOS, x_0, .., x_{L-2}] under a causal mask and its logit at position i predicts x_i,
the token *after* the one it reads. A masked denoiser's logit at i predicts the token it reads (a [MASK]), so
ar's weights start aimed one position off. Two recipes of the published adaptations (DiffuLLaMA, Dream) keep
what ar learned:

**The shift** (``method.shift``): the denoiser reads its noisy input moved one place right, behind BOS, and
its logit at position i predicts token i,

    input_i = z_{i-1} (i >= 1),   input_0 = BOS,

exactly ar's layout: with the prefix x_{<i} clean and a causal mask, output i *is* ar's p(x_i | x_{<i}). Masked
diffusion reads [BOS, z_0 .. z_{L-1}] (L + 1 positions, the last output dropped), so no input is lost.
Block diffusion keeps its blocks and its 2L-token paired layout: block b's logits come from the positions
reading tokens bB-1 .. bB+B-2, the first of which belongs to the clean block before, so that position reads the
*clean* token,

    input_i = x_{i-1} if i mod B = 0 else z_{i-1},                       <- ``shift_inputs(..., block=B)``

and every block's prediction still sees only the clean blocks before it and its own noisy tokens; the block's
last noisy token is read by none of them (a denoiser may ignore part of its input and its bound stays a bound).
B = 1 is ar itself. The KV-cached block sampler feeds each segment it runs the same way: moved one place right
behind the clean token before it (``shift_segment``).

**Attention-mask annealing** (``method.anneal_steps`` = N): at training step s the mask is the causal one plus
each later key the method's mask allows, kept with probability r = s / N,

    allowed(i, j) = target(i, j) and (pos_j <= pos_i or u_ij < r),   u_ij ~ U[0, 1)  <- ``annealed_mask``

so step 0 trains ar's causal mask and step N the method's own, and the draws come from the training noise
generator (a resumed run draws the same). Validation, the exact NLL and sampling always use the method's mask.

**The joint objective** (``method.ar_weight`` = lambda, with the shift): one network, two readings. Under the
causal mask on a clean window the shifted denoiser *is* an ar model (``causal_mask``), so training adds lambda
times its ar cross-entropy to the diffusion loss,

    loss = L_diffusion(x) + lambda * (1/L) sum_i -log p_causal(x_i | x_{<i}),

and validation reports that ar reading's exact NLL beside the bound (``ar_nats_per_char``).
"""

from __future__ import annotations

import torch


def shift_inputs(z: torch.Tensor, x: torch.Tensor, bos_id: int, block: int | None = None) -> torch.Tensor:
    """The shifted denoiser input of noisy windows ``z`` (n, L) whose clean windows are ``x``: each position reads
    the token before it, BOS at 0, and the first position of every block of ``block`` tokens (default: the
    whole window) reads the clean token, which belongs to the finished block before it."""
    length = z.shape[1]
    block = length if block is None else block
    bos = torch.full_like(z[:, :1], bos_id)
    before_z, before_x = torch.cat((bos, z[:, :-1]), dim=1), torch.cat((bos, x[:, :-1]), dim=1)
    first = (torch.arange(length, device=z.device) % block == 0)[None, :]
    return torch.where(first, before_x, before_z)


def shift_segment(segment: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """A segment (n, S) of the sequence, moved one place right behind ``before`` (n,), the clean token that
    precedes it (BOS at the start): what a shifted network reads in the segment's positions."""
    return torch.cat((before[:, None], segment[:, :-1]), dim=1)


def anneal_fraction(step: int, anneal_steps: int) -> float:
    """r at training step ``step``: the share of the non-causal entries the mask keeps (1 = the method's mask)."""
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)


def annealed_mask(target: torch.Tensor | None, positions: torch.Tensor, fraction: float, n: int,
                  generator: torch.Generator) -> torch.Tensor:
    """A boolean attention mask (n, 1, Q, Q) between causal and ``target`` ((Q, Q), None = every key):
    causal in the token ``positions`` (Q,) (a paired layout repeats them), each other allowed entry kept with
    probability ``fraction``, drawn per row of the batch."""
    q = positions.shape[0]
    keep = torch.rand((n, 1, q, q), generator=generator, device=positions.device) < fraction
    return causal_mask(target, positions) | (keep if target is None else keep & target)


def causal_mask(target: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """The causal part of ``target`` ((Q, Q), None = every key) in the token ``positions`` (Q,): (1, 1, Q, Q).
    With the shift, the network read under it on a clean window is an ar model: the joint objective's."""
    causal = positions[None, :] <= positions[:, None]
    return (causal if target is None else causal & target)[None, None]
