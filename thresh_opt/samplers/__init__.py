"""Samplers for threshold studies: the published sequential greedy search as an Optuna sampler, and a
hybrid whose greedy passes seed NSGA-II or TPE."""

from thresh_opt.samplers._greedy import GreedySampler
from thresh_opt.samplers._greedy_state import Acceptance, default_kind, tolerances
from thresh_opt.samplers._hybrid import HybridSampler
from thresh_opt.samplers._protocol import SteppedSampler

__all__ = [
    "Acceptance", "GreedySampler", "HybridSampler", "SteppedSampler", "default_kind",
    "tolerances",
]
