"""SensitivitySampler: measure each parameter alone, evaluate the Lagrangian allocation front, then
(optionally) refine its points with budget passes on measured losses."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from optuna.logging import get_logger
from optuna.samplers import BaseSampler

from thresh_opt import compat, keys
from thresh_opt.samplers import allocation
from thresh_opt.samplers._greedy_state import Acceptance, Ledger, PassState, Spec, budgets, collect, replay_budget
from thresh_opt.samplers._replay import Result, read_ledger
from thresh_opt.samplers._stamped import StampedSampler, finite, level_subset, positive_levels

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from thresh_opt.samplers._greedy_state import Key as PassKey

_logger = get_logger(__name__)

# System attributes stamped on every trial the sampler issues.
ROLE = "sensitivity:role"  # "dense" | "probe" | "front" | "refine" | "wait" | "finished"
PARAMS = "sensitivity:params"  # the whole assignment of the trial
PARAM = "sensitivity:param"  # a probe's parameter, or the one a refine trial raises (None otherwise)
LEVEL = "sensitivity:level"  # its level (None otherwise)
PREDICTED = "sensitivity:predicted"  # a front trial's prediction: {"gain", "loss_increase", "lambda"}
REFINE = "sensitivity:refine"  # a refine trial's {"pass": budget index, "id": fingerprint, "budget", "reference"}

Key = tuple[float, ...]  # the owned parameters' values, in search-space order
Probes = Literal["measured", "gradient"]  # where the sensitivity table comes from (study files: catalog.py)
PROBES: tuple[str, ...] = get_args(Probes)


@dataclass
class _State:
    """What the stored trials say, and what follows from it."""

    results: dict[Key, Result] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)  # RUNNING, or enqueued and WAITING
    dense_loss: float | None = None
    front: list[allocation.Allocation] | None = None  # the selected front (None until phase 1 is done)
    gains_measured: bool = False
    refine: list[PassState] = field(default_factory=list)  # one per budget, once every front trial has a result
    ledger: Ledger = field(default_factory=Ledger)  # the refine trials' results
    refine_ids: list[str] = field(default_factory=list)  # fingerprint of each pass (its budget and start)


class SensitivitySampler(StampedSampler):
    """Sensitivity allocation: each parameter alone at each level, then the Lagrangian front.

    Phase 1 evaluates the dense configuration (every parameter at 0.0) and every *probe*: one parameter
    at one positive level, all others at 0.0 (``sum(len(levels) - 1)`` trials). Each probe gives that
    level's loss increase over the dense loss (user attribute ``loss_key``) and its gain: by default the
    increase of the measured user attribute ``sparsity_key`` over the dense trial's (for a study, the
    MAC-weighted model-wide sparsity: exact for the probe, no weights needed), or ``weights[param] x level``
    when ``weights`` is given. Phase 2 assumes both add up over parameters and evaluates configurations
    of the Lagrangian front (:func:`thresh_opt.samplers.allocation.front`: each parameter at the level
    maximizing ``gain - lam x loss increase``, for every multiplier ``lam`` at which some choice
    changes), at most ``front_size`` of them spread evenly along it (the all-dense one excluded: it is
    the dense trial). Phase 3 (``refine_budgets``; losses do not add up exactly): per budget, from the
    front trial with the most measured sparsity whose measured loss ratio to the dense loss is below it
    (else dense), the greedy sampler's budget pass raises each parameter in order while the measured
    ratio stays below it (:meth:`refined`). Then :meth:`is_finished` is True.

    Example:

        .. testcode::

            import optuna

            from thresh_opt.samplers import SensitivitySampler

            weights = {"blocks.0.att.key": 0.002, "blocks.0.ffn.key": 0.05, "blocks.1.att.key": 0.004}
            sampler = SensitivitySampler({name: [0.0, 0.3, 0.6, 0.9] for name in weights}, front_size=4)


            def objective(trial):
                x = {n: trial.suggest_categorical(n, sampler.search_space[n]) for n in weights}
                trial.set_user_attr("sparsity", sum(x.values()) / 3)  # what a study measures
                trial.set_user_attr("calibration_loss", 3.0 * (1 + sum(w * x[n] ** 2 for n, w in weights.items())))
                return trial.user_attrs["calibration_loss"]


            def stop_when_finished(study, _trial):
                if sampler.is_finished(study):
                    study.stop()


            study = optuna.create_study(sampler=sampler)
            study.optimize(objective, n_trials=100, callbacks=[stop_when_finished])
            print(len(study.trials), sampler.final_params(study)[0])

    No state is kept in the sampler: results are read from the stored trials by configuration (any
    finished trial whose owned parameters match, so an enqueued dense baseline is the dense trial and a
    configuration is never issued twice), and :meth:`before_trial` stamps what it proposes into the
    trial's system attributes ``sensitivity:role`` (``"dense"``, ``"probe"``, ``"front"``, ``"refine"``,
    ``"wait"``, ``"finished"``), ``sensitivity:params``, ``sensitivity:param`` and ``sensitivity:level`` (a
    probe's, or the parameter a refine trial raises), ``sensitivity:predicted`` (a front trial's predicted
    gain and loss increase, and its multiplier) and ``sensitivity:refine`` (a refine trial's pass, its
    fingerprint and budget; refine trials are read by these stamps). A RUNNING trial of a configuration,
    or an enqueued one still WAITING, counts as issued. A new sampler on the same storage continues.

    Note:
        Trial states: COMPLETE gives the loss in ``loss_key`` (missing or not finite: a failed level);
        FAIL is a failed level, never chosen in phase 2 (a failed dense trial is issued again); PRUNED with a
        finite loss counts by it; PRUNED without one (abandoned) is issued again. Phase 1's trials can all
        run at once; phase 2 waits for all of them (:meth:`needs_wait`), then its trials can all run at
        once. Phase 3 waits for every front trial; its passes run side by side (speculating as the greedy
        sampler does). A trial asked while nothing can be issued repeats the dense configuration
        (``"wait"``), or, once finished, the last front or refined configuration (``"finished"``).

    Args:
        search_space:
            Parameter name -> levels (target sparsities, non-negative). 0.0 is added when missing;
            duplicates are dropped. The dict order is the order of the probes.
        loss_key:
            The trial user attribute holding the loss the allocation reads.
        front_size:
            The most front configurations phase 2 evaluates (>= 1).
        weights:
            Parameter name -> gain weight (e.g. its share of the MACs): gain = weight x level. Default:
            the measured ``sparsity_key`` increase of each probe; when a probe or the dense trial lacks it,
            every parameter's weight is 1 / (number of parameters).
        sparsity_key:
            The trial user attribute holding the measured sparsity (the gain without ``weights``).
        refine_budgets:
            Loss ratios to the dense loss (> 1): one refinement (budget pass) per budget. Default: none.
        probe_levels:
            The levels probed, among every parameter's levels (default: all of them). The front chooses
            among the probed levels only; refinement walks every level. Fewer probes bring the front sooner.
        probes:
            ``"measured"`` (default): phase 1 as above. ``"gradient"``: no probe trials; the table is read
            from the study's user attribute ``thresh_opt:gradient_scores`` (``keys.GRADIENT_SCORES``: a
            thresh-opt study sets it from one gradient pass on the dense model before any trial,
            :mod:`thresh_opt.incremental.gradient`), scores that predict the loss increases up to a
            common factor, with their predicted gains (used unless ``weights`` is given). Predicted loss
            increases (``front()``, the ``sensitivity:predicted`` stamps) are then in score units.
        independent_sampler:
            Samples the parameters it does not own (not in ``search_space``, or asked on a trial it did
            not stamp), as Optuna's TPE and CMA-ES do. Default: :class:`~optuna.samplers.RandomSampler`.
        warn_independent_sampling:
            Warn once per parameter name the first time one is sampled by ``independent_sampler``.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[float]],
        loss_key: str = "calibration_loss",
        front_size: int = 16,
        weights: Mapping[str, float] | None = None,
        sparsity_key: str = "sparsity",
        refine_budgets: Sequence[float] = (),
        probe_levels: Sequence[float] | None = None,
        probes: Probes = "measured",
        independent_sampler: BaseSampler | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        levels = positive_levels(search_space, "SensitivitySampler", "levels")
        if isinstance(front_size, bool) or not isinstance(front_size, int) or front_size < 1:
            raise ValueError(f"front_size must be an integer >= 1, got {front_size!r}")
        if weights is not None:
            bad = {n: weights.get(n) for n in levels if finite(weights.get(n)) is None or weights[n] < 0}
            if bad:
                raise ValueError(f"weights must give every parameter a finite weight >= 0; wrong or missing: {bad}")
        if probes not in PROBES:
            raise ValueError(f"probes must be one of {', '.join(PROBES)}, got {probes!r}")
        self._levels, self._gradient = levels, probes == "gradient"
        self._probed = levels if probe_levels is None else level_subset(levels, probe_levels, "SensitivitySampler",
                                                                          "probe_levels")
        self._names = tuple(levels)
        self._loss_key = loss_key
        self._sparsity_key = sparsity_key
        self._front_size = front_size
        self._weights = None if weights is None else {n: float(weights[n]) for n in levels}
        self._budgets = budgets(list(refine_budgets), "refine_budgets")
        self._spec = Spec(self._names, levels, {n: n for n in levels}, warm_start=False, keep_first=False)
        super().__init__(levels, PARAMS, independent_sampler, warn_independent_sampling)

    @property
    def loss_key(self) -> str:
        """The trial user attribute (an objective of the study) the allocation reads."""
        return self._loss_key

    @property
    def needs_gradient_scores(self) -> bool:
        """True when the table comes from the study attribute ``keys.GRADIENT_SCORES`` (probes: gradient)."""
        return self._gradient

    @property
    def search_space(self) -> dict[str, list[float]]:
        """Parameter name -> all its levels, 0.0 included, ascending (the choices to ask with)."""
        return {name: [0.0, *c] for name, c in self._levels.items()}

    # ---- configurations ------------------------------------------------------------------------

    @property
    def _dense(self) -> Key:
        return (0.0,) * len(self._names)

    def _probes(self) -> list[tuple[str, float, Key]]:
        """(param, level, key) of every one-at-a-time configuration, in search-space then level order."""
        out: list[tuple[str, float, Key]] = []
        if self._gradient:
            return out  # the table is predicted, not measured
        for i, name in enumerate(self._names):
            for level in self._probed[name]:
                key = list(self._dense)
                key[i] = level
                out.append((name, level, tuple(key)))
        return out

    def _params(self, key: Key) -> dict[str, float]:
        return dict(zip(self._names, key))

    # ---- derived state -------------------------------------------------------------------------

    def _read(self, study: Study) -> _State:
        # Query the storage directly, as GridSampler does (a pruner may filter study.get_trials).
        trials = compat.all_trials(study)
        ledger = read_ledger(trials, self._names, PARAMS, self._loss_key, self._sparsity_key)
        state = _State(results=ledger.results_by_key, pending=ledger.pending)
        dense = state.results.get(self._dense)
        state.dense_loss = dense.loss if dense is not None else None
        probes = self._probes()
        scores = study.user_attrs.get(keys.GRADIENT_SCORES) if self._gradient else None
        if self._gradient and scores is None:
            raise RuntimeError(f"probes='gradient' needs the study user attribute {keys.GRADIENT_SCORES!r} "
                               "(thresh-opt's study driver sets it; see SensitivitySampler's probes)")
        if state.dense_loss is not None and all(key in state.results for _, _, key in probes):
            state.front = self._front(state, probes, scores)
            if self._budgets and all(k in state.results for k in self._front_keys(state)):
                self._refine(state, trials)
        return state

    def _refine(self, state: _State, trials: list[FrozenTrial]) -> None:
        """Replay every budget pass from its start (phase 3)."""
        assert state.dense_loss is not None
        dense_loss = state.dense_loss
        keys = [self._dense, *self._front_keys(state)]
        rs = [state.results[k] for k in keys]
        gains = [0.0, *(a.gain for a in state.front or [])]  # predicted: where the sparsity is not stored
        points = [(g if r.sparsity is None else r.sparsity, math.inf if r.loss is None else r.loss / dense_loss)
                  for r, g in zip(rs, gains)]
        starts = [(keys[i], rs[i].loss) for i in (allocation.most_gain_below(points, b) for b in self._budgets)]
        # A pass's trials are recognized by the settings behind its decisions: another start, another pass.
        levels = {n: list(v) for n, v in self._levels.items()}
        ids = state.refine_ids = [hashlib.sha1(json.dumps(
            {"budget": b, "start": list(k), "levels": levels, "loss_key": self._loss_key, "pass": i},
            sort_keys=True).encode()).hexdigest()[:16] for i, (b, (k, _)) in enumerate(zip(self._budgets, starts))]

        def key_of(t: FrozenTrial) -> PassKey | None:
            stamp = t.system_attrs.get(REFINE)
            if t.system_attrs.get(ROLE) != "refine" or not isinstance(stamp, dict):
                return None
            i = stamp.get("pass")
            if not isinstance(i, int) or not 0 <= i < len(ids) or stamp.get("id") != ids[i]:
                return None
            return (i, t.system_attrs.get(PARAM), float(t.system_attrs.get(LEVEL, 0.0)))

        state.ledger = collect(trials, key_of, self._loss_key)
        state.refine = [replay_budget(self._spec, i, b, self._params(k), loss, dense_loss, state.ledger)
                        for i, (b, (k, loss)) in enumerate(zip(self._budgets, starts))]

    def _front(self, state: _State, probes: list[tuple[str, float, Key]],
               scores: Mapping[str, Any] | None) -> list[allocation.Allocation]:
        """The selected front of the predicted table (gradient scores) or of the measured probes."""
        if scores is not None:
            table, gains = allocation.scored_tables(scores, self._probed, self._weights)
        else:
            assert state.dense_loss is not None
            rows = [(name, level, state.results[key].loss, state.results[key].sparsity)
                    for name, level, key in probes]
            table, gains, state.gains_measured = allocation.measured_tables(
                self._names, state.dense_loss, state.results[self._dense].sparsity, rows, self._weights)
        path = [a for a in allocation.front(table, gains) if any(a.levels.values())]  # the dense one is known
        return allocation.spread(path, self._front_size)

    def _front_keys(self, state: _State) -> list[Key]:
        return [tuple(a.levels[n] for n in self._names) for a in state.front or []]

    def _next(self, state: _State) -> tuple[str, Key, dict[str, Any]]:
        """The role, configuration and extra stamps of the next trial to issue."""

        def free(key: Key) -> bool:
            return key not in state.pending and (
                key not in state.results or (key == self._dense and state.dense_loss is None))

        if free(self._dense):
            return "dense", self._dense, {}
        for name, level, key in self._probes():
            if free(key):
                return "probe", key, {PARAM: name, LEVEL: level}
        if state.front is None:
            return "wait", self._dense, {}
        for a, key in zip(state.front, self._front_keys(state)):
            if free(key):
                return "front", key, {PREDICTED: {"gain": a.gain, "loss_increase": a.loss, "lambda": a.lam}}
        for i, refine in enumerate(state.refine):
            for k in refine.frontier:
                if k not in state.ledger.pending and k not in state.ledger.losses:
                    stamps = {PARAM: k[1], LEVEL: k[2],
                              REFINE: {"pass": i, "id": state.refine_ids[i], "budget": self._budgets[i],
                                       "reference": state.dense_loss}}
                    return "refine", self._key_of(refine.config(self._names, k)), stamps
        if not self._done(state):
            return "wait", self._dense, {}
        last = [self._key_of(r.accepted) for r in state.refine] or self._front_keys(state) or [self._dense]
        return "finished", last[-1], {}

    def _done(self, state: _State) -> bool:
        return (state.front is not None and all(k in state.results for k in self._front_keys(state))
                and len(state.refine) == len(self._budgets) and all(r.done for r in state.refine))

    def _key_of(self, params: Mapping[str, float]) -> Key:
        return tuple(params[n] for n in self._names)

    # ---- SteppedSampler ------------------------------------------------------------------------

    def is_finished(self, study: Study) -> bool:
        """True when every probe, every selected front configuration and every refinement has a result."""
        return self._done(self._read(study))

    def needs_wait(self, study: Study) -> bool:
        """True when nothing can be issued now: phase 2 waits for every running probe, phase 3 for every
        running front trial, the end for every running refine trial."""
        return self._next(self._read(study))[0] == "wait"

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """The selected front configurations evaluated so far, by increasing predicted gain, then the
        finished refinements in budget order."""
        state = self._read(study)
        return ([self._params(k) for k in self._front_keys(state) if k in state.results]
                + [dict(r.accepted) for r in state.refine if r.done])

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """The rule that will judge refine trial `number` (its pass's budget on the dense loss); None for
        the other trials (their results are not judged)."""
        attrs = study.get_trials(deepcopy=False)[number].system_attrs
        stamp = attrs.get(REFINE)
        if attrs.get(ROLE) != "refine" or not isinstance(stamp, dict):
            return None
        return Acceptance(stamp["reference"], stamp["budget"], dict.fromkeys(self._names, 0.0))  # on the dense loss

    # ---- inspection ----------------------------------------------------------------------------

    def sensitivities(self, study: Study) -> dict[str, dict[float, float]]:
        """Param -> level -> measured loss increase over the dense loss (inf: failed), for the probes
        with a result (empty while the dense loss is unknown)."""
        state = self._read(study)
        if state.dense_loss is None:
            return {}
        out: dict[str, dict[float, float]] = {n: {} for n in self._names}
        for name, level, key in self._probes():
            r = state.results.get(key)
            if r is not None:
                out[name][level] = math.inf if r.loss is None else r.loss - state.dense_loss
        return out

    def front(self, study: Study) -> list[dict[str, Any]]:
        """The selected front (empty until phase 1 is done): per configuration its ``params``, predicted
        ``gain`` and ``loss_increase``, ``lambda``, and, once evaluated, the measured ``loss_increase``
        and ``gain`` (``measured_loss_increase``, ``measured_gain``: sparsity over the dense trial's;
        None when not stored). ``gains_measured`` in each row says whether the prediction used measured
        sparsities (True) or weights."""
        state = self._read(study)
        dense = state.results.get(self._dense)
        rows = []
        for a, key in zip(state.front or [], self._front_keys(state)):
            r = state.results.get(key)
            loss = None if r is None or r.loss is None or state.dense_loss is None else r.loss - state.dense_loss
            gain = (None if r is None or r.sparsity is None or dense is None or dense.sparsity is None
                    else r.sparsity - dense.sparsity)
            rows.append({"params": self._params(key), "gain": a.gain, "loss_increase": a.loss, "lambda": a.lam,
                         "measured_loss_increase": loss, "measured_gain": gain,
                         "gains_measured": state.gains_measured})
        return rows

    def refined(self, study: Study) -> list[dict[str, Any]]:
        """One row per refinement started (empty until every front trial has a result): its ``budget``,
        the ``start`` configuration with its measured ``start_loss_ratio``, ``done``, and once done the
        final ``params``, its ``loss_ratio`` and ``sparsity`` (None when not stored)."""
        state = self._read(study)
        rows = []
        for budget, r in zip(self._budgets, state.refine):
            assert state.dense_loss is not None  # the passes start once the front is measured
            start = self._key_of(r.start)
            loss = state.results[start].loss
            result = state.results.get(self._key_of(r.accepted)) if r.done else None
            rows.append({"budget": budget, "start": dict(r.start), "done": r.done,
                         "start_loss_ratio": None if loss is None else loss / state.dense_loss,
                         "params": dict(r.accepted) if r.done else None,
                         "loss_ratio": None if r.loss is None or not r.done else r.loss / state.dense_loss,
                         "sparsity": None if result is None else result.sparsity})
        return rows

    # ---- sampler API ---------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Enqueued trials (fixed_params) and trials already stamped (e.g. retried) are left alone.
        if "fixed_params" in trial.system_attrs or ROLE in trial.system_attrs:
            return
        state = self._read(study)
        role, key, extra = self._next(state)
        if role == "wait":
            _logger.warning("SensitivitySampler: every next configuration depends on running trials "
                            "(needs_wait); this trial repeats the dense configuration.")
        self._write_stamp(study, trial, {ROLE: role, PARAMS: self._params(key), PARAM: None, LEVEL: None, **extra})
