"""The statement-timeout watchdog outlives every failure of a single deadline's target (issue 14 item 2)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import duckdb
import pytest

from engine_host.pipeline.gates import Watchdog


def _closed_connection_interrupt() -> Callable[[], None]:
    """What a timeout of a statement whose session has closed calls: DuckDB raises 'already closed'."""
    con = duckdb.connect()
    cursor = con.cursor()
    cursor.close()
    con.close()
    return cursor.interrupt


def _raises() -> None:
    raise RuntimeError("a callback with a bug")


def _raising() -> Callable[[], None]:
    return _raises


@pytest.mark.parametrize("make_target", [_closed_connection_interrupt, _raising], ids=["closed-duckdb", "raising"])
def test_a_failing_deadline_does_not_stop_later_ones(make_target: Callable[[], Callable[[], None]],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    target = make_target()
    dog = Watchdog()
    later = threading.Event()
    try:
        with caplog.at_level(logging.WARNING):
            dog.arm(0.01, target)
            dog.arm(0.05, later.set)
            assert later.wait(2), "the deadline after a failing one never fired"
        # Still serving after the failure: a deadline armed now fires too.
        again = threading.Event()
        dog.arm(0.01, again.set)
        assert again.wait(2)
    finally:
        dog.stop()
    [line] = [r for r in caplog.records if "timeout callback failed" in r.getMessage()]
    assert line.exc_info is None and "already closed" not in line.getMessage()


def test_many_failing_deadlines_in_a_row_leave_one_thread_serving() -> None:
    dog = Watchdog()
    fired = threading.Event()
    try:
        for _ in range(50):
            dog.arm(0.0, _raises)
        dog.arm(0.02, fired.set)
        assert fired.wait(2)
    finally:
        dog.stop()


def test_a_stopped_watchdog_arms_nothing_and_raises_nothing() -> None:
    dog = Watchdog()
    dog.stop()
    fired = threading.Event()
    dog.arm(0.0, fired.set)  # a statement admitted while the host stops must not fail on its timeout
    assert not fired.wait(0.1)


def test_an_earlier_deadline_armed_after_a_later_one_still_fires_on_time() -> None:
    """The thread is woken only for a deadline that comes before every one it waits for (issue 17 item 3)."""
    dog = Watchdog()
    fired: list[str] = []
    early, later = threading.Event(), threading.Event()
    try:
        dog.arm(30, lambda: fired.append("far"))
        dog.arm(0.2, lambda: (fired.append("later"), later.set()))  # after the far one: no wake needed
        dog.arm(0.05, lambda: (fired.append("early"), early.set()))  # before both: wakes the thread
        assert early.wait(2) and later.wait(2)
        assert fired == ["early", "later"]
    finally:
        dog.stop()
