"""SaliencyPathSampler: a path of configurations from the dense model, each step a knapsack on gradient
saliencies taken at the configuration reached (the allocation re-linearized step by step), then optional
landings on target loss ratios."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from optuna.logging import get_logger

from thresh_opt import compat, keys
from thresh_opt.samplers import allocation
from thresh_opt.samplers._greedy_state import block_of, budgets, default_kind
from thresh_opt.samplers._replay import Ledger, read_ledger
from thresh_opt.samplers._stamped import StampedSampler, finite, positive_levels

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from thresh_opt.samplers._greedy_state import Acceptance
    from thresh_opt.samplers._replay import Key
    from thresh_opt.samplers.allocation import Table

_logger = get_logger(__name__)

# System attributes stamped on every trial the sampler issues.
ROLE = "saliency_path:role"  # "path" | "candidate" | "landing" | "wait" | "finished"
PARAMS = "saliency_path:params"  # the whole assignment of the trial
TARGET = "saliency_path:target"  # a landing's target loss ratio (None otherwise)
PREDICTED = "saliency_path:predicted"  # the loss ratio the step predicts (None before the scale is known)

FIRST_SHARE = 1e-3  # the first step's saliency budget, as a share of the whole front's (no scale known yet)
SMOOTHING = 0.5  # weight of the newest measured / predicted ratio in the running scale
RETRIES = 6  # doublings of a step's budget while no level fits in it
OVERSHOOT = 4  # a step past max_loss_ratio costing more than this many steps is taken again, smaller,
RESTEPS = 3  # at most this many times per path
LANDING_TRIES = 3  # tries per target, each sized by a secant through the start
LANDING_AIM = 0.9  # after an overshoot, a try aims at this share of the start's gap to the target
LANDED = 0.1  # a path point within this share of `step` below a target needs no landing
# one proposed step per point, or candidate steps measured as wholes (all of them, or lazily: the
# best-looking first); the study file's option type too
StepMode = Literal["single", "blocks", "lazy"]
STEPS: tuple[str, ...] = get_args(StepMode)
# the parameter groups a point proposes candidate steps for (steps: blocks / lazy): each block, each family
# (the segment after the block: att, ffn), each kind across blocks (att.key, ffn.key, ...); the option type
Grouping = Literal["block", "family", "kind"]
GROUPINGS: tuple[str, ...] = get_args(Grouping)
DEFAULT_GROUPS: tuple[Grouping, ...] = ("block", "family")


@dataclass
class Point:
    """A configuration on the path, as measured."""

    key: Key
    ratio: float  # loss / dense loss
    scale: float | None  # loss ratio per unit of saliency, estimated from the steps up to here


@dataclass(frozen=True)
class Next:
    """A configuration to evaluate next."""

    key: Key
    role: str  # "path" | "candidate" | "landing"
    target: float | None = None  # a landing's target loss ratio
    predicted: float | None = None  # the loss ratio its step predicts (None: no scale yet)


@dataclass
class Plan:
    """What the stored trials say: the path so far, the landings found, and what to evaluate next."""

    path: list[Point] = field(default_factory=list)
    landings: dict[float, Key] = field(default_factory=dict)  # target -> the configuration landed on
    issue: list[Next] = field(default_factory=list)  # in order
    done: bool = False


class SaliencyPathSampler(StampedSampler):
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
        loss_key: the trial user attribute holding the loss.
        independent_sampler: samples parameters outside the search space (default: random).
        warn_independent_sampling: warn once per parameter sampled by ``independent_sampler``.
    """

    def __init__(self, search_space: Mapping[str, Sequence[float]], *, step: float = 0.005,
                 max_loss_ratio: float = 1.1, targets: Sequence[float] | None = None, max_steps: int = 100,
                 steps: str = "single", groups: Sequence[str] | None = None, loss_key: str = "calibration_loss",
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
        self._lazy = steps == "lazy"

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

    def _params(self, key: Key) -> dict[str, float]:
        return dict(zip(self._names, key))

    def _ratio(self, ledger: Ledger, key: Key, dense: float) -> float | None:
        result = ledger.get(key)
        return None if result is None or result.loss is None else result.loss / dense

    def _step_groups(self, steps: str, groupings: Sequence[str] = DEFAULT_GROUPS) -> list[tuple[str, ...]]:
        """The parameter groups a point proposes a step for: every parameter, then (``"blocks"``, ``"lazy"``)
        each group of `groupings` that is not every parameter."""
        groups = [self._names]
        if steps != "single":
            def family(name: str) -> str | None:  # "blocks.3.att.key" -> "att"
                return default_kind(name).split(".")[0] if block_of(name) is not None else None

            def kind(name: str) -> str | None:  # "blocks.3.att.key" -> "att.key"
                return default_kind(name) if block_of(name) is not None else None

            labels = {"block": block_of, "family": family, "kind": kind}
            for grouping in groupings:
                seen: dict[Any, list[str]] = {}
                for n in self._names:
                    if (g := labels[grouping](n)) is not None:
                        seen.setdefault(g, []).append(n)
                groups += [tuple(m) for m in seen.values() if len(m) < len(self._names)]
        return list(dict.fromkeys(groups))

    def _choose(self, ledger: Ledger, inc: Table, gain: Table, key: Key, budget: float, ratio: float,
                dense: float, stale: dict[int, float]) -> tuple[tuple[Key, float] | None, list[Key]]:
        """The candidate step with the most measured sparsity gained per measured loss-ratio increase
        (and its predicted saliency), or the candidates to measure first. ``steps: lazy`` measures one at a
        time, the unmeasured one whose group's value at an earlier point (``stale``, group index -> value,
        updated here) is highest, until the best measured one is worth at least every other's stale value."""
        candidates: dict[Key, float] = {}  # step -> its predicted saliency, in group order
        groups: dict[Key, list[int]] = {}  # step -> the groups proposing it
        for g, group in enumerate(self._groups):
            step = self._propose(inc, gain, key, budget, RETRIES, group)
            if step is not None:
                candidates.setdefault(step[0], step[1])
                groups.setdefault(step[0], []).append(g)
        unmeasured = [k for k in candidates if ledger.get(k) is None]
        if unmeasured and not self._lazy:
            return None, unmeasured
        here = ledger.get(key)
        if here is None or here.sparsity is None:
            return None, []  # no measured sparsity to compare with: the path ends here
        values: dict[Key, float] = {}
        for k in candidates:  # in group order: ties keep the earlier group
            result, r = ledger.get(k), self._ratio(ledger, k, dense)
            if result is not None and r is not None and result.sparsity is not None:  # failed: not taken
                values[k] = (result.sparsity - here.sparsity) / max(r - ratio, 1e-9 * self._step)
        best = max(values, key=lambda k: values[k], default=None)  # the first of equal values
        if unmeasured:  # lazy: a group never measured has no bound, so it is measured
            bound = {k: max(stale.get(g, float("inf")) for g in groups[k]) for k in unmeasured}
            top = max(unmeasured, key=lambda k: bound[k])
            if best is None or bound[top] > values[best]:
                return None, [top]
        for k, v in values.items():
            stale.update(dict.fromkeys(groups[k], v))
        return (None if best is None else (best, candidates[best])), []

    def _increments(self, table: Mapping[str, Any], key: Key) -> tuple[Table, Table]:
        """The knapsack of a step from `key` on its saliency table (read once per point)."""
        scores, gains = allocation.scored_tables(table, self._levels)
        return allocation.increment_tables(scores, gains, self._params(key))

    def _propose(self, inc: Table, gain: Table, key: Key, budget: float, retries: int,
                 group: Sequence[str] | None = None) -> tuple[Key, float] | None:
        """The step from `key` with the most predicted gain within `budget` saliency (doubled up to
        `retries` times while nothing fits), moving only `group` (default all), and its predicted
        saliency; None when nothing moves."""
        members = self._names if group is None else group
        points = allocation.front({p: inc[p] for p in members}, {p: gain[p] for p in members})
        current = self._params(key)
        for _ in range(retries + 1):
            pick = allocation.within(points, budget)
            if pick is not None:
                nxt = allocation.stepped(current, pick)
                new = tuple(nxt[n] for n in self._names)
                if new != key:
                    return new, pick.loss
            budget *= 2
        return None

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
        resteps = 0
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
            inc, gain = self._increments(table, key)
            if scale is None:  # calibrate: a small share of the front, ten times more after each flat step
                whole = allocation.front(inc, gain)[-1].loss
                first_budget = FIRST_SHARE * whole if first_budget is None else first_budget * 10
                budget = first_budget
            else:
                budget = self._step / max(scale, 1e-300)
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

    def _land(self, plan: Plan, ledger: Ledger, tables: Mapping[Key, Mapping[str, Any]], dense: float) -> None:
        """Per target: the landing configuration, or the next one to evaluate. From the last path point
        below the target, a smaller step in the direction the path took next (the parameters its next
        point moved), sized by the secant through the start and that point (then through the start and
        the try before: a retry after an overshoot aims a little below the target)."""
        for target in self._targets:
            below = [i for i, p in enumerate(plan.path) if p.ratio <= target]
            if not below:
                continue
            start = plan.path[below[-1]]
            plan.landings[target] = start.key
            gap = target - start.ratio
            if below[-1] == len(plan.path) - 1 or gap < LANDED * self._step:
                continue  # the path never went past it, or it is close enough already
            here, then = self._params(start.key), self._params(plan.path[below[-1] + 1].key)
            moved = [n for n in self._names if then[n] != here[n]]
            inc, gain = self._increments(tables[start.key], start.key)
            spent = sum(inc[n].get(then[n], 0.0) for n in moved)  # the next point's saliency from the start
            rise, aim = plan.path[below[-1] + 1].ratio - start.ratio, gap
            tried, best = set(), ledger.get(start.key)
            for _ in range(LANDING_TRIES):
                if rise <= 0 or spent <= 0:
                    break  # no rise to size the try by
                step = self._propose(inc, gain, start.key, spent * aim / rise, 0, moved)
                if step is None or step[0] in tried:
                    break
                tried.add(step[0])
                result, ratio = ledger.get(step[0]), self._ratio(ledger, step[0], dense)
                if result is None or ratio is None:
                    if result is None:
                        plan.issue.append(Next(step[0], "landing", target, start.ratio + rise / spent * step[1]))
                    break
                if ratio <= target and (best is None or (result.sparsity or 0.0) > (best.sparsity or 0.0)):
                    plan.landings[target], best = step[0], result
                if 0 <= target - ratio <= max(LANDED * self._step, (1 - LANDING_AIM) * gap):
                    break  # close enough below the target
                spent, rise, aim = step[1], ratio - start.ratio, gap if ratio <= target else LANDING_AIM * gap

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
