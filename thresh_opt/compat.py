"""The private library calls thresh-opt still makes, in one place: each has no public equivalent.

Optuna's public API sets attributes only on a live `optuna.Trial` of this process, and study system
attributes not at all; a sampler's `before_trial` receives a `FrozenTrial`, and a driver abandons other
drivers' trials, so both write through the storage, as Optuna's own samplers (GridSampler,
NSGAIISampler) do. When Optuna grows a public way, change it here.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial straight from the storage, as GridSampler reads them (no copy, no pruner filter)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def set_trial_system_attr(study: optuna.Study, trial: FrozenTrial | optuna.Trial, key: str, value: Any) -> None:
    """A system attribute on any trial of the study (a sampler's FrozenTrial included)."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """A user attribute on a trial this process did not ask for (another driver's)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes (Optuna 5 has no public reader)."""
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """A study system attribute (liveness records: kept apart from the user attributes users browse)."""
    study._storage.set_study_system_attr(study._study_id, key, value)
