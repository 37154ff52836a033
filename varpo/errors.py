"""Errors a training run stops with, shared by every trainer (the configuration's own is
varpo.config.ConfigError)."""
from __future__ import annotations


class NonFiniteError(FloatingPointError, RuntimeError):
    """Training met NaN/inf values it cannot skip past: the message names the step (and batch or
    samples) and where the last checkpoint is. Both a FloatingPointError and a RuntimeError, as the
    reward trainer's and the PPO trainer's errors were before they became this one."""
