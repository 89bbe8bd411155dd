"""Executors: where trials run. Serial (in the driver process) or Ray actors that load the model once."""

from __future__ import annotations

import os
from typing import Any, Protocol

from thresh_opt.study.config import SearchSpaceConfig, StudyConfig
from thresh_opt.study.worker import TrialResult, TrialWorker


class Executor(Protocol):
    """What the driver needs from an executor."""

    capacity: int

    def submit(self, number: int, params: dict[str, float]) -> None:
        """Start evaluating a trial."""

    def pending(self) -> int:
        """Trials submitted and not yet returned by next_result."""

    def next_result(self) -> tuple[int, TrialResult]:
        """Block until one submitted trial is done."""

    def set_space(self, space_cfg: SearchSpaceConfig) -> None:
        """Switch the search space of later trials."""

    def dense(self) -> dict[str, Any]:
        """The dense model's objective values and per-module sparsity."""

    def close(self) -> None:
        """Release workers."""


class SerialExecutor:
    """Runs each trial in the driver process, right when it is submitted."""

    capacity = 1

    def __init__(self, cfg: StudyConfig, space_cfg: SearchSpaceConfig) -> None:
        self.worker = TrialWorker(cfg, space_cfg)
        self._done: list[tuple[int, TrialResult]] = []

    def submit(self, number: int, params: dict[str, float]) -> None:
        """Evaluate now; the result waits for next_result."""
        self._done.append((number, self.worker.run(params)))

    def pending(self) -> int:
        """Results not yet collected."""
        return len(self._done)

    def next_result(self) -> tuple[int, TrialResult]:
        """The oldest finished trial."""
        return self._done.pop(0)

    def set_space(self, space_cfg: SearchSpaceConfig) -> None:
        """Switch the search space of later trials."""
        self.worker.set_space(space_cfg)

    def dense(self) -> dict[str, Any]:
        """The dense reference from the worker."""
        return self.worker.dense()

    def info(self) -> dict[str, Any]:
        """Modules, parameters and groups."""
        return self.worker.info()

    def close(self) -> None:
        """Nothing to release."""


class RayExecutor:
    """Long-lived Ray actors, each holding the model; trials go to whichever actor is free.

    Args:
        cfg: the study (sent to every actor).
        space_cfg: the search space.
        workers: number of actors (one CPU each).
        address: an existing cluster (`ray start --head` prints it), or None for a local runtime.
    """

    def __init__(self, cfg: StudyConfig, space_cfg: SearchSpaceConfig, workers: int, address: str | None = None) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = max(workers, os.cpu_count() or 1)
            ray.init(**kwargs)
        actor_cls = ray.remote(num_cpus=1)(TrialWorker)
        self.actors = [actor_cls.remote(cfg, space_cfg, threads=1) for _ in range(workers)]
        self.capacity = workers
        self._idle = list(self.actors)
        self._inflight: dict[Any, tuple[int, Any]] = {}

    def submit(self, number: int, params: dict[str, float]) -> None:
        """Send the trial to a free actor."""
        actor = self._idle.pop(0)
        self._inflight[actor.run.remote(params)] = (number, actor)

    def pending(self) -> int:
        """Trials in flight."""
        return len(self._inflight)

    def next_result(self) -> tuple[int, TrialResult]:
        """Wait for the first actor to finish."""
        ready, _ = self._ray.wait(list(self._inflight), num_returns=1)
        number, actor = self._inflight.pop(ready[0])
        self._idle.append(actor)
        return number, self._ray.get(ready[0])

    def set_space(self, space_cfg: SearchSpaceConfig) -> None:
        """Switch the search space of later trials, on every actor."""
        if self._inflight:
            raise RuntimeError("cannot switch the search space with trials in flight")
        self._ray.get([a.set_space.remote(space_cfg) for a in self.actors])

    def dense(self) -> dict[str, Any]:
        """The dense reference from the first actor."""
        return self._ray.get(self.actors[0].dense.remote())

    def info(self) -> dict[str, Any]:
        """Modules, parameters and groups."""
        return self._ray.get(self.actors[0].info.remote())

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        for actor in self.actors:
            self._ray.kill(actor)
        if self._started:
            self._ray.shutdown()


def make_executor(cfg: StudyConfig, space_cfg: SearchSpaceConfig) -> SerialExecutor | RayExecutor:
    """Ray actors when the study asks for more than one worker or names a cluster, else serial."""
    if cfg.workers > 1 or cfg.ray_address:
        return RayExecutor(cfg, space_cfg, cfg.workers, cfg.ray_address)
    return SerialExecutor(cfg, space_cfg)
