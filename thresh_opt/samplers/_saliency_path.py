"""SaliencyPathSampler: a path of configurations from the dense model, each step a knapsack on gradient
saliencies taken at the configuration reached (the allocation re-linearized step by step), then optional
landings on target loss ratios."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

from optuna.logging import get_logger

from thresh_opt import compat, keys
from thresh_opt.samplers import allocation
from thresh_opt.samplers._greedy_state import budgets
from thresh_opt.samplers._path_steps import (
    RETRIES,
    Next,
    PathSteps,
    Plan,
    Point,
    parameter_groups,
)
from thresh_opt.samplers._replay import Ledger, read_ledger
from thresh_opt.samplers._stamped import StampedSampler, finite, positive_levels

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from thresh_opt.samplers._greedy_state import Acceptance
    from thresh_opt.samplers._replay import Key

_logger = get_logger(__name__)

# System attributes stamped on every trial the sampler issues.
ROLE = "saliency_path:role"  # "path" | "candidate" | "back" | "landing" | "wait" | "finished"
PARAMS = "saliency_path:params"  # the whole assignment of the trial
TARGET = "saliency_path:target"  # a landing's target loss ratio (None otherwise)
PREDICTED = "saliency_path:predicted"  # the loss ratio the step predicts (None before the scale is known)

FIRST_SHARE = 1e-3  # the first step's saliency budget, as a share of the whole front's (no scale known yet)
SMOOTHING = 0.5  # weight of the newest measured / predicted ratio in the running scale
OVERSHOOT = 4  # a step past max_loss_ratio costing more than this many steps is taken again, smaller,
RESTEPS = 3  # at most this many times per path
# one proposed step per point, or candidate steps measured as wholes (all of them, or lazily: the
# best-looking first); the study file's option type too
StepMode = Literal["single", "blocks", "lazy"]
STEPS: tuple[str, ...] = get_args(StepMode)
# the parameter groups a point proposes candidate steps for (steps: blocks / lazy): each block, each family
# (the segment after the block: att, ffn), each kind across blocks (att.key, ffn.key, ...); the option type
Grouping = Literal["block", "family", "kind"]
GROUPINGS: tuple[str, ...] = get_args(Grouping)
DEFAULT_GROUPS: tuple[Grouping, ...] = ("block", "family")


class SaliencyPathSampler(PathSteps, StampedSampler):
    """A path from the dense configuration toward higher loss, re-linearized at every step.

    Each path trial is measured with its *saliency table* (the driver asks the worker for it through
    :meth:`wants_saliency`; it lands in the trial user attribute ``keys.SALIENCY``): every parameter's
    levels scored from one gradient pass at the trial's configuration
    (:mod:`thresh_opt.incremental.gradient`, 2 forward-equivalents). From the last point the next step
    raises the parameters that the multiple-choice knapsack on the table's increments picks
    (:func:`thresh_opt.samplers.allocation.increment_tables`): the most predicted gain for a predicted
    increase of ``step`` in loss ratio. Saliencies are in their own units; their scale (loss ratio per
    unit) is estimated from the measured steps (a running mean of measured / predicted increases), the
    first step spending a small share of the whole front's saliency to calibrate it. The path stops
    past ``max_loss_ratio``, after ``max_steps`` steps, or when every parameter is at its top level.
    Then, for each of ``targets`` (loss ratios), from the last path point below it, *landing* steps in
    the direction the path took next, sized by secants (:meth:`_land`).

    With ``backward``, a point the path stepped up to also proposes steps *down* (floating search, as in
    sequential floating feature selection): each group's knapsack on the table giving up the least
    predicted sparsity for one step's predicted loss saved, measured (at most ``backward`` per point, the
    groups whose step down measured best at an earlier point first); the first one whose measured sparsity
    is above the path's front at its measured loss ratio (the path points' upper envelope, interpolated)
    becomes the next point, and the path goes on up from there. A greedy path cannot otherwise take back
    what it raised early while it was cheap.

    Unlike the one-shot allocation of ``SensitivitySampler(probes="gradient")``, every step's table is
    taken where the path stands, so what the modules already zeroed (and how the rest of the model
    reacts) is in the gradient. No state is kept in the sampler: the path is replayed from the stored
    trials, by configuration; a new sampler on the same storage continues.

    Args:
        search_space: parameter name -> levels (target sparsities; 0.0 added). The order is the order of
            the parameters in the knapsack (ties).
        step: the predicted loss-ratio increase of one step (> 0).
        max_loss_ratio: the path stops at the first point above this loss ratio (> 1).
        targets: loss ratios (> 1) to land on after the path (default none).
        max_steps: the most path steps (>= 1).
        steps: ``"single"``: each step is the knapsack's pick over every parameter. ``"blocks"``: once the
            scale is known, each point proposes that step and the same knapsack restricted to each group
            of ``groups``, all sized to ``step``, evaluated as wholes (in parallel when there are workers);
            the one with the most measured sparsity per measured loss-ratio increase is the next point.
            ``"lazy"``: the same candidates, one at a time, highest first by the value their group measured
            at an earlier point, until the best measured one is worth at least every unmeasured one's
            earlier value (lazy greedy: it assumes a group's value does not rise along the path).
        groups: the groupings proposing those candidates: ``"block"`` (the first all-digit name segment),
            ``"family"`` (the segment after it: ``att``, ``ffn``; default both) and ``"kind"`` (a module
            kind across the blocks, e.g. every ``ffn.key``, which the saliency may misprice).
        backward: steps down measured per point (default 0: none), one per group of every parameter and
            ``groups`` (with any ``steps``).
        loss_key: the trial user attribute holding the loss.
        independent_sampler: samples parameters outside the search space (default: random).
        warn_independent_sampling: warn once per parameter sampled by ``independent_sampler``.
    """

    def __init__(self, search_space: Mapping[str, Sequence[float]], *, step: float = 0.005,
                 max_loss_ratio: float = 1.1, targets: Sequence[float] | None = None, max_steps: int = 100,
                 steps: str = "single", groups: Sequence[str] | None = None, backward: int = 0,
                 loss_key: str = "calibration_loss",
                 independent_sampler: BaseSampler | None = None, warn_independent_sampling: bool = True) -> None:
        levels = positive_levels(search_space, "SaliencyPathSampler", "levels")
        if not (finite(step) is not None and step > 0):
            raise ValueError(f"step must be a loss-ratio increase > 0, got {step!r}")
        if not (finite(max_loss_ratio) is not None and max_loss_ratio > 1):
            raise ValueError(f"max_loss_ratio must be a loss ratio > 1, got {max_loss_ratio!r}")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        if steps not in STEPS:
            raise ValueError(f"steps must be one of {', '.join(STEPS)}, got {steps!r}")
        if not (isinstance(backward, int) and not isinstance(backward, bool) and backward >= 0):
            raise ValueError(f"backward must be an integer >= 0, got {backward!r}")
        super().__init__(levels, PARAMS, independent_sampler, warn_independent_sampling)
        self._levels = levels
        self._names = tuple(levels)
        self._step = float(step)
        self._max = float(max_loss_ratio)
        self._targets = tuple(sorted(budgets(list(targets or []), "targets")))
        self._max_steps = max_steps
        self._loss_key = loss_key
        chosen = tuple(groups) if groups is not None else DEFAULT_GROUPS
        if isinstance(groups, str) or not chosen or any(g not in GROUPINGS for g in chosen):
            raise ValueError(f"groups must be a non-empty list of {', '.join(GROUPINGS)}, got {groups!r}")
        self._groups = self._step_groups(steps, chosen)
        self._down_groups = parameter_groups(self._names, chosen)
        self._lazy = steps == "lazy"
        self._backward = backward

    # ---- the driver's interface (SteppedSampler) ---------------------------------------------------

    @property
    def loss_key(self) -> str:
        """The trial user attribute the path reads."""
        return self._loss_key

    @property
    def search_space(self) -> dict[str, list[float]]:
        """Parameter name -> all its levels, 0.0 included, ascending (the choices to ask with)."""
        return {name: [0.0, *c] for name, c in self._levels.items()}

    def is_finished(self, study: Study) -> bool:
        """True when the path has ended and every landing is decided."""
        return self.plan(study).done

    def needs_wait(self, study: Study) -> bool:
        """True while every next configuration is running (each step needs the one before)."""
        plan, ledger = self._plan_and_ledger(study)
        return not plan.done and not [n for n in plan.issue if n.key not in ledger.pending]

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """The path's points within ``max_loss_ratio``, then the landings' configurations."""
        plan = self.plan(study)
        keys_ = [p.key for p in plan.path if p.ratio <= self._max] + list(plan.landings.values())
        return [self._params(k) for k in dict.fromkeys(keys_)]

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """No acceptance rule: every trial is measured in full."""
        return None

    def wants_saliency(self, study: Study, number: int) -> bool:
        """True for a trial whose saliency table the path reads: a path trial, or an enqueued dense one."""
        trial = study.get_trials(deepcopy=False)[number]
        role = trial.system_attrs.get(ROLE)
        if role is not None:
            return role == "path"
        fixed = trial.system_attrs.get("fixed_params") or {}
        return all(float(fixed.get(n, -1.0)) == 0.0 for n in self._names)

    # ---- the path --------------------------------------------------------------------------------

    def plan(self, study: Study) -> Plan:
        """The path and landings the stored trials give, and what to evaluate next."""
        return self._plan_and_ledger(study)[0]

    def _plan_and_ledger(self, study: Study) -> tuple[Plan, Ledger]:
        trials = compat.all_trials(study)
        ledger = read_ledger(trials, self._names, PARAMS, self._loss_key, "sparsity")
        tables: dict[Key, dict[str, Any]] = {}
        for t in trials:
            table = t.user_attrs.get(keys.SALIENCY)
            key = ledger.key(t.params)
            if isinstance(table, dict) and key is not None:
                tables.setdefault(key, table)
        return self._replay(ledger, tables), ledger

    def _step_groups(self, steps: str, groupings: Sequence[str] = DEFAULT_GROUPS) -> list[tuple[str, ...]]:
        """The parameter groups a point proposes a step for: every parameter, then (``"blocks"``, ``"lazy"``)
        each group of `groupings` that is not every parameter."""
        return parameter_groups(self._names, groupings if steps != "single" else ())

    def _replay(self, ledger: Ledger, tables: Mapping[Key, Mapping[str, Any]]) -> Plan:
        plan = Plan()
        dense_key = (0.0,) * len(self._names)
        dense = ledger.get(dense_key)
        if dense is None or dense.loss is None or dense_key not in tables:
            plan.issue.append(Next(dense_key, "path"))  # also when it failed, or ran without its table
            return plan
        key, scale, predicted, ratio_before = dense_key, None, None, None
        expected: float | None = None  # the loss ratio the last step predicts, once the scale is known
        first_budget: float | None = None
        stale: dict[int, float] = {}  # lazy steps: each group's value where it was last measured
        stale_down: dict[int, float] = {}  # steps down: each group's excess over the front, last measured
        resteps, came_down = 0, False
        while True:
            ratio = self._ratio(ledger, key, dense.loss)
            if ratio is None:
                if ledger.get(key) is None:
                    plan.issue.append(Next(key, "path", None, expected))
                    return plan
                break  # the step failed: the path ends before it
            if predicted is not None and ratio_before is not None and predicted > 0:
                observed = max(0.0, (ratio - ratio_before) / predicted)
                if scale is None:
                    scale = observed if observed > 0 else None
                else:
                    scale = (1 - SMOOTHING) * scale + SMOOTHING * observed
            if (ratio > self._max and plan.path and ratio_before is not None and resteps < RESTEPS
                    and ratio - ratio_before > OVERSHOOT * self._step):
                # The step cost many times what it was sized for (the scale came from steps that barely
                # moved the loss, e.g. inputs that are zeros already): the scale now holds the jump, so
                # step again from the point before it instead of ending the path there.
                resteps += 1
                key, ratio = plan.path[-1].key, plan.path[-1].ratio
            else:
                plan.path.append(Point(key, ratio, scale))
                if ratio > self._max or len(plan.path) > self._max_steps:
                    break
            table = tables.get(key)
            if table is None:
                plan.issue.append(Next(key, "path"))  # measured without its table: again, with it
                return plan
            scored = self._scored(table)
            inc, gain = allocation.increment_tables(*scored, self._params(key))
            if scale is None:  # calibrate: a small share of the front, ten times more after each flat step
                whole = allocation.front(inc, gain)[-1].loss
                first_budget = FIRST_SHARE * whole if first_budget is None else first_budget * 10
                budget = first_budget
            else:
                budget = self._step / max(scale, 1e-300)
            if self._backward and scale is not None and not came_down and len(plan.path) > 2:
                down, unmeasured = self._down(ledger, scored, key, budget, plan.path, dense.loss, stale_down)
                if unmeasured:
                    plan.issue.extend(Next(k, "back") for k in unmeasured)
                    return plan
                if down is not None:  # the next point is below this one: no scale to learn from it
                    ratio_before, key, predicted, expected, came_down = ratio, down, None, None, True
                    continue
            came_down = False
            if scale is None or len(self._groups) == 1:
                step = self._propose(inc, gain, key, budget, RETRIES)
            else:
                step, unmeasured = self._choose(ledger, inc, gain, key, budget, ratio, dense.loss, stale)
                if unmeasured:  # the point's candidate steps, all at once
                    plan.issue.extend(Next(k, "candidate") for k in unmeasured)
                    return plan
            if step is None:
                break
            ratio_before, (key, predicted) = ratio, step
            expected = ratio + scale * predicted if scale is not None else None
        self._land(plan, ledger, tables, dense.loss)
        plan.done = not plan.issue
        return plan

    # ---- Optuna ----------------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Enqueued trials (fixed_params) and trials already stamped (e.g. retried) are left alone.
        if "fixed_params" in trial.system_attrs or ROLE in trial.system_attrs:
            return
        plan, ledger = self._plan_and_ledger(study)
        free = [n for n in plan.issue if n.key not in ledger.pending]
        if free:
            nxt = free[0]
        elif plan.done:
            finals = self.final_params(study)
            nxt = Next(tuple(finals[-1][n] for n in self._names) if finals else (0.0,) * len(self._names),
                       "finished")
        else:
            _logger.warning("SaliencyPathSampler: every next configuration is running (needs_wait); this "
                            "trial repeats the dense configuration.")
            nxt = Next((0.0,) * len(self._names), "wait")
        self._write_stamp(study, trial, {ROLE: nxt.role, PARAMS: self._params(nxt.key), TARGET: nxt.target,
                                         PREDICTED: nxt.predicted})
