"""Sampling speed of a latent run against a masked run: characters per second at one batch size, both timed in one
process and alternating round by round, so a load that comes and goes on a shared machine falls on both alike.

    python benchmarks/latent_speed.py --latent /work/runs26/latent/latent-cpu-2k \
        --masked /work/runs25/masked-cpu-2k [--batch 64] [--rounds 5]

Each run samples with its own defaults (latent: ddim, its default steps; masked: ancestral, 64 steps) at the
context length; prints each round, the median chars/s of each and the ratio latent / masked, and the machine's
load average before and after (the seconds are only comparable within this one process).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from textdiffusion.evaluate import generate
from textdiffusion.methods.base import SampleRequest
from textdiffusion.runs import open_run


def chars_per_s(run, batch: int, seed: int) -> float:
    req = SampleRequest(n=batch, length=run.cfg.model.context)
    with torch.no_grad():
        _texts, speed = generate(run, req, seed, batch=batch)
    return speed["sample_chars_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", required=True)
    p.add_argument("--masked", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    runs = {"latent": open_run(args.latent, device="cpu"), "masked": open_run(args.masked, device="cpu")}
    print(f"threads {torch.get_num_threads()}, load average before {os.getloadavg()}")
    seen: dict[str, list[float]] = {name: [] for name in runs}
    for k in range(args.rounds):
        for name, run in runs.items():
            seen[name].append(chars_per_s(run, args.batch, seed=k))
        print(f"round {k}: " + ", ".join(f"{name} {v[-1]:,.0f} chars/s" for name, v in seen.items()), flush=True)
    median = {name: statistics.median(v) for name, v in seen.items()}
    print(f"median: latent {median['latent']:,.0f} chars/s, masked {median['masked']:,.0f} chars/s, "
          f"ratio {median['latent'] / median['masked']:.2f}x (batch {args.batch}); load average after "
          f"{os.getloadavg()}")


if __name__ == "__main__":
    main()
