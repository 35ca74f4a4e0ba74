r"""Discrete Consistency Distillation (DCD; Sahoo et al., "The Diffusion Duality", ICML 2025, Sec. 5): a student
of uniform-state diffusion that takes one sampling step where its teacher takes m.

A uniform-state sampler with N steps moves from t to s = t - 1/N in one network evaluation, drawing every
position afresh from the posterior q(z_s | z_t, x_theta(z_t)). Few steps are poor because x_theta(z_t) is the
denoiser of a state that says little about x, and every position is drawn from it independently. The Gaussian
view (:mod:`textdiffusion.diffusion.gaussian_view`) gives what a discrete process lacks: one noise draw eps fixes
a whole trajectory z_u = argmax(alpha~_u e_x + sigma~_u eps), u in [0, 1], each z_u distributed as the
uniform-state process at u. The student at z_t learns what the teacher predicts further along *the same*
trajectory, where the state is cleaner:

    t ~ U{1/N, ..., 1} (the student's grid),  s = t - 1/N                       <- ``grid_times``
    u = t - (m - 1)(t - s) / m        (the last time the teacher's m steps over [s, t] read)   <- ``teacher_time``
    alpha~_v = T^-1(alpha_v) for v in {t, u};  (z_t, z_u) = argmaxes of one trajectory     <- ``trajectory``
    L = mean over positions of KL(p_student(. | z_t, t) || p_teacher(. | z_u, u))  (reverse, Duo's default)
        or KL(p_teacher || p_student)  (forward)                                <- ``consistency_kl``

At m = 1, u = t and z_u = z_t, so a student equal to its teacher has zero loss; with m = 2 the teacher reads
the midpoint of the student's step, which its own 2N-step sampler reaches with one more evaluation. The
reverse KL is mode-seeking: the student commits to what the teacher would write a step later, which is what
lets a few-step sampler draw every position independently without writing a blur.

Rounds halve the steps (64 -> 32 -> 16 -> 8): each run's teacher is the previous round's student, as Duo
doubles its dt each time it updates the teacher.
"""

from __future__ import annotations

import torch

KL_DIRECTIONS = ("reverse", "forward")


def teacher_time(t: torch.Tensor, s: torch.Tensor, substeps: int) -> torch.Tensor:
    """The time of the last state the teacher's ``substeps`` steps from ``t`` to ``s`` read: t itself at one."""
    return t - (substeps - 1) * (t - s) / substeps


def consistency_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, direction: str = "reverse",
                   where: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over positions (``where``, default all) of KL(student || teacher) (``reverse``) or
    KL(teacher || student) (``forward``), in nats; the teacher's side carries no gradient."""
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"unknown KL direction {direction!r}; choose one of {', '.join(KL_DIRECTIONS)}")
    logq = student_logits.float().log_softmax(-1)
    logp = teacher_logits.detach().float().log_softmax(-1)
    first, second = (logq, logp) if direction == "reverse" else (logp, logq)
    kl = (first.exp() * (first - second)).sum(-1)
    if where is None:
        return kl.mean()
    return (kl * where).sum() / where.sum().clamp(min=1)
