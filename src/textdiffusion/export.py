"""A run made fit to share: ``textdiffusion export RUN OUT``.

A run directory is a workshop: its checkpoint holds the raw weights, the EMA weights, the optimizer's two
moments and every random generator, so that training can go on bit for bit (about four times the weights);
it also holds metrics, samples and caches. Someone who receives a model wants none of that. An export holds
what sampling and evaluation read, and a page that says what it is:

    weights.safetensors   the EMA weights (what every number of the run was measured with; the raw ones for
                          a 0.1 run shared without them), with the step, the trainer's counters, the training
                          config and the run id in its metadata; no optimizer or random-generator state
    config.json           the run's record: config, seed, versions, device, corpus by name and sha256, the
                          command line, and an ``export`` entry saying where and when it came from
    tokenizer.json        the tokenizer (image runs: image.json, the image shape)
    final.json            the headline result, when the run has one
    README.md             the model card: the method, the final numbers with their labels (exact or bound),
                          the data, the command, the hardware and the time, and how to load it

:func:`textdiffusion.load` and the commands that read a run open an export the same way (the checkpoint
module reads ``weights.safetensors`` as a checkpoint holding only EMA weights), with the same checks: the
weights' config and run id against config.json, the shapes against the network, finite values. An export is
read-only: training into it is refused (there is no optimizer state to continue), and ``eval`` returns its
result without writing into it. Nothing in it names an absolute local path (:mod:`textdiffusion.sharing`).

The export is written into a fresh folder beside OUT and renamed into place, so a failure at any moment leaves
either the earlier OUT or the new one, never half of one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textdiffusion import __version__
from textdiffusion.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    CheckpointError,
    check_finite,
    has_weights,
    is_export,
    read_group,
    read_header,
    write_json,
    write_weights,
)
from textdiffusion.config import Config
from textdiffusion.data.sources import load_vocab
from textdiffusion.digests import VOCAB_FILE
from textdiffusion.files import write_text
from textdiffusion.methods import get_method
from textdiffusion.records import FINAL, FinalScore, TrainSummary
from textdiffusion.run_dir import lost_checkpoint_message, trained_records
from textdiffusion.runs import _shape_only_model, check_checkpoint_config, check_checkpoint_shapes, read_run_config
from textdiffusion.sharing import public_config, public_corpus_record, shareable_argv, shareable_path

VOCAB_FILES = ("tokenizer.json", "image.json")  # what rebuilds the network's input side; a run has one


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote: the folder, which weights, of which step, and the sizes that say what
    was left behind."""

    path: Path
    weights: str  # "ema" | "model": the run's group the weights came from
    step: int
    family: str  # the method's: "text" | "image" (which commands sample it)
    export_bytes: int  # every file of the export
    weights_bytes: int  # weights.safetensors
    checkpoint_bytes: int  # the run's checkpoint (all its weight and state files)
    files: tuple[str, ...]


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> ExportResult:
    """Write an export of the run in ``run_dir`` into the folder ``out`` (see the module docstring).

    ``out`` must be new, empty, or an earlier export (which is replaced); ``force`` replaces any other folder
    except a run directory. Raises a one-line :class:`CheckpointError` for a folder that is not a run, a run
    without weights, or an ``out`` that may not be replaced."""
    run, meta, cfg = read_run_config(run_dir)
    if not has_weights(run) and trained_records(run):
        raise CheckpointError(lost_checkpoint_message(run, "export another run"))
    if not has_weights(run):
        raise CheckpointError(f"{run} has no weights yet (training stopped before its first checkpoint); resume or "
                              f"finish it, then export it")
    out = Path(out)
    _check_target(run, out, force)
    name = out.resolve().name  # what the card and final.json call it
    header = read_header(run)
    check_checkpoint_config(header, cfg, str(meta.get("run_id", "")))
    group = "ema" if header.shapes.get("ema") else "model"
    vocab = load_vocab(run)
    shell = _shape_only_model(cfg, vocab)
    if shell is not None:
        check_checkpoint_shapes(header, shell, run, (group,))
    tensors, step = read_group(run, group)
    check_finite(tensors, header.path)
    state = {k: v for k, v in header.state.items() if k != "optimizer"}  # the counters; no optimizer state
    state["step"] = step

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".export"))
    try:
        mask = os.umask(0)
        os.umask(mask)
        staging.chmod(0o777 & ~mask)  # mkdtemp makes a private folder; an export is meant to be shared
        tokenizer = _public_vocab(run / VOCAB_FILE) if (run / VOCAB_FILE).is_file() else None
        write_weights(staging / WEIGHTS, tensors, group, state, _public_config(header.config or cfg.to_dict()),
                      str(meta.get("run_id", "")), tokenizer)
        write_json(staging / "config.json", _export_meta(meta, run, group, step))
        for vocab_file in VOCAB_FILES:
            if (run / vocab_file).is_file():
                write_json(staging / vocab_file, _public_vocab(run / vocab_file))
        final = TrainSummary.read(run)
        if final is not None:
            write_json(staging / FINAL, {**final.to_json(), "run_dir": name})
        write_text(staging / "README.md", model_card(meta, cfg, final, name, run.name, group, step, state))
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = tuple(sorted(p.name for p in out.iterdir()))
    size = sum((out / f).stat().st_size for f in files)
    return ExportResult(out, group, step, get_method(cfg.method.name).family, size, (out / WEIGHTS).stat().st_size,
                        _checkpoint_bytes(run), files)


def _check_target(run: Path, out: Path, force: bool) -> None:
    """Refuse an ``out`` that would overwrite something that is not an earlier export (without ``force``), the
    run itself, or any run (even with ``force``: its checkpoint cannot be made again)."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file; give a folder for the export (it is created if missing)")
    target, source = out.resolve(), run.resolve()
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise CheckpointError(f"{out} is the working directory or holds it; export into a new folder (the export "
                              f"replaces OUT as a whole)")
    if target == source or source in target.parents:
        raise CheckpointError(f"{out} is inside the run {run}; export into a folder outside it")
    inside = next((folder for folder in target.parents if is_export(folder)), None)
    if inside is not None:
        raise CheckpointError(f"{out} is inside the export {shareable_path(inside)}, which stays as it is; export "
                              f"into a folder outside it")
    if not out.is_dir() or is_export(out):
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    if (out / "config.json").is_file() or (out / CHECKPOINT).is_file():
        raise CheckpointError(f"{out} holds a run; exporting over it would delete its checkpoint: pick another "
                              f"folder for the export")
    if not force:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise CheckpointError(f"{out} is not empty ({shown}) and is not an earlier export; pick a new or empty "
                              f"folder, or pass --force to replace it")


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished export to ``out``; what was there is moved aside first and removed last."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        old.rmdir()
        out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoint_bytes(run: Path) -> int:
    names = (CHECKPOINT, WEIGHTS, "model.safetensors", "ema.safetensors", "trainer.safetensors")
    return sum((run / n).stat().st_size for n in names if (run / n).is_file())


def _public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config as an export holds it: its data by :func:`~textdiffusion.sharing.public_config`, and
    a guide run (a sampling option naming another run on this machine) by its shareable path."""
    out = public_config(config)
    method = out.get("method")
    if isinstance(method, dict) and isinstance(method.get("guide_run"), str) and method["guide_run"]:
        out = {**out, "method": {**method, "guide_run": shareable_path(method["guide_run"])}}
    return out


def _export_meta(meta: dict[str, Any], run: Path, group: str, step: int) -> dict[str, Any]:
    """The export's config.json: the run's record made public, and where the export came from."""
    out = dict(meta)
    out["config"] = _public_config(meta["config"])
    if isinstance(meta.get("corpus"), dict):
        out["corpus"] = public_corpus_record(meta["corpus"])
    if isinstance(meta.get("argv"), list):
        out["argv"] = shareable_argv([str(a) for a in meta["argv"]])
    out["export"] = {"from_run": run.name, "step": step, "weights": group, "textdiffusion": __version__,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return out


def _public_vocab(path: Path) -> Any:
    """A tokenizer.json as it is; an image.json with its data record made public."""
    from textdiffusion.checkpoint import read_json

    d = read_json(path)
    if isinstance(d, dict) and isinstance(d.get("data"), dict):
        d = {**d, "data": public_corpus_record(d["data"])}
    return d


# ---- the model card -----------------------------------------------------------------------------------------
KIND_LABELS = {"exact": "exact negative log-likelihood", "bound": "upper bound on the negative log-likelihood "
               "(NELBO)"}


def model_card(meta: dict[str, Any], cfg: Config, final: TrainSummary | None, name: str, run_name: str,
               weights: str, step: int, state: dict[str, Any]) -> str:
    """The export's README.md, from the run's records alone."""
    method = get_method(cfg.method.name)
    summary = (sys.modules[method.__module__].__doc__ or "").strip().split("\n")[0]  # the method file's title
    params = meta.get("parameters")
    lines = [f"# {name}: a textdiffusion model, method `{cfg.method.name}`", "",
             f"Exported from the run `{run_name}` at step {step:,} of {cfg.train.steps:,} "
             f"({'EMA' if weights == 'ema' else 'raw'} weights, no optimizer state) by textdiffusion {__version__}.",
             "", "## Method", "",
             f"- method: `{cfg.method.name}` ({method.family} family){': ' + summary if summary else ''}",
             f"- preset: `{cfg.preset}`; {params:,} parameters" if isinstance(params, int) else
             f"- preset: `{cfg.preset}`"]
    if method.family == "text":
        lines.append(f"- context: {cfg.model.context} tokens; tokenizer `{cfg.data.tokenizer}`")
    lines += ["", "## Results (final.json)", "", *_result_lines(final, method.unit), "",
              "## Data", "", *_data_lines(meta, cfg), "",
              "## How it was made", ""]
    argv = meta.get("argv")
    if isinstance(argv, list) and argv:
        lines += ["```", shlex.join(shareable_argv([str(a) for a in argv])), "```"]
    else:
        lines.append("command: not recorded (the run was made by a version that did not record it)")
    lines += [f"- seed: {meta.get('seed', cfg.seed)}", "", "## Hardware and time", "",
              *_hardware_lines(meta, final, state), "", "## Use it", "", *_use_lines(name, method), ""]
    return "\n".join(lines)


def _result_lines(final: TrainSummary | None, unit: str) -> list[str]:
    score: FinalScore | None = final.score if final is not None else None
    if score is None:
        return ["No final numbers: the run had not finished and scored its validation split when it was "
                "exported (final.json is missing or holds no score)."]
    per = "char" if unit == "char" else "dim"
    label = KIND_LABELS.get(score.kind, score.kind)
    out = ["| number | value | what it is |", "|---|---|---|",
           f"| validation bits/{per} (EMA weights) | {score.bits:.4f} | {label} |",
           f"| validation nats/{per} (EMA weights) | {score.nats:.4f} | {label} |"]
    if score.raw_bits is not None:
        out.append(f"| validation bits/{per} (raw weights) | {score.raw_bits:.4f} | {label} |")
    stderr = score.details.get("stderr_nats")
    if isinstance(stderr, (int, float)):
        out.append(f"| standard error (nats/{per}) | {stderr:.4f} | of the Monte-Carlo estimate |")
    out += ["", f"Scored on {score.windows:,} validation {'windows' if unit == 'char' else 'images'} at the end of "
            f"training; `exact` numbers are the model's likelihood, `bound` numbers can only overstate it."]
    return out


def _data_lines(meta: dict[str, Any], cfg: Config) -> list[str]:
    corpus = public_corpus_record(meta["corpus"]) if isinstance(meta.get("corpus"), dict) else {}
    out = [f"- corpus: `{shareable_path(cfg.data.corpus)}`"
           + (f" (read from `{corpus['source']}`)" if corpus.get("source") else "")]
    if corpus.get("sha256"):
        out.append(f"- sha256: `{corpus['sha256']}`")
    if corpus.get("train_chars") is not None:
        out.append(f"- size: {corpus['train_chars']:,} training and {corpus.get('val_chars', 0):,} validation "
                   f"characters")
        out.append(f"- split: the last {cfg.data.val_fraction:.0%} of the text held out for validation "
                   f"(`data.val_fraction` {cfg.data.val_fraction:g})")
    if corpus.get("n_train") is not None:
        out.append(f"- size: {corpus['n_train']:,} training and {corpus.get('n_test', 0):,} test images "
                   f"({corpus.get('image_size')}x{corpus.get('image_size')}); validation is the test split")
    return out


def _hardware_lines(meta: dict[str, Any], final: TrainSummary | None, state: dict[str, Any]) -> list[str]:
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    elapsed = final.elapsed if final is not None and final.elapsed is not None else state.get("elapsed")
    out = [f"- device: {meta.get('device', 'not recorded')}"
           + (f", precision {meta['precision']}" if meta.get("precision") else "")
           + (f", {meta['world_size']} processes" if meta.get("world_size") else "")]
    if isinstance(elapsed, (int, float)):
        out.append(f"- training time: {elapsed:,.1f} s (evaluation excluded)")
    if meta.get("created"):
        out.append(f"- started: {meta['created']}")
    if versions:
        out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return out


def _use_lines(name: str, method: Any) -> list[str]:
    if method.family == "image":
        call, command = "model.generate(7)  # images of the digit 7", f"textdiffusion mnist sample {name}"
    else:
        call, command = 'print(model.generate("ROMEO:"))', f"textdiffusion sample {name} --show"
    return ["```python", "import textdiffusion", "", f'model = textdiffusion.load("{name}")', call, "```", "",
            "```", command, "```", "",
            "The folder is read-only for textdiffusion: it samples and evaluates, and cannot be trained further."]

