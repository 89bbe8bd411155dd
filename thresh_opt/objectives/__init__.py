"""Objectives: text metrics, lm-eval accuracy, SENECA cost, and the Evaluator that computes them all.

Every objective is declared once, with the measurement that computes it, in `catalog`."""

from thresh_opt.objectives.catalog import Measurement, Objective
from thresh_opt.objectives.evaluator import (
    DEFAULT_OBJECTIVES,
    OBJECTIVES,
    Evaluation,
    Evaluator,
    check_objectives,
)

__all__ = ["DEFAULT_OBJECTIVES", "OBJECTIVES", "Evaluation", "Evaluator", "Measurement", "Objective",
           "check_objectives"]
