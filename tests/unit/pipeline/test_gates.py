"""Admission gates: concurrency with a bounded queue, token-bucket rate limits, the timeout watchdog."""

from __future__ import annotations

import threading
import time

import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.gates import ConcurrencyGate, RateLimiter, Watchdog


def test_gate_admits_up_to_its_limit_then_refuses_when_queue_is_full() -> None:
    gate = ConcurrencyGate(limit=2, queue=0, wait_seconds=5)
    gate.acquire()
    gate.acquire()
    with pytest.raises(QueryError) as caught:
        gate.acquire()
    assert caught.value.sqlstate == "53300" and caught.value.code == "HD_ERR_SERVER_BUSY"
    gate.release()
    gate.acquire()
    assert gate.running == 2


def test_queued_statement_runs_when_a_slot_frees() -> None:
    gate = ConcurrencyGate(limit=1, queue=1, wait_seconds=5)
    gate.acquire()
    admitted = threading.Event()

    def waiter() -> None:
        gate.acquire()
        admitted.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    assert not admitted.is_set()
    gate.release()
    assert admitted.wait(2)
    thread.join()


def test_queued_statement_gives_up_after_the_wait_instead_of_hanging() -> None:
    gate = ConcurrencyGate(limit=1, queue=5, wait_seconds=0.1)
    gate.acquire()
    started = time.monotonic()
    with pytest.raises(QueryError):
        gate.acquire()
    assert time.monotonic() - started < 2


def test_rate_limiter_allows_a_burst_then_says_when_to_retry() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limiter.take("key", rate=2, burst=2)
    limiter.take("key", rate=2, burst=2)
    with pytest.raises(QueryError) as caught:
        limiter.take("key", rate=2, burst=2)
    assert caught.value.sqlstate == "53400" and "Retry in" in (caught.value.hint or "")
    limiter.take("other-key", rate=2, burst=2)  # buckets are per key
    now[0] += 0.5
    limiter.take("key", rate=2, burst=2)


def test_watchdog_fires_due_callbacks_and_skips_cancelled_ones() -> None:
    dog = Watchdog()
    fired: list[str] = []
    done = threading.Event()
    cancelled = dog.arm(0.05, lambda: fired.append("cancelled"))
    dog.arm(0.1, lambda: (fired.append("due"), done.set()))
    Watchdog.cancel(cancelled)
    assert done.wait(2)
    dog.stop()
    assert fired == ["due"]
