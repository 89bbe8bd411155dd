"""Objectives: text metrics, lm-eval accuracy, SENECA cost, and the Evaluator that computes them all."""

from thresh_opt.objectives.evaluator import (
    DEFAULT_OBJECTIVES,
    OBJECTIVES,
    Evaluation,
    Evaluator,
    Objective,
    check_objectives,
)

__all__ = ["DEFAULT_OBJECTIVES", "OBJECTIVES", "Evaluation", "Evaluator", "Objective", "check_objectives"]
