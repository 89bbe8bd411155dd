"""Refined points: a few steps of threshold training from the search's own points, after the search.

A training-free search (the saliency path, greedy, a sampler) leaves points on a front; the learned
thresholds (`thresh_opt.baseline.learned`) are a joint fit that those searches do not reach at equal
calibration loss. Started from a search point, a few training steps close most of that gap at a fraction of
training from scratch (README, "Warm-started training"). This module does that inside a study: for each of
the study file's ``refine.targets`` (calibration-loss ratios) it takes the sparsest feasible trial at or below
the target, trains from its thresholds with the target's penalty (the worker's `TrialWorker.refine`), and
measures every objective of the study at the trained thresholds.

The results are not Optuna trials: their thresholds come from training, not from the search space's
parameters, so a sampler must not read them as observations of a parameter set. They are kept, one per
target, in the study user attribute ``thresh_opt:refined`` (:func:`refined`), each record holding its
setting (target, penalty, steps, lr, batch size, seed, the start trial), the start's loss ratio and
sparsity, the objective values, thresholds, per-module sparsity and cost; or the error its training or
measurement raised, e.g. a diverged training's non-finite thresholds). A resumed study refines only the
targets whose record is missing, failed, or was made with another setting or from another start.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from thresh_opt import analysis, keys
from thresh_opt.interrupts import check, interruptible

if TYPE_CHECKING:
    import optuna

    from thresh_opt.study.config import RefineConfig
    from thresh_opt.study.contracts import Executor

RefinedCallback = Callable[[dict[str, Any]], None]
TRAIN_FIELDS = ("penalty", "steps", "lr", "batch_size", "seed")  # the settings training reads (TrainConfig's)


def refined(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's refined points, in target order (empty when it has none)."""
    return sorted(study.user_attrs.get(keys.REFINED, []), key=lambda r: r["setting"]["target"])


def start_for(study: optuna.Study, target: float) -> FrozenTrial | None:
    """The sparsest feasible complete trial with a calibration-loss ratio at or below `target` (the
    refinement's start), or None."""
    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        ratio, sparsity = t.user_attrs.get("loss_ratio"), t.user_attrs.get("sparsity")
        if ratio is None or sparsity is None or "thresholds" not in t.user_attrs or not analysis.feasible(t):
            continue
        if ratio <= target and (best is None or sparsity > best.user_attrs["sparsity"]):
            best = t
    return best


def refine_points(study: optuna.Study, executor: Executor, cfg: RefineConfig,
                  on_refined: RefinedCallback | None = None,
                  lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> list[dict[str, Any]]:
    """Refine the study's points at each target that lacks a record of this setting; returns the new
    records. A target with no trial at or below it is skipped (its record says so). Each target is
    refined under `lock` (drivers of one journal: the second finds the first's record)."""
    made = []
    for target, penalty in zip(cfg.targets, cfg.penalties):
        with lock():
            record = _refine_one(study, executor, cfg, target, penalty)
        if record is None:
            continue
        made.append(record)
        if on_refined is not None:
            on_refined(record)
        check()
    return made


def _refine_one(study: optuna.Study, executor: Executor, cfg: RefineConfig, target: float,
                penalty: float) -> dict[str, Any] | None:
    """The record of one target, stored; None when one of this setting and start is there already."""
    start = start_for(study, target)
    setting = {"target": target, "penalty": penalty, "steps": cfg.steps, "lr": cfg.lr,
               "batch_size": cfg.batch_size, "seed": cfg.seed, "from_trial": start.number if start else None}
    if any(r["setting"] == setting and "error" not in r for r in refined(study)):
        return None
    record: dict[str, Any] = {"setting": setting}
    if start is None:
        record["skipped"] = f"no feasible trial with loss_ratio <= {target}"
    else:
        train = {f: setting[f] for f in TRAIN_FIELDS}
        with interruptible():
            result = executor.refine(json.loads(start.user_attrs["thresholds"]), train)
        record |= {"start": {"loss_ratio": start.user_attrs["loss_ratio"],
                             "sparsity": start.user_attrs["sparsity"]},
                   keys.FORWARD_EQUIVALENTS: result.forward_equivalents, keys.SECONDS: result.seconds,
                   "cost": {k: v for k, v in asdict(result.cost).items() if k != "seconds"}}
        if result.error is not None:  # kept, and tried again by the next run of the study file
            record["error"] = result.error
        else:
            record |= {"values": result.values, "thresholds": result.thresholds,
                       "per_module_sparsity": result.per_module_sparsity}
    kept = [r for r in refined(study) if r["setting"]["target"] != target]  # one record per target
    study.set_user_attr(keys.REFINED, [*kept, record])
    return record
