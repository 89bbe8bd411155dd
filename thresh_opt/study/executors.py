"""Executors: where trials run. Serial (in the driver process) or Ray actors that load the model once."""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Protocol

from thresh_opt.study.config import SearchSpaceConfig, StudyConfig
from thresh_opt.study.worker import Gate, TrialResult, TrialWorker


class Executor(Protocol):
    """What the driver needs from an executor."""

    capacity: int

    def submit(self, number: int, params: dict[str, float], gate: Gate | None = None) -> None:
        """Start evaluating a trial."""

    def pending(self) -> int:
        """Trials submitted and not yet returned by next_result."""

    def next_result(self) -> tuple[int, TrialResult]:
        """Block until one submitted trial is done."""

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: str) -> None:
        """Switch the search space of later trials; forget every pass but the dense model's."""

    def dense(self) -> dict[str, Any]:
        """The dense model's objective values and per-module sparsity."""

    def info(self) -> dict[str, Any]:
        """Modules, parameters, groups and the model's dimensions."""

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration, all of them, and what they cost."""

    def close(self) -> None:
        """Release workers."""


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

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: str) -> None:
        """Switch the search space of later trials; forget every pass but the dense model's."""
        self.worker.begin_study(space_cfg, sampler)

    def dense(self) -> dict[str, Any]:
        """The dense reference from the worker."""
        return self.worker.dense()

    def info(self) -> dict[str, Any]:
        """Modules, parameters and groups."""
        return self.worker.info()

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration, and what they cost."""
        return self.worker.measure(thresholds, names)

    def close(self) -> None:
        """Nothing to release."""


class RayExecutor:
    """Long-lived Ray actors, each holding the model and its own incremental engine.

    A trial goes to the free actor that last evaluated the configuration sharing the most leading blocks
    with it (its kept block inputs let it start deepest); with one free actor, to that one.

    Args:
        cfg: the study (sent to every actor).
        space_cfg: the search space.
        workers: number of actors (one CPU each).
        address: an existing cluster (`ray start --head` prints it), or None for a local runtime.
    """

    REMEMBERED = 8  # configurations per actor the routing compares with (its engine keeps more)

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
        self._idle = list(range(workers))
        self._inflight: dict[Any, tuple[int, int]] = {}
        self._seen: list[deque[tuple[tuple[float, ...], ...]]] = [deque(maxlen=self.REMEMBERED) for _ in self.actors]
        self._layout: tuple[dict[str, list[str]], dict[str, int]] | None = None

    def _by_block(self, params: dict[str, float]) -> tuple[tuple[float, ...], ...]:
        """The configuration's targets block by block (equal upstream targets: equal upstream thresholds)."""
        if self._layout is None:
            info = self.info()
            self._layout = (info["groups"], info["blocks"])
        groups, blocks = self._layout
        rows: dict[int, list[float]] = {}
        for param, modules in groups.items():
            for m in modules:
                rows.setdefault(blocks[m], []).append(float(params.get(param, 0.0)))
        return tuple(tuple(rows[b]) for b in sorted(rows))

    def _pick(self, config: tuple[tuple[float, ...], ...]) -> int:
        def shared(seen: tuple[tuple[float, ...], ...]) -> int:
            n = 0
            while n < len(config) and seen[n] == config[n]:
                n += 1
            return n

        best = max(self._idle, key=lambda a: max((shared(s) for s in self._seen[a]), default=0))
        self._idle.remove(best)
        return best

    def submit(self, number: int, params: dict[str, float], gate: Gate | None = None) -> None:
        """Send the trial to the free actor whose kept passes share the most leading blocks with it."""
        config = self._by_block(params)
        a = self._pick(config)
        self._seen[a].append(config)
        self._inflight[self.actors[a].run.remote(params, gate)] = (number, a)

    def pending(self) -> int:
        """Trials in flight."""
        return len(self._inflight)

    def next_result(self) -> tuple[int, TrialResult]:
        """Wait for the first actor to finish."""
        ready, _ = self._ray.wait(list(self._inflight), num_returns=1)
        number, a = self._inflight.pop(ready[0])
        self._idle.append(a)
        return number, self._ray.get(ready[0])

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: str) -> None:
        """Switch the search space of later trials, on every actor."""
        if self._inflight:
            raise RuntimeError("cannot switch the search space with trials in flight")
        self._ray.get([a.begin_study.remote(space_cfg, sampler) for a in self.actors])
        self._layout = None
        for seen in self._seen:
            seen.clear()

    def dense(self) -> dict[str, Any]:
        """The dense reference from every actor (each keeps its dense passes): the first one's values, and
        the work of all of them."""
        refs = self._ray.get([a.dense.remote() for a in self.actors])
        return {**refs[0], "forward_equivalents": sum(r["forward_equivalents"] for r in refs)}

    def info(self) -> dict[str, Any]:
        """Modules, parameters and groups."""
        return self._ray.get(self.actors[0].info.remote())

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration, on the first actor, and what they cost."""
        return self._ray.get(self.actors[0].measure.remote(thresholds, names))

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
