"""Executors: where trials run. Serial (in the driver process) or Ray actors that load the model once
(`thresh_opt.study.ray_executor`); both fulfil `thresh_opt.study.contracts.Executor`."""

from __future__ import annotations

from typing import Any

from thresh_opt.study.config import SamplerConfig, SearchSpaceConfig, StudyConfig
from thresh_opt.study.contracts import Executor
from thresh_opt.study.worker import DenseReference, Gate, ModelInfo, Placement, TrialResult, TrialWorker


class SerialExecutor:
    """Runs each trial in the driver process, right when it is submitted.

    Args:
        cfg: the study.
        space_cfg: its search space.
        worker: an existing worker (a model already loaded) instead of a new one.
    """

    capacity = 1

    def __init__(self, cfg: StudyConfig, space_cfg: SearchSpaceConfig, worker: TrialWorker | None = None) -> None:
        self.worker = worker or TrialWorker(cfg, space_cfg)
        self._done: list[tuple[int, TrialResult]] = []

    def submit(self, number: int, params: dict[str, float], gate: Gate | None = None) -> None:
        """Evaluate now; the result waits for next_result."""
        self._done.append((number, self.worker.run(params, gate)))

    def pending(self) -> int:
        """Results not yet collected."""
        return len(self._done)

    def next_result(self) -> tuple[int, TrialResult]:
        """The oldest finished trial."""
        return self._done.pop(0)

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: SamplerConfig) -> None:
        """Switch the search space of later trials; forget every pass but the dense model's."""
        self.worker.begin_study(space_cfg, sampler)

    def dense(self) -> DenseReference:
        """The dense reference from the worker."""
        return self.worker.dense()

    def gradient_scores(self) -> tuple[dict[str, dict[str, list[list[float]]]], float]:
        """The worker's gradient scores of the search space, and their cost."""
        return self.worker.gradient_scores()

    def info(self) -> ModelInfo:
        """Modules, parameters and groups."""
        return self.worker.info()

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration, and what they cost."""
        return self.worker.measure(thresholds, names)

    def refine(self, thresholds: dict[str, float], train: dict[str, Any]) -> TrialResult:
        """Warm-started training from a configuration, and the trained one's objectives."""
        return self.worker.refine(thresholds, train)

    def placement(self) -> list[Placement]:
        """The driver process itself."""
        return [self.worker.placement()]

    def close(self) -> None:
        """Nothing to release."""


def make_executor(cfg: StudyConfig, space_cfg: SearchSpaceConfig) -> Executor:
    """Ray actors when the study asks for more than one worker or names a cluster, else serial."""
    if cfg.workers > 1 or cfg.ray_address:
        from thresh_opt.study.ray_executor import RayExecutor

        return RayExecutor(cfg, space_cfg, cfg.workers, cfg.ray_address)
    return SerialExecutor(cfg, space_cfg)
