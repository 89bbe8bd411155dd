"""Samplers for threshold studies: the published sequential greedy search as an Optuna sampler, a hybrid
whose greedy passes seed NSGA-II or TPE, the sensitivity allocation (one-at-a-time probes, then the
Lagrangian front), a saliency path (the allocation re-linearized at every step from gradient passes),
TEAL's block-wise greedy allocation, WAS's constrained block search and a chain of samplers run one after
another; every sampler a study file can name is declared in `catalog`."""

from thresh_opt.samplers._blocksearch import BlockSearchSampler
from thresh_opt.samplers._blockwise import BlockwiseSampler
from thresh_opt.samplers._chain import ChainSampler
from thresh_opt.samplers._greedy import GreedySampler
from thresh_opt.samplers._greedy_state import Acceptance, default_kind, start_level_of, tolerances
from thresh_opt.samplers._hybrid import HybridSampler
from thresh_opt.samplers._protocol import SteppedSampler, wants_saliency
from thresh_opt.samplers._saliency_path import SaliencyPathSampler
from thresh_opt.samplers._sensitivity import SensitivitySampler

__all__ = [
    "Acceptance", "BlockSearchSampler", "BlockwiseSampler", "ChainSampler", "GreedySampler", "HybridSampler",
    "SaliencyPathSampler", "SensitivitySampler", "SteppedSampler", "default_kind", "start_level_of", "tolerances",
    "wants_saliency",
]
