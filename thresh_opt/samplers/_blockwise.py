"""BlockwiseSampler: TEAL's block-wise greedy allocation (design.md 3), replayed from stored trials.

The decision logic is pure (:func:`walk_block`, :func:`combine`) and runs over a
:class:`~thresh_opt.samplers._replay.Ledger`; the sampler only reads the ledger and issues what the
replay finds missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.logging import get_logger

from thresh_opt import compat
from thresh_opt.samplers._greedy_state import block_of
from thresh_opt.samplers._replay import Ledger, Missing, Result, read_ledger
from thresh_opt.samplers._stamped import StampedSampler, finite, positive_levels

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from thresh_opt.samplers._greedy_state import Acceptance
    from thresh_opt.samplers._replay import Key

_logger = get_logger(__name__)

# System attributes stamped on every trial the sampler issues.
ROLE = "blockwise:role"  # "dense" | "step" | "front" | "wait" | "finished"
PARAMS = "blockwise:params"  # the whole assignment of the trial
BLOCK = "blockwise:block"  # a step's block (its index in block order; None otherwise)
TARGETS = "blockwise:targets"  # a front trial's block-level target sparsities (None otherwise)

_EPS = 1e-12

_default_block_of = block_of  # the constructor's argument of the same name shadows it


def group_blocks(names: Sequence[str], block: Callable[[str], int | None] = block_of) -> list[list[int]]:
    """Indices of `names` per block, blocks in order of first appearance (the search space is front to
    back); the names without a block index form one block together."""
    groups: dict[int | None, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(block(name), []).append(i)
    return list(groups.values())


@dataclass(frozen=True)
class Step:
    """One allocation on a block's path: its configuration and what raising to it cost."""

    key: Key  # the whole configuration: this block's levels, every other parameter at 0.0
    param: int | None  # the parameter raised by one level to get here (None: the dense start)
    loss: float
    gain: float  # sparsity gained over the previous allocation (measured, else estimated)
    ratio: float  # loss increase per sparsity gained (0.0 for the start)


def _raise(key: Key, i: int, levels: Sequence[float]) -> Key | None:
    """`key` with parameter i one level up (None at its top level)."""
    j = levels.index(key[i]) + 1
    return None if j >= len(levels) else (*key[:i], levels[j], *key[i + 1:])


def _gain(new: Result, old: Result, new_key: Key, old_key: Key, unit: float) -> float:
    """Measured sparsity gained, or (without a measured sparsity) levels gained x `unit`."""
    if new.sparsity is not None and old.sparsity is not None:
        return new.sparsity - old.sparsity
    return sum(a - b for a, b in zip(new_key, old_key)) * unit


def walk_block(ledger: Ledger, members: Sequence[int], levels: Sequence[Sequence[float]], dense: Key, *,
               lazy: bool, max_loss_ratio: float | None, unit: float) -> list[Step]:
    """One block's greedy path from dense, the other blocks dense; :class:`Missing` while a result it
    needs is not stored.

    Each step raises by one level the member whose raise costs the least loss increase per sparsity
    gained (ties: the smaller loss increase, then the earlier member); a member whose raise failed stays
    where it is. The path ends when no member can rise, or before a step whose loss exceeds
    ``max_loss_ratio`` x the dense loss. ``lazy`` (CELF): a member's cost measured at an earlier
    allocation is kept as a lower bound (raising others is assumed to make it no cheaper); only the
    cheapest is measured again, and taken when it is still the cheapest.

    Args:
        ledger: the stored results.
        members: the block's parameter indices.
        levels: per parameter index, all its levels, ascending, 0.0 first.
        dense: the all-dense configuration (its result must be stored, with a loss).
        lazy: CELF-style re-evaluation.
        max_loss_ratio: the block's loss cap as a ratio to the dense loss (None: no cap).
        unit: the gain of one unit of level when sparsity is not measured.
    """
    base = ledger.results([dense])[0]
    assert base.loss is not None
    path = [Step(dense, None, base.loss, 0.0, 0.0)]
    frozen: set[int] = set()
    stale: dict[int, tuple[tuple[float, float, int], Key, Result]] = {}  # member -> (score, at, result)

    def measure(at: Step, cands: Sequence[int]) -> None:
        keys = {i: _raise(at.key, i, levels[i]) for i in cands}
        results = ledger.results([k for k in keys.values() if k is not None])
        for (i, key), r in zip(((i, k) for i, k in keys.items() if k is not None), results):
            if r.loss is None:
                frozen.add(i)
                continue
            assert key is not None
            g = _gain(r, ledger.results([at.key])[0], key, at.key, unit)
            dloss = r.loss - at.loss
            stale[i] = ((dloss / g if g > _EPS else math.inf, dloss, members.index(i)), at.key, r)

    while True:
        here = path[-1]
        live = [i for i in members if i not in frozen and _raise(here.key, i, levels[i]) is not None]
        fresh = [i for i in live if not lazy or i not in stale]
        measure(here, fresh)
        while True:
            live = [i for i in live if i not in frozen]
            if not live:
                return path
            best = min(live, key=lambda i: stale[i][0])
            if stale[best][1] == here.key:
                break
            measure(here, [best])
        (ratio, _, _), _, r = stale.pop(best)
        assert r.loss is not None
        if max_loss_ratio is not None and r.loss > max_loss_ratio * base.loss:
            return path
        key = _raise(here.key, best, levels[best])
        assert key is not None
        path.append(Step(key, best, r.loss, _gain(r, ledger.results([here.key])[0], key, here.key, unit), ratio))


def block_weights(ledger: Ledger, members: Sequence[int], levels: Sequence[Sequence[float]], dense: Key) -> list[float]:
    """Each member's weight in its block's sparsity (its share of the MACs): the measured sparsity gain
    of its first level from dense, per unit of level; equal weights unless every one is measured."""
    base = ledger.get(dense)
    out = []
    for i in members:
        key = _raise(dense, i, levels[i])
        r = ledger.get(key) if key is not None else None
        if key is None or r is None or r.sparsity is None or base is None or base.sparsity is None:
            return [1.0] * len(members)
        out.append(max(0.0, (r.sparsity - base.sparsity) / key[i]))
    return out if sum(out) > _EPS else [1.0] * len(members)


def block_sparsity(key: Key, members: Sequence[int], weights: Sequence[float]) -> float:
    """The weighted mean level of a block's members."""
    return sum(w * key[i] for i, w in zip(members, weights)) / sum(weights)


def combine(paths: Sequence[Sequence[Step]], blocks: Sequence[Sequence[int]], weights: Sequence[Sequence[float]],
            targets: Sequence[float], dense: Key) -> list[tuple[Key, list[float]]]:
    """TEAL's combination: per target, every block at its path's first allocation whose block sparsity
    reaches the target (its last one when none does). Distinct configurations, in target order, each
    with the targets that gave it."""
    out: dict[Key, list[float]] = {}
    for t in targets:
        key = list(dense)
        for path, members, w in zip(paths, blocks, weights):
            step = next((s for s in path if block_sparsity(s.key, members, w) >= t - 1e-9), path[-1])
            for i in members:
                key[i] = step.key[i]
        out.setdefault(tuple(key), []).append(t)
    return list(out.items())


@dataclass
class _Plan:
    """What the ledger says: the next keys to issue, the paths and the front once known."""

    role: str  # what the next trial is: "dense", "step", "front", "wait" or "finished"
    keys: list[tuple[Key, int | None]]  # (configuration, block) still missing, in issue order
    paths: list[list[Step] | None]  # per block (None: unfinished)
    front: list[tuple[Key, list[float]]] | None  # None until every path is done


class BlockwiseSampler(StampedSampler):
    """TEAL's block-wise greedy allocation (FasterDecoding/TEAL, ``teal/greedyopt.py``), as a sampler.

    Parameters are grouped into blocks by name (:func:`block_of`: ``"blocks.3.att.key"`` is in block
    3); the parameters without a block index (a per-kind space) form one block together, so that there
    the search is one model-wide greedy. Each block alone (all other blocks dense) starts dense and
    repeatedly raises by one level the member whose raise costs the least calibration-loss increase
    (user attribute ``loss_key``) per sparsity gained: the measured increase of the user attribute
    ``sparsity_key`` (for a study, MAC-weighted, so TEAL's weighting by parameter count is measured, not
    assumed). The allocations met form the block's path (:func:`walk_block`). Then, for each target of
    ``targets``, every block takes its path's first allocation whose block sparsity (its members'
    levels weighted by their measured MAC shares) reaches the target: one full-model trial per distinct
    combination (:func:`combine`). Then :meth:`is_finished` is True.

    Cost: a block's path has at most ``sum(levels)`` steps (one level each); an exact step measures
    every member that can rise. ``lazy`` (CELF) measures all members once, then mostly one or two per
    step; ``max_loss_ratio`` ends each path before its loss passes that ratio to the dense loss (targets
    beyond it take the path's last allocation). The steps of a block differ from the dense model only in
    that block, so an incremental evaluation starts them at the block.

    Example:

        .. testcode::

            import optuna
            from optuna.distributions import CategoricalDistribution

            from thresh_opt.samplers import BlockwiseSampler

            macs = {"blocks.0.att": 0.1, "blocks.0.ffn": 0.4, "blocks.1.att": 0.1, "blocks.1.ffn": 0.4}
            sens = {"blocks.0.att": 0.002, "blocks.0.ffn": 0.05, "blocks.1.att": 0.02, "blocks.1.ffn": 0.01}
            sampler = BlockwiseSampler(dict.fromkeys(macs, [0.0, 0.3, 0.6, 0.9]), targets=[0.3, 0.6])
            study = optuna.create_study(sampler=sampler)
            distributions = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
            while not sampler.is_finished(study):
                trial = study.ask(distributions)
                trial.set_user_attr("sparsity", sum(macs[n] * trial.params[n] for n in macs))
                loss = 3.0 * (1 + sum(s * trial.params[n] ** 3 for n, s in sens.items()))
                trial.set_user_attr("calibration_loss", loss)
                study.tell(trial, loss)
            print(sampler.final_params(study)[0])

    No state is kept in the sampler: results are read from the stored trials by configuration (an
    enqueued dense baseline is the dense trial; nothing is evaluated twice), the algorithm is replayed
    over them on every ask (:mod:`thresh_opt.samplers._replay`), and :meth:`before_trial` stamps
    ``blockwise:role`` (``"dense"``, ``"step"``, ``"front"``, ``"wait"``, ``"finished"``),
    ``blockwise:params``, ``blockwise:block`` (a step's block) and ``blockwise:targets`` (a front
    trial's). A RUNNING trial counts as issued: blocks are independent, so parallel workers walk
    several blocks at once, and the front waits for every path (:meth:`needs_wait`). A new sampler on
    the same storage continues where the old one stopped.

    Note:
        Trial states: FAIL, or COMPLETE without a finite loss, is a failed raise: that member stays at
        its level for the rest of its block's path. PRUNED with a finite loss counts by it; PRUNED
        without one (abandoned) is issued again; a failed dense trial is issued again. A trial asked
        while nothing can be issued repeats the dense configuration (``"wait"``), or, once finished, the
        last front configuration (``"finished"``).

    Args:
        search_space:
            Parameter name -> levels (target sparsities, non-negative; 0.0 is added). The dict order is
            the order of members within a block (ties) and of the blocks.
        targets:
            Block-level target sparsities, one front trial each (default: every positive level).
        lazy:
            CELF-style lazy re-evaluation (False: TEAL's exact step, every member measured each step).
        max_loss_ratio:
            End a block's path before a step whose loss exceeds this ratio to the dense loss (> 1;
            None: walk every path to the top levels).
        loss_key:
            The trial user attribute holding the loss.
        sparsity_key:
            The trial user attribute holding the measured sparsity (without it, gains are levels /
            number of parameters).
        block_of:
            Parameter name -> block index (None: no index). Default: :func:`block_of`.
        independent_sampler:
            Samples the parameters it does not own (default: :class:`~optuna.samplers.RandomSampler`).
        warn_independent_sampling:
            Warn once per parameter name the first time one is sampled by ``independent_sampler``.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[float]],
        targets: Sequence[float] | None = None,
        lazy: bool = True,
        max_loss_ratio: float | None = None,
        loss_key: str = "calibration_loss",
        sparsity_key: str = "sparsity",
        block_of: Callable[[str], int | None] | None = None,
        independent_sampler: BaseSampler | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        positive = positive_levels(search_space, "BlockwiseSampler", "levels")
        every = sorted({lv for c in positive.values() for lv in c})
        wanted = every if targets is None else list(targets)
        if not wanted or any(finite(t) is None or not 0 < t <= 1 for t in wanted):
            raise ValueError(f"targets must be a non-empty list of sparsities in (0, 1], got {targets!r}")
        if max_loss_ratio is not None and (finite(max_loss_ratio) is None or max_loss_ratio <= 1):
            raise ValueError(f"max_loss_ratio must be a number > 1 or None, got {max_loss_ratio!r}")
        self._names = tuple(positive)
        self._levels = [(0.0, *positive[n]) for n in self._names]
        self._blocks = group_blocks(self._names, block_of or _default_block_of)
        self._targets = sorted({float(t) for t in wanted})
        self._lazy = bool(lazy)
        self._cap = None if max_loss_ratio is None else float(max_loss_ratio)
        self._loss_key, self._sparsity_key = loss_key, sparsity_key
        super().__init__(positive, PARAMS, independent_sampler, warn_independent_sampling)

    @property
    def loss_key(self) -> str:
        """The trial user attribute (an objective of the study) the decisions read."""
        return self._loss_key

    @property
    def search_space(self) -> dict[str, list[float]]:
        """Parameter name -> all its levels, 0.0 included, ascending (the choices to ask with)."""
        return {n: list(c) for n, c in zip(self._names, self._levels)}

    @property
    def blocks(self) -> list[list[str]]:
        """The parameter names of each block, in block order."""
        return [[self._names[i] for i in members] for members in self._blocks]

    # ---- derived state -------------------------------------------------------------------------

    def _ledger(self, study: Study) -> Ledger:
        return read_ledger(compat.all_trials(study), self._names, PARAMS, self._loss_key, self._sparsity_key)

    def _plan(self, ledger: Ledger) -> _Plan:
        dense: Key = (0.0,) * len(self._names)
        known = ledger.get(dense)
        if known is None or known.loss is None:
            return _Plan("dense", [(dense, None)], [None] * len(self._blocks), None)
        missing: list[tuple[Key, int | None]] = []
        paths: list[list[Step] | None] = []
        for b, members in enumerate(self._blocks):
            try:
                paths.append(walk_block(ledger, members, self._levels, dense, lazy=self._lazy,
                                        max_loss_ratio=self._cap, unit=1.0 / len(self._names)))
            except Missing as m:
                paths.append(None)
                missing += [(k, b) for k in m.keys]
        if missing:
            return _Plan("step", missing, paths, None)
        weights = [block_weights(ledger, members, self._levels, dense) for members in self._blocks]
        front = combine([p for p in paths if p is not None], self._blocks, weights, self._targets, dense)
        todo: list[tuple[Key, int | None]] = [(k, None) for k, _ in front if ledger.get(k) is None]
        return _Plan("front" if todo else "finished", todo, paths, front)

    def _params(self, key: Key) -> dict[str, float]:
        return dict(zip(self._names, key))

    @staticmethod
    def _free(plan: _Plan, ledger: Ledger) -> list[tuple[Key, int | None]]:
        """The missing configurations not RUNNING (a failed dense trial is missing and issued again)."""
        return [(k, b) for k, b in plan.keys if k not in ledger.pending]

    # ---- SteppedSampler ------------------------------------------------------------------------

    def is_finished(self, study: Study) -> bool:
        """True when every block's path and every front configuration has a result."""
        return self._plan(self._ledger(study)).role == "finished"

    def needs_wait(self, study: Study) -> bool:
        """True when every configuration it could issue now is RUNNING."""
        ledger = self._ledger(study)
        plan = self._plan(ledger)
        return plan.role != "finished" and not self._free(plan, ledger)

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """The front configurations evaluated so far, by increasing target."""
        ledger = self._ledger(study)
        front = self._plan(ledger).front or []
        return [self._params(k) for k, _ in front if ledger.get(k) is not None]

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """None: no trial's result is judged by a rule known when it is issued."""
        return None

    # ---- inspection ----------------------------------------------------------------------------

    def paths(self, study: Study) -> list[list[dict[str, Any]]]:
        """Each finished block's path (empty while unfinished): per allocation its block's ``params``,
        the raised ``param`` (None for the start), ``loss``, ``gain`` and ``ratio``."""
        plan = self._plan(self._ledger(study))
        return [[] if path is None else [
            {"params": {self._names[i]: s.key[i] for i in members},
             "param": None if s.param is None else self._names[s.param], "loss": s.loss, "gain": s.gain,
             "ratio": s.ratio} for s in path] for path, members in zip(plan.paths, self._blocks)]

    # ---- sampler API ---------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Enqueued trials (fixed_params) and trials already stamped (e.g. retried) are left alone.
        if "fixed_params" in trial.system_attrs or ROLE in trial.system_attrs:
            return
        ledger = self._ledger(study)
        plan = self._plan(ledger)
        free = self._free(plan, ledger)
        role, block, targets = plan.role, None, None
        if plan.role == "finished":
            key = (plan.front or [((0.0,) * len(self._names), [])])[-1][0]
        elif free:
            key, block = free[0]
            targets = dict(plan.front or []).get(key)
        else:
            _logger.warning("BlockwiseSampler: every next configuration depends on running trials "
                            "(needs_wait); this trial repeats the dense configuration.")
            role, key = "wait", (0.0,) * len(self._names)
        self._write_stamp(study, trial, {ROLE: role, PARAMS: self._params(key), BLOCK: block, TARGETS: targets})
