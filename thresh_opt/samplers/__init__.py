"""Samplers for threshold studies: the published sequential greedy search as an Optuna sampler."""

from thresh_opt.samplers._greedy import GreedySampler

__all__ = ["GreedySampler"]
