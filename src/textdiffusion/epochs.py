"""How many passes over its training text a text run's steps are: the x axis of a study of repeated data.

An optimizer step reads ``batch_size * context * grad_accum * data_shards`` tokens (every text method's window
is the context), so a step count becomes epochs by one division by the training split's size, which
config.json's corpus record holds (``train_chars``: the prefix ``data.train_chars`` leaves, in tokens). The
evaluation rows of metrics.jsonl carry their step, so a curve of validation NLL against epochs needs nothing
the run did not already record, runs trained before this module included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textdiffusion.config import Config
from textdiffusion.errors import CheckpointError


@dataclass(frozen=True)
class Epochs:
    """A text run's data rate: tokens per optimizer step against the tokens of its training split."""

    tokens_per_step: int
    train_tokens: int

    @classmethod
    def of_config(cls, cfg: Config, train_tokens: int) -> Epochs:
        t = cfg.train
        return cls(t.batch_size * cfg.model.context * t.grad_accum * t.data_shards, train_tokens)

    @classmethod
    def of_run(cls, run_dir: Path | str) -> Epochs:
        """From a run's config.json: its config and the training split's size its corpus record holds."""
        from textdiffusion.runs import read_run_config

        _, meta, cfg = read_run_config(run_dir)
        corpus = meta.get("corpus")
        train = corpus.get("train_chars") if isinstance(corpus, dict) else None
        if not isinstance(train, int) or train <= 0:
            raise CheckpointError(f"{Path(run_dir) / 'config.json'} records no training split size "
                                  f"(corpus.train_chars): epochs are known only for a text run")
        return cls.of_config(cfg, train)

    def at(self, step: int) -> float:
        """Passes over the training split after ``step`` optimizer steps."""
        return step * self.tokens_per_step / self.train_tokens

    def steps_for(self, epochs: float) -> int:
        """The optimizer steps (at least one) that make about ``epochs`` passes."""
        return max(1, round(epochs * self.train_tokens / self.tokens_per_step))
