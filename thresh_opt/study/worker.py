"""A study worker: loads the model once, then turns trial parameters into objective values."""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from thresh_opt import keys
from thresh_opt.incremental import Cost
from thresh_opt.memory import release_free_memory
from thresh_opt.registry import ARCHITECTURES
from thresh_opt.study.config import SamplerConfig, SearchSpaceConfig, StudyConfig, constraint_values, objectives_needed

if TYPE_CHECKING:
    from pathlib import Path

    from thresh_opt.incremental.sequential import Screen
    from thresh_opt.models import LoadedModel
    from thresh_opt.samplers import Acceptance


@dataclass
class TrialResult:
    """What one trial measured (or the error it raised), the objectives it skipped (name -> why) and what
    it cost: forward-equivalents by purpose and seconds, the block its calibration pass started from, and
    the engine's memory after it."""

    values: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    per_module_sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    start_block: int | None = None
    cache_mb: float = 0.0
    lost: str | None = None  # the worker died during the trial: why (nothing was measured)
    screened: dict[str, float] = field(default_factory=dict)  # early rejection: batches measured, verdict
    saliency: dict[str, Any] | None = None  # the gradient scores at its configuration, when the gate asked

    @property
    def forward_equivalents(self) -> float:
        """The trial's work in full calibration passes."""
        return self.cost.forward_equivalents

    def cost_attrs(self) -> dict[str, float]:
        """What the trial cost, as trial user attributes."""
        return {keys.FORWARD_EQUIVALENTS: self.forward_equivalents, keys.SECONDS: self.seconds,
                keys.CACHE_MB: self.cache_mb,
                **{f"cost.{k}": float(v) for k, v in asdict(self.cost).items() if k != "seconds"},
                **self.screened}


@dataclass(frozen=True)
class DenseReference:
    """The dense model's objective values and per-module sparsity, and what computing them cost a worker
    (0 when it knew them)."""

    values: dict[str, float]
    per_module_sparsity: dict[str, float]
    forward_equivalents: float = 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What the driver records about a worker's model and search space.

    Args:
        modules: thresholded module names, in the model's order.
        params: the search space's parameters; groups: parameter -> its modules.
        blocks: module -> its block.
        statistics: how target sparsities become thresholds (dense or sequential).
        hardware: the hardware model's dimensions and sites (None for an architecture without one).
    """

    modules: list[str]
    params: list[str]
    groups: dict[str, list[str]]
    blocks: dict[str, int]
    statistics: str
    hardware: dict[str, Any] | None = None


@dataclass(frozen=True)
class Placement:
    """Where a worker runs: host, process, its model's device and, inside a Ray actor, its node and the
    GPUs Ray assigned."""

    host: str
    pid: int
    device: str
    node: str | None = None
    gpus: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Gate:
    """When a trial's expensive objectives cannot change the study's outcome (sent with the trial).

    Args:
        key: the objective a sampler's acceptance rule reads (computed before the gate, even if expensive).
        acceptance: that rule: a value that fails it rejects the candidate.
        front: with ``skip_expensive: dominated``, the cheap objective values of earlier trials
            (minimization form, the order of the study's cheap objectives); a trial one of them
            dominates, or one that violates a constraint on a cheap objective, is skipped.
        skip: False when the gate only carries the acceptance rule for early rejection (the expensive
            objectives are never skipped).
        saliency: also score every parameter's levels from a gradient pass at the trial's configuration
            (:meth:`TrialWorker.gradient_scores`), for a sampler that reads them (the result's ``saliency``).
    """

    key: str | None = None
    acceptance: Acceptance | None = None
    front: tuple[tuple[float, ...], ...] | None = None
    skip: bool = True
    saliency: bool = False


class TrialWorker:
    """Holds the loaded model, the incremental engine and the evaluator; evaluates parameter sets.

    The same class runs in the driver process (serial executor) and inside Ray actors, so a worker
    never reloads the model between trials.

    Args:
        cfg: the study.
        space_cfg: its search space.
        threads: torch threads (Ray actors use 1).
        loaded: an already loaded model to use instead of loading `cfg.model`.
        cache: the disk cache folder of calibration tokens (default: $THRESH_OPT_CACHE).
    """

    def __init__(self, cfg: StudyConfig, space_cfg: SearchSpaceConfig, threads: int | None = None,
                 loaded: LoadedModel | None = None, cache: Path | None = None) -> None:
        import torch

        from thresh_opt.models import load_model
        from thresh_opt.objectives import OBJECTIVES, Evaluator

        if threads:
            torch.set_num_threads(threads)
        m = cfg.model
        self.cfg = cfg
        self.loaded = loaded or load_model(m.source, dtype=m.dtype, device=m.device, placement=m.placement)
        self.needed = objectives_needed(cfg)
        ev = cfg.evaluation
        self.evaluator = Evaluator(self.loaded, self.needed + [o for o in cfg.front_metrics if o not in self.needed],
                                   calibration=cfg.calibration, tasks=cfg.tasks, limit=cfg.limit, profile=cfg.profile,
                                   cache=cache, include_path=cfg.include_path,
                                   batch_size=ev.batch_size, cache_mb=ev.cache_mb, incremental=ev.incremental)
        self.engine = self.evaluator.engine
        self.begin_study(space_cfg, cfg.sampler)
        # the cheap objectives and constraints, for skip_expensive: dominated
        self._cheap = [o.name for o in cfg.objectives if not OBJECTIVES[o.name].expensive]
        self._signs = [1.0 if (o.direction or OBJECTIVES[o.name].direction) == "minimize" else -1.0
                       for o in cfg.objectives if o.name in self._cheap]
        self._cheap_cfg = cfg.model_copy(update={"constraints": [
            c for c in cfg.constraints if not OBJECTIVES[c.objective].expensive]})

    def begin_study(self, space_cfg: SearchSpaceConfig, sampler: SamplerConfig) -> None:
        """Map later trials' parameters through this search space (a comparison switches spaces between
        studies) and forget every pass but the dense model's, so each study starts from the same state."""
        from thresh_opt.study.space import SearchSpace

        self.space = SearchSpace.build(space_cfg, self.loaded.thresholded.sites)
        self.statistics = space_cfg.statistics_for(sampler)
        self.loaded.thresholded.set_criterion(space_cfg.criterion)  # before the reset: it drops other criteria's stats
        self.engine.reset()

    def _dense_stats(self) -> None:
        """The dense mapping needs every module's dense statistics: from the disk cache, else from one pass
        (which also gives the dense reference), then cached."""
        from thresh_opt.calibration.stats import read_stats, stats_cache_path, write_stats

        dense = dict.fromkeys(self.loaded.thresholded.names, 0.0)
        path = stats_cache_path(self.loaded, self.cfg.calibration, cache=self.evaluator.cache, thresholds=dense)
        stats = read_stats(path)
        if stats is not None and stats.levels == self.engine.levels:
            self.engine.seed_dense_stats(stats)
        else:
            write_stats(path, self.engine.dense_stats())

    def dense(self) -> DenseReference:
        """The dense model's objective values and per-module sparsity (computed once per worker), and what
        computing them cost here (0 when known)."""
        before = replace(self.engine.cost)
        if self.statistics == "dense":
            self._dense_stats()
        reference = self.evaluator.dense
        return DenseReference(dict(reference.values), dict(reference.per_module_sparsity),
                              self.engine.cost.since(before).forward_equivalents)

    def _reason(self, gate: Gate, values: dict[str, float]) -> str | None:
        """Why the expensive objectives cannot matter for these cheap values, or None."""
        if gate.acceptance is not None and gate.key is not None and not gate.acceptance.accepts(values.get(gate.key)):
            a = gate.acceptance
            return (f"rejected by the calibration criterion: {gate.key} {values.get(gate.key, float('nan')):.6g} / "
                    f"{a.reference:.6g} >= {a.tolerance:g}")
        if gate.front is None:
            return None
        dense = self.evaluator.dense.values
        violated = [k for k, v in constraint_values(self._cheap_cfg, values, dense).items() if v > 0]
        if violated:
            return f"infeasible on a cheap objective: {violated[0]}"
        if self._cheap and gate.front:
            point = np.array([values[n] for n in self._cheap]) * np.array(self._signs)
            front = np.array(gate.front)
            if bool(np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1))):
                return f"dominated on {', '.join(self._cheap)} by an earlier trial"
        return None

    def run(self, params: dict[str, float], gate: Gate | None = None) -> TrialResult:
        """Evaluate one parameter set; an exception becomes an error result, not a crash."""
        started = time.perf_counter()
        before = replace(self.engine.cost)
        try:
            targets = self.space.targets(params)
            names = self.loaded.thresholded.names
            vector = self.engine.thresholds_for([targets[n] for n in names], self.statistics)
            thresholds = dict(zip(names, vector))
            reason = (lambda values: self._reason(gate, values)) if gate is not None and gate.skip else None
            screen = self._screen(params, vector, gate)
            with self.engine.screening(screen) if screen is not None else contextlib.nullcontext():
                ev = self.evaluator.evaluate(thresholds, only=self.needed, gate=reason,
                                             first=gate.key if gate else None)
            screened = self._screened(screen)
            saliency = self.gradient_scores(vector)[0] if gate is not None and gate.saliency else None
            return TrialResult(ev.values, thresholds, ev.per_module_sparsity, time.perf_counter() - started,
                               skipped=ev.skipped, cost=self._spent(before, started),
                               start_block=self.engine.last_start, cache_mb=self.engine.usage().mb,
                               screened=screened, saliency=saliency)
        except Exception as exc:  # noqa: BLE001 - stored as a FAIL trial with its error; the study goes on
            return self._failed(exc, before, started)
        finally:
            release_free_memory()

    def _failed(self, exc: Exception, before: Cost, started: float) -> TrialResult:
        """The error result of work that raised: its last line, and what was done before it."""
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return TrialResult(seconds=time.perf_counter() - started, error=last, cost=self._spent(before, started))

    def _screen(self, params: dict[str, float], vector: list[float], gate: Gate | None) -> Screen | None:
        """With early rejection, the screen of a candidate whose rule names the configuration its reference loss
        was measured on (`Acceptance.basis`); None otherwise: a full pass."""
        from thresh_opt.incremental.sequential import Screen, SequentialTest

        rule = gate.acceptance if gate is not None else None
        if not self.cfg.evaluation.early_rejection or rule is None or rule.basis is None:
            return None
        targets = self.space.targets({**params, **rule.basis})
        names = self.loaded.thresholded.names
        reference = tuple(self.engine.thresholds_for([targets[n] for n in names], self.statistics))
        test = SequentialTest(rule.tolerance, self.engine.n_batches, **self.cfg.evaluation.early_rejection.model_dump())
        return Screen(tuple(vector), reference, rule.reference, test)

    def _screened(self, screen: Screen | None) -> dict[str, float]:
        """For a screened trial, the user attributes saying how many batches it took and what the test decided."""
        outcome = self.engine.last_screened if screen is not None else None
        if outcome is None:  # not screened, or the calibration loss was not measured (another objective failed)
            return {}
        chunks = outcome.chunks if outcome.chunks is not None else self.engine.n_batches
        early = chunks < self.engine.n_batches
        # numbers only: these are logged as metrics with the cost
        return {keys.CALIBRATION_CHUNKS: float(chunks),
                keys.EARLY_REJECTED: float(early and outcome.verdict == "reject"),
                keys.EARLY_ACCEPTED: float(early and outcome.verdict == "accept"),
                keys.PARTIAL_LOSS: float(outcome.measured_loss or outcome.loss)}

    def _spent(self, before: Cost, started: float) -> Cost:
        return replace(self.engine.cost.since(before), seconds=time.perf_counter() - started)

    def gradient_scores(self, base: list[float] | None = None) -> tuple[dict[str, dict[str, list[list[float]]]], float]:
        """Each parameter of the search space alone at each of its positive levels, scored from one gradient
        pass (:mod:`thresh_opt.incremental.gradient`) at a configuration (``base``, thresholds in site
        order; default dense):
        ``{"scores": param -> [[level, saliency], ...], "gains": param -> [[level, predicted MAC-weighted
        sparsity gained], ...]}``, and its cost in forward-equivalents (the dense statistics' pass when not
        known, and the gradient pass). A level's saliency is that of zeroing everything below its threshold
        at the configuration's gradient (so a parameter's own level scores what the configuration already
        zeroes there); thresholds come from the dense statistics. At the dense model this is the study
        attribute ``keys.GRADIENT_SCORES`` (read by ``SensitivitySampler(probes="gradient")``); at a trial's
        configuration, its ``keys.SALIENCY`` (read by the saliency-path sampler)."""
        from thresh_opt.incremental.gradient import PASS_FE, saliencies

        tm, engine = self.loaded.thresholded, self.engine
        before = engine.cost.forward_equivalents
        names, macs = tm.names, tm.macs
        total = sum(macs.values())
        natural = self.evaluator.dense.per_module_sparsity  # zeros the dense model has already
        wanted: dict[int, list[float]] = {}
        plan: dict[str, list[tuple[float, list[tuple[int, float]], float]]] = {}
        for param, levels in self.space.candidates().items():
            for level in (v for v in levels if v > 0):
                targets = self.space.targets({param: level})
                vector = engine.thresholds_for([targets[n] for n in names], "dense")
                changed = [(i, t) for i, t in enumerate(vector) if t > 0]
                for i, t in changed:
                    wanted.setdefault(i, []).append(t)
                # a target at or below the module's natural zeros (threshold 0) gains nothing
                gain = sum(macs[m] * max(0.0, targets[m] - natural.get(m, 0.0)) for m in names) / total
                plan.setdefault(param, []).append((level, changed, gain))
        table = saliencies(tm, engine.runner.batches, wanted, base)
        score = {(i, t): s for i, ts in wanted.items() for t, s in zip(ts, table[i])}
        engine.cost.other_fe += PASS_FE
        out = {"scores": {p: [[lv, sum(score[c] for c in ch)] for lv, ch, _ in rows] for p, rows in plan.items()},
               "gains": {p: [[lv, g] for lv, _, g in rows] for p, rows in plan.items()}}
        return out, engine.cost.forward_equivalents - before

    def measure(self, thresholds: dict[str, float], names: list[str]) -> TrialResult:
        """Objectives of one configuration (the study's front metrics), all of them, no gate, and what they cost."""
        started = time.perf_counter()
        before = replace(self.engine.cost)
        ev = self.evaluator.evaluate(thresholds, only=names)
        return TrialResult({n: ev.values[n] for n in names}, thresholds, ev.per_module_sparsity,
                           time.perf_counter() - started, cost=self._spent(before, started))

    def refine(self, thresholds: dict[str, float], train: dict[str, Any]) -> TrialResult:
        """Train the thresholds from `thresholds` on the calibration chunks (`train`: `TrainConfig` fields),
        then measure every objective the study computes at the trained ones; the training's
        forward-equivalents are in the cost (`thresh_opt.study.refine`)."""
        from thresh_opt.baseline.learned import TrainConfig, step_forward_equivalents, train_thresholds

        started = time.perf_counter()
        before = replace(self.engine.cost)
        cfg, chunks = TrainConfig(**train), self.evaluator.calibration_chunks
        step_fe = step_forward_equivalents(cfg, chunks)

        def count(_step: int, _record: dict[str, float]) -> None:  # as each step ends: a failed training's count too
            self.engine.cost.other_fe += step_fe

        try:
            trained = train_thresholds(self.loaded.thresholded, chunks, thresholds, cfg, on_step=count)
            measured = self.measure(trained.thresholds, self.needed)
        except Exception as exc:  # noqa: BLE001 - kept with the refined point (a diverged training); the study goes on
            return self._failed(exc, before, started)
        finally:
            release_free_memory()
        return replace(measured, seconds=time.perf_counter() - started, cost=self._spent(before, started))

    def placement(self) -> Placement:
        """Where this worker runs: host, process, the device its model is on and, inside a Ray actor, its
        node and the GPUs Ray assigned (Ray sets CUDA_VISIBLE_DEVICES to them, so 'cuda' is the first)."""
        import os
        import socket

        here = Placement(socket.gethostname(), os.getpid(), str(next(self.loaded.model.parameters()).device))
        try:
            import ray
        except ImportError:
            return here
        if not ray.is_initialized():
            return here
        context = ray.get_runtime_context()
        return replace(here, node=context.get_node_id(),
                       gpus=[str(g) for g in context.get_accelerator_ids().get("GPU", [])])

    def info(self) -> ModelInfo:
        """What the driver records about the model and space."""
        tm = self.loaded.thresholded
        hardware = None
        if tm.spec.arch in ARCHITECTURES:  # it has a hardware model
            from thresh_opt.objectives.hardware_cost import model_dims

            dims, _ = model_dims(self.loaded)
            hardware = {"dims": dims.to_dict(), "sites": [
                {"name": s.name, "kind": s.kind, "block": s.block, "macs": s.macs} for s in tm.sites]}
        return ModelInfo(list(tm.names), list(self.space.params), dict(self.space.groups),
                         {s.name: s.block for s in tm.sites}, self.statistics, hardware)
