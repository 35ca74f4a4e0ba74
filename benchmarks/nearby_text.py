"""How far is the validation split from what a prefix run trained on? One run's exact NLL on four stretches.

    python benchmarks/nearby_text.py RUN [--windows 64] [--span 10000]

A run trained on a prefix of the training split (``data.train_chars=U``) is scored by the study of
``benchmarks/repeated_data.py`` on the whole validation split, the last tenth of the corpus: other plays, other
names. Text right after the prefix is much closer to it. This script scores the same weights (EMA) on
``--windows`` evenly spread windows of each of: the prefix's last ``--span`` characters (seen in training), the
``--span`` characters right after the prefix (unseen, nearby), the rest of the training split after the prefix
(unseen), and the validation split. A method with an exact likelihood reports it; a diffusion run reports its
bound, labelled. Scoring a prefix run on a held-out tenth of the prefix itself, as splitting a U-character file
would, measures the nearby number, not the study's.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Stretch:
    """A named range of the corpus's characters, [start, end)."""

    name: str
    start: int
    end: int


def stretches(prefix: int, val_start: int, total: int, span: int) -> list[Stretch]:
    """The four ranges scored for a run trained on the first ``prefix`` characters of a training split that ends
    at ``val_start`` (the corpus has ``total`` characters)."""
    if prefix <= 0 or prefix >= val_start:
        raise SystemExit("error: the run trained on the whole training split; nothing after its prefix is unseen "
                         "(pick a run with data.train_chars below the split)")
    return [Stretch("the prefix's last characters (trained on)", max(0, prefix - span), prefix),
            Stretch("the characters right after the prefix", prefix, min(val_start, prefix + span)),
            Stretch("the rest of the training split", prefix, val_start),
            Stretch("the validation split (the study's score)", val_start, total)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory trained with data.train_chars")
    p.add_argument("--windows", type=int, default=64, help="evenly spread windows per stretch")
    p.add_argument("--span", type=int, default=10_000, help="characters in the near stretches")
    args = p.parse_args(argv)
    if args.windows < 1 or args.span < 1:
        raise SystemExit("error: --windows and --span must be at least 1")
    import numpy as np
    import torch

    from textdiffusion.errors import CheckpointError, ConfigError, DataError
    from textdiffusion.evaluate import run_corpus
    from textdiffusion.runs import open_run

    torch.set_num_threads(1)
    try:
        run = open_run(args.run, device="cpu")
        data, text, _ = run_corpus(run)
    except (CheckpointError, ConfigError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    context = run.cfg.model.context
    print(f"Command: python benchmarks/nearby_text.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{run.path}: {run.cfg.method.name}, U = {run.cfg.data.train_chars:,}, step {run.step:,} (EMA weights); "
          f"{args.windows} windows of {context} characters per stretch, nats per character\n")
    print("| stretch | characters | NLL |\n|---|---|---:|")
    for s in stretches(run.cfg.data.train_chars, data.val_start, len(text), args.span):
        segment = text[s.start:s.end]
        starts = np.linspace(0, max(0, len(segment) - context), args.windows).astype(int)
        windows = torch.tensor(np.stack([run.tokenizer.encode_array(segment[i:i + context]) for i in starts]))
        with torch.no_grad():
            got = run.method.nll(run.model, windows)
        print(f"| {s.name} | {s.start:,}–{s.end:,} | {got.nats_per_unit:.4f} ({got.kind}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
