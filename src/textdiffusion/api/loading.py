"""Opening a run for sampling (:func:`load`) and training a new one (:func:`train`), with settings given as
Python values and passed on as the ``--set`` strings the config takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from textdiffusion.api.image import ImageModel
from textdiffusion.api.text import TextModel
from textdiffusion.config import ConfigError
from textdiffusion.runs import open_run

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
          overrides: Sequence[str] = (), **settings: Any) -> TextModel | ImageModel:
    """Train a new run and return it loaded (EMA weights), ready to sample: what ``textdiffusion train`` does.

    ``method``: ``ar``, ``masked``, ``block``, ``embedding``, ``bits`` (text) or ``image``; ``preset``:
    ``tiny`` (seconds), ``cpu`` (minutes on a laptop) or ``base`` (a GPU run). ``steps``, ``data`` (a named
    corpus, a text file, a folder of .txt files; for images ``mnist`` or ``digits``), ``seed`` and ``device``
    override the preset as the command line's flags do. Any other config field is a keyword: a section with a
    dict of its fields (``model={"n_layer": 4}, train={"lr": 2e-3}``), or a dotted key, the form ``--set``
    takes (``**{"train.lr": 2e-3}``); ``overrides`` also takes ``--set`` strings. The run goes to ``run_dir``
    (default ``runs/METHOD-PRESET-TIME``); ``progress`` shows the training bar on stderr.

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
    summary = run_training(cfg, Path(run_dir) if run_dir is not None else default_run_dir(cfg), progress=progress)
    if summary.interrupted:
        command = "mnist train" if summary.unit == "images" else "train"
        raise KeyboardInterrupt(f"training stopped at step {summary.step} of {summary.steps} with a "
                                f"checkpoint in {summary.run_dir}; `textdiffusion {command} --resume "
                                f"{summary.run_dir}` continues it")
    model = load(summary.run_dir, device=device or "auto")
    model._summary = summary
    return model


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
