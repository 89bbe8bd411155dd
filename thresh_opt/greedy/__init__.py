"""The sequential greedy search run directly on a model, in paper mode or fast mode."""

from thresh_opt.greedy.oracles import MODES, Cost
from thresh_opt.greedy.search import LINEAR_LEVELS, GreedyResult, ModuleChoice, greedy_search

__all__ = ["LINEAR_LEVELS", "MODES", "Cost", "GreedyResult", "ModuleChoice", "greedy_search"]
