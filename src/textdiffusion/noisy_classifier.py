"""The speaker classifier of a run's noisy states, under its former address: it lives in
:mod:`textdiffusion.guidance.classifier`, with the rules that use it."""

from textdiffusion.guidance.classifier import (  # noqa: F401
    CLASSIFIER_DIR,
    META_FILE,
    WEIGHTS_FILE,
    ClassifierRecipe,
    NoisyClassifier,
    cached_classifier,
    classifier_for,
    load_classifier,
    save_classifier,
    train_noisy_classifier,
)
