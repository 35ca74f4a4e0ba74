"""The sections of a run's config, each a dataclass of options (see :mod:`.options`), and :class:`Config`, the run.

A run is fully described by one :class:`Config`. It is written to ``config.json`` in the run directory, so a
run can be reproduced (or resumed) from that file alone. ``method`` is the method's own config class, a
subclass of :class:`MethodConfig` declared next to the method's code; this module knows no method.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from textdiffusion.config.options import Choice, Range, keep_inherited_options, option, option_of
from textdiffusion.config.presets import PRESETS
from textdiffusion.config.ranges import DEVICE, DROPOUT, NONNEGATIVE, PROBABILITY, SEED, WINDOWS

# What `train.logger` may name ("" = none); textdiffusion.loggers has one backend per other word.
LOGGERS = ("", "tensorboard", "wandb", "trackio")

# What `data.labels` may name ("" = plain text); textdiffusion.data.speakers reads "speaker".
LABEL_KINDS = ("", "speaker")

# What `data.tokenizer` may name (see textdiffusion.data.tokenizer.make_tokenizer).
TOKENIZER_KINDS = ("char", "bpe", "wordpiece")
BPE_MIN_VOCAB = 256  # a byte-level BPE starts from all 256 bytes, so it can never be smaller


@dataclass
class ModelConfig:
    """Shape of the one transformer backbone (see :mod:`textdiffusion.nn.transformer`)."""

    n_layer: int = option(4, Range(1, 1024), "transformer blocks")
    n_head: int = option(4, Range(1, 4096),
                         "attention heads per block (n_embd / n_head must be even, for the rotary embeddings)")
    # GPT-3 is 12288 wide; far wider is a typo that allocates hundreds of GB
    n_embd: int = option(128, Range(1, 65536), "width of the residual stream")
    context: int = option(64, Range(1, 2**20), "tokens per training window: the length samples default to")
    mlp_ratio: int = option(4, Range(1, 64), "hidden width of each MLP, as a multiple of n_embd")
    activation: str = option("gelu", Choice(("gelu", "silu")), "the MLP's nonlinearity")
    tie_embeddings: bool = option(False, None,
                                  "the output head reuses the input embedding rows of the ordinary symbols")
    dropout: float = option(0.0, DROPOUT, "dropout rate while training (attention and MLP outputs)")
    # RoPE's frequencies base^(-2i/d) must fall with i
    rope_base: float = option(10000.0, Range(1.0, 1e12, lo_open=True), "base of the rotary position frequencies")
    positions: str = option("rope", Choice(("rope", "none")),
                            "rope, or none: no positional information at all (only to reproduce that failure)")


@dataclass
class TrainConfig:
    """The one trainer's knobs (see :mod:`textdiffusion.trainer`)."""

    steps: int = option(2000, Range(1, 10**9), "optimizer steps to train for")
    batch_size: int = option(12, Range(1, 2**20), "training windows (or images) per micro-batch and data shard")
    grad_accum: int = option(1, Range(1, 2**16), "micro-batches whose gradients add up to one optimizer step")
    data_shards: int = option(1, Range(1, 2**16), "independent data and noise streams per step; torchrun with N "
                                                  "processes makes it N")
    # an AdamW step moves each weight by about lr: above 1 is noise
    lr: float = option(1e-3, Range(0.0, 1.0, lo_open=True), "peak learning rate (AdamW), reached after the warm-up")
    min_lr: float = option(1e-4, Range(0.0, 1.0), "learning rate at the end of the cosine decay")
    warmup: int = option(100, Range(0, 10**9), "steps of linear warm-up from 0 to lr")
    weight_decay: float = option(0.1, NONNEGATIVE, "AdamW's decoupled weight decay")
    beta1: float = option(0.9, Range(0.0, 1.0, hi_open=True), "AdamW's decay of the gradient average")
    beta2: float = option(0.99, Range(0.0, 1.0, hi_open=True), "AdamW's decay of the squared-gradient average")
    grad_clip: float = option(1.0, NONNEGATIVE, "clip the gradient norm to this (0 = no clipping)")
    ema_decay: float = option(0.999, Range(0.0, 1.0, hi_open=True),
                              "decay of the moving average of the weights that evaluation and sampling use")
    ema_warmup: bool = option(True, None, "let the average forget the random initial weights quickly (decay ramps "
                                          "up over the first steps)")
    save_every_s: float = option(60.0, NONNEGATIVE, "also checkpoint once this many seconds have passed since the "
                                                    "last checkpoint, so a run being trained can be sampled recently "
                                                    "(0 = only at evaluations)")
    eval_every: int = option(250, Range(1, 10**9), "score the validation windows, write samples and checkpoint "
                                                   "every this many steps")
    eval_windows: int = option(256, WINDOWS, "validation windows scored at each evaluation (0 = all)")
    eval_exact_windows: int = option(0, Range(0, 10**9), "masked, block: at each evaluation also score the exact NLL "
                                     "of the left_to_right sampler on this many evenly spread validation windows, "
                                     "beside the bound (a pass per token of a window; 0 = none)")
    final_eval_windows: int = option(0, WINDOWS, "validation windows scored once training ends (0 = the whole "
                                                 "split, or what train.final_eval_budget allows of it)")
    final_eval_budget: float = option(0.33, Range(0.0, 100.0), "with final_eval_windows=0: the end-of-training "
                                      "score takes at most about this fraction of the training time, on an evenly "
                                      "spread subset of the split (0 = score the whole split, whatever it costs)")
    final_eval_raw: bool = option(False, None, "also score the raw (not averaged) weights at the end")
    final_exact_windows: int = option(64, Range(0, 10**9), "masked, block: the most validation windows the final "
                                      "score's exact NLL (of the left_to_right sampler) takes, at most the bound's "
                                      "and, under final_eval_budget, what the budget's rest pays for; a pass per "
                                      "token of a window (block: per position of a block); 0 = none")
    sample_every_eval: bool = option(True, None, "write a few samples to RUN/samples at each evaluation")
    device: str = option("auto", DEVICE, "where to train: auto (a GPU when there is one), cpu, cuda, cuda:N or mps")
    compile: str = option("auto", Choice(("auto", "on", "off")), "torch.compile the network: auto (on CUDA), on or "
                                                                 "off")
    amp: str = option("auto", Choice(("auto", "bf16", "off")), "mixed precision: auto (bf16 on CUDA), bf16 or off")
    threads: int = option(0, Range(0, 4096), "CPU threads torch may use (0 = torch's default)")
    time_budget_s: float = option(0.0, NONNEGATIVE, "above 0: stop (and score) once this many seconds of training "
                                                    "are spent")
    log_every: int = option(50, Range(0, 10**9), "append a train row (loss, lr, gradient norm, throughput) to "
                                                 "metrics.jsonl every this many steps (0 = none)")
    logger: str = option("", Choice(LOGGERS), "also send every metrics row and the config to tensorboard, wandb or "
                                              "trackio (offline or local; \"\" = none)")
    label_dropout: float = option(0.1, Range(0.0, 1.0, hi_open=True), "with labelled data: the fraction of training "
                                  "labels replaced by 'none', so one network learns p(x | label) and p(x) for "
                                  "classifier-free guidance")
    init_from: str = option("", None, "start from this run's EMA weights (an ar run or an export with the same network "
                                      "and tokenizer) instead of random ones; the optimizer starts fresh")
    distill_from: str = option("", None, "train a student of fewer sampling steps from this masked, block or uniform "
                                         "run (self-distillation through time; consistency distillation for "
                                         "uniform): it starts from the run's EMA weights "
                                         "and learns to take in one step what the run takes in distill_substeps")
    distill_steps: int = option(0, Range(0, 2**20), "with distill_from: the student's sampling steps (per block for "
                                "block; also its method.sample_steps); 0 = the teacher's steps / distill_substeps")
    distill_substeps: int = option(2, Range(1, 64), "with distill_from: teacher steps per student step (SDTT's m); "
                                   "a round divides the steps by it")
    distill_draws: int = option(1, Range(1, 64), "with distill_from: runs of the teacher averaged into each target "
                                "(the same expected gradient, less of the variance of the teacher's draws)")


@dataclass
class DataConfig:
    """What the run learns from: the corpus, its split, its tokenizer and its labels (see :mod:`textdiffusion.data`)."""

    # found or not by the data loader, so any text is accepted here
    corpus: str = option("tinyshakespeare", None, "text: tinyshakespeare, a UTF-8 file or a directory of .txt "
                                                  "files; images: mnist, digits or a path to mnist.npz")
    val_fraction: float = option(0.1, Range(0.0, 1.0, lo_open=True, hi_open=True),
                                 "the corpus's last fraction, held out for validation")
    # at most the largest corpus read (textdiffusion.data.corpus.MAX_CORPUS_BYTES); the split checks the rest
    train_chars: int = option(0, Range(0, 2**32), "train on the first N characters of the training split only "
                              "(0 = all of it); validation is still the whole held-out split, so runs on "
                              "prefixes of any size score the same text")
    tokenizer: str = option("char", Choice(TOKENIZER_KINDS),
                            "char, bpe (byte-level, trained on the training split) or wordpiece (MiniLM's)")
    vocab_size: int = option(512, Range(1, 2**20),
                             "BPE vocabulary size, bytes and merges (only data.tokenizer=bpe reads it)")
    labels: str = option("", Choice(LABEL_KINDS), "speaker: train on speech bodies labelled by who speaks, for "
                                                  "sample --label NAME --guidance W (\"\" = plain text)")
    label_top: int = option(8, Range(2, 4096),
                            "with data.labels=speaker: how many of the most-spoken speakers become labels")


@dataclass
class UNetConfig:
    """Shape of the image denoiser (see :mod:`textdiffusion.nn.unet`); only the image methods read it."""

    base_channels: int = option(32, Range(1, 4096), "channels at the full resolution")
    # checked by validate (1 to 8 levels, each 1 to 64)
    channel_mult: str = option("1,2,2", None, "width multiplier per resolution level; each level after the first "
                                              "halves H and W")
    num_res_blocks: int = option(1, Range(1, 64), "residual blocks per level (the up path has one more, for the "
                                                  "skip connection)")
    attention: bool = option(True, None, "self-attention at the lowest resolution (the middle block always has it)")
    heads: int = option(4, Range(1, 4096), "attention heads")
    dropout: float = option(0.1, DROPOUT, "dropout rate in the residual blocks while training")
    groups: int = option(8, Range(1, 4096), "group-norm groups (reduced to a divisor of the width where needed)")
    class_conditional: bool = option(True, None, "learn p(image | digit) as well as p(image), for --digit and "
                                                 "guidance")
    label_dropout: float = option(0.1, PROBABILITY, "fraction of training labels replaced by 'no label' "
                                                    "(classifier-free guidance)")


@dataclass
class MethodConfig:
    """The options every method has. Each method declares a subclass next to its code (``MaskedConfig`` in
    ``methods/masked.py``, ...) with its own options, so a run's ``config.json`` records only what its method
    reads. A subclass gives an inherited option a new default by plain assignment (``timesteps: int = 0``) and
    keeps its bound and text; ``presets`` are the method's adjustments on top of a named preset, each measured."""

    # the method's name is its config class's default: the registry finds the class by it
    name: str = option("", None, "the method (chosen with --method, fixed once the run exists)")
    # checked against the method's samplers by validate
    sampler: str = option("", None, "default sampler of sample and eval (empty = the method's first)", sampling=True)

    # per preset: {section: {field: value}} merged after the preset itself (see build_config)
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    # the network section the method builds from: "model" (the transformer) or "unet"
    network: ClassVar[str] = "model"
    # the method's samplers, the first its default; the registry copies them from the method class when it
    # registers it, so a sampler can be checked with the other options, by a config that knows no method
    samplers: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        keep_inherited_options(cls)

    def check(self) -> None:
        """Raise :class:`~textdiffusion.errors.ConfigError` for a combination of values the method cannot use
        (called by :func:`~textdiffusion.config.validate` after every option passed its type and bound, so
        ``check`` is left with the rules that tie options together)."""

    @classmethod
    def sampling_fields(cls) -> tuple[str, ...]:
        """The options marked ``sampling``: those ``sample``/``eval --set`` may change on a trained run."""
        return tuple(f.name for f in fields(cls) if option_of(f).sampling)


SECTIONS = ("model", "train", "method", "data", "unet")


@dataclass
class Config:
    """A whole run. ``method`` is the method's own config class; only the network section the method builds
    from (``model`` for the transformer, ``unet`` for images) is recorded beside it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    seed: int = option(1337, SEED, "random seed of the initial weights, the data order and the training noise")
    preset: str = option("cpu", Choice(tuple(PRESETS)),
                         "the named size this config started from (a label; the fields above are what counts)")

    def sections(self) -> tuple[str, ...]:
        """The sections this run uses: the trainer, the data, the method and its one network."""
        return (self.method.network, "train", "method", "data")

    @classmethod
    def run_options(cls) -> tuple[dataclasses.Field, ...]:
        """The options of the run itself, outside every section (seed, preset), in the order they are checked."""
        return tuple(f for f in fields(cls) if f.name not in SECTIONS)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: asdict(getattr(self, name)) for name in self.sections()}
        return {**out, "preset": self.preset, "seed": self.seed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
