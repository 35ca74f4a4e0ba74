"""Data-parallel training under ``torchrun``: who this process is, and the few collectives the trainer needs.

``torchrun --nproc_per_node N -m textdiffusion train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set (and ``--nnodes``/``--rdzv-endpoint`` for several machines). Each copy
builds the same model from the same seed, draws its own share of every batch, and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients (NCCL on GPUs, gloo on CPUs), so
the update is the one a single process would make from the whole batch.

**Data shards.** A run splits each global batch into ``train.data_shards`` shards, each with its own data and
noise generators seeded from (seed, shard); shard 0's are exactly the generators of a single-process run, so
a one-process run is unchanged bit for bit. Process ``r`` of ``W`` owns shards ``r, r + W, ...``. The shard
count is fixed when the run is created (the world size then), so a run resumes exactly at any world size that
divides it: the same shards are drawn, only by other processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from textdiffusion.config import ConfigError

# seeds of shard s: seed + SHARD_STRIDE * s (data) and seed + 1 + SHARD_STRIDE * s (noise); far apart, so no
# shard's stream is another's shifted by a few draws
SHARD_STRIDE = 1_000_003


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of one training job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory, prints and shows progress."""
        return self.rank == 0

    def shards(self, total: int) -> list[int]:
        """The data shards this process draws: ``rank, rank + size, ...``."""
        return list(range(self.rank, total, self.size))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a whole number; launch with torchrun, "
                          f"which sets it") from None


def current_world() -> World:
    """The world ``torchrun`` describes in the environment (one process when it is not set)."""
    world = World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ConfigError(f"RANK={world.rank} and WORLD_SIZE={world.size} do not describe a job; launch with "
                          f"torchrun, which sets both")
    return world


def refuse_world(command: str) -> None:
    """Commands other than ``train`` run in one process: under torchrun they would all do the same work and
    write the same files, so they are refused with the fix."""
    if current_world().active:
        raise ConfigError(f"`textdiffusion {command}` runs in one process; run it without torchrun (only "
                          f"`train` is data-parallel)")


def init(world: World, device: torch.device) -> None:
    """Join the job's process group (NCCL on GPUs, gloo on CPUs), once."""
    if world.active and not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except ValueError as e:  # WORLD_SIZE set by hand, without the rendezvous torchrun provides
            raise ConfigError(f"WORLD_SIZE={world.size} asks for data-parallel training, but {e}; launch with "
                              f"`torchrun --nproc_per_node N -m textdiffusion train ...`") from None


def all_mean(value: float, world: World, device: torch.device) -> float:
    """The mean of a number over every process (the value itself in one process)."""
    if not world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def any_true(flags: list[bool], world: World, device: torch.device) -> list[bool]:
    """For each flag, whether any process raised it (one collective for all): every process then stops at
    the same step boundary, whichever of them got the signal or ran out of time first."""
    if not world.active:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def gather(obj: Any, world: World) -> list[Any]:
    """Every process's ``obj``, in rank order (only ``[obj]`` in one process)."""
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients over the processes in one all-reduce, after backward: the path for a method whose
    loss reads parameters outside the forward pass, which DistributedDataParallel's hooks cannot follow. A
    parameter no process computed a gradient for keeps none, as in a single process (the optimizer skips it)."""
    if not world.active:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p in live:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


class DataParallel(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped network's own attributes (``model.table()``,
    ``model.cfg``, ...), which methods read beside the forward pass."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)
