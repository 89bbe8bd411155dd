"""Ctrl-C is deferred outside interruptible sections, so it never lands inside a storage write."""

import os
import signal

import pytest

from thresh_opt.interrupts import check, deferred_interrupts, interruptible


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_waits_for_the_critical_section_to_end():
    steps = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        ctrl_c()  # a "storage write" in progress: it must finish
        steps.append("write finished")
        check()
        steps.append("never")
    assert steps == ["write finished"]


def test_ctrl_c_inside_an_interruptible_section_raises_at_once():
    steps = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts(), interruptible():
        ctrl_c()
        steps.append("never")
    assert steps == []


def test_a_pending_ctrl_c_raises_on_entering_an_interruptible_section_or_on_leaving():
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        ctrl_c()
        with interruptible():
            pytest.fail("entered an interruptible section with a Ctrl-C pending")
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        ctrl_c()


def test_a_second_ctrl_c_raises_at_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    steps = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        ctrl_c()
        steps.append("first deferred")
        ctrl_c()
        steps.append("never")
    assert steps == ["first deferred"]
    assert signal.getsignal(signal.SIGINT) is before
