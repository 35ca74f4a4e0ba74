"""The options every method on the Gaussian process shares (embedding, bits, image): the schedule, the time
grid, the prediction target, the validation bound's draws and the sampler's knobs.

The process itself (:mod:`textdiffusion.diffusion.gaussian`) takes plain numbers and knows no config; each
Gaussian method's config class subclasses this one and reads its numbers out for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from textdiffusion.config import (
    ETA,
    EVAL_TIME_SAMPLES,
    SAMPLE_STEPS,
    SEED,
    Choice,
    ConfigError,
    MethodConfig,
    Range,
    option,
)
from textdiffusion.diffusion.gaussian import SCHEDULES, TARGETS


@dataclass
class GaussianConfig(MethodConfig):
    """Options shared by every method on the Gaussian process (embedding, bits, image); each subclasses it."""

    noise_schedule: str = option("sqrt", Choice(SCHEDULES), "how fast the signal fades: linear, cosine or sqrt")
    timesteps: int = option(2000, Range(0, 10**6), "T of the discrete process (0 = continuous time)")
    # the text methods add probs
    target: str = option("x0", Choice(TARGETS), "what the network predicts: eps (the noise), x0 (the clean data) "
                                                "or v")
    eval_time_samples: int = option(16, EVAL_TIME_SAMPLES, "stratified time draws per example of the validation "
                                                           "bound", sampling=True)
    eval_seed: int = option(1234, SEED, "seed of the validation bound's Monte-Carlo draws (fixed, so scores "
                                        "compare)", sampling=True)
    sample_steps: int = option(0, SAMPLE_STEPS, "default denoising steps (0 = the method's default)", sampling=True)
    eta: float = option(0.0, ETA, "DDIM's noise: 0 deterministic, 1 DDPM's variance (the ddim sampler only)",
                        sampling=True)
    clamp: bool = option(False, None, "project x0_hat at every sampling step (onto the embeddings for text, the "
                                      "pixel range for images)", sampling=True)
    # in steps; past the step count every step lands on t = 0
    time_difference: float = option(0.0, Range(0.0, 10.0**6), "asymmetric time intervals (Chen et al. 2022), in "
                                                              "steps", sampling=True)

    def check(self) -> None:
        if self.timesteps and self.sample_steps > self.timesteps:
            raise ConfigError(f"method.sample_steps={self.sample_steps} exceeds the {self.timesteps} steps of the "
                              f"training grid (method.timesteps); use at most {self.timesteps}")

    @property
    def t_min(self) -> float:
        """The first time of the training grid: where the bound's reconstruction term sits."""
        return 1.0 / self.timesteps if self.timesteps else 1e-3
