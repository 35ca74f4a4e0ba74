"""Start a run from another run's weights (``train.init_from``, ``train --init-from RUN``).

A diffusion model learns faster from an ``ar`` run's weights than from random ones: the text methods share one
transformer (the same tensors, the same vocabulary with its special tokens, [MASK] included), so the ``ar``
network's EMA weights load as they are and only what the network is asked changes. The source is read only,
through the checkpoint readers (a run directory or an export). Every tensor must match in name and shape, and the
network's and tokenizer's config fields must agree, so a mismatch is refused by the field that causes it rather
than loaded half-way. The optimizer starts fresh; a resumed run never reloads, its checkpoint already holds
the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from textdiffusion.checkpoint import check_finite, read_group, read_run_meta
from textdiffusion.config import Config, ConfigError
from textdiffusion.data.tokenizer import Tokenizer, load_tokenizer
from textdiffusion.records import InitRecord, TrainSummary
from textdiffusion.sharing import shareable_path

# the model fields that decide the network's tensors or what they compute
NETWORK_FIELDS = ("n_layer", "n_head", "n_embd", "context", "mlp_ratio", "activation", "tie_embeddings", "positions")


def source_config(run: Path) -> Config:
    """The source run's config; a path that is no run is a one-line error."""
    from textdiffusion.methods.configs import read_config_file

    if not (run / "config.json").is_file():
        raise ConfigError(f"train.init_from={run} is not a run directory (no config.json); pass the directory of "
                          f"a trained run or an export")
    return read_config_file(run / "config.json")


def check_compatible(source: Config, cfg: Config, run: Path) -> None:
    """Refuse a source whose network or tokenizer differs, naming the first field that does and both values."""
    from textdiffusion.methods import get_method

    ours, theirs = get_method(cfg.method.name), get_method(source.method.name)
    if ours.family != "text" or theirs.family != "text":
        raise ConfigError(f"train.init_from works between text methods only; {run} is a {source.method.name} run "
                          f"and this run is {cfg.method.name}")
    for name in NETWORK_FIELDS:
        a, b = getattr(source.model, name), getattr(cfg.model, name)
        if a != b:
            raise ConfigError(f"train.init_from={run} has model.{name}={a} but this run has model.{name}={b}; set "
                              f"--set model.{name}={a} or start from a run of the same network")
    if source.data.tokenizer != cfg.data.tokenizer:
        raise ConfigError(f"train.init_from={run} has data.tokenizer={source.data.tokenizer} but this run has "
                          f"data.tokenizer={cfg.data.tokenizer}; the runs must share the tokenizer: set --set "
                          f"data.tokenizer={source.data.tokenizer}")


def check_same_tokens(run: Path, source: Config, vocab: Tokenizer) -> None:
    """Token ids mean the same in both runs only when the tokenizers are equal (a char tokenizer is built from
    its corpus), so the saved tokenizer is compared whole."""
    if load_tokenizer(run / "tokenizer.json").to_dict() != vocab.to_dict():
        raise ConfigError(f"train.init_from={run} was trained with another tokenizer (data.corpus={source.data.corpus} "
                          f"there) than this run's corpus gives; train on the corpus it was trained on")


@torch.no_grad()
def load_init_weights(run: str, cfg: Config, vocab: Tokenizer, model: torch.nn.Module) -> InitRecord:
    """Copy ``run``'s EMA weights into ``model`` (every tensor, matched by name and shape) and say where
    they came from. ``vocab``: this run's tokenizer, which must equal the source's."""
    path = Path(run)
    source = source_config(path)
    check_compatible(source, cfg, path)
    check_same_tokens(path, source, vocab)
    tensors, step = read_group(path, "ema")
    check_finite(tensors, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors)) + sorted(set(tensors) - set(own))
    if missing:
        raise ConfigError(f"train.init_from={run} is a {source.method.name} run, whose network differs from "
                          f"{cfg.method.name}'s (tensor {missing[0]} is in one and not the other); start from a run "
                          f"whose method builds the same network (ar, masked, block)")
    for name, t in own.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise ConfigError(f"train.init_from={run}: tensor {name} has shape {tuple(tensors[name].shape)} there "
                              f"and {tuple(t.shape)} here; start from a run with the same network and tokenizer")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    return source_record(run, step)


def source_record(run: str, step: int) -> InitRecord:
    """Where weights at ``step`` of ``run`` came from and what training them cost (its final.json's steps and
    seconds, its own source's included; None when it has no final.json). The record is shared with the run
    (final.json, exports, reports), so the source is named as sharing names paths."""
    path = Path(run)
    final = TrainSummary.read(path)
    run_id = str(read_run_meta(path).get("run_id", ""))
    if final is None:
        return InitRecord(shareable_path(run), run_id, step, None, None)
    return InitRecord(shareable_path(run), run_id, step, final.step, final.elapsed, final.total_steps,
                      final.total_elapsed)
