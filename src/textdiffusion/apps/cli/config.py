"""``textdiffusion config``: print the config ``train`` would start from, every field with its value, what it
may hold and what it means (``--json``: the bare config ``--config`` reads back)."""

from __future__ import annotations

import argparse
import re

from textdiffusion.apps.cli.checks import is_image_method
from textdiffusion.apps.cli.flags import DEFAULT_PRESET, PRESET_HELP, add_set, command
from textdiffusion.apps.cli.train import DEFAULT_IMAGE_METHOD, new_run_config
from textdiffusion.catalogue import method_names
from textdiffusion.config import PRESETS


def add(sub: argparse._SubParsersAction) -> None:
    c = command(sub, "config", "print a config with every field's value and meaning",
                "Print the config `train` would start from with these flags: every field with its value, what it "
                "may hold and what it means. Images: --method image (the config `mnist train` starts from).",
                "examples:\n  textdiffusion config --method masked --preset cpu\n"
                "  textdiffusion config --method image --preset cpu --set unet.base_channels=32\n"
                "  textdiffusion config --config runs/masked/config.json          # what a run was trained with\n"
                "  textdiffusion config --method ar --json > ar.json && textdiffusion train --config ar.json")
    c.add_argument("--method", metavar="METHOD", help=f"the method: {', '.join(method_names())}")
    c.add_argument("--preset", choices=sorted(PRESETS), help=f"{PRESET_HELP} (default: {DEFAULT_PRESET})")
    c.add_argument("--config", metavar="FILE", help="show this config (a run's config.json, or a --json output) "
                                                    "instead of a preset's")
    add_set(c, "change a field, one per --set, as `train --set` would")
    c.add_argument("--json", action="store_true",
                   help="print the bare config as JSON: the file `train --config` and `mnist train --config` read")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the config ``train`` would start from with the same ``--method``/``--preset``/``--config``/``--set``:
    every field with its value, what it may hold and what it means; ``--json`` prints the bare config that
    ``--config`` reads back."""
    from textdiffusion.config import describe_fields

    cfg = new_run_config(args, image=False)
    if args.json:
        print(cfg.to_json())
        return 0
    rows = describe_fields(cfg)
    width = max(len(r.key) for r in rows)
    shown = [_config_value(r.value) for r in rows]
    vwidth = min(max(len(v) for v in shown), 24)
    image = is_image_method(cfg.method.name)
    train = "mnist train" if image else "train"
    source = (f"--config {args.config}" if args.config
              else f"{'' if cfg.method.name == DEFAULT_IMAGE_METHOD else f'--method {cfg.method.name} '}"
                   f"--preset {cfg.preset}")
    print(f"# the config `textdiffusion {train} {source}{' --set ...' if args.overrides else ''}` starts from; "
          f"--json prints it as the file --config reads")
    print("# * = a sampling option: `sample` and `eval` may change it on a trained run with --set")
    section = None
    for row, value in zip(rows, shown, strict=True):
        head = row.key.split(".")[0] if "." in row.key else "run"
        if head != section:
            section = head
            print(f"\n[{section}]")
        text = row.doc if _says(row.doc, row.allowed) else f"{row.doc} [{row.allowed}]"
        print(f"{row.key:<{width}} {'*' if row.sampling else ' '} {value:<{vwidth}}  {text}")
    return 0


def _says(doc: str, allowed: str) -> bool:
    """Whether a field's doc already names every value ``allowed`` lists ("one of a, b or c"), so the table
    need not repeat them."""
    options = re.split(r", | or ", allowed.removeprefix("one of "))
    return all(re.search(rf"(?<![\w:]){re.escape(o)}(?![\w:])", doc) for o in options if o)


def _config_value(value) -> str:
    """A field's value as ``--set`` would take it: true/false, numbers as Python writes them, text as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)
