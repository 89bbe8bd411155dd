"""The study driver: ask/tell in one process, trials evaluated by an executor, results stored by Optuna."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from thresh_opt.interrupts import check, interruptible
from thresh_opt.objectives import OBJECTIVES
from thresh_opt.samplers.factory import make_sampler
from thresh_opt.study.config import REPO_DIR, SearchSpaceConfig, StudyConfig
from thresh_opt.study.space import SearchSpace
from thresh_opt.study.worker import TrialResult

BASELINES_ATTR = "thresh_opt:baselines_enqueued"
DENSE_ATTR = "thresh_opt:dense"
FINAL_ATTR = "thresh_opt:final"

TrialCallback = Callable[[optuna.Study, FrozenTrial, TrialResult], None]


@dataclass
class StudyRun:
    """Where a study lives and how it is configured."""

    cfg: StudyConfig
    space_cfg: SearchSpaceConfig
    run_dir: Path
    source: str = "study"

    @property
    def storage_url(self) -> str:
        """The storage: an RDB URL, a journal file, or the default journal in the run folder."""
        return self.cfg.storage or str(self.run_dir / "optuna.journal")

    def storage(self) -> optuna.storages.BaseStorage | str:
        """An Optuna storage object (journal files) or URL (databases)."""
        url = self.storage_url
        if "://" in url:
            return url
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))

    @property
    def directions(self) -> list[str]:
        """Optimization direction per study objective."""
        return [o.direction or OBJECTIVES[o.name].direction for o in self.cfg.objectives]


def default_run_dir(cfg: StudyConfig) -> Path:
    """runs/<study name> under the repository (or the configured folder)."""
    return Path(cfg.run_dir) if cfg.run_dir else REPO_DIR / "runs" / cfg.name


def constraint_values(cfg: StudyConfig, values: dict[str, float], dense: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0) for the study's constraints."""
    out = {}
    for c in cfg.constraints:
        v = values[c.objective]
        if c.max is not None:
            out[f"{c.objective}<={c.max}"] = v - c.max
        elif c.min is not None:
            out[f"{c.objective}>={c.min}"] = c.min - v
        else:
            worse = dense[c.objective] - v if OBJECTIVES[c.objective].direction == "maximize" else v - dense[c.objective]
            out[f"{c.objective} drop<={c.max_drop}"] = worse - c.max_drop
    return out


def _prune_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed driver never finish: store them as PRUNED (abandoned, not
    rejected), so that samplers issue them again and the budget does not count them."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the driver stopped during this trial")
        study.tell(t.number, state=TrialState.PRUNED)


def run_study(run: StudyRun, executor: Any, on_trial: TrialCallback | None = None) -> optuna.Study:
    """Run trials until the budget (total trials in the study) is spent or the sampler is done."""
    cfg = run.cfg
    info = executor.info()
    space = SearchSpace(run.space_cfg, info["groups"])
    candidates = space.candidates() if run.space_cfg.level_list() is not None else None
    sampler = make_sampler(cfg.sampler, candidates, cfg.seed, cfg.trials, run.source)
    study = optuna.create_study(study_name=cfg.name, storage=run.storage(), directions=run.directions,
                                sampler=sampler, load_if_exists=True)
    _prune_stale(study)
    with interruptible():
        reference = executor.dense()
    dense = reference["values"]
    study.set_user_attr(DENSE_ATTR, dense)
    study.set_user_attr("thresh_opt:dense_sparsity", reference["per_module_sparsity"])
    study.set_user_attr("thresh_opt:groups", info["groups"])
    if "hardware" in info:
        profile = str(Path(cfg.profile).resolve()) if cfg.profile else None
        study.set_user_attr("thresh_opt:hardware", {**info["hardware"], "profile": profile})
    study.set_user_attr("thresh_opt:objectives", [o.name for o in cfg.objectives])
    if not study.user_attrs.get(BASELINES_ATTR):
        if cfg.baselines.dense:
            study.enqueue_trial(space.uniform(0.0))
        for level in cfg.baselines.uniform:
            study.enqueue_trial(space.uniform(level))
        study.set_user_attr(BASELINES_ATTR, True)
    distributions = space.distributions()
    names = [o.name for o in cfg.objectives]
    running: dict[int, Trial] = {}

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))

    def sampler_done() -> bool:
        return bool(getattr(sampler, "is_finished", lambda s: False)(study))

    def must_wait() -> bool:
        return bool(getattr(sampler, "needs_wait", lambda s: False)(study))

    try:
        while finished() + len(running) < cfg.trials or running:
            while (len(running) < executor.capacity and finished() + len(running) < cfg.trials
                   and not sampler_done() and not (running and must_wait())):
                trial = study.ask(distributions)
                running[trial.number] = trial
                with interruptible():
                    executor.submit(trial.number, dict(trial.params))
            if not running:
                break  # the sampler is done (or must wait with nothing in flight: nothing more to do)
            with interruptible():
                number, result = executor.next_result()
            trial = running.pop(number)
            _tell(study, trial, result, names, cfg, dense)
            if on_trial is not None:
                on_trial(study, study._storage.get_trial(trial._trial_id), result)
            check()
    except KeyboardInterrupt:
        for trial in running.values():
            trial.set_user_attr("error", "interrupted by the user")
            study.tell(trial, state=TrialState.PRUNED)
        raise
    if sampler_done() and hasattr(sampler, "final_params"):
        finals = sampler.final_params(study)
        by_params = {json.dumps(t.params, sort_keys=True): t for t in study.get_trials(states=(TrialState.COMPLETE,))}
        records = []
        for p in finals:
            trial = by_params.get(json.dumps(p, sort_keys=True))  # the accepted configuration was evaluated
            thresholds = json.loads(trial.user_attrs["thresholds"]) if trial and "thresholds" in trial.user_attrs else None
            records.append({"params": p, "targets": space.targets(p), "trial": trial.number if trial else None,
                            "thresholds": thresholds})
        study.set_user_attr(FINAL_ATTR, records)
    return study


def _tell(study: optuna.Study, trial: Trial, result: TrialResult, names: list[str], cfg: StudyConfig,
          dense: dict[str, float]) -> None:
    if result.error is not None:
        trial.set_user_attr("error", result.error)
        study.tell(trial, state=TrialState.FAIL)
        return
    for key, value in result.values.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("thresholds", json.dumps(result.thresholds))
    trial.set_user_attr("per_module_sparsity", json.dumps(result.per_module_sparsity))
    trial.set_user_attr("seconds", result.seconds)
    for key, value in constraint_values(cfg, result.values, dense).items():
        trial.set_constraint(key, value)
    study.tell(trial, [result.values[n] for n in names])
