"""What the checkpoint digests cost: save and load of a cpu- and a base-preset-sized checkpoint, with and without
them, and one digest per tensor against one per file.

    python benchmarks/digest_cost.py [--repeats 5]

The checkpoint is what the trainer writes for a masked run on Tiny Shakespeare's 65 symbols (model, EMA and
the two AdamW moments, so four copies of the weights); "load" is what sampling reads (the EMA group) and what
resume reads (every group). Times are the median of ``--repeats``, in one process, so the ratios hold on a busy
machine even where the absolute times do not.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import textdiffusion.checkpoint as checkpoint
from common import machine
from textdiffusion.data.tokenizer import CharTokenizer
from textdiffusion.digests import tensor_sha256
from textdiffusion.methods.configs import make_config
from textdiffusion.runs import build


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def _groups(preset: str) -> tuple[dict[str, dict[str, torch.Tensor]], CharTokenizer]:
    tok = CharTokenizer([chr(c) for c in range(32, 97)])
    _, model = build(make_config("masked", preset, []), tok)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    moments = {f"opt.{i}.{m}": torch.randn_like(v) for i, v in enumerate(weights.values()) for m in ("exp_avg",
                                                                                                   "exp_avg_sq")}
    return {"model": weights, "ema": {k: v.clone() for k, v in weights.items()}, "trainer": moments}, tok


def measure(preset: str, repeats: int) -> None:
    groups, tok = _groups(preset)
    flat = [t.contiguous() for sd in groups.values() for t in sd.values()]
    size = sum(t.numel() * t.element_size() for t in flat)
    per_tensor = _median(lambda: [tensor_sha256(t) for t in flat], repeats)

    def per_file() -> str:
        h = hashlib.sha256()
        for t in flat:
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        return h.hexdigest()

    one_file = _median(per_file, repeats)
    state = {"step": 0}
    with tempfile.TemporaryDirectory() as d:
        run = Path(d)
        tok.save(run / "tokenizer.json")  # what the vocabulary check reads beside the checkpoint
        real = checkpoint.integrity_record
        rows = {}
        for label, record in (("without", lambda tensors, vocab: {}), ("with", real)):
            checkpoint.integrity_record = record
            try:
                save = _median(lambda: checkpoint.write_checkpoint(run, groups, state, {}, "", tok.to_dict()),
                               repeats)
                ema = _median(lambda: checkpoint.read_group(run, "ema"), repeats)
                every = _median(lambda: [checkpoint.read_group(run, g) for g in checkpoint.GROUPS], repeats)
            finally:
                checkpoint.integrity_record = real
            rows[label] = (save, ema, every)
    print(f"{preset}: {size / 2**20:.1f} MiB checkpoint ({len(flat)} tensors); sha256 per tensor "
          f"{per_tensor * 1e3:.1f} ms, per file {one_file * 1e3:.1f} ms")
    for label, (save, ema, every) in rows.items():
        print(f"  {label:>7} digests: save {save * 1e3:7.1f} ms, load EMA {ema * 1e3:6.1f} ms, "
              f"load all (resume) {every * 1e3:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["cpu", "base"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(machine())
    for preset in args.presets:
        measure(preset, args.repeats)


if __name__ == "__main__":
    main()
