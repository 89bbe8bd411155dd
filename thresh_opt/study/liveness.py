"""Several drivers on one study: which RUNNING trials are alive, and one driver at a time in start-up.

Each driver stamps the trials it asks for with its id and keeps a lease in the study's system attributes
(``thresh_opt:lease:<id>``: when it expires, and the driver's host and pid), refreshed by a thread every
`INTERVAL` seconds while it runs and dropped when it ends. A RUNNING trial is stale when its driver's lease
has expired, or its driver ran on this machine and its process is gone (killed), or it has no driver (a
driver of an older version): only those are abandoned. The same record works on every Optuna storage: the
journal has no heartbeat, and Optuna's RDB heartbeat is kept by `Study.optimize`, which an ask/tell driver
does not call.

Start-up (stale trials, baselines) and each ask take a file lock next to a journal file, so two drivers of
one run folder never enqueue the baselines twice or overshoot the budget. An RDB storage has no such lock:
drivers on several machines should start a few seconds apart (baselines are enqueued with
``skip_if_exists``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from thresh_opt import compat, keys

INTERVAL = 5.0  # seconds between lease refreshes
GRACE = 60.0  # a lease this old (no refresh) means its driver is gone


class Lease:
    """This driver's liveness record on a study, refreshed in the background while it runs."""

    def __init__(self, study: optuna.Study, interval: float = INTERVAL, grace: float = GRACE) -> None:
        self.study, self.interval, self.grace = study, interval, grace
        self.driver = uuid.uuid4().hex[:12]
        self.key = keys.LEASE_PREFIX + self.driver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, expires: float | None) -> None:
        s = self.study
        record = None if expires is None else {"expires": expires, "host": socket.gethostname(), "pid": os.getpid()}
        compat.set_study_system_attr(s, self.key, record)

    def _refresh(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed refresh is covered by the grace period
                self._write(time.time() + self.grace)

    def __enter__(self) -> Lease:
        self._write(time.time() + self.grace)
        self._thread = threading.Thread(target=self._refresh, name="thresh-opt-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            self._write(None)  # ended: its trials are finished or abandoned by now

    def stamp(self, trial: optuna.Trial) -> None:
        """Mark a trial as this driver's."""
        compat.set_trial_system_attr(trial.study, trial, keys.DRIVER, self.driver)


def stale_trials(study: optuna.Study, now: float | None = None) -> list[FrozenTrial]:
    """RUNNING trials whose driver is gone (its lease expired or ended) or unknown."""
    now = time.time() if now is None else now
    leases = compat.study_system_attrs(study)
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = t.system_attrs.get(keys.DRIVER)
        lease = leases.get(keys.LEASE_PREFIX + driver) if driver else None
        if not _alive(lease, now):
            stale.append(t)
    return stale


def _alive(lease: dict | None, now: float) -> bool:
    """A lease not yet expired whose driver, when it ran on this machine, is still a live process (a driver
    killed with kill -9 here is known dead at once, not after the grace period)."""
    if not lease or lease["expires"] < now:
        return False
    if lease["host"] != socket.gethostname():
        return True
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def driver_lock(storage_path: str | None) -> Iterator[None]:
    """An exclusive lock shared by the drivers of one journal file (nothing for other storages)."""
    if storage_path is None:
        yield
        return
    path = Path(storage_path + keys.DRIVERS_LOCK)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
