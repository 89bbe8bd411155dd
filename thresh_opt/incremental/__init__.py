"""Incremental evaluation: passes that start from kept block inputs, statistics measured under upstream
thresholds, early rejection of greedy candidates, and what it all costs in forward-equivalents."""

from thresh_opt.incremental.cache import LRUStore, StoreUsage
from thresh_opt.incremental.engine import STATISTICS, BatchResult, Cost, IncrementalEngine, PassOutcome, Statistics
from thresh_opt.incremental.sequential import Screen, SequentialTest

__all__ = ["STATISTICS", "BatchResult", "Cost", "IncrementalEngine", "LRUStore", "PassOutcome", "Screen",
           "SequentialTest", "Statistics", "StoreUsage"]
