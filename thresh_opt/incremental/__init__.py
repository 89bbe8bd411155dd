"""Incremental evaluation: passes that start from kept block inputs, statistics measured under upstream
thresholds, and what it all costs in forward-equivalents."""

from thresh_opt.incremental.cache import LRUStore, StoreUsage
from thresh_opt.incremental.engine import STATISTICS, Cost, IncrementalEngine, PassOutcome, Statistics

__all__ = ["STATISTICS", "Cost", "IncrementalEngine", "LRUStore", "PassOutcome", "Statistics", "StoreUsage"]
