"""Trials on long-lived Ray actors: routing by shared block prefix, GPUs per actor, dead actors replaced.

A local runtime (no cluster address) is kept on the loopback interface. Ray 2.60 has no bind-address
setting: its servers listen on 127.0.0.1 only when the node's address is a loopback one, and it picks a
loopback node address only where multi-node clusters are switched off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
the default on macOS and Windows). A cluster's own ``ray start`` decides where the cluster listens.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from thresh_opt.study.config import SamplerConfig, SearchSpaceConfig, StudyConfig
from thresh_opt.study.contracts import WorkersLost
from thresh_opt.study.worker import DenseReference, Gate, ModelInfo, Placement, TrialResult, TrialWorker

CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE = "RAY_AUTH_MODE"


def _token_auth_for_clusters() -> None:
    """Ray 2.60's `ray start` turns token authentication on when a token exists (~/.ray/auth_token, made by
    the first local runtime), but a driver that joins finds the token only if ``RAY_AUTH_MODE=token`` is set
    before `ray` is imported: set it then, unless the user chose a mode."""
    from pathlib import Path

    has_token = any(os.environ.get(v) for v in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) or (
        Path.home() / ".ray" / "auth_token").is_file()
    if has_token and AUTH_MODE not in os.environ and "ray" not in sys.modules:
        os.environ[AUTH_MODE] = "token"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local runtime starts: multi-node off, so that every Ray server binds 127.0.0.1. The switch
    is read by `ray` at import (and by the processes it starts, from the environment); both are restored
    afterwards, so that a later `ray.init(address=...)` in this process joins a cluster normally."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = saved_env


class RayExecutor:
    """Long-lived Ray actors, each holding the model and its own incremental engine.

    A trial goes to the free actor that last evaluated the configuration sharing the most leading blocks
    with it (its kept block inputs let it start deepest); with one free actor, to that one. An actor that
    dies (OOM killer, lost node) is replaced by a fresh one; its trial comes back with ``lost`` set (the
    driver stores it abandoned, so the sampler issues it again). After `cfg.max_worker_restarts`
    replacements the next death raises :class:`WorkersLost`.

    Args:
        cfg: the study (sent to every actor).
        space_cfg: the search space.
        workers: number of actors (one CPU each, and `cfg.gpus_per_worker` GPUs).
        address: an existing cluster (`ray start --head` prints it), or None for a local runtime.
    """

    REMEMBERED = 8  # configurations per actor the routing compares with (its engine keeps more)

    def __init__(self, cfg: StudyConfig, space_cfg: SearchSpaceConfig, workers: int,
                 address: str | None = None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address:
            _token_auth_for_clusters()
        import ray
        import ray.exceptions

        self._ray = ray
        self._lost_errors = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
            if address:
                ray.init(address=address, **kwargs)
            else:
                with loopback_only():  # "local": a runtime of its own, even where a `ray start` cluster runs
                    ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), **kwargs)
        self.cfg, self._space, self._sampler = cfg, space_cfg, cfg.sampler
        # num_gpus None: no GPU (Ray's default), where 0 would also be accepted but reads as a request
        self._actor_cls: Any = ray.remote(num_cpus=1, num_gpus=cfg.gpus_per_worker or None)(TrialWorker)  # type: ignore[arg-type]
        self.actors = [self._new_actor() for _ in range(workers)]
        self.capacity = workers
        self.deaths: list[str] = []
        self._idle = list(range(workers))
        self._inflight: dict[Any, tuple[int, int]] = {}
        self._seen: list[deque[tuple[tuple[float, ...], ...]]] = [deque(maxlen=self.REMEMBERED) for _ in self.actors]
        self._layout: tuple[dict[str, list[str]], dict[str, int]] | None = None

    def _new_actor(self) -> Any:
        actor = self._actor_cls.remote(self.cfg, self._space, threads=1)
        if self._sampler != self.cfg.sampler:  # a comparison's later contender
            actor.begin_study.remote(self._space, self._sampler)  # an actor's calls run in order: before any trial
        return actor

    def _replace(self, a: int, exc: BaseException) -> str:
        """Replace dead actor `a`; why it died. Raises WorkersLost past the restart allowance."""
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'the worker died'}"
        self.deaths.append(reason)
        if len(self.deaths) > self.cfg.max_worker_restarts:
            raise WorkersLost(f"{len(self.deaths)} Ray workers died, more than max_worker_restarts "
                              f"({self.cfg.max_worker_restarts}); the last: {reason}")
        with contextlib.suppress(Exception):
            self._ray.kill(self.actors[a], no_restart=True)
        self.actors[a] = self._new_actor()
        self._seen[a].clear()
        return reason

    def _call(self, a: int, method: str, *args: Any) -> Any:
        """A method of actor `a`, on a replacement if it died."""
        while True:
            try:
                return self._ray.get(getattr(self.actors[a], method).remote(*args))
            except self._lost_errors as exc:
                self._replace(a, exc)

    def _by_block(self, params: dict[str, float]) -> tuple[tuple[float, ...], ...]:
        """The configuration's targets block by block (equal upstream targets: equal upstream thresholds)."""
        if self._layout is None:
            info = self.info()
            self._layout = (info.groups, info.blocks)
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
        """Wait for the first actor to finish; a dead actor's trial comes back lost (its actor replaced)."""
        ready, _ = self._ray.wait(list(self._inflight), num_returns=1)
        number, a = self._inflight.pop(ready[0])
        try:
            result = self._ray.get(ready[0])
        except self._lost_errors as exc:
            result = TrialResult(lost=self._replace(a, exc))
        self._idle.append(a)
        return number, result

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: SamplerConfig) -> None:
        """Switch the search space of later trials, on every actor (and on replacements)."""
        if self._inflight:
            raise RuntimeError("cannot switch the search space with trials in flight")
        self._space, self._sampler = space_cfg, sampler
        for a in range(len(self.actors)):
            self._call(a, "begin_study", space_cfg, sampler)
        self._layout = None
        for seen in self._seen:
            seen.clear()

    def dense(self) -> DenseReference:
        """The dense reference from every actor (each keeps its dense passes): the first one's values, and
        the work of all of them."""
        refs = [self._call(a, "dense") for a in range(len(self.actors))]
        return replace(refs[0], forward_equivalents=sum(r.forward_equivalents for r in refs))

    def gradient_scores(self) -> tuple[dict[str, dict[str, list[list[float]]]], float]:
        """The first actor's gradient scores of the search space (one pass is enough: every actor would
        compute the same), and their cost."""
        return self._call(0, "gradient_scores")

    def info(self) -> ModelInfo:
        """Modules, parameters and groups."""
        return self._call(0, "info")

    def placement(self) -> list[Placement]:
        """Where each actor runs: host, process, device, and the GPUs Ray gave it."""
        return [self._call(a, "placement") for a in range(len(self.actors))]

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration, on the first actor, and what they cost."""
        return self._call(0, "measure", thresholds, names)

    def refine(self, thresholds: dict[str, float], train: dict[str, Any]) -> TrialResult:
        """Warm-started training from a configuration, and the trained one's objectives, on the first actor."""
        return self._call(0, "refine", thresholds, train)

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        if self._started:
            self._ray.shutdown()
