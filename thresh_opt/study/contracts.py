"""The contract between the study driver and where trials run: the Executor protocol and its failure."""

from __future__ import annotations

from typing import Any, Protocol

from thresh_opt.study.config import SamplerConfig, SearchSpaceConfig
from thresh_opt.study.worker import DenseReference, Gate, ModelInfo, Placement, TrialResult


class WorkersLost(RuntimeError):  # noqa: N818 - reads as what happened
    """Workers kept dying: more than the study's max_worker_restarts."""


class Executor(Protocol):
    """What the driver needs from an executor."""

    capacity: int

    def submit(self, number: int, params: dict[str, float], gate: Gate | None = None) -> None:
        """Start evaluating a trial."""

    def pending(self) -> int:
        """Trials submitted and not yet returned by next_result."""

    def next_result(self) -> tuple[int, TrialResult]:
        """Block until one submitted trial is done."""

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: SamplerConfig) -> None:
        """Switch the search space of later trials; forget every pass but the dense model's."""

    def dense(self) -> DenseReference:
        """The dense model's objective values and per-module sparsity."""

    def gradient_scores(self) -> tuple[dict[str, dict[str, list[list[float]]]], float]:
        """The search space's parameters scored from one gradient pass (`TrialWorker.gradient_scores`), and
        what that cost in forward-equivalents."""

    def info(self) -> ModelInfo:
        """Modules, parameters, groups and the model's dimensions."""

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration, all of them, and what they cost."""

    def refine(self, thresholds: dict[str, float], train: dict[str, Any]) -> TrialResult:
        """Train the thresholds from a configuration (`TrainConfig` fields in `train`), then measure the
        study's objectives at the trained ones; what both cost."""

    def placement(self) -> list[Placement]:
        """Where each worker runs (host, process, device, GPUs)."""

    def close(self) -> None:
        """Release workers."""
