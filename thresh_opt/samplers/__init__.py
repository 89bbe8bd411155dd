"""Samplers for threshold studies: the published sequential greedy search as an Optuna sampler, a hybrid
whose greedy passes seed NSGA-II or TPE, and the sensitivity allocation (one-at-a-time probes, then the
Lagrangian front); every sampler a study file can name is declared in `catalog`."""

from thresh_opt.samplers._greedy import GreedySampler
from thresh_opt.samplers._greedy_state import Acceptance, default_kind, tolerances
from thresh_opt.samplers._hybrid import HybridSampler
from thresh_opt.samplers._protocol import SteppedSampler
from thresh_opt.samplers._sensitivity import SensitivitySampler

__all__ = [
    "Acceptance", "GreedySampler", "HybridSampler", "SensitivitySampler", "SteppedSampler", "default_kind",
    "tolerances",
]
