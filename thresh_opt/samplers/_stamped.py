"""What the greedy and sensitivity samplers share: a trial's whole configuration is decided in
`before_trial` and stamped into the trial's system attributes; the parameters they do not own go to an
independent sampler, as Optuna's TPE and CMA-ES do."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from optuna.logging import get_logger
from optuna.samplers import BaseSampler, RandomSampler

from thresh_opt import compat

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

_logger = get_logger(__name__)


def finite(value: object) -> float | None:
    """The value as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def positive_levels(search_space: Mapping[str, Sequence[float]], owner: str, what: str) -> dict[str, tuple[float, ...]]:
    """Parameter -> its positive levels, ascending and unique (0.0 is implied); a ValueError naming the
    parameter for anything but a non-empty mapping of lists of finite numbers >= 0."""
    if not search_space:
        raise ValueError(f"{owner} needs at least one parameter in search_space")
    out: dict[str, tuple[float, ...]] = {}
    for name, values in search_space.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"{what} of {name!r} must be a list of numbers, got {values!r}")
        values = list(values)
        if any(finite(v) is None or v < 0 for v in values):
            raise ValueError(f"{what} of {name!r} must be finite numbers >= 0, got {values!r}")
        out[name] = tuple(sorted({float(v) for v in values if v > 0}))
    return out


def level_subset(levels: Mapping[str, tuple[float, ...]], subset: Sequence[float], owner: str,
                 what: str) -> dict[str, tuple[float, ...]]:
    """Every parameter's levels restricted to `subset` (positive, ascending); a ValueError naming a level
    of `subset` that some parameter lacks, or an empty one."""
    wanted = positive_levels({what: subset}, owner, what)[what]
    if not wanted:
        raise ValueError(f"{what} must hold at least one level > 0, got {list(subset)!r}")
    for name, own in levels.items():
        missing = [v for v in wanted if v not in own]
        if missing:
            raise ValueError(f"{what} {missing!r} are not levels of {name!r} (its levels: {list(own)})")
    return dict.fromkeys(levels, wanted)


class StampedSampler(BaseSampler):
    """Base of a sampler that stamps each trial's configuration (``params_attr``, a dict of its owned
    parameters) and returns it from :meth:`sample_independent`.

    Args:
        owned: the parameters it decides.
        params_attr: the trial system attribute holding a trial's stamped configuration.
        independent_sampler: samples the rest (default: :class:`~optuna.samplers.RandomSampler`).
        warn_independent_sampling: warn once per parameter name sampled by `independent_sampler`.
    """

    def __init__(self, owned: Iterable[str], params_attr: str, independent_sampler: BaseSampler | None,
                 warn_independent_sampling: bool) -> None:
        self._owned = frozenset(owned)
        self._params_attr = params_attr
        self._independent = independent_sampler or RandomSampler()
        self._warn = warn_independent_sampling
        self._warned: set[str] = set()  # names warned about (logging only: no decision depends on it)

    def owns(self, param_name: str) -> bool:
        """True for a parameter of its search space (the others are sampled independently)."""
        return param_name in self._owned

    def _write_stamp(self, study: Study, trial: FrozenTrial, stamp: Mapping[str, Any]) -> None:
        """Store the stamp on the trial (the storage and the FrozenTrial at hand)."""
        for attr, value in stamp.items():
            compat.set_trial_system_attr(study, trial, attr, value)
            trial.system_attrs[attr] = value

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        name = type(self).__name__
        params = trial.system_attrs.get(self._params_attr)
        if params is None or param_name not in params:
            if self._warn and param_name not in self._warned:
                self._warned.add(param_name)
                why = ("is not in its search space" if not self.owns(param_name)
                       else "was asked on a trial it did not issue")
                _logger.warning(f"{name}: parameter {param_name!r} {why}; it is sampled by "
                                f"{type(self._independent).__name__} (warned once).")
            return self._independent.sample_independent(study, trial, param_name, param_distribution)
        value = params[param_name]
        choices = getattr(param_distribution, "choices", None)
        if choices is not None and value not in choices:
            raise ValueError(
                f"{name} chose {value} for {param_name!r}, which is not among the choices "
                f"{list(choices)}: ask with {name}.search_space (0.0 included)."
            )
        return value

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._independent.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._independent.reseed_rng()
