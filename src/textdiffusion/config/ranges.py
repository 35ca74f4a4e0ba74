"""The bounds several options and command-line flags share, each with the reason for its ends.

A flag that overrides a field (``--temperature`` for ``method.temperature``, ``--seed`` for ``seed``) uses the
same bound as the field, so the two always agree on what is allowed.
"""

from __future__ import annotations

from textdiffusion.config.options import Pattern, Range

SEED = Range(0, 2**63 - 1)  # a non-negative int64: torch's and numpy's generators all take it
# Below 1e-4 a logit gap of 0.01 already means odds of e^100 (greedy for every purpose); above 10 the draw is
# close to uniform. 10 is also the live page's limit.
TEMPERATURE = Range(1e-4, 10.0)
TOP_K = Range(0, 2**31 - 1)  # 0 = off; any k >= the vocabulary keeps every token
TOP_P = Range(0.0, 1.0, lo_open=True)  # 1 = off; 0 would keep nothing
ETA = Range(0.0, 1.0)  # DDIM's noise: 0 deterministic, 1 DDPM's variance
# classifier-free guidance: 0 unconditional, 1 plain conditional, > 1 sharper; papers stop near 10, and a huge
# scale overflows eps to inf, which the final clamp would hide as a saturated image
GUIDANCE = Range(0.0, 100.0)
# More denoising steps than any window or training grid here has positions, so more would only repeat work;
# a typo of 10**9 would allocate gigabytes for the time grid alone.
MAX_SAMPLE_STEPS = 100_000
SAMPLE_STEPS = Range(0, MAX_SAMPLE_STEPS)  # 0 = the method's default
EVAL_TIME_SAMPLES = Range(1, 100_000)
PROBABILITY = Range(0.0, 1.0)
DROPOUT = Range(0.0, 1.0, hi_open=True)  # a rate of 1 would drop everything
NONNEGATIVE = Range(0.0, None)
POSITIVE = Range(0.0, None, lo_open=True)
LOSS_WEIGHT = Range(0.0, 1000.0)  # a term's weight in the loss: far above 1 it is the loss, and may overflow
SCALE = Range(0.0, 100.0, lo_open=True)  # a signal scale against unit noise: at 100 the noise is already moot
WINDOWS = Range(0, 10**9)  # 0 = all of the validation split
DEVICE = Pattern(r"auto|cpu|cuda(:[0-9]+)?|mps", "auto, cpu, cuda, cuda:N or mps")
