"""GreedySampler: the published sequential greedy threshold search, replayed from stored trials."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from optuna.logging import get_logger
from optuna.samplers import BaseSampler

from thresh_opt import compat
from thresh_opt.samplers._greedy_state import (
    CANDIDATE,
    MODULE,
    PARAMS,
    PASS,
    PASS_ID,
    PASS_KIND,
    REFERENCE,
    REFERENCE_PARAMS,
    ROLE,
    STEP,
    TOLERANCE,
    Acceptance,
    Spec,
    budgets,
    default_kind,
    read_ledger,
    replay_budget,
    replay_pass,
    start_level_of,
    tolerances,
)
from thresh_opt.samplers._stamped import StampedSampler, finite, positive_levels

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from thresh_opt.samplers._greedy_state import Key, Ledger, PassState


_logger = get_logger(__name__)


class GreedySampler(StampedSampler):
    """The sequential greedy threshold search of Knunyants et al. (arXiv 2501.16337), as a sampler.

    Each parameter is a module, in the order of ``search_space`` (front to back); its value is a
    target sparsity from its candidate list (0.0: dense). ``L_ref`` starts as the loss of the
    all-dense configuration. For each module in order, candidates are tried in increasing order with
    the earlier modules at their accepted values and the later ones at 0.0; a candidate is accepted
    while ``loss / L_ref < loss_inc``, the search stops at the first failure, the module is fixed at
    the largest accepted candidate (0.0 if none) and ``L_ref`` becomes the loss of that setting, so
    the tolerance compounds. With ``warm_start``, a module whose kind already has choices starts at
    the most frequent of them (ties: the smaller) and goes up while accepted, or down until accepted. With
    ``start_level``, a module with nothing to warm-start from (the first of its kind, or every module
    without the warm start) walks the same way from that level instead of scanning from the bottom.

    With ``budget``, budget passes follow the tolerance passes: from the configuration the last pass
    ended with, each module in order is raised further while ``loss / L_dense < budget`` (an absolute
    bound on the ratio to the dense loss of the last tolerance pass, not compounding), stopping at its
    first failure. A compounding tolerance pass usually stops short of the loss a study would accept; a
    budget pass spends what it left.

    The decisions use the loss stored in each trial's user attribute ``loss_key``, never the
    objective values, so the study may have any objectives.

    Example:

        .. testcode::

            import optuna
            from optuna.distributions import CategoricalDistribution

            from thresh_opt.samplers import GreedySampler

            weights = {"blocks.0.att.key": 0.002, "blocks.0.ffn.key": 0.05, "blocks.1.att.key": 0.004}
            levels = [0.0, 0.2, 0.4, 0.6, 0.8]
            sampler = GreedySampler({name: levels for name in weights}, loss_inc=1.0005)
            study = optuna.create_study(sampler=sampler)
            distributions = {name: CategoricalDistribution(levels) for name in weights}
            while not sampler.is_finished(study):
                trial = study.ask(distributions)
                loss = 3.0 * (1 + sum(w * trial.params[n] ** 2 for n, w in weights.items()))
                trial.set_user_attr("calibration_loss", loss)
                study.tell(trial, loss)
            print(sampler.final_params(study)[0])

    No state is kept in the sampler: :meth:`before_trial` derives the next evaluation from the stored
    trials (COMPLETE ones give results, RUNNING ones count as issued) and stamps it into the trial's
    system attributes ``greedy:role`` (``"dense"``, ``"candidate"``, ``"wait"``, ``"finished"``),
    ``greedy:pass``, ``greedy:pass_kind`` (``"tolerance"``, ``"budget"``), ``greedy:tolerance`` (a budget
    pass's budget), ``greedy:module``, ``greedy:candidate``, ``greedy:step``
    (module index, -1 for the dense trial), ``greedy:params`` and, for a candidate whose reference loss
    is known, ``greedy:reference`` and ``greedy:reference_params`` (the configuration it was measured on;
    :meth:`acceptance` gives the rule that will judge it). A new sampler on the same storage continues
    where the old one stopped. Trials it did not issue
    (enqueued baselines, other samplers, a sampler with other settings) are ignored.

    Note:
        Each pass (tolerance) issues its own dense trial first; the passes run one after another. A
        budget pass issues no dense trial (its reference is the last tolerance pass's).

    Note:
        Parallel workers: while results are pending, further trials are speculative: the next
        candidates on the search path, assuming each pending one continues the current direction
        (accepted going up, rejected going down; the warm-start candidate is assumed accepted).
        While the dense trial is pending, the first module's candidates are issued the same way.
        When every such candidate is already running, :meth:`needs_wait` is True; a trial asked
        anyway is a harmless duplicate of the current configuration (earlier modules at their
        accepted values, the rest dense) stamped ``"wait"`` and ignored: it may be told without
        being evaluated. Choices do not depend on how many workers there are or on the order of
        results; speculative results off the final path are unused. Two processes asking at the
        same moment may issue the same candidate twice; the first result with a loss is used.

    Note:
        Trial states: FAIL (the evaluation raised) rejects its candidate; a COMPLETE trial without a
        finite loss in ``loss_key`` rejects it too. A PRUNED trial with a finite loss (a driver skipped
        its expensive objectives because the loss failed :meth:`acceptance`) counts by that loss. A PRUNED
        trial without one is abandoned (e.g. a RUNNING trial left by a killed driver): its candidate is
        issued again. A failed dense trial is issued again.
        Once all passes are done, :meth:`is_finished` is True and every further trial repeats the
        last pass's final configuration, stamped ``"finished"``.

    Args:
        search_space:
            Parameter name -> candidate target sparsities (non-negative). The dict order is the
            module order. 0.0 is added when missing; duplicates are dropped.
        loss_inc:
            The tolerance (> 1), or a list of them: one full pass per tolerance, in the given order,
            each from scratch (all dense). A list traces a front.
        budget:
            A loss ratio to the dense loss (> 1), or a list of them: one budget pass per budget after the
            tolerance passes, in the given order, each from the configuration the previous pass ended with
            (so give them increasing: a budget the start already fails changes nothing and costs nothing).
            Default: none.
        loss_key:
            The trial user attribute holding the (positive) loss the decisions use.
        warm_start:
            Start each module at the most frequent choice of its kind so far.
        start_level:
            Where a module with nothing to warm-start from starts (the largest candidate at most this level),
            going up while accepted or down until accepted. Default: none, the published scan from the
            smallest candidate. A middle level saves most of the first block's candidates (all of a
            kind's lower levels are otherwise tried once), which are the costliest: passes from the
            first block.
        keep_first:
            The public code's quirk: a failing first (smallest) candidate is kept instead of 0.0,
            unless its evaluation raised.
        kind_of:
            Module name -> kind, for the warm start. Default: strip a leading ``<prefix>.<int>.``
            (``"blocks.3.att.key"`` -> ``"att.key"``); a name without it is its own kind.
        independent_sampler:
            Samples the parameters the greedy search does not own (not in ``search_space``, or asked on a
            trial it did not stamp), as Optuna's TPE and CMA-ES do. Default:
            :class:`~optuna.samplers.RandomSampler`.
        warn_independent_sampling:
            Warn once per parameter name the first time one is sampled by ``independent_sampler``.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[float]],
        loss_inc: float | Sequence[float] = 1.0005,
        budget: float | Sequence[float] | None = None,
        loss_key: str = "calibration_loss",
        warm_start: bool = True,
        keep_first: bool = False,
        start_level: float | None = None,
        kind_of: Callable[[str], str] | None = None,
        independent_sampler: BaseSampler | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        candidates = positive_levels(search_space, "GreedySampler", "candidates")
        try:
            first_level = start_level_of(start_level)
        except ValueError as exc:
            raise ValueError(f"GreedySampler: start_level: {exc}") from None
        self._tolerances = tolerances(loss_inc)
        self._budgets = budgets(budget)
        kind = kind_of or default_kind
        self._spec = Spec(
            names=tuple(candidates),
            candidates=candidates,
            kinds={name: str(kind(name)) for name in candidates},
            warm_start=bool(warm_start),
            keep_first=bool(keep_first),
            start_level=first_level,
        )
        self._loss_key = loss_key
        super().__init__(candidates, PARAMS, independent_sampler, warn_independent_sampling)
        ids: list[str] = []
        for p in range(len(self._tolerances) + len(self._budgets)):
            ids.append(self._pass_id(p, ids))
        self._pass_ids = tuple(ids)

    def _pass_id(self, p: int, earlier: list[str]) -> str:
        # Trials of a pass are recognized by this fingerprint: settings that change the decisions.
        settings: dict[str, Any] = {
            "candidates": {name: list(c) for name, c in self._spec.candidates.items()},
            "kinds": dict(self._spec.kinds),
            "warm_start": self._spec.warm_start,
            "keep_first": self._spec.keep_first,
            "loss_key": self._loss_key,
            "pass": p,
        }
        if self._spec.start_level is not None:  # only when set: the passes of earlier studies keep their ids
            settings["start_level"] = self._spec.start_level
        if p < len(self._tolerances):
            settings["tolerance"] = self._tolerances[p]
        else:  # its start is the end of the earlier passes: their settings are its own
            settings.update(budget=self._budgets[p - len(self._tolerances)], after=earlier[:p])
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def _bound(self, p: int) -> float:
        """Pass p's tolerance, or its budget for a budget pass."""
        t = len(self._tolerances)
        return self._tolerances[p] if p < t else self._budgets[p - t]

    @property
    def loss_key(self) -> str:
        """The trial user attribute (an objective of the study) the decisions read."""
        return self._loss_key

    @property
    def search_space(self) -> dict[str, list[float]]:
        """Parameter name -> all its values, 0.0 included, ascending (the choices to ask with)."""
        return {name: [0.0, *c] for name, c in self._spec.candidates.items()}

    # ---- derived state -------------------------------------------------------------------------

    def _derive(self, study: Study) -> tuple[list[PassState], PassState | None, Ledger]:
        """Finished passes, the current one (None when all are done) and the ledger behind them."""
        # Query the storage directly, as GridSampler does (a pruner may filter study.get_trials).
        trials = compat.all_trials(study)
        ledger = read_ledger(trials, self._pass_ids, self._loss_key)
        done: list[PassState] = []
        t = len(self._tolerances)
        for p in range(len(self._pass_ids)):
            if p < t:
                state = replay_pass(self._spec, p, self._tolerances[p], ledger)
            else:
                dense = ledger.losses[(t - 1, None, 0.0)]  # the last tolerance pass is done: measured
                assert dense is not None
                state = replay_budget(self._spec, p, self._budgets[p - t], done[-1].accepted, done[-1].loss,
                                      dense, ledger)
            if not state.done:
                return done, state, ledger
            done.append(state)
        return done, None, ledger

    def _config(self, state: PassState, key: Key | None = None) -> dict[str, float]:
        """Earlier modules at their accepted values, the key's module at its candidate, the rest at the
        pass's start (dense for a tolerance pass)."""
        return state.config(self._spec.names, key)

    @staticmethod
    def _issuable(state: PassState, ledger: Ledger) -> list[Key]:
        # A frontier key is undecided when it is running, or when it has a result that cannot be
        # judged yet (its pass's dense loss is still running): neither may be issued again.
        # A failed dense trial is the exception: it has no loss, and is issued again.
        return [k for k in state.frontier if k not in ledger.pending
                and (k not in ledger.losses or (k[1] is None and ledger.losses[k] is None))]

    def needs_wait(self, study: Study) -> bool:
        """True when every trial it could issue now depends on results of RUNNING trials."""
        _, current, ledger = self._derive(study)
        return current is not None and not self._issuable(current, ledger)

    def is_finished(self, study: Study) -> bool:
        """True when every pass is done."""
        return self._derive(study)[1] is None

    def passes(self, study: Study) -> list[PassState]:
        """Every finished pass, then the current one (if any): accepted values, and per module the
        candidates tried with their losses and verdicts."""
        done, current, _ = self._derive(study)
        return done + ([current] if current is not None else [])

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """The rule that will judge trial `number`'s loss, when the sampler issued it as a candidate whose
        reference loss was known (a trial that fails it cannot change any decision)."""
        attrs = study.get_trials(deepcopy=False)[number].system_attrs
        if attrs.get(ROLE) != "candidate" or finite(attrs.get(REFERENCE)) is None:
            return None
        return Acceptance(attrs[REFERENCE], attrs[TOLERANCE], attrs.get(REFERENCE_PARAMS))

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """The accepted value of every parameter, one dict per finished pass: the tolerance passes in order,
        then the budget passes.

        Shorter than the list of passes while passes are unfinished.
        """
        return [dict(state.accepted) for state in self._derive(study)[0]]

    def progress(self, study: Study) -> dict[str, Any]:
        """Where the search stands, for a progress bar.

        Keys: ``pass``, ``passes`` (tolerance and budget passes), ``tolerance`` (a budget pass's budget),
        ``module`` (under search; None when finished), ``done_modules`` and ``total_modules`` (in this
        pass), ``done_steps`` and ``total_steps`` (modules over all passes), ``finished``.
        """
        done, current, _ = self._derive(study)
        n, passes = len(self._spec.names), len(self._pass_ids)
        p = current.index if current is not None else passes - 1
        k = current.module if current is not None else n
        return {
            "pass": p,
            "passes": passes,
            "tolerance": self._bound(p),
            "module": self._spec.names[k] if k < n else None,
            "done_modules": k,
            "total_modules": n,
            "done_steps": len(done) * n + (k if current is not None else 0),
            "total_steps": passes * n,
            "finished": current is None,
        }

    # ---- sampler API ---------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Enqueued trials (fixed_params) and trials already stamped (e.g. retried) are left alone.
        if "fixed_params" in trial.system_attrs or ROLE in trial.system_attrs:
            return
        done, current, ledger = self._derive(study)
        if current is None:
            last = done[-1]
            stamp = self._stamp("finished", last.index, None, None, len(self._spec.names))
            params = dict(last.accepted)
        else:
            issuable = self._issuable(current, ledger)
            step = current.module
            if issuable:
                key = issuable[0]
                role = "dense" if key[1] is None else "candidate"
                stamp = self._stamp(role, key[0], key[1], key[2], -1 if key[1] is None else step)
                if role == "candidate" and current.acceptance is not None:
                    stamp[REFERENCE] = current.acceptance.reference
                    if current.acceptance.basis is not None:
                        stamp[REFERENCE_PARAMS] = dict(current.acceptance.basis)
                params = self._config(current, key)
            else:
                _logger.warning(
                    "GreedySampler: every next candidate depends on running trials (needs_wait); "
                    "this trial repeats the current configuration and is ignored."
                )
                name = self._spec.names[step]
                stamp = self._stamp("wait", current.index, name, None, step)
                params = self._config(current)
        stamp[PARAMS] = params
        self._write_stamp(study, trial, stamp)

    def _stamp(self, role: str, p: int, module: str | None, candidate: float | None, step: int) -> dict[str, Any]:
        return {
            ROLE: role,
            PASS: p,
            PASS_ID: self._pass_ids[p],
            PASS_KIND: "tolerance" if p < len(self._tolerances) else "budget",
            TOLERANCE: self._bound(p),
            MODULE: module,
            CANDIDATE: candidate,
            STEP: step,
        }
