"""The saliency path's steps: the parameter groups a point proposes steps for, the candidate steps up
and down a point measures and the one it takes, and the landings on target loss ratios (a mixin of
:class:`thresh_opt.samplers.SaliencyPathSampler`, which replays the path from the stored trials)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from thresh_opt.samplers import allocation
from thresh_opt.samplers._greedy_state import block_of, default_kind

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from thresh_opt.samplers._replay import Key, Ledger
    from thresh_opt.samplers.allocation import Table

RETRIES = 6  # doublings of a step's budget while no level fits in it
LANDING_TRIES = 3  # tries per target, each sized by a secant through the start
LANDING_AIM = 0.9  # after an overshoot, a try aims at this share of the start's gap to the target
LANDED = 0.1  # a path point within this share of `step` below a target needs no landing
BACK_MARGIN = 0.001  # a step down is taken when it measures this much sparsity above the path's front


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
    role: str  # "path" | "candidate" | "back" | "landing"
    target: float | None = None  # a landing's target loss ratio
    predicted: float | None = None  # the loss ratio its step predicts (None: no scale yet)


@dataclass
class Plan:
    """What the stored trials say: the path so far, the landings found, and what to evaluate next."""

    path: list[Point] = field(default_factory=list)
    landings: dict[float, Key] = field(default_factory=dict)  # target -> the configuration landed on
    issue: list[Next] = field(default_factory=list)  # in order
    done: bool = False


def _family(name: str) -> str | None:  # "blocks.3.att.key" -> "att"
    return default_kind(name).split(".")[0] if block_of(name) is not None else None


def _kind(name: str) -> str | None:  # "blocks.3.att.key" -> "att.key"
    return default_kind(name) if block_of(name) is not None else None


_LABELS = {"block": block_of, "family": _family, "kind": _kind}


def parameter_groups(names: Sequence[str], groupings: Sequence[str]) -> list[tuple[str, ...]]:
    """Every parameter, then each group of `groupings` (``"block"``: the first all-digit name segment,
    ``"family"``: the segment after it, ``"kind"``: the rest, across blocks) that is not every parameter;
    each group once, in order."""
    groups = [tuple(names)]
    for grouping in groupings:
        seen: dict[Any, list[str]] = {}
        for n in names:
            if (g := _LABELS[grouping](n)) is not None:
                seen.setdefault(g, []).append(n)
        groups += [tuple(m) for m in seen.values() if len(m) < len(names)]
    return list(dict.fromkeys(groups))


def steps_down(scores: Table, gains: Table, current: Mapping[str, float], groups: Sequence[Sequence[str]],
               need: float) -> dict[Key, list[int]]:
    """Per group, the step down from `current` (params in `current`'s order) that saves `need` predicted
    score for the least predicted gain (:func:`allocation.decrement_tables`); step -> the indices of the
    groups proposing it, in group order."""
    lost, saved, back = allocation.decrement_tables(scores, gains, current)
    out: dict[Key, list[int]] = {}
    for g, group in enumerate(groups):
        pick = allocation.first_saving(allocation.front({p: lost[p] for p in group},
                                                        {p: saved[p] for p in group}), need)
        if pick is not None:
            nxt = allocation.lowered(current, pick, back)
            out.setdefault(tuple(nxt[n] for n in current), []).append(g)
    return out


def envelope(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper envelope of ``(loss ratio, sparsity)`` points: those no point of lower or equal loss
    ratio beats on sparsity, by loss ratio."""
    out: list[tuple[float, float]] = []
    for r, s in sorted(points):
        if not out or s > out[-1][1]:
            out.append((r, s))
    return out


def interpolated(front: Sequence[tuple[float, float]], ratio: float) -> float:
    """The sparsity of an :func:`envelope` at `ratio`, linearly between its points (its first point's
    below them, its last one's above)."""
    for (r0, s0), (r1, s1) in pairwise(front):
        if r0 <= ratio <= r1:
            return s0 + (s1 - s0) * (ratio - r0) / max(r1 - r0, 1e-12)
    return front[0][1] if ratio < front[0][0] else front[-1][1]


class PathSteps:
    """The path's steps, on the sampler's settings (set by its constructor)."""

    _names: tuple[str, ...]
    _levels: dict[str, tuple[float, ...]]
    _step: float
    _targets: tuple[float, ...]
    _groups: list[tuple[str, ...]]
    _down_groups: list[tuple[str, ...]]
    _lazy: bool
    _backward: int

    def _params(self, key: Key) -> dict[str, float]:
        return dict(zip(self._names, key))

    def _ratio(self, ledger: Ledger, key: Key, dense: float) -> float | None:
        result = ledger.get(key)
        return None if result is None or result.loss is None else result.loss / dense

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

    def _down(self, ledger: Ledger, scored: tuple[Table, Table], key: Key, budget: float, path: Sequence[Point],
              dense: float, stale: dict[int, float]) -> tuple[Key | None, list[Key]]:
        """A step down from `key` (the last of `path`) whose measured sparsity is above the path's front,
        or the candidates to measure first: per group, the knapsack saving `budget` saliency for the least
        predicted sparsity, the first ``backward`` of them by the excess their group measured at an earlier
        point (``stale``, updated here; unmeasured groups first), measured one at a time with ``steps:
        lazy``. None from a point an earlier one dominates: a step up leaves it (stepping down from it
        again and again would trade the path's steps up for steps down)."""
        measured = [(p.ratio, m.sparsity) for p in path if (m := ledger.get(p.key)) is not None
                    and m.sparsity is not None]
        here = measured[-1] if measured and path[-1].key == key else None
        if here is None or any(r <= here[0] and s >= here[1] for r, s in measured[:-1]):
            return None, []
        on_path = {p.key for p in path}
        groups = {k: g for k, g in steps_down(*scored, self._params(key), self._down_groups,
                                              budget).items() if k not in on_path}
        tried = sorted(groups, key=lambda k: -max(stale.get(g, float("inf")) for g in groups[k]))[:self._backward]
        unmeasured = [k for k in tried if ledger.get(k) is None]
        if unmeasured and not self._lazy:
            return None, unmeasured
        front = envelope(measured)
        best: tuple[float, Key] | None = None
        for k in tried:
            result, r = ledger.get(k), self._ratio(ledger, k, dense)
            if result is None:
                return None, [k]  # lazy: the next one in order
            if r is None or result.sparsity is None:
                continue  # failed: not taken
            excess = result.sparsity - interpolated(front, r)
            stale.update(dict.fromkeys(groups[k], excess))
            if excess > BACK_MARGIN and (best is None or excess > best[0]):
                best = (excess, k)
                if self._lazy:
                    break
        return (None if best is None else best[1]), []

    def _increments(self, table: Mapping[str, Any], key: Key) -> tuple[Table, Table]:
        """The knapsack of a step from `key` on its saliency table."""
        return allocation.increment_tables(*self._scored(table), self._params(key))

    def _scored(self, table: Mapping[str, Any]) -> tuple[Table, Table]:
        """A saliency table's scores and gains on the search space's levels (read once per point)."""
        return allocation.scored_tables(table, self._levels)

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
