"""Every number and choice a config carries is checked before anything is built from it.

Each option against its type and declared bound (a value outside is a one-line error naming the field, the value
and what is allowed, never a traceback later or a silent misrun), then the rules that tie options together,
then the method's own :meth:`~textdiffusion.config.MethodConfig.check`.
"""

from __future__ import annotations

from textdiffusion.config.options import check_options, check_value, field_type, option_of, show
from textdiffusion.config.sections import BPE_MIN_VOCAB, Config
from textdiffusion.errors import ConfigError, did_you_mean


def channel_levels(text: str) -> tuple[int, ...]:
    """``unet.channel_mult`` as its per-level multipliers (1..64 each, 1..8 levels)."""
    parts = text.replace(" ", "").split(",")
    if not text.strip() or not all(p.isdigit() and 1 <= int(p) <= 64 for p in parts) or len(parts) > 8:
        raise ConfigError(f"unet.channel_mult must be 1 to 8 comma-separated whole numbers from 1 to 64 like 1,2,2, "
                          f"got {show(text)}")
    return tuple(int(p) for p in parts)


def validate(cfg: Config) -> None:
    """Check every option this run records (types and bounds), then the rules that tie options together, then
    the method's own :meth:`~textdiffusion.config.MethodConfig.check`. Called on every config before anything
    is built from it: after ``--set``, on reading ``config.json`` and by the trainer."""
    for f in cfg.run_options():
        setattr(cfg, f.name, check_value(f.name, getattr(cfg, f.name), field_type(f.type), option_of(f).bound))
    for section in cfg.sections():
        check_options(getattr(cfg, section), f"{section}.")
    sections = cfg.sections()
    if "model" in sections:
        m = cfg.model
        if m.n_embd % m.n_head:
            raise ConfigError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
        if (m.n_embd // m.n_head) % 2:
            raise ConfigError("the head width (n_embd / n_head) must be even for rotary embeddings")
    if "unet" in sections:
        u = cfg.unet
        channel_levels(u.channel_mult)
        if u.base_channels % u.heads:
            raise ConfigError(f"unet.base_channels={u.base_channels} must be divisible by unet.heads={u.heads}")
    t = cfg.train
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr={t.min_lr:g} is above train.lr={t.lr:g}, so the schedule would rise as it "
                          f"decays; set train.min_lr <= train.lr")
    if t.lr * t.weight_decay >= 1.0:
        raise ConfigError(f"train.lr * train.weight_decay = {t.lr * t.weight_decay:g} must be below 1 (AdamW scales "
                          f"every weight by 1 - lr * weight_decay each step); lower train.weight_decay")
    if cfg.data.tokenizer == "bpe" and cfg.data.vocab_size < BPE_MIN_VOCAB:
        raise ConfigError(f"data.vocab_size must be >= {BPE_MIN_VOCAB} for a byte-level BPE (it starts from the "
                          f"256 bytes), got {cfg.data.vocab_size}")
    _check_method_name(cfg)
    _check_sampler(cfg)
    cfg.method.check()


def _check_method_name(cfg: Config) -> None:
    """``method.name`` is the method whose config class this is (the class's own default name): an edited name
    would build another method from these options (``ar`` from masked diffusion's), sampling garbage with exit 0."""
    name = cfg.method.name
    own = type(cfg.method).__dataclass_fields__["name"].default
    if not name or name != own:
        raise ConfigError(f"method.name={show(name)} does not match its options, which are "
                          f"{type(cfg.method).__name__}'s; the method is chosen with --method, when the run is trained")


def _check_sampler(cfg: Config) -> None:
    """``method.sampler`` names one of the method's samplers (or is "" for its default), checked now rather
    than when the trainer first draws samples, minutes into the run."""
    sampler, samplers = cfg.method.sampler, cfg.method.samplers
    if sampler and samplers and sampler not in samplers:
        raise ConfigError(f"method.sampler must be one of {', '.join(samplers)} (or empty for the "
                          f"{cfg.method.name} method's default), got {show(sampler)}{did_you_mean(sampler, samplers)}")
