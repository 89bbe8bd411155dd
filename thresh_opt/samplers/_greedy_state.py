"""The sequential greedy search (design.md 1.3) as a replay of stored results: pure functions, no sampler
API, no model. This is the one place of its decision logic (the walk, the warm start, the acceptance
rule, the keep-first quirk, the update of the reference loss): the Optuna adapter
(:class:`~thresh_opt.samplers.GreedySampler`) drives it, and the direct search on a model
(`thresh_opt.greedy`) runs that sampler.

A trial issued by :class:`~thresh_opt.samplers.GreedySampler` is one *evaluation key*
``(pass, module, candidate)``; the dense trial of a pass is ``(pass, None, 0.0)``. The configuration
behind a key is fixed by the decisions of the earlier modules, which are fixed by earlier results, so
replaying the stored results in module order reproduces every decision, whatever order the results
arrived in and whichever process stored them.

A *budget pass* (:func:`replay_budget`) starts from a given configuration instead of the dense one and
raises each module further, front to back, while the loss stays under an absolute budget on the ratio to
the dense loss: it spends the loss budget an earlier pass (or a predicted allocation) left. Its keys are
``(pass, module, candidate)`` too, the configuration behind a key being the start with the earlier
modules at their raised values.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optuna.trial import TrialState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from optuna.trial import FrozenTrial

# System attributes stamped on every trial the sampler issues.
ROLE = "greedy:role"  # "dense" | "candidate" | "wait" | "finished"
PASS = "greedy:pass"  # index into the tolerance list, then into the budget list
PASS_KIND = "greedy:pass_kind"  # "tolerance" | "budget" (missing on trials of older versions: "tolerance")
PASS_ID = "greedy:pass_id"  # fingerprint of the sampler settings of that pass
TOLERANCE = "greedy:tolerance"
MODULE = "greedy:module"  # parameter under search (None for the dense trial)
CANDIDATE = "greedy:candidate"  # its value in this trial (0.0 for the dense trial)
STEP = "greedy:step"  # index of the module in the order (-1 for the dense trial)
PARAMS = "greedy:params"  # the whole assignment of the trial
REFERENCE = "greedy:reference"  # L_ref its candidate is judged against (None while unknown)
REFERENCE_PARAMS = "greedy:reference_params"  # the configuration L_ref was measured on (with REFERENCE)

Key = tuple[int, "str | None", float]

_INDEXED = re.compile(r"^(?:.*?\.)?(\d+)(?:\.(.+))?$")  # <prefix>.<block index>[.<kind>]


def default_kind(name: str) -> str:
    """The name without its leading ``<prefix>.<int>.``: ``"blocks.3.att.key"`` -> ``"att.key"``.

    The prefix may contain dots (``"model.layers.3.mlp.fc1"`` -> ``"mlp.fc1"``); a name without an
    all-digit segment followed by more is its own kind.
    """
    match = _INDEXED.match(name)
    return match.group(2) if match and match.group(2) else name


def block_of(name: str) -> int | None:
    """The block index of a parameter: its first all-digit dotted segment (``"blocks.3.att.key"`` -> 3,
    ``"block.3"`` -> 3), or None when it has none (``"att.key"``, ``"all"``)."""
    match = _INDEXED.match(name)
    return int(match.group(1)) if match else None


def _ratios(value: object) -> tuple[float, ...] | None:
    """The numbers > 1 of `value` (one, or a list), or None when anything else is there."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 1 for v in values):
        return None
    return tuple(float(v) for v in values)  # type: ignore[arg-type]  # numbers: checked above


def tolerances(loss_inc: object) -> tuple[float, ...]:
    """The tolerance list of `loss_inc` (a number > 1, or a non-empty list of them), or a ValueError."""
    values = _ratios(loss_inc)
    if not values:
        raise ValueError(f"loss_inc must be a number > 1 (a ratio to the last accepted loss) or a non-empty list "
                         f"of them, got {loss_inc!r}")
    return values


def start_level_of(value: object) -> float | None:
    """The `start_level` option (None, or a target sparsity in [0, 1]), or a ValueError saying what is allowed."""
    if value is None:
        return None
    # the same test of a number as _ratios: a bool, a string or a list is refused, not converted
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:  # NaN too
        raise ValueError(f"a target sparsity in [0, 1], got {value!r}")
    return float(value)


def budgets(budget: object, what: str = "budget") -> tuple[float, ...]:
    """The budget list of `budget` (None, a number > 1, or a list of them, possibly empty), or a ValueError
    naming `what`."""
    values = () if budget is None else _ratios(budget)
    if values is None:
        raise ValueError(f"{what} must be a loss ratio > 1 (to the dense loss), a list of them, or empty, "
                         f"got {budget!r}")
    return values


@dataclass(frozen=True)
class Acceptance:
    """The published acceptance rule: a candidate passes while loss / reference < tolerance; `basis`, when
    known, is the configuration (parameter -> value) whose loss is `reference` (early rejection measures the
    candidate against it batch by batch)."""

    reference: float  # L_ref: the loss of the last accepted configuration
    tolerance: float
    basis: Mapping[str, float] | None = field(default=None, compare=False)

    def accepts(self, loss: float | None) -> bool:
        """True when the loss passes (a missing loss never does)."""
        return loss is not None and loss / self.reference < self.tolerance


@dataclass(frozen=True)
class Spec:
    """What one greedy pass needs besides its tolerance."""

    names: tuple[str, ...]  # module order, front to back
    candidates: Mapping[str, tuple[float, ...]]  # positive candidates, ascending (0.0 is implied)
    kinds: Mapping[str, str]
    warm_start: bool
    keep_first: bool
    start_level: float | None = None  # where the warm start has nothing to go by (None: the scan from the bottom)

    def start_index(self, name: str, accepted: Mapping[str, float]) -> int:
        """Warm start: 1-based index of the candidate to try first (0: plain scan from the bottom)."""
        earlier = [v for other, v in accepted.items() if self.kinds[other] == self.kinds[name]]
        if not self.warm_start or not earlier:
            start = self.start_level
        else:
            counts = Counter(earlier)
            start = max(counts, key=lambda v: (counts[v], -v))  # most frequent; ties: the smaller
        # Same-kind modules normally share a candidate list; otherwise the largest candidate <= start.
        return 0 if start is None else bisect.bisect_right(self.candidates[name], start)


@dataclass
class Ledger:
    """What the stored trials say about each evaluation key."""

    losses: dict[Key, float | None] = field(default_factory=dict)  # None: rejected without a loss
    pending: set[Key] = field(default_factory=set)  # RUNNING


def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_ledger(trials: Iterable[FrozenTrial], pass_ids: tuple[str, ...], loss_key: str) -> Ledger:
    """Results and pending keys of the trials a GreedySampler issued (other trials are skipped): see
    :func:`collect`."""

    def key_of(t: FrozenTrial) -> Key | None:
        attrs = t.system_attrs
        if attrs.get(ROLE) not in ("dense", "candidate"):
            return None
        p = attrs.get(PASS)
        if not isinstance(p, int) or not 0 <= p < len(pass_ids) or attrs.get(PASS_ID) != pass_ids[p]:
            return None
        return (p, attrs.get(MODULE), float(attrs.get(CANDIDATE, 0.0)))

    return collect(trials, key_of, loss_key)


def collect(trials: Iterable[FrozenTrial], key_of: Callable[[FrozenTrial], Key | None], loss_key: str) -> Ledger:
    """Results and pending keys of the trials `key_of` gives a key (the others are skipped).

    COMPLETE gives the loss in ``user_attrs[loss_key]`` (missing or not finite: a rejection); FAIL is a
    rejection; RUNNING is pending; PRUNED with a finite loss (its expensive objectives were skipped) gives
    that loss; PRUNED without one (an abandoned trial) and WAITING count as never issued. Duplicates of a
    key: the first result with a loss wins.
    """
    ledger = Ledger()
    for t in trials:
        key = key_of(t)
        if key is None:
            continue
        if t.state == TrialState.RUNNING:
            ledger.pending.add(key)
        elif t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and _finite(t.user_attrs.get(loss_key))):
            loss = _finite(t.user_attrs.get(loss_key))
            if ledger.losses.get(key) is None:
                ledger.losses[key] = loss
        elif t.state == TrialState.FAIL:
            ledger.losses.setdefault(key, None)
    return ledger


def walk(k: int, start: int, outcome: Callable[[int], bool | None]) -> tuple[int, list[int]]:
    """One module's search over candidates 1..k (index 0 is 0.0, accepted by definition).

    ``outcome(i)``: True accepted, False rejected, None unknown. Plain scan (``start == 0``): go up
    while accepted. Warm start: try ``start``; if accepted go up while accepted, else go down until
    accepted. An unknown outcome is assumed to continue the current direction (accepted going up,
    rejected going down; the start is assumed accepted): the unknowns met on the way are the
    candidates to evaluate next, in order. Returns (chosen index, unknowns); the choice is final
    only when there are no unknowns.
    """
    unknown: list[int] = []

    def accepted(i: int, assume: bool) -> bool:
        result = outcome(i)
        if result is None:
            unknown.append(i)
            return assume
        return result

    if start == 0 or accepted(start, True):
        i = start
        while i < k and accepted(i + 1, True):
            i += 1
        return i, unknown
    i = start - 1
    while i > 0 and not accepted(i, False):
        i -= 1
    return i, unknown


@dataclass
class PassState:
    """Where one pass stands after replaying the ledger."""

    index: int
    accepted: dict[str, float]  # decided modules, in order (all of them when the pass is done)
    module: int  # index of the module under search; len(names) when done
    frontier: list[Key]  # keys on the search path without a result, in order (dense first)
    acceptance: Acceptance | None = None  # the rule of the module under search (of the last one when done)
    tried: dict[str, list[tuple[float, float | None, bool]]] = field(default_factory=dict)  # (candidate, loss, ok)
    start: dict[str, float] = field(default_factory=dict)  # the values of the undecided modules (empty: dense)
    loss: float | None = None  # of the final configuration, once done (None: not measured)

    @property
    def done(self) -> bool:
        return not self.frontier

    def config(self, names: Iterable[str], key: Key | None = None) -> dict[str, float]:
        """Decided modules at their values, the key's module at its candidate, the rest at the start."""
        params = {name: self.accepted.get(name, self.start.get(name, 0.0)) for name in names}
        if key is not None and key[1] is not None:
            params[key[1]] = key[2]
        return params


def replay_pass(spec: Spec, p: int, tolerance: float, ledger: Ledger) -> PassState:
    """Decide module after module from the stored results, until a result is missing."""
    dense: Key = (p, None, 0.0)
    l_ref = ledger.losses.get(dense)  # a failed dense trial is issued again
    frontier: list[Key] = [] if l_ref is not None else [dense]
    accepted: dict[str, float] = {}
    tried: dict[str, list[tuple[float, float | None, bool]]] = {}
    rule = None
    for m, name in enumerate(spec.names):
        cands = spec.candidates[name]
        # L_ref was measured on the configuration accepted so far
        rule = (Acceptance(l_ref, tolerance, {n: accepted.get(n, 0.0) for n in spec.names})
                if l_ref is not None else None)
        seen = tried[name] = []

        def outcome(i: int, name: str = name, cands: tuple[float, ...] = cands, rule: Acceptance | None = rule,
                    seen: list[tuple[float, float | None, bool]] = seen) -> bool | None:
            key = (p, name, cands[i - 1])
            if rule is None or key not in ledger.losses:
                return None  # without L_ref nothing is known, but the path is (speculation)
            loss = ledger.losses[key]
            seen.append((cands[i - 1], loss, rule.accepts(loss)))
            return seen[-1][2]

        choice, unknown = walk(len(cands), spec.start_index(name, accepted), outcome)
        frontier += [(p, name, cands[i - 1]) for i in unknown]
        if frontier:
            return PassState(p, accepted, m, frontier, rule, tried)
        if choice == 0 and spec.keep_first and cands and ledger.losses.get((p, name, cands[0])) is not None:
            choice = 1  # the public code's quirk: a failing first candidate is kept (unless it raised)
        if choice:
            l_ref = ledger.losses[(p, name, cands[choice - 1])]
        accepted[name] = cands[choice - 1] if choice else 0.0
    return PassState(p, accepted, len(spec.names), [], rule, tried, loss=l_ref)


def replay_budget(spec: Spec, p: int, budget: float, start: Mapping[str, float], start_loss: float | None,
                  dense_loss: float, ledger: Ledger) -> PassState:
    """The budget pass `p` from `start` (module -> value; missing: 0.0) whose loss is `start_loss`.

    Module after module, front to back, the candidates above its start value are tried upward (a plain
    scan: :func:`walk`, the rest of the configuration as decided so far), accepted while
    ``loss / dense_loss < budget`` (``Acceptance(dense_loss, budget)``); the module keeps the largest
    accepted (its start value if none). When the start already fails the budget there is nothing to
    spend: the pass is done at once, with the start. Warm start and the keep-first quirk do not apply.
    """
    start = {name: float(start.get(name, 0.0)) for name in spec.names}
    rule = Acceptance(dense_loss, budget, dict.fromkeys(spec.names, 0.0))
    if start_loss is not None and not rule.accepts(start_loss):
        return PassState(p, start, len(spec.names), [], rule, {}, start, start_loss)
    accepted: dict[str, float] = {}
    tried: dict[str, list[tuple[float, float | None, bool]]] = {}
    loss = start_loss
    for m, name in enumerate(spec.names):
        cands = spec.candidates[name]
        base = bisect.bisect_right(cands, start[name])  # candidates 1..base are at or below the start
        seen = tried[name] = []

        def outcome(j: int, name: str = name, cands: tuple[float, ...] = cands, base: int = base,
                    seen: list[tuple[float, float | None, bool]] = seen) -> bool | None:
            key = (p, name, cands[base + j - 1])
            if key not in ledger.losses:
                return None
            seen.append((key[2], ledger.losses[key], rule.accepts(ledger.losses[key])))
            return seen[-1][2]

        choice, unknown = walk(len(cands) - base, 0, outcome)
        frontier: list[Key] = [(p, name, cands[base + j - 1]) for j in unknown]
        if frontier:
            return PassState(p, accepted, m, frontier, rule, tried, start)
        if choice:
            loss = ledger.losses[(p, name, cands[base + choice - 1])]
        accepted[name] = cands[base + choice - 1] if choice else start[name]
    return PassState(p, accepted, len(spec.names), [], rule, tried, start, loss)
