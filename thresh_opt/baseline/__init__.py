"""The training-based baseline: thresholds learned with a surrogate gradient, and its comparison with
the training-free greedy search."""

from thresh_opt.baseline.learned import TrainConfig, TrainResult, peak_memory_mb, train_thresholds

__all__ = ["TrainConfig", "TrainResult", "peak_memory_mb", "train_thresholds"]
