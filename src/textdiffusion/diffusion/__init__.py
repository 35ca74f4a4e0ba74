"""Noise processes shared across methods: the masking (absorbing-state) schedules live in ``masking``."""
