"""Opening a run for sampling (:func:`load`) and training one (:func:`train`), with settings given as Python
values and passed on as the ``--set`` strings the config takes. ``train(if_exists=...)`` says what happens when
``run_dir`` already holds a run: refuse (the default), continue it, or replace it (and nothing but a run)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from textdiffusion.api.image import ImageModel
from textdiffusion.api.text import TextModel
from textdiffusion.checkpoint import is_export
from textdiffusion.config import Config, ConfigError
from textdiffusion.errors import CheckpointError
from textdiffusion.records import TrainSummary
from textdiffusion.run_lock import LOCK_NAME, RunLock
from textdiffusion.runs import open_run

# what train() does with a run_dir that already holds a run
IfExists = Literal["error", "resume", "replace"]

# a method's family (``Method.family``) -> the model that samples its runs
MODELS: dict[str, type[TextModel] | type[ImageModel]] = {"text": TextModel, "image": ImageModel}

def load(run_dir: str | Path, device: str | torch.device = "auto", weights: str = "ema", *,
         overrides: Sequence[str] = (), **sampling: Any) -> TextModel | ImageModel:
    """Open the run in ``run_dir`` for sampling: a :class:`TextModel` for a text run, an :class:`ImageModel`
    for an image run (the run's config.json decides). ``run_dir`` may also be an export of a run
    (``textdiffusion export``, :mod:`textdiffusion.export`), which holds only the EMA weights.

    ``device``: ``"auto"`` (the GPU when there is one, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"``. ``weights``: ``"ema"`` (the averaged weights every number in the run was measured with) or
    ``"model"`` (the raw weights of the last step). ``sampling`` changes the run's sampling options for every
    call on the returned model, as ``--set method.FIELD=VALUE`` does on the command line: ``load(run,
    temperature=0.8)``, ``load(run, clamp=True, eta=0.5)``, ``load(run, guide_run="runs/ar")``. Only the
    fields marked as sampling options may change; anything the network was trained with is refused.
    ``overrides`` takes the same settings as ``--set`` strings (``["method.eta=0.5"]``).

    Raises a one-line :class:`~textdiffusion.errors.CheckpointError` for a missing or damaged run directory
    and :class:`~textdiffusion.config.ConfigError` for an unknown device or setting."""
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    sets = [*overrides, *(f"{_setting_key(k, 'method')}={_setting_value(k, v)}" for k, v in sampling.items())]
    run = open_run(run_dir, weights=weights, device=str(device), overrides=sets)
    if run.method.family in MODELS:
        return MODELS[run.method.family](run, weights, sets)
    raise ConfigError(f"{run_dir} holds a {run.cfg.method.name} run, which samples neither text nor images")


def train(method: str, preset: str = "cpu", *, steps: int | None = None, run_dir: str | Path | None = None,
          data: str | Path | None = None, seed: int | None = None, device: str | None = None, progress: bool = True,
          if_exists: IfExists = "error", overrides: Sequence[str] = (), **settings: Any) -> TextModel | ImageModel:
    """Train a new run and return it loaded (EMA weights), ready to sample: what ``textdiffusion train`` does.

    ``method``: ``ar``, ``masked``, ``block``, ``embedding``, ``bits`` (text) or ``image``; ``preset``:
    ``tiny`` (seconds), ``cpu`` (minutes on a laptop) or ``base`` (a GPU run). ``steps``, ``data`` (a named
    corpus, a text file, a folder of .txt files; for images ``mnist`` or ``digits``), ``seed`` and ``device``
    override the preset as the command line's flags do. Any other config field is a keyword: a section with a
    dict of its fields (``model={"n_layer": 4}, train={"lr": 2e-3}``), or a dotted key, the form ``--set``
    takes (``**{"train.lr": 2e-3}``); ``overrides`` also takes ``--set`` strings. The run goes to ``run_dir``
    (default ``runs/METHOD-PRESET-TIME``); ``progress`` shows the training bar on stderr.

    ``if_exists`` decides what happens when ``run_dir`` already holds a run: ``"error"`` (the default) refuses
    with a ConfigError, so a run is never overwritten by accident; ``"resume"`` continues it from its last
    checkpoint to ``steps`` (a finished run is only loaded, so a script that trains then samples can run twice),
    provided the other settings are the run's own; ``"replace"`` deletes it and trains a new one. Only a run is
    ever deleted: a folder that holds other files is refused whatever ``if_exists`` says, and so is a run that
    another process is training.

    The training summary (steps, validation bits, speed) is the returned model's ``summary``. Ctrl-C stops
    training at the next step with a checkpoint saved, then raises KeyboardInterrupt saying how to resume."""
    from textdiffusion.methods.configs import make_config
    from textdiffusion.trainer import default_run_dir, run_training

    sets = list(overrides)
    for key, value in settings.items():
        if isinstance(value, Mapping):
            sets += [f"{key}.{name}={_setting_value(f'{key}.{name}', v)}" for name, v in value.items()]
        elif "." in key:
            sets.append(f"{key}={_setting_value(key, value)}")
        else:
            raise ConfigError(f"train() got {key}={value!r}; config fields go by section, e.g. "
                              f"train={{'lr': 2e-3}} or model={{'n_layer': 4}} (or **{{'train.lr': 2e-3}})")
    for value, key in ((data, "data.corpus"), (steps, "train.steps"), (seed, "seed"), (device, "train.device")):
        if value is not None:
            sets.append(f"{key}={_setting_value(key, value)}")
    cfg = make_config(method, preset, sets)
    target = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if _holds_run_to_continue(target, if_exists):
        summary = _continue_run(target, cfg, progress)
    else:
        summary = run_training(cfg, target, progress=progress)
    if summary is not None and summary.interrupted:
        raise KeyboardInterrupt(f"training stopped at step {summary.step} of {summary.steps} with a checkpoint "
                                f"in {summary.run_dir}; train(..., run_dir={str(summary.run_dir)!r}, "
                                f"if_exists='resume') continues it")
    model = load(target, device=device or "auto")
    if summary is not None:
        model._summary = summary
    return model


def _holds_run_to_continue(run_dir: Path, if_exists: str) -> bool:
    """Whether ``run_dir`` holds a run that :func:`train` should continue. A run there is refused or deleted as
    ``if_exists`` says; a missing or empty folder is trained into; anything else is refused, since only a run
    may be replaced."""
    if if_exists not in get_args(IfExists):
        raise ConfigError(f"if_exists must be 'error', 'resume' or 'replace', got {if_exists!r}")
    where = f"run_dir={str(run_dir)!r}"
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise ConfigError(f"{where} is a file; pass a new or empty folder for the run")
    if is_export(run_dir):
        raise CheckpointError(f"{where} is an export (weights only, without the optimizer and random-generator "
                              f"state training needs): it samples and evaluates but cannot be trained or replaced "
                              f"by train(); pass another run_dir")
    if not (run_dir / "config.json").is_file():
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
        if others:
            raise ConfigError(f"{where} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                              f"and holds no run; pass a new or empty folder (train() deletes nothing but a run)")
        return False
    if if_exists == "error":
        raise ConfigError(f"{where} already holds a run; pass if_exists='resume' to continue it (a finished run is "
                          f"loaded as it is), if_exists='replace' to train a new one in its place, or another "
                          f"run_dir")
    _refuse_foreign(run_dir)
    _refuse_if_training(run_dir)
    if if_exists == "resume":
        return True
    _delete_run(run_dir)
    return False


def _refuse_foreign(run_dir: Path) -> None:
    """A folder whose config.json textdiffusion did not write is not a run: it is neither continued nor
    deleted."""
    from textdiffusion.checkpoint import read_run_meta

    try:
        read_run_meta(run_dir)
    except CheckpointError:
        raise ConfigError(f"run_dir={str(run_dir)!r} has a config.json that textdiffusion did not write, so it is "
                          f"not a run to continue or replace; pass another run_dir") from None


def _refuse_if_training(run_dir: Path) -> None:
    """A run another process is training is neither continued nor deleted from here (no lock file: no
    trainer holds it, and none is made)."""
    if not (run_dir / LOCK_NAME).exists():
        return
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except CheckpointError:
        raise ConfigError(f"run_dir={str(run_dir)!r} is being trained by another process; wait for it to finish, "
                          f"or pass another run_dir") from None
    finally:
        lock.release()


def _delete_run(run_dir: Path) -> None:
    """Delete a run directory for ``if_exists='replace'`` (:func:`_refuse_foreign` has seen its config.json). A
    symbolic link is refused: deleting through it would remove a folder the user may keep elsewhere on purpose."""
    if run_dir.is_symlink():
        raise ConfigError(f"run_dir={str(run_dir)!r} is a symbolic link; if_exists='replace' deletes only a run "
                          f"directory itself, so pass the folder it points to")
    shutil.rmtree(run_dir)


def _continue_run(run_dir: Path, cfg: Config, progress: bool) -> TrainSummary | None:
    """Continue the run in ``run_dir`` to ``cfg.train.steps`` (its summary), or nothing to do when it already
    finished them (None). Every other setting must be the run's own: continuing with other settings would
    silently train what the run's config.json does not describe."""
    from textdiffusion.checkpoint import has_checkpoint, read_header
    from textdiffusion.runs import read_run_config
    from textdiffusion.trainer import resume_training

    _, _, saved = read_run_config(run_dir)
    asked, recorded = _flat(cfg.to_dict()), _flat(saved.to_dict())
    differ = sorted(k for k in asked.keys() | recorded.keys() if k != "train.steps" and asked.get(k) != recorded.get(k))
    if differ:
        shown = "; ".join(f"{k}: {recorded.get(k)!r} in the run, {asked.get(k)!r} asked" for k in differ[:3])
        raise ConfigError(f"run_dir={str(run_dir)!r} holds a run with other settings ({shown}); pass the run's "
                          f"settings to continue it, or if_exists='replace' to train a new one")
    steps = cfg.train.steps
    step = read_header(run_dir).step if has_checkpoint(run_dir) else 0
    if step > steps:
        raise ConfigError(f"run_dir={str(run_dir)!r} is already at step {step}, past steps={steps}; pass steps of "
                          f"at least {step}")
    if step == steps and (run_dir / "final.json").is_file():
        return None
    return resume_training(run_dir, progress=progress, steps=steps if steps != saved.train.steps else None)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's dict as ``{"section.field": value}``, the keys ``--set`` takes."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _setting_key(key: str, section: str) -> str:
    """A keyword of :func:`load` as a config key: a bare field name belongs to ``section``."""
    return key if "." in key else f"{section}.{key}"


def _setting_value(key: str, value: Any) -> str:
    """A Python value as the text ``--set`` takes: true/false, numbers as written, a list as "1,2,2"."""
    if value is None:
        raise ConfigError(f"{key}=None: give a value (leave the setting out to keep the default)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
