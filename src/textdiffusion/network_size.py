"""Whether a network fits in the machine's memory, known before a byte of it is allocated.

Why: ``--set model.n_embd=65536 model.n_layer=64`` describes 3.3 trillion parameters. Built for real, it ends
in the allocator's traceback, or worse, where the kernel overcommits, in the out-of-memory killer once the
initialisation touches the pages. The config knows every shape, so the network is first built on PyTorch's
``meta`` device (shapes only: no memory, no random draws) and its parameters counted; a network whose
training state cannot fit in the memory the device has is refused in one line that names both sizes.

The estimate is a floor, not a forecast: fp32 weights, their gradients, the EMA copy and Adam's two moments
(five copies) and nothing for activations, so a refused network could never have trained, and one that
passes may still run out of memory later (the command line reports that in one line too).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable
from pathlib import Path

import torch

from textdiffusion.errors import ConfigError

BYTES_PER_PARAMETER = 4  # fp32 master weights, whatever train.amp computes in
TRAINING_COPIES = 5  # weights, gradients, EMA, Adam's first and second moments


def count_parameters(build_network: Callable[[], torch.nn.Module]) -> int | None:
    """The parameters ``build_network`` would make, counted on the meta device; None where a network cannot
    be built there (then nothing is checked in advance)."""
    try:
        with torch.device("meta"):
            network = build_network()
    except Exception:  # any failure here only means the check is skipped; the real build reports it
        return None
    return sum(p.numel() for p in network.parameters())


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory ``device`` has in all (None where unknown): a GPU's own memory; for the CPU the
    physical memory, lowered to the process's address-space limit and its cgroup's limit where set."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):  # sysconf names differ between systems
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            limits.append(int(cgroup))
    except OSError:
        pass
    return min(limits) if limits else None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def check_network_fits(build_network: Callable[[], torch.nn.Module], device: torch.device) -> None:
    """Refuse, before it is built, a network whose training state (:data:`TRAINING_COPIES` fp32 copies) is
    more than ``device`` has. The network is first made on the CPU, so there one copy must fit as well."""
    n = count_parameters(build_network)
    if n is None:
        return
    weights = n * BYTES_PER_PARAMETER
    needs = [(device, weights * TRAINING_COPIES, "to train (weights, gradients, EMA and Adam's two moments)")]
    if device.type != "cpu":
        needs.append((torch.device("cpu"), weights, "to build on the CPU first"))
    for where, need, why in needs:
        have = device_memory(where)
        if have is not None and need > have:
            raise ConfigError(f"the network would have {n:,} parameters: {gib(weights)} of fp32 weights, "
                              f"{gib(need)} {why}, more than the {gib(have)} of memory the {where.type} has; "
                              f"make it smaller (model.n_embd and model.n_layer, unet.* for images, or a smaller "
                              f"--preset)")
