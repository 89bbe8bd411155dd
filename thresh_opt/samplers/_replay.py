"""A deterministic search written as a replay over a ledger of stored results.

A sampler that keeps no state re-runs its whole algorithm on every ask: the algorithm asks the ledger
for the result of each configuration it needs (:meth:`Ledger.results`), and the first time a result is
missing the replay stops with :class:`Missing`, whose keys are the next trials to issue. Since every
decision depends only on stored results, the replay makes the same decisions whatever order results
arrived in and whichever process stored them; RUNNING trials are pending (issued), so parallel workers
get the other missing keys.

Example:

    .. testcode::

        from thresh_opt.samplers._replay import Ledger, Missing, Result

        ledger = Ledger(names=("a", "b"), results={(0.0, 0.0): Result(3.0, 0.1)})

        def search(ledger):
            dense = ledger.results([(0.0, 0.0)])[0]
            return ledger.results([(0.5, 0.0), (0.0, 0.5)])  # both needed for the next decision

        try:
            search(ledger)
        except Missing as missing:
            print(missing.keys)

    .. testoutput::

        [(0.5, 0.0), (0.0, 0.5)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from thresh_opt.samplers._stamped import finite

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from optuna.trial import FrozenTrial

Key = tuple[float, ...]  # the owned parameters' values, in search-space order


@dataclass(frozen=True)
class Result:
    """One configuration's stored result."""

    loss: float | None  # None: the evaluation failed, or stored no finite loss
    sparsity: float | None  # the measured sparsity (None when not stored)


class Missing(Exception):  # noqa: N818 - a signal, not an error
    """Raised by :meth:`Ledger.results` when a result is not stored yet: ``keys`` are the configurations
    the replay needs next, in the order it asked for them."""

    def __init__(self, keys: list[Key]) -> None:
        super().__init__(f"{len(keys)} configuration(s) without a result")
        self.keys = keys


class Ledger:
    """Results by configuration (``results_by_key``), and the configurations issued but not finished
    (``pending``), for the owned parameters ``names`` in search-space order."""

    def __init__(self, names: Sequence[str], results: Mapping[Key, Result] | None = None,
                 pending: Iterable[Key] = ()) -> None:
        self.names = tuple(names)
        self.results_by_key = dict(results or {})
        self.pending = set(pending)

    def key(self, params: Mapping[str, Any] | None) -> Key | None:
        """The configuration of a trial's parameters (None unless every owned one is a finite number)."""
        if not params or any(n not in params for n in self.names):
            return None
        values = [finite(params[n]) for n in self.names]
        return None if any(v is None for v in values) else tuple(v for v in values if v is not None)

    def params(self, key: Key) -> dict[str, float]:
        """The parameters of a configuration."""
        return dict(zip(self.names, key))

    def get(self, key: Key) -> Result | None:
        """The stored result, or None."""
        return self.results_by_key.get(key)

    def results(self, keys: Sequence[Key]) -> list[Result]:
        """The results of all `keys`, or :class:`Missing` with those that have none (asked together, so
        that they can be evaluated in parallel)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self.results_by_key]
        if missing:
            raise Missing(missing)
        return [self.results_by_key[k] for k in keys]


def read_ledger(trials: Iterable[FrozenTrial], names: Sequence[str], params_attr: str, loss_key: str,
                sparsity_key: str) -> Ledger:
    """The ledger of a study's trials, matched by configuration (any trial whose owned parameters match,
    so an enqueued baseline counts and a configuration is never issued twice).

    COMPLETE gives the loss in ``user_attrs[loss_key]`` (missing or not finite: failed); FAIL is failed;
    PRUNED with a finite loss counts by it; PRUNED without one (abandoned) is issued again; RUNNING and
    WAITING are pending (their configuration read from ``params_attr``, the enqueued ``fixed_params`` or
    the parameters). Duplicates: the first result with a loss wins.
    """
    ledger = Ledger(names)
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            key = ledger.key(t.system_attrs.get(params_attr) or t.system_attrs.get("fixed_params") or t.params)
            if key is not None:
                ledger.pending.add(key)
            continue
        key = ledger.key(t.params)
        if key is None:
            continue
        loss = finite(t.user_attrs.get(loss_key))
        if t.state == TrialState.PRUNED and loss is None:
            continue
        known = ledger.results_by_key.get(key)
        if known is None or known.loss is None:
            ledger.results_by_key[key] = Result(loss, finite(t.user_attrs.get(sparsity_key)))
    return ledger
