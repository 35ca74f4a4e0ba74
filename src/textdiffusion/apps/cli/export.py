"""``textdiffusion export``: a run made fit to share, the weights alone with a model card
(:mod:`textdiffusion.export`)."""

from __future__ import annotations

import argparse

from textdiffusion.apps.cli.flags import RUN_DIR_HELP, command


def add(sub: argparse._SubParsersAction) -> None:
    x = command(sub, "export", "write a run's weights alone, its config, tokenizer and a model card, to share",
                "Write OUT/: the EMA weights as safetensors (no optimizer or random-generator state), config.json, "
                "the tokenizer, final.json and a model card (README.md: the method, the final numbers with their "
                "labels, the data, the command, hardware and time). `textdiffusion sample OUT`, `eval OUT` and "
                "textdiffusion.load(\"OUT\") open it like a run; it cannot be trained further.",
                "examples:\n  textdiffusion export runs/masked shared/masked\n"
                "  textdiffusion sample shared/masked --show")
    x.add_argument("run_dir", help=RUN_DIR_HELP)
    x.add_argument("out", help="folder to write (new, empty, or an earlier export, which is replaced)")
    x.add_argument("--force", action="store_true",
                   help="replace OUT even when it holds other files (never a run directory)")
    x.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textdiffusion.export import export_run

    res = export_run(args.run_dir, args.out, force=args.force)
    saved = res.checkpoint_bytes / res.export_bytes if res.export_bytes else 0.0
    print(f"exported {args.run_dir} (step {res.step:,}, {res.weights} weights) to {res.path}: "
          f"{len(res.files)} files, {res.export_bytes / 1e6:.2f} MB (the run's checkpoint: "
          f"{res.checkpoint_bytes / 1e6:.2f} MB, {saved:.1f}x larger)")
    print(f"  card:   {res.path / 'README.md'}")
    print(f"  sample: textdiffusion {'mnist ' if res.family == 'image' else ''}sample {res.path}")
    return 0
