"""Noise processes shared across methods, apart from any network: the masking (absorbing-state) schedules
in ``masking``, the Gaussian schedules, reverse loop and likelihood bound in ``gaussian``, and the one
stratified draw they all use in ``stratified``."""
