"""The study driver: ask/tell in one process, trials evaluated by an executor, results stored by Optuna."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from thresh_opt import analysis, compat, keys
from thresh_opt.interrupts import check, interruptible
from thresh_opt.objectives import OBJECTIVES
from thresh_opt.samplers import SteppedSampler, wants_saliency
from thresh_opt.samplers.factory import make_sampler
from thresh_opt.study.config import REPO_DIR, SearchSpaceConfig, StudyConfig, constraint_values, objectives_needed
from thresh_opt.study.contracts import Executor, WorkersLost
from thresh_opt.study.liveness import GRACE, Lease, driver_lock, stale_trials
from thresh_opt.study.refine import RefinedCallback, refine_points
from thresh_opt.study.space import SearchSpace
from thresh_opt.study.worker import DenseReference, Gate, ModelInfo, TrialResult

TrialCallback = Callable[[optuna.Study, FrozenTrial, TrialResult], None]
FrontCallback = Callable[[int, dict[str, float]], None]


@dataclass
class StudyRun:
    """Where a study lives and how it is configured."""

    cfg: StudyConfig
    space_cfg: SearchSpaceConfig
    run_dir: Path | None  # None, without a configured storage: in memory (nothing is written)
    source: str = "study"

    @property
    def storage_url(self) -> str:
        """The storage: an RDB URL, a journal file, or the default journal in the run folder."""
        if self.cfg.storage is not None:
            return self.cfg.storage
        return ":memory:" if self.run_dir is None else str(self.run_dir / keys.JOURNAL_FILE)

    def storage(self) -> optuna.storages.BaseStorage | str:
        """An Optuna storage object (journal files, memory) or URL (databases)."""
        url = self.storage_url
        if url == ":memory:":
            return optuna.storages.InMemoryStorage()
        if "://" in url:
            return url
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return compat.journal_storage(url)

    @property
    def journal_path(self) -> str | None:
        """The journal file, when the storage is one (its drivers share a lock file next to it)."""
        url = self.storage_url
        return None if url == ":memory:" or "://" in url else url

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        """Optimization direction per study objective."""
        return [o.direction or OBJECTIVES[o.name].direction for o in self.cfg.objectives]


def default_run_dir(cfg: StudyConfig) -> Path:
    """runs/<study name> under the repository (or the configured folder)."""
    return Path(cfg.run_dir) if cfg.run_dir else REPO_DIR / "runs" / cfg.name


def _prune_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed driver never finish: store them as PRUNED (abandoned, not
    rejected), so that samplers issue them again and the budget does not count them. Trials of live
    drivers (see `thresh_opt.study.liveness`) are left alone."""
    for t in stale_trials(study):
        compat.set_trial_user_attr(study, t, "error", "interrupted: the driver stopped during this trial")
        study.tell(t.number, state=TrialState.PRUNED)


def evaluated(trial: FrozenTrial) -> bool:
    """A trial with a result: COMPLETE, FAIL, or PRUNED after its cheap objectives (expensive ones skipped)."""
    return trial.state in (TrialState.COMPLETE, TrialState.FAIL) or (
        trial.state == TrialState.PRUNED and keys.SKIPPED in trial.user_attrs)


def _start_up(study: optuna.Study, cfg: StudyConfig, space: SearchSpace, info: ModelInfo, reference: DenseReference,
              executor: Executor) -> None:
    """Abandon stale trials, record the dense reference and the model on the study, and enqueue the
    baselines once."""
    dense = reference.values
    _prune_stale(study)
    study.set_user_attr(keys.DENSE, dense)
    study.set_user_attr(keys.REFERENCE_FE, study.user_attrs.get(keys.REFERENCE_FE, 0.0) + reference.forward_equivalents)
    study.set_user_attr(keys.DENSE_SPARSITY, reference.per_module_sparsity)
    study.set_user_attr(keys.GROUPS, info.groups)
    study.set_user_attr(keys.STATISTICS, info.statistics)
    study.set_user_attr(keys.CRITERION, {"name": space.config.criterion, "model": cfg.model.model_dump()})
    if info.hardware is not None:
        profile = str(Path(cfg.profile).resolve()) if cfg.profile else None
        study.set_user_attr(keys.HARDWARE, {**info.hardware, "profile": profile})
    study.set_user_attr(keys.OBJECTIVES, [o.name for o in cfg.objectives])
    study.set_user_attr(keys.WORKERS, [asdict(p) for p in executor.placement()])
    if not study.user_attrs.get(keys.BASELINES):
        if cfg.baselines.dense:
            study.enqueue_trial(space.uniform(0.0), skip_if_exists=True)
        for level in cfg.baselines.uniform:
            study.enqueue_trial(space.uniform(level), skip_if_exists=True)
        study.set_user_attr(keys.BASELINES, True)


def run_study(run: StudyRun, executor: Executor, on_trial: TrialCallback | None = None,
              on_front: FrontCallback | None = None, on_refined: RefinedCallback | None = None) -> optuna.Study:
    """Run trials until the budget (total trials in the study, or forward-equivalents) is spent or the
    sampler is done; then refine the study's points (`refine`) and measure the front metrics on the Pareto
    front."""
    cfg = run.cfg
    info = executor.info()
    space = SearchSpace(run.space_cfg, info.groups)
    candidates = space.candidates() if run.space_cfg.level_list() is not None else None
    sampler = make_sampler(cfg.sampler, candidates, cfg.seed, cfg.trials, run.source)
    stepped = sampler if isinstance(sampler, SteppedSampler) else None
    study = optuna.create_study(study_name=cfg.name, storage=run.storage(), directions=run.directions,
                                sampler=sampler, load_if_exists=True)
    with Lease(study) as lease:
        with interruptible():
            reference = executor.dense()
        dense = reference.values
        with driver_lock(run.journal_path):  # one driver of this run folder at a time
            _start_up(study, cfg, space, info, reference, executor)
        if getattr(sampler, "needs_gradient_scores", False) and keys.GRADIENT_SCORES not in study.user_attrs:
            with interruptible():
                scores, fe = executor.gradient_scores()
            with driver_lock(run.journal_path):  # counted with the dense reference's passes
                study.set_user_attr(keys.GRADIENT_SCORES, scores)
                study.set_user_attr(keys.REFERENCE_FE, study.user_attrs.get(keys.REFERENCE_FE, 0.0) + fe)
        distributions = space.distributions()
        names = [o.name for o in cfg.objectives]
        cheap = [(n, 1.0 if d == "minimize" else -1.0) for n, d in zip(names, run.directions)
                 if not OBJECTIVES[n].expensive]
        gating = (cfg.evaluation.skip_expensive != "never"
                  and any(OBJECTIVES[n].expensive for n in objectives_needed(cfg)))
        running: dict[int, Trial] = {}
        budget_fe = cfg.max_forward_equivalents
        used = analysis.cost_totals(study)["forward_equivalents"]

        def finished() -> int:
            """Trials evaluated, and trials RUNNING here or at another live driver (they will be)."""
            return sum(1 for t in study.get_trials(deepcopy=False) if evaluated(t) or t.state == TrialState.RUNNING)

        checked = [time.monotonic()]

        def tidy() -> None:
            """Now and then, abandon the trials of drivers that died since (caller holds the lock)."""
            if time.monotonic() - checked[0] > GRACE / 2:
                _prune_stale(study)
                checked[0] = time.monotonic()

        def ask() -> Trial | None:
            """A new trial stamped with this driver, or None when the budget is spent; under the lock, so that
            drivers of one journal never overshoot it."""
            with driver_lock(run.journal_path):
                tidy()
                if not may_ask():
                    return None
                trial = study.ask(distributions)
                lease.stamp(trial)
                return trial

        def sampler_done() -> bool:
            return stepped is not None and stepped.is_finished(study)

        def must_wait() -> bool:
            return stepped is not None and stepped.needs_wait(study)

        def gate_for(number: int) -> Gate | None:
            saliency = wants_saliency(sampler, study, number)
            if not gating and not cfg.evaluation.early_rejection and not saliency:
                return None
            acceptance = stepped.acceptance(study, number) if stepped is not None else None
            front = _cheap_points(study, cheap) if cfg.evaluation.skip_expensive == "dominated" else None
            return Gate(stepped.loss_key if stepped is not None else None, acceptance, front, skip=gating,
                        saliency=saliency)

        def may_ask() -> bool:
            return (len(running) < executor.capacity and finished() < cfg.trials
                    and (budget_fe is None or used < budget_fe) and not sampler_done()
                    and not (running and must_wait()))

        try:
            while True:
                while (trial := ask()) is not None:  # ask checks may_ask under the lock: once per trial
                    running[trial.number] = trial
                    gate = gate_for(trial.number)
                    with interruptible():
                        executor.submit(trial.number, dict(trial.params), gate)
                if not running:
                    if stepped is not None and not sampler_done() and study.get_trials(
                            deepcopy=False, states=(TrialState.RUNNING,)):
                        time.sleep(0.5)  # its next steps wait on another driver's trials
                        with driver_lock(run.journal_path):
                            tidy()
                        continue
                    break  # budget spent or sampler done: nothing more to do
                with interruptible():
                    number, result = executor.next_result()
                trial = running.pop(number)
                if result.lost is not None:
                    study.set_user_attr(keys.WORKER_DEATHS, study.user_attrs.get(keys.WORKER_DEATHS, 0) + 1)
                try:
                    frozen = _tell(study, trial, result, names, cfg, dense)
                except UpdateFinishedTrialError:
                    continue  # another driver took this one for dead (no lease refresh for GRACE s): it is issued again
                used += result.forward_equivalents
                if on_trial is not None:
                    on_trial(study, frozen, result)
                check()
        except (KeyboardInterrupt, WorkersLost) as exc:
            why = "interrupted by the user" if isinstance(exc, KeyboardInterrupt) else f"abandoned: {exc}"
            for trial in running.values():  # abandoned, not rejected: a resumed study issues them again
                trial.set_user_attr("error", why)
                study.tell(trial, state=TrialState.PRUNED)
            raise
        if sampler_done() and stepped is not None:
            finals = stepped.final_params(study)
            by_params = {json.dumps(t.params, sort_keys=True): t
                         for t in study.get_trials(states=(TrialState.COMPLETE,))}
            records = []
            for p in finals:
                done = by_params.get(json.dumps(p, sort_keys=True))  # the accepted configuration was evaluated
                thresholds = (json.loads(done.user_attrs["thresholds"])
                              if done and "thresholds" in done.user_attrs else None)
                records.append({"params": p, "targets": space.targets(p), "trial": done.number if done else None,
                                "thresholds": thresholds})
            study.set_user_attr(keys.FINAL, records)
        if cfg.refine is not None:
            refine_points(study, executor, cfg.refine, on_refined, lambda: driver_lock(run.journal_path))
        if cfg.front_metrics:
            measure_front(study, executor, cfg.front_metrics, on_front, cfg.front_points)
        return study


def _cheap_points(study: optuna.Study, cheap: list[tuple[str, float]]) -> tuple[tuple[float, ...], ...]:
    """Cheap objective values (minimization form: value x sign) of the feasible complete trials."""
    return tuple(tuple(float(t.user_attrs[n]) * sign for n, sign in cheap)
                 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if analysis.feasible(t) and all(n in t.user_attrs for n, _ in cheap))


def front_metrics(study: optuna.Study) -> dict[int, dict[str, float]]:
    """Metrics measured on Pareto-front trials after the search: trial number -> metric -> value."""
    return {int(k): v for k, v in study.user_attrs.get(keys.FRONT_METRICS, {}).items()}


def _front_choice(study: optuna.Study, points: int | None) -> list[FrozenTrial]:
    """The Pareto front, or at most `points` of it spread evenly along the first objective, always with the
    stepped sampler's final configurations."""
    front = analysis.pareto_front(study)  # sorted by the first objective
    if points is None or len(front) <= points:
        return front
    finals = {r["trial"] for r in study.user_attrs.get(keys.FINAL, [])}
    chosen = {front[round(i * (len(front) - 1) / max(points - 1, 1))].number for i in range(points)}
    return [t for t in front if t.number in chosen or t.number in finals]


def measure_front(study: optuna.Study, executor: Executor, metrics: list[str],
                  on_front: FrontCallback | None = None, points: int | None = None) -> list[int]:
    """Measure `metrics` on every Pareto-front trial (or `points` of them) that lacks them; they are kept in
    the study attribute ``thresh_opt:front_metrics``, so a resumed study measures only its new front
    members, and their cost in ``thresh_opt:front_cost``. Returns the trials measured."""
    measured = []
    for t in _front_choice(study, points):
        known = front_metrics(study).get(t.number, {})
        missing = [m for m in metrics if m not in known]
        if not missing or "thresholds" not in t.user_attrs:
            continue
        with interruptible():
            result = executor.measure(json.loads(t.user_attrs["thresholds"]), missing)
        stored = {str(k): v for k, v in front_metrics(study).items()}
        stored[str(t.number)] = {**known, **result.values}
        study.set_user_attr(keys.FRONT_METRICS, stored)
        cost = study.user_attrs.get(keys.FRONT_COST, {keys.FORWARD_EQUIVALENTS: 0.0, keys.SECONDS: 0.0})
        study.set_user_attr(keys.FRONT_COST,
                            {keys.FORWARD_EQUIVALENTS: cost[keys.FORWARD_EQUIVALENTS] + result.forward_equivalents,
                             keys.SECONDS: cost[keys.SECONDS] + result.seconds})
        measured.append(t.number)
        if on_front is not None:
            on_front(t.number, result.values)
        check()
    return measured


def _tell(study: optuna.Study, trial: Trial, result: TrialResult, names: list[str], cfg: StudyConfig,
          dense: dict[str, float]) -> FrozenTrial:
    """Store a result: COMPLETE with its values; PRUNED when objectives were skipped (the cheap values and
    the reason are kept) or when its worker died (abandoned: samplers issue it again, budgets do not
    count it); FAIL with the error."""
    if result.lost is not None:
        trial.set_user_attr("error", f"worker lost: {result.lost}")
        trial.set_user_attr(keys.WORKER_LOST, result.lost)
        return study.tell(trial, state=TrialState.PRUNED)
    for key, value in result.cost_attrs().items():
        trial.set_user_attr(key, value)
    if result.error is not None:
        trial.set_user_attr("error", result.error)
        return study.tell(trial, state=TrialState.FAIL)
    for key, value in result.values.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("thresholds", json.dumps(result.thresholds))
    trial.set_user_attr("per_module_sparsity", json.dumps(result.per_module_sparsity))
    if result.saliency is not None:
        trial.set_user_attr(keys.SALIENCY, result.saliency)
    if result.start_block is not None:
        trial.set_user_attr("start_block", result.start_block)
    if result.skipped:
        trial.set_user_attr(keys.SKIPPED, result.skipped)
        return study.tell(trial, state=TrialState.PRUNED)
    for key, value in constraint_values(cfg, result.values, dense).items():
        trial.set_constraint(key, value)
    return study.tell(trial, [result.values[n] for n in names])
