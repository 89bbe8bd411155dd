"""Calibration: fixed token chunks from text, and per-module activation statistics, both cached on disk."""

from thresh_opt.calibration.data import CalibrationSpec, calibration_chunks
from thresh_opt.calibration.stats import DEFAULT_LEVELS, ActivationStats, activation_stats, cached_activation_stats

__all__ = [
    "DEFAULT_LEVELS",
    "ActivationStats",
    "CalibrationSpec",
    "activation_stats",
    "cached_activation_stats",
    "calibration_chunks",
]
