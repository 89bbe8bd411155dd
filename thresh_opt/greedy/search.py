"""The published sequential greedy threshold search run directly on a loaded model (design.md 1.3).

It is a study: :class:`~thresh_opt.samplers.GreedySampler` in an in-memory Optuna study, driven by the
study driver with a worker on the given model, one parameter per module, sequential statistics. The
decisions are the sampler's; the mode only chooses how the worker measures:

- ``paper``: the published procedure's cost, every pass from the tokens (a full pass per module for its
  statistics, a full pass per candidate);
- ``fast``: incremental evaluation (:mod:`thresh_opt.incremental`): passes start at the block under
  search from kept block inputs, each module's statistics come from the accepted pass's record, and a
  candidate whose thresholds were evaluated before costs nothing;
- ``early``: fast, plus early rejection (:mod:`thresh_opt.incremental.sequential`): each candidate is
  measured one batch (by default one chunk) at a time against its reference and stopped once a paired
  sequential test decides it, either way. Choices may differ from the other modes (a test on part of the
  set can err); the final configuration is measured on the whole set, so its reported loss and sparsity
  are exact (that pass is counted in the cost).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresh_opt import keys
from thresh_opt.incremental import Cost

if TYPE_CHECKING:
    from thresh_opt.calibration import CalibrationSpec
    from thresh_opt.models import LoadedModel

LINEAR_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
MODES = ("fast", "paper", "early")


@dataclass
class ModuleChoice:
    """One module's search: the candidates tried (level, loss, accepted) and the choice."""

    name: str
    level: float
    threshold: float
    tried: list[tuple[float, float | None, bool]]


@dataclass
class GreedyResult:
    """A finished search: choices per module, final loss and sparsity, and what it cost."""

    mode: str
    loss_inc: float
    dense_loss: float
    final_loss: float
    sparsity: float
    choices: list[ModuleChoice]
    cost: Cost
    seconds: float
    per_module_sparsity: dict[str, float] = field(default_factory=dict)
    trials: int = 0

    @property
    def thresholds(self) -> dict[str, float]:
        """Chosen threshold per module."""
        return {c.name: c.threshold for c in self.choices}

    @property
    def levels(self) -> dict[str, float]:
        """Chosen target sparsity per module (0.0: dense)."""
        return {c.name: c.level for c in self.choices}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"mode": self.mode, "loss_inc": self.loss_inc, "dense_loss": self.dense_loss,
                "final_loss": self.final_loss, "loss_ratio": self.final_loss / self.dense_loss,
                "sparsity": self.sparsity, "seconds": self.seconds, "trials": self.trials,
                "forward_equivalents": self.cost.forward_equivalents, "cost": asdict(self.cost),
                "choices": [asdict(c) for c in self.choices]}


def greedy_search(
    loaded: LoadedModel,
    calibration: CalibrationSpec,
    mode: str = "fast",
    loss_inc: float = 1.0005,
    levels: list[float] | None = None,
    warm_start: bool = True,
    keep_first: bool = False,
    batch_size: int | None = None,
    on_module: Callable[[int, int], None] | None = None,
    cache_mb: float = 512.0,
    cache_dir: Path | None = None,
    early_test: Mapping[str, float] | None = None,
    start_level: float | None = None,
) -> GreedyResult:
    """Choose every module's threshold front to back; leaves the model at the chosen thresholds.

    Args:
        loaded: the model (its thresholds are reset to 0 first).
        calibration: the calibration set; the same set gives statistics and losses.
        mode: "paper" (every pass from the tokens), "fast" (incremental evaluation) or "early" (incremental
            with early rejection).
        loss_inc: accept a candidate while loss / last accepted loss < loss_inc.
        levels: candidate target sparsities, ascending (default 0.1..0.9).
        warm_start: start each module at the most frequent choice of its kind so far.
        keep_first: the public code's quirk: keep the first candidate even when it fails.
        batch_size: chunks per forward call (default 8; 1 in early mode, where a batch is the unit a test
            looks at).
        on_module: progress callback (modules decided, module count).
        cache_mb: the incremental engine's memory budget.
        cache_dir: the disk cache of calibration tokens (default: $THRESH_OPT_CACHE).
        early_test: in early mode, the sequential test's settings (`evaluation.early_rejection` of a study
            file: z_accept, z_reject, min_chunks, min_reject_chunks; default: the test's defaults).
        start_level: where a kind's first module starts its walk (the sampler's option; default: the
            published scan from the lowest level).
    """
    from thresh_opt.study.config import (
        BaselineConfig,
        EvaluationConfig,
        ModelConfig,
        ObjectiveConfig,
        SamplerConfig,
        SearchSpaceConfig,
        StudyConfig,
    )
    from thresh_opt.study.driver import StudyRun, run_study
    from thresh_opt.study.executors import SerialExecutor
    from thresh_opt.study.worker import TrialWorker

    if mode not in MODES:
        raise ValueError(f"greedy mode {mode!r}; allowed: {', '.join(MODES)}")
    levels = sorted(levels or LINEAR_LEVELS)
    batch_size = batch_size or (1 if mode == "early" else 8)
    began = time.perf_counter()
    tm = loaded.thresholded
    tm.reset_thresholds()
    n = len(tm.names)
    cfg = StudyConfig(
        name="greedy", model=ModelConfig(source=loaded.source), calibration=calibration,
        objectives=[ObjectiveConfig(name="loss_ratio"), ObjectiveConfig(name="sparsity")],
        sampler=SamplerConfig(name="greedy", options={"loss_inc": loss_inc, "warm_start": warm_start,
                                                      "keep_first": keep_first, "start_level": start_level}),
        trials=1 + n * len(levels), baselines=BaselineConfig(dense=False, uniform=[]),
        evaluation=EvaluationConfig(incremental=mode != "paper", cache_mb=cache_mb, batch_size=batch_size,
                                    early_rejection=dict(early_test or {}) if mode == "early" else None))
    space = SearchSpaceConfig(grouping="module", levels=levels, statistics="sequential")
    worker = TrialWorker(cfg, space, loaded=loaded, cache=cache_dir)

    def progress(study: Any, _trial: Any, _result: Any) -> None:
        if on_module is not None:
            on_module(study.sampler.progress(study)["done_modules"], n)

    study = run_study(StudyRun(cfg, space, None), SerialExecutor(cfg, space, worker), progress)
    sampler = study.sampler
    from thresh_opt.samplers import GreedySampler

    assert isinstance(sampler, GreedySampler)  # the study was made with one
    state = sampler.passes(study)[0]
    final = study.user_attrs[keys.FINAL][0]
    trial = study.trials[final["trial"]]  # the accepted configuration was a trial (the dense one at worst)
    choices = [ModuleChoice(name, state.accepted[name], final["thresholds"][name], state.tried.get(name, []))
               for name in tm.names]
    loss, sparsity = trial.user_attrs["calibration_loss"], trial.user_attrs["sparsity"]
    per_module = json.loads(trial.user_attrs["per_module_sparsity"])
    if mode == "early":  # the final trial may have been screened (an estimate): measure it on every batch
        outcome = worker.engine.evaluate([final["thresholds"][name] for name in tm.names])
        report = tm.sparsity(outcome.counts)
        loss, sparsity, per_module = outcome.loss, report.mac_weighted, report.per_module
    tm.set_thresholds(final["thresholds"])
    return GreedyResult(mode, float(loss_inc), study.user_attrs[keys.DENSE]["calibration_loss"], loss, sparsity,
                        choices, worker.engine.cost, time.perf_counter() - began, per_module, len(study.trials))
