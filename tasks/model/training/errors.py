"""Why a training run stops without exporting or registering anything."""

from __future__ import annotations


class TrainingDataError(ValueError):
    """The samples table cannot train a model (empty, one class, unknown items...)."""


class NonFiniteLossError(ValueError):
    """Training produced a NaN/inf loss or prediction; nothing is exported or registered."""
