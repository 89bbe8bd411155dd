"""The private library calls thresh-opt still makes, in one place: each has no public equivalent.

Optuna's public API sets attributes only on a live `optuna.Trial` of this process, and study system
attributes not at all; a sampler's `before_trial` receives a `FrozenTrial`, and a driver abandons other
drivers' trials, so both write through the storage, as Optuna's own samplers (GridSampler,
NSGAIISampler) do. The journal file is synced to disk once per trial state change instead of once per line
(`journal_storage`), through JournalFileBackend's lock. When Optuna grows a public way, change it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation as Op
from optuna.trial import FrozenTrial, TrialState


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


# A running trial's own writes: the journal lines that are not synced to disk at once.
_UNSYNCED = frozenset({Op.SET_TRIAL_PARAM, Op.SET_TRIAL_INTERMEDIATE_VALUE, Op.SET_TRIAL_USER_ATTR,
                       Op.SET_TRIAL_SYSTEM_ATTR})


def _synced(log: dict[str, Any]) -> bool:
    """Whether a journal line is synced to disk at once: every line but a running trial's own writes (its
    creation, parameters, intermediate values and attributes)."""
    if log.get("op_code") == Op.CREATE_TRIAL:
        return log.get("state", TrialState.RUNNING) != TrialState.RUNNING  # an enqueued or added trial
    return log.get("op_code") not in _UNSYNCED


class _TrialSyncedBackend(JournalFileBackend):
    """Optuna's journal file, synced to disk once per trial state change instead of once per line.

    Syncing the line that ends a trial (its state and values) also syncs every earlier line of the file, so
    each finished trial and everything before it is on disk, as with Optuna's sync of every line, for one
    sync per trial instead of one per line (a module-grouped RWKV trial writes about 76 lines). A running
    trial's unsynced lines survive a killed process (they are in the OS's page cache); only a crash of the
    machine itself can lose them, and a running trial is failed and asked again on resume anyway.
    """

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if any(_synced(log) for log in logs):
            super().append_logs(logs)
            return
        with get_lock_file(self._lock):  # the lock and line format of JournalFileBackend.append_logs
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))


def journal_storage(path: str | Path) -> JournalStorage:
    """The journal storage of a journal file (created when missing), synced once per trial state change."""
    return JournalStorage(_TrialSyncedBackend(str(path)))
