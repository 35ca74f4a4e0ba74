"""What a loaded run of either kind offers (:class:`Model`), and the refusal of the other kind's options."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from textdiffusion.config import Config, ConfigError
from textdiffusion.records import TrainSummary
from textdiffusion.runs import LoadedRun


class Model:
    """What a loaded run of either kind offers: where it is, what it is, how far it trained."""

    kind = "a"

    def __init__(self, run: LoadedRun, weights: str, overrides: list[str]):
        self.run = run  # the loaded run (network, method, tokenizer): for code that needs the internals
        self.weights = weights
        self._overrides = list(overrides)
        self._summary: TrainSummary | None = None

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.run.path

    @property
    def method(self) -> str:
        """The method's name (``masked``, ``ar``, ``image``, ...)."""
        return self.run.cfg.method.name

    @property
    def step(self) -> int:
        """The training step of the loaded weights."""
        return self.run.step

    @property
    def config(self) -> Config:
        """The run's resolved config (config.json), with the sampling settings given to :func:`load`."""
        return self.run.cfg

    @property
    def device(self) -> torch.device:
        """Where the network lives and samples run."""
        return self.run.device

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers this method offers; ``default_sampler`` is the one used when none is asked for."""
        return self.run.method.samplers

    @property
    def default_sampler(self) -> str:
        """The sampler a call gets when it names none: the run's ``method.sampler``, else the method's first."""
        return self.run.method.default_sampler

    @property
    def likelihood_kind(self) -> str:
        """``exact`` when the method's likelihood is the true -log p, ``bound`` when it is an upper bound."""
        return self.run.method.likelihood_kind

    @property
    def parameters(self) -> int:
        """Number of network parameters."""
        return sum(p.numel() for p in self.run.model.parameters())

    @property
    def summary(self) -> TrainSummary | None:
        """The training summary (:class:`~textdiffusion.records.TrainSummary`: steps, speed, and the final
        validation score as ``summary.score``): what :func:`train` returned for a model it trained, else the run's
        final.json, or None for a run that has not finished training."""
        if self._summary is None:
            self._summary = TrainSummary.read(self.path)
        return self._summary

    def _refuse_raw_weights(self) -> None:
        if self.weights != "ema":
            raise ConfigError(f"evaluate() scores the EMA weights, as the eval command does; load {self.path} "
                              f"with weights='ema' to evaluate it")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method}, step {self.step}, {str(self.path)!r}, {self.device})"


def refuse_other_kind(options: Mapping[str, Any], call: str, model: Model, other_kind: frozenset[str],
                      fix: str) -> None:
    """Unknown keyword arguments: the other kind of run's options get a one-line error that says which kind
    this run is; anything else is Python's usual TypeError."""
    for name in sorted(options):
        if name in other_kind:
            raise ConfigError(f"{name}= does not apply: {model.path} is {model.kind} run (method {model.method}); "
                              f"{fix}")
        raise TypeError(f"{call}() got an unexpected keyword argument {name!r}")


# the options of the other kind of run, refused by name
TEXT_OPTIONS = frozenset({"prompt", "infill", "template", "placeholder", "length", "temperature", "top_k", "top_p"})
IMAGE_OPTIONS = frozenset({"digits", "eta", "guidance"})
