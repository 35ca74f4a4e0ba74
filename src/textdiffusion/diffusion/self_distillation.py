r"""Self-distillation through time (SDTT; Deschenaux & Gulcehre 2025): the targets and the divergence that teach
a masked denoiser to take in one sampling step what its teacher takes in m.

The ancestral sampler of :mod:`textdiffusion.diffusion.discrete` with N steps moves from t to s = t - 1/N in one
network evaluation: every masked position is revealed with probability (alpha(s) - alpha(t)) / (1 - alpha(t)),
its token drawn from p_theta(x | z_t). A teacher with m * N steps covers the same interval in m smaller steps,
and each of them reads the positions the previous ones revealed, which one step cannot. The student learns to
match, at z_t, the distribution the teacher's m steps end with:

    t ~ U{1/N, 2/N, ..., 1}  (the student's grid),   z_t ~ q(z_t | x)                <- ``grid_times``
    u_k = t - k (t - s) / m,  k = 0..m:  z_{u_{k+1}} ~ the teacher's step from z_{u_k}  <- ``teacher_targets``
    target^l = p_teacher(. | z_{u_k}, u_k)  for the k at which position l is revealed,
               p_teacher(. | z_{u_{m-1}}, u_{m-1})  for a position still masked at s
    L = mean over the positions l masked in z_t of  KL(target^l || p_student(. | z_t, t))  <- ``kl_to_targets``

At m = 1 the target is the teacher's own one-step output, so a student equal to its teacher has zero loss:
a round starts at the teacher and only the extra steps move it. The KL's gradient is that of the
cross-entropy to the soft target (the target's entropy is a constant), the divergence SDTT found best.
Rounds halve the steps: a teacher sampled with 2N steps makes a student of N, which teaches one of N / 2.

Everything here works on any noisy layout: ``t`` holds one time per *position* (a row's for masked diffusion,
a block's for block diffusion), and ``teacher(z, t)`` is whatever forward the method runs on such a state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textdiffusion.diffusion.tokens import gumbel_sample

# teacher(z, t) -> logits (n, L, V): the frozen network on a state whose position l is at time t[:, l]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def grid_times(shape: tuple[int, ...], steps: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Times drawn uniformly from the student's grid {1/N, ..., 1} (N = ``steps``): the times at which its
    sampler evaluates the network, so the student is taught where it will be asked."""
    i = torch.randint(1, steps + 1, shape, generator=generator, device=device)
    return i.float() / steps


@torch.no_grad()
def teacher_targets(teacher: Denoiser, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor, substeps: int,
                    alpha: Callable[[torch.Tensor], torch.Tensor], mask_id: int,
                    generator: torch.Generator, draws: int = 1) -> torch.Tensor:
    """The teacher's log-probabilities (n, L, V) that the student's one step from ``t`` to ``s`` (both (n, L))
    should produce at ``z`` (n, L): ``substeps`` ancestral steps of the teacher over the same interval, each
    position's target the teacher's distribution at the step that revealed it (the last step's for a position
    still masked at ``s``). Positions not masked in ``z`` carry the first step's output; the loss ignores them.

    ``draws`` > 1 averages the probabilities of that many independent runs of the teacher from ``z``. The KL's
    gradient is linear in the target, so the average has the expected gradient of one draw with less of the
    variance of the teacher's own draws, which no one-step student can predict."""
    if draws > 1:
        runs = [teacher_targets(teacher, z, t, s, substeps, alpha, mask_id, generator) for _ in range(draws)]
        return (torch.stack(runs).exp().mean(0)).log()
    unknown = z == mask_id
    state, target = z, None
    for k in range(substeps):
        u, v = t - k * (t - s) / substeps, t - (k + 1) * (t - s) / substeps
        logp = teacher(state, u).float().log_softmax(-1)
        if target is None:
            target = logp.clone()
        a_u, a_v = alpha(u), alpha(v)
        # a position reaching time 0 is revealed for sure (alpha(0) = 1), the sampler's last step
        p_reveal = torch.where(v <= 0, torch.ones_like(a_u), ((a_v - a_u) / (1.0 - a_u)).clamp(0.0, 1.0))
        reveal = unknown & (torch.rand(state.shape, generator=generator, device=state.device) < p_reveal)
        # a position still masked after the last step keeps this step's distribution as its target
        settled = reveal | (unknown if k == substeps - 1 else torch.zeros_like(unknown))
        target = torch.where(settled[..., None], logp, target)
        state = torch.where(reveal, gumbel_sample(logp, generator), state)
        unknown = unknown & ~reveal
    assert target is not None
    return target


def kl_to_targets(student_logits: torch.Tensor, target_logp: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The mean over ``masked`` positions of KL(target || student) in nats (0 when nothing is masked)."""
    logq = student_logits.float().log_softmax(-1)
    kl = (target_logp.exp() * (target_logp - logq)).sum(-1)
    return (kl * masked).sum() / masked.sum().clamp(min=1)
