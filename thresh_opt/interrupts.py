"""Ctrl-C that never lands inside a storage or tracking write.

A KeyboardInterrupt raised in the middle of an SQLite commit (MLflow) or a journal append (Optuna) can
leave a write lock held or a record half written; the clean-up that follows then fails with "database
is locked". Under `deferred_interrupts()`, Ctrl-C raises at once only inside `interruptible()` blocks
(model loading, trial evaluation, waiting for workers); elsewhere it is remembered and raised at the
next `interruptible()` or `check()`. A second Ctrl-C while one is pending raises at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    installed = False
    pending = False
    open = 0


def _handler(signum: int, frame: object) -> None:
    if _State.open or _State.pending:
        _State.pending = False
        raise KeyboardInterrupt
    _State.pending = True


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within this block, Ctrl-C is deferred outside `interruptible()` sections (main thread only)."""
    if _State.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _State.installed, _State.pending, _State.open = True, False, 0
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        pending, _State.installed, _State.pending = _State.pending, False, False
    if pending:
        raise KeyboardInterrupt


def check() -> None:
    """Raise a Ctrl-C that arrived while it was deferred."""
    if _State.pending:
        _State.pending = False
        raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """A section that Ctrl-C may stop at once: it writes nothing that must stay consistent."""
    check()
    _State.open += 1
    try:
        yield
    finally:
        _State.open -= 1
