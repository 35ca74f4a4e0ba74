"""A student of fewer sampling steps (``train.distill_from``, ``train --distill-from RUN``): self-distillation
through time (SDTT; the maths in :mod:`textdiffusion.diffusion.self_distillation`) for masked and block, Discrete
Consistency Distillation for uniform (:mod:`textdiffusion.diffusion.consistency`): the method's
``distillation_loss`` says which, and its ``check_distillation`` (where it has one) refuses what it cannot use.

The student is a run like any other of the teacher's method: it starts from the teacher's EMA weights and trains
with the trainer, checkpoints and resume of every run; only its loss differs, the divergence to what the frozen
teacher writes in ``train.distill_substeps`` steps where the student takes one. The teacher must build the same
network on the same tokens (same method, model, noise schedule and tokenizer), so a mismatch is refused by the
field that causes it. One run is one round: the student's config records its steps as ``method.sample_steps``,
so ``train --distill-from STUDENT`` takes the next round from there (64 -> 32 -> 16 -> ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiffusion.checkpoint import check_finite, read_group
from textdiffusion.config import Config, ConfigError
from textdiffusion.data.tokenizer import Tokenizer, load_tokenizer
from textdiffusion.init_from import NETWORK_FIELDS, source_record
from textdiffusion.records import DistillRecord

# the method fields that decide what the network computes or which times its steps cover
METHOD_FIELDS = ("schedule", "sigma_max", "time_conditioning", "block_size")

# objective(student, x, generator) -> the scalar loss the trainer differentiates
Objective = Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor]


def teacher_config(run: str) -> Config:
    """The teacher run's config; a path that is no run is a one-line error."""
    from textdiffusion.methods.configs import read_config_file

    if not (Path(run) / "config.json").is_file():
        raise ConfigError(f"train.distill_from={run} is not a run directory (no config.json); pass the directory of "
                          f"a trained masked, block or uniform run")
    return read_config_file(Path(run) / "config.json")


def check_teacher(teacher: Config, cfg: Config, run: str) -> None:
    """Refuse a teacher the student cannot copy and match: another method, network, schedule or tokenizer, each
    named by its field with both values; and a student asked to start from two runs at once."""
    from textdiffusion.methods import get_method

    name = cfg.method.name
    if not hasattr(get_method(name), "distillation_loss"):
        raise ConfigError(f"train.distill_from trains a student of masked, block or uniform diffusion; this run is "
                          f"{name}: use --method masked, block or uniform (or leave --method out to take the "
                          f"teacher's)")
    check = getattr(get_method(name), "check_distillation", None)
    if check is not None:
        check(cfg.train)
    if teacher.method.name != name:
        raise ConfigError(f"train.distill_from={run} has method.name={teacher.method.name} but this run has "
                          f"method.name={name}; a student learns its teacher's method: use --method "
                          f"{teacher.method.name}")
    if cfg.train.init_from:
        raise ConfigError(f"train.init_from={cfg.train.init_from} and train.distill_from={run} both give the first "
                          f"weights; a student starts from its teacher's: leave train.init_from empty")
    pairs = [(f"model.{f}", getattr(teacher.model, f), getattr(cfg.model, f)) for f in NETWORK_FIELDS]
    pairs += [(f"method.{f}", getattr(teacher.method, f), getattr(cfg.method, f)) for f in METHOD_FIELDS
              if hasattr(cfg.method, f)]
    pairs += [(f"data.{f}", getattr(teacher.data, f), getattr(cfg.data, f)) for f in ("tokenizer", "labels")]
    for key, theirs, ours in pairs:
        if theirs != ours:
            raise ConfigError(f"train.distill_from={run} has {key}={theirs} but this run has {key}={ours}; a "
                              f"student copies its teacher: set --set {key}={theirs}")


def teacher_steps(teacher: Config) -> int:
    """The steps the teacher samples a context with by default (per block for block diffusion)."""
    usual = getattr(teacher.method, "block_size", teacher.model.context)
    return teacher.method.sample_steps or usual


def resolve_steps(teacher: Config, cfg: Config) -> None:
    """Fix the student's steps in ``cfg`` (``train.distill_steps``, 0 = the teacher's / substeps) and make them its
    default sampling steps, so the student samples as it was taught and the next round halves them."""
    t = cfg.train
    if not t.distill_steps:
        t.distill_steps = max(1, teacher_steps(teacher) // t.distill_substeps)
    cfg.method.sample_steps = t.distill_steps


@dataclass(frozen=True)
class Teacher:
    """The frozen teacher network (eval mode, no gradients) and the record that names it."""

    network: torch.nn.Module
    record: DistillRecord


def check_same_tokens(run: str, vocab: Tokenizer) -> None:
    """Token ids mean the same only when the tokenizers are equal (a char tokenizer is built from its corpus)."""
    if load_tokenizer(Path(run) / "tokenizer.json").to_dict() != vocab.to_dict():
        raise ConfigError(f"train.distill_from={run} was trained with another tokenizer than this run's corpus "
                          f"gives; train the student on the teacher's corpus")


@torch.no_grad()
def open_teacher(cfg: Config, vocab: Tokenizer, method: Any, device: torch.device) -> Teacher:
    """The teacher of ``cfg.train.distill_from``, checked, its EMA weights in a network of ``method``'s, on
    ``device``. Fixes the student's steps in ``cfg`` (:func:`resolve_steps`)."""
    run = cfg.train.distill_from
    teacher = teacher_config(run)
    check_teacher(teacher, cfg, run)
    resolve_steps(teacher, cfg)
    check_same_tokens(run, vocab)
    tensors, step = read_group(Path(run), "ema")
    check_finite(tensors, Path(run))
    network = method.build_model()
    own = network.state_dict()
    if set(own) != set(tensors) or any(tuple(tensors[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise ConfigError(f"train.distill_from={run} holds weights of another network than this run builds; "
                          f"distill from a run of the same method, network and tokenizer")
    network.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    network.to(device).eval()
    for p in network.parameters():
        p.requires_grad_(False)
    steps = cfg.train.distill_steps
    return Teacher(network, DistillRecord(source_record(run, step), steps, steps * cfg.train.distill_substeps))


def check_same_teacher(teacher: Teacher, recorded: DistillRecord | None, run_dir: Path) -> None:
    """A resumed student must keep learning from the weights it started with: a teacher run trained further
    (another step) or replaced (another run id) is refused, naming both."""
    now, then = teacher.record.teacher, recorded.teacher if recorded is not None else None
    if then is not None and (now.run_id, now.step) != (then.run_id, then.step):
        raise ConfigError(f"{run_dir} was distilled from {then.run} at step {then.step} (run {then.run_id[:8]}), "
                          f"which now holds step {now.step} (run {now.run_id[:8]}); restore that teacher or start a "
                          f"new student")


def distillation_objective(method: Any, teacher: Teacher, substeps: int, draws: int = 1) -> Objective:
    """The student's loss on a batch: the method's SDTT divergence against the frozen teacher."""
    steps = teacher.record.steps

    def objective(student: torch.nn.Module, x: Any, generator: torch.Generator) -> torch.Tensor:
        return method.distillation_loss(student, teacher.network, x, generator, steps, substeps, draws)

    return objective


def copy_teacher(teacher: Teacher, *networks: torch.nn.Module) -> None:
    """The student's first weights (and its EMA's): the teacher's."""
    state = teacher.network.state_dict()
    for network in networks:
        network.load_state_dict(state)


def student_config(run: str, overrides: list[str]) -> Config:
    """A new round's config when only the teacher is named (``train --distill-from RUN``): the teacher's own,
    its first weights and steps left to this round (no ``init_from``, the steps halved anew), ``overrides`` on top."""
    from textdiffusion.config import apply_overrides

    cfg = teacher_config(run)
    cfg.train.init_from, cfg.train.distill_steps, cfg.method.sample_steps = "", 0, 0
    return apply_overrides(cfg, overrides)
