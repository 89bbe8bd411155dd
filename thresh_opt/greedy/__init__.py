"""The sequential greedy search run directly on a model, in paper mode or fast mode (a study in memory)."""

from thresh_opt.greedy.search import LINEAR_LEVELS, MODES, GreedyResult, ModuleChoice, greedy_search

__all__ = ["LINEAR_LEVELS", "MODES", "GreedyResult", "ModuleChoice", "greedy_search"]
