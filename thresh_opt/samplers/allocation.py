"""Sensitivity allocation: every parameter picks one level so that the total gain is large and the total
predicted loss increase small (a multiple-choice knapsack). Pure functions: no model, no Optuna.

The inputs are a *sensitivity table* ``{param: {level: loss_increase}}`` (each parameter alone at each
level, all others at 0.0, minus the dense loss; level 0.0 has increase 0) and a gain table
``{param: {level: gain}}`` (by default MAC weight x level). The prediction of a configuration is
additive: its gain is the sum of its levels' gains and its loss increase the sum of their increases.

The Lagrangian relaxation ``max sum(gain) - lam * sum(loss)`` separates per parameter: each one takes
the level maximizing ``gain - lam * loss``. As ``lam`` falls from infinity to 0, a parameter's choice
walks the upper convex hull of its points ``(loss, gain)``; the choice changes at the hull's slopes
(the breakpoints). Merging every parameter's hull steps in order of decreasing slope gives the
*Lagrangian front*: configurations that are optimal for some ``lam``, each on the convex hull of the
knapsack's achievable (loss, gain) set, so none is dominated by another configuration. :func:`exact_within`
solves the knapsack under a loss budget exactly (a dynamic programme over a discretized budget) for
the configurations between two hull points.

Example:

    .. testcode::

        from thresh_opt.samplers.allocation import front, lagrangian_within

        table = {"a": {0.0: 0.0, 0.5: 0.01, 0.9: 0.10}, "b": {0.0: 0.0, 0.5: 0.002, 0.9: 0.03}}
        weights = {"a": 0.6, "b": 0.4}
        for point in front(table, weights=weights):
            print(point.levels, round(point.gain, 2), round(point.loss, 3))
        print(lagrangian_within(table, 0.02, weights=weights).levels)

    .. testoutput::

        {'a': 0.0, 'b': 0.0} 0.0 0.0
        {'a': 0.0, 'b': 0.5} 0.2 0.002
        {'a': 0.5, 'b': 0.5} 0.5 0.012
        {'a': 0.5, 'b': 0.9} 0.66 0.04
        {'a': 0.9, 'b': 0.9} 0.9 0.13
        {'a': 0.5, 'b': 0.5}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

Table = dict[str, dict[float, float]]

_EPS = 1e-12


@dataclass(frozen=True)
class Allocation:
    """One configuration and its additive prediction."""

    levels: dict[str, float]  # param -> level
    gain: float  # predicted total gain (e.g. MAC-weighted sparsity gained)
    loss: float  # predicted total loss increase over the dense model
    lam: float | None = None  # a multiplier at which it is Lagrangian-optimal (None: not from the hull)


def level_gains(table: Mapping[str, Mapping[float, float]], weights: Mapping[str, float] | None = None) -> Table:
    """The default gain table: ``weights[param] x level`` (weight 1.0 for a param without one)."""
    weights = weights or {}
    return {p: {float(lv): float(weights.get(p, 1.0)) * float(lv) for lv in levels} for p, levels in table.items()}


def _points(table: Mapping[str, Mapping[float, float]], gains: Mapping[str, Mapping[float, float]] | None,
            weights: Mapping[str, float] | None) -> dict[str, list[tuple[float, float, float]]]:
    """Per param: the usable (level, loss, gain) triples; a level with a loss that is not finite (its
    evaluation failed) or without a gain is left out; level 0.0 is always there (0 loss, 0 gain)."""
    gains = gains if gains is not None else level_gains(table, weights)
    out: dict[str, list[tuple[float, float, float]]] = {}
    for p, losses in table.items():
        pts = {0.0: (0.0, 0.0)}
        for lv, loss in losses.items():
            lv = float(lv)
            g = gains.get(p, {}).get(lv)
            if lv == 0.0 or g is None or not math.isfinite(loss) or not math.isfinite(g):
                continue
            pts[lv] = (float(loss), float(g))
        out[p] = [(lv, c, g) for lv, (c, g) in sorted(pts.items())]
    return out


def hull(points: Sequence[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """The levels a parameter takes as the multiplier falls: the upper convex hull of its points
    ``(level, loss, gain)``, from the Lagrangian choice at lam -> infinity (least loss; on ties the most
    gain, then the lowest level) to the one at lam -> 0+ (most gain; on ties the least loss).

    Consecutive hull points have increasing loss and gain and non-increasing slopes
    ``d gain / d loss``; points on a straight hull edge are kept (each is optimal at that edge's slope).
    """
    if not points:
        return []
    start = min(points, key=lambda t: (t[1], -t[2], t[0]))
    out = [start]
    while True:
        _, c0, g0 = out[-1]
        later = [t for t in points if t[1] > c0 + _EPS and t[2] > g0 + _EPS]
        if not later:
            return out
        # the steepest edge; on equal slopes the nearest point (the collinear ones follow)
        out.append(max(later, key=lambda t: ((t[2] - g0) / (t[1] - c0), -t[1], -t[0])))


_Point = tuple[float, float, float]  # (level, loss, gain)


def _by_level(pts: Mapping[str, list[_Point]]) -> dict[str, dict[float, _Point]]:
    return {p: {t[0]: t for t in ts} for p, ts in pts.items()}


def _total(by_level: Mapping[str, Mapping[float, _Point]], levels: Mapping[str, float],
           lam: float | None) -> Allocation:
    gain = sum(by_level[p][lv][2] for p, lv in levels.items())
    loss = sum(by_level[p][lv][1] for p, lv in levels.items())
    return Allocation(dict(levels), gain, loss, lam)


def breakpoints(table: Mapping[str, Mapping[float, float]], gains: Mapping[str, Mapping[float, float]] | None = None,
                *, weights: Mapping[str, float] | None = None) -> list[float]:
    """Every multiplier at which some parameter's choice changes (its hull slopes), descending."""
    slopes = set()
    for ts in _points(table, gains, weights).values():
        h = hull(ts)
        slopes |= {(b[2] - a[2]) / (b[1] - a[1]) for a, b in pairwise(h)}
    return sorted(slopes, reverse=True)


def choose(table: Mapping[str, Mapping[float, float]], lam: float,
           gains: Mapping[str, Mapping[float, float]] | None = None, *,
           weights: Mapping[str, float] | None = None) -> Allocation:
    """The Lagrangian choice at multiplier ``lam > 0``: each parameter at the level maximizing
    ``gain - lam * loss`` (ties: the least loss, then the lowest level)."""
    if not lam > 0:
        raise ValueError(f"the multiplier must be > 0, got {lam!r}")
    pts = _points(table, gains, weights)
    levels = {p: max(ts, key=lambda t: (t[2] - lam * t[1], -t[1], -t[0]))[0] for p, ts in pts.items()}
    return _total(_by_level(pts), levels, lam)


def front(table: Mapping[str, Mapping[float, float]], gains: Mapping[str, Mapping[float, float]] | None = None, *,
          weights: Mapping[str, float] | None = None, lambdas: Sequence[float] | None = None) -> list[Allocation]:
    """The configurations on the Lagrangian front, deduplicated, by increasing gain (and loss).

    Args:
        table: param -> level -> predicted loss increase of that level alone (0.0 -> 0; a level whose
            loss is not finite is never chosen).
        gains: param -> level -> gain of that level; default ``weights[param] x level``.
        weights: the gain weights per param when ``gains`` is not given (default 1.0 each).
        lambdas: the multipliers to solve for; default every breakpoint: the path starts at the choice for
            lam -> infinity and applies the parameters' hull steps one at a time in order of decreasing
            slope (ties: parameter order, then level), so a configuration between two equal breakpoints is
            on the front too. Each configuration carries the multiplier at which it is optimal.
    """
    pts = _points(table, gains, weights)
    if lambdas is not None:
        out: dict[tuple[float, ...], Allocation] = {}
        for lam in lambdas:
            a = choose(table, lam, gains, weights=weights)
            out.setdefault(tuple(a.levels.values()), a)
        return sorted(out.values(), key=lambda a: (a.gain, a.loss))
    hulls = {p: hull(ts) for p, ts in pts.items()}
    steps = []  # (slope, param index, step index, param, level)
    for i, (p, h) in enumerate(hulls.items()):
        for j, (lo, hi) in enumerate(pairwise(h)):
            steps.append(((hi[2] - lo[2]) / (hi[1] - lo[1]), i, j, p, hi[0]))
    steps.sort(key=lambda s: (-s[0], s[1], s[2]))
    levels = {p: h[0][0] for p, h in hulls.items()}
    by_level = _by_level(pts)  # once: every point of the path sums over it
    path = [_total(by_level, levels, math.inf)]
    for slope, _, _, p, level in steps:
        levels[p] = level
        path.append(_total(by_level, levels, slope))
    return path


def lagrangian_within(table: Mapping[str, Mapping[float, float]], budget: float,
                      gains: Mapping[str, Mapping[float, float]] | None = None, *,
                      weights: Mapping[str, float] | None = None) -> Allocation | None:
    """The front configuration with the most gain whose predicted loss increase is <= ``budget``
    (None when even the least-loss one exceeds it)."""
    return within(front(table, gains, weights=weights), budget)


def within(points: Sequence[Allocation], budget: float) -> Allocation | None:
    """The configuration of ``points`` (a :func:`front`, computed once for several budgets) with the most
    gain whose predicted loss increase is <= ``budget`` (None when none is)."""
    fits = [a for a in points if a.loss <= budget + _EPS]
    return max(fits, key=lambda a: (a.gain, -a.loss)) if fits else None


def most_gain_below(points: Sequence[tuple[float, float]], bound: float) -> int:
    """The index of the point ``(gain, loss)`` with the most gain whose loss is below ``bound`` (ties: the
    first; the first point when none is: e.g. the dense configuration, put first)."""
    fits = [i for i, (_, loss) in enumerate(points) if loss < bound]
    return max(fits, key=lambda i: (points[i][0], -i), default=0)


def exact_within(table: Mapping[str, Mapping[float, float]], budget: float,
                 gains: Mapping[str, Mapping[float, float]] | None = None, *,
                 weights: Mapping[str, float] | None = None, step: float | None = None) -> Allocation | None:
    """The configuration with the most gain whose predicted loss increase is <= ``budget``, by a dynamic
    programme over the budget in units of ``step`` (default ``budget / 1000``).

    Each loss is rounded up to whole steps (a negative one counts as 0), so the answer always fits the
    budget; it is the exact optimum when every loss is a multiple of ``step``, and otherwise at least as
    good as the best configuration whose rounded losses fit. Cost: params x levels x budget/step.
    None when nothing fits.
    """
    if not budget >= 0:
        raise ValueError(f"the budget must be >= 0, got {budget!r}")
    pts = _points(table, gains, weights)
    step = step if step is not None else (budget / 1000 if budget > 0 else 1.0)
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    units = math.floor(budget / step + 1e-9)

    def cost(loss: float) -> int:
        return max(0, math.ceil(loss / step - 1e-9))

    # gain[b], chosen[b]: the best partial configuration using at most b units (-inf: none fits)
    gain = [0.0] * (units + 1)
    chosen: list[tuple[float, ...]] = [()] * (units + 1)
    for ts in pts.values():
        items = [(cost(c), g, lv) for lv, c, g in ts]
        nxt_gain = [-math.inf] * (units + 1)
        nxt_chosen: list[tuple[float, ...]] = [()] * (units + 1)
        for b in range(units + 1):
            for w, g, lv in items:
                if w <= b and gain[b - w] + g > nxt_gain[b] + _EPS:
                    nxt_gain[b], nxt_chosen[b] = gain[b - w] + g, (*chosen[b - w], lv)
        gain, chosen = nxt_gain, nxt_chosen
    if gain[units] == -math.inf:
        return None
    return _total(_by_level(pts), dict(zip(pts, chosen[units])), None)


def spread(points: Sequence[Allocation], k: int) -> list[Allocation]:
    """At most ``k`` of ``points`` evenly spaced by position along it, both ends included."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(points)
    if n <= k:
        return list(points)
    if k == 1:
        return [points[-1]]
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return [points[i] for i in picks]


def scored_tables(scores: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
                  levels: Mapping[str, Sequence[float]],
                  weights: Mapping[str, float] | None = None) -> tuple[Table, Table]:
    """The loss table and gain table of predicted sensitivities: ``scores`` is ``{"scores": param ->
    [[level, score], ...], "gains": param -> [[level, gain], ...]}`` (a score predicts a loss increase up to
    a common factor, which the Lagrangian front does not depend on), restricted to ``levels`` (param ->
    levels used); a level without a score is never chosen. With ``weights`` the gains are ``weight x level``
    instead. A ValueError says what is missing."""
    table: Table = {}
    gains: Table = {}
    for name, wanted in levels.items():
        found = {float(lv): float(v) for lv, v in scores.get("scores", {}).get(name, [])}
        gained = {float(lv): float(v) for lv, v in scores.get("gains", {}).get(name, [])}
        if not found:
            raise ValueError(f"no predicted sensitivities for parameter {name!r}")
        table[name] = {0.0: 0.0, **{lv: found.get(lv, math.inf) for lv in wanted}}
        gains[name] = {0.0: 0.0, **{lv: gained.get(lv, 0.0) for lv in wanted}}
    return table, (gains if weights is None else level_gains(table, weights))


def measured_tables(names: Sequence[str], dense_loss: float, dense_sparsity: float | None,
                    probes: Sequence[tuple[str, float, float | None, float | None]],
                    weights: Mapping[str, float] | None = None) -> tuple[Table, Table, bool]:
    """The loss table and gain table of measured probes ``(param, level, loss, sparsity)`` (loss None: a
    failed level, never chosen), and whether the gains are the measured sparsity increases over the dense
    one (True) or ``weights x level`` (``weights``, else equal weights: when a sparsity is missing)."""
    table: Table = {n: {0.0: 0.0} for n in names}
    measured: Table = {n: {0.0: 0.0} for n in names}
    complete = dense_sparsity is not None
    for name, level, loss, sparsity in probes:
        table[name][level] = math.inf if loss is None else loss - dense_loss
        if loss is not None:
            if sparsity is None or dense_sparsity is None:
                complete = False
            else:
                measured[name][level] = sparsity - dense_sparsity
    if weights is not None:
        return table, level_gains(table, weights), False
    if complete:
        return table, measured, True
    return table, level_gains(table, dict.fromkeys(names, 1.0 / len(names))), False


def _standing(row: Mapping[float, float], gains: Mapping[float, float], level: float) -> tuple[float, float, float]:
    """A param's current level with its score and gain there (level 0.0 scores and gains 0): where the
    increments and decrements of one linearization are measured from."""
    now = float(level)
    return (now, row.get(now, 0.0), gains.get(now, 0.0)) if now > 0 else (now, 0.0, 0.0)


def increment_tables(scores: Mapping[str, Mapping[float, float]], gains: Mapping[str, Mapping[float, float]],
                     current: Mapping[str, float]) -> tuple[Table, Table]:
    """The knapsack of one step from a configuration: per param, each level above its current one with
    the increase of its score and of its gain over the current level's (scores and gains of one
    linearization: ``{param: {level: value}}``, level 0.0 scoring 0). The current level plays the part of
    level 0.0 (stay: no loss, no gain), so that :func:`lagrangian_within` picks the step; a level it
    picks maps back to itself, 0.0 to the current level (:func:`stepped`)."""
    table: Table = {}
    gain: Table = {}
    for p, row in scores.items():
        now, s0, g0 = _standing(row, gains[p], current.get(p, 0.0))
        table[p] = {float(lv): max(0.0, s - s0) for lv, s in row.items() if lv > now}
        gain[p] = {float(lv): gains[p][lv] - g0 for lv in table[p]}
    return table, gain


def stepped(current: Mapping[str, float], pick: Allocation) -> dict[str, float]:
    """The configuration after a step picked on :func:`increment_tables` (0.0: the param stays)."""
    return {p: (lv if (lv := pick.levels.get(p, 0.0)) > 0 else float(now)) for p, now in current.items()}


def decrement_tables(scores: Mapping[str, Mapping[float, float]], gains: Mapping[str, Mapping[float, float]],
                     current: Mapping[str, float]) -> tuple[Table, Table, dict[str, dict[float, float]]]:
    """The knapsack of one step *down* from a configuration, in the form :func:`front` solves: per param,
    each level below its current one, keyed by how far down it goes (``current - level`` > 0; 0.0: stay),
    with the gain it gives up as the knapsack's loss and the score it saves as its gain (so the front
    saves the most score for the least gain given up); and per param, key -> the level it stands for."""
    lost: Table = {}
    saved: Table = {}
    back: dict[str, dict[float, float]] = {}
    for p, row in scores.items():
        now, s0, g0 = _standing(row, gains[p], current.get(p, 0.0))
        below = [float(lv) for lv in (*row, 0.0) if float(lv) < now]
        back[p] = {now - lv: lv for lv in below}
        lost[p] = {d: max(0.0, g0 - gains[p].get(lv, 0.0)) for d, lv in back[p].items()}
        saved[p] = {d: s0 - row.get(lv, 0.0) for d, lv in back[p].items()}
    return lost, saved, back


def first_saving(points: Sequence[Allocation], need: float) -> Allocation | None:
    """The first configuration of a step-down front (:func:`decrement_tables`, by increasing gain) whose
    saved score (its ``gain``) reaches ``need``, else the one saving the most; None when none saves any."""
    saving = [a for a in points if a.gain > _EPS]
    return next((a for a in saving if a.gain >= need - _EPS), saving[-1] if saving else None)


def lowered(current: Mapping[str, float], pick: Allocation,
            back: Mapping[str, Mapping[float, float]]) -> dict[str, float]:
    """The configuration after a step picked on :func:`decrement_tables` (0.0: the param stays)."""
    return {p: (back[p][d] if (d := pick.levels.get(p, 0.0)) > 0 else float(now)) for p, now in current.items()}
