"""Admission gates: concurrency with a bounded queue, token-bucket rate limits, the timeout watchdog."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.gates import ConcurrencyGate, RateLimiter, Watchdog


def test_gate_admits_up_to_its_limit_then_refuses_at_once_from_a_thread() -> None:
    gate = ConcurrencyGate(limit=2, queue=5, wait_seconds=5)
    gate.acquire()
    gate.acquire()
    started = time.monotonic()
    with pytest.raises(QueryError) as caught:
        gate.acquire()  # a thread never queues: it would hold a worker while it waits
    assert time.monotonic() - started < 0.05
    assert caught.value.sqlstate == "53300" and caught.value.code == "HD_ERR_SERVER_BUSY"
    assert "2 statements are running and 0 are queued" in caught.value.message
    gate.release()
    gate.acquire()
    assert gate.running == 2


def test_a_full_queue_is_refused_at_once_with_the_current_state() -> None:
    async def scenario() -> QueryError:
        gate = ConcurrencyGate(limit=1, queue=2, wait_seconds=5)
        await gate.enter()
        waiting = [asyncio.create_task(gate.enter()) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert gate.queued == 2
        started = time.monotonic()
        with pytest.raises(QueryError) as caught:
            await gate.enter()
        assert time.monotonic() - started < 0.05
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert (gate.running, gate.queued) == (1, 0)  # cancelled waiters leave the queue
        return caught.value

    error = asyncio.run(scenario())
    assert error.sqlstate == "53300"
    assert "1 statements are running and 2 are queued" in error.message
    assert "limits: 1 running, 2 queued" in error.message
    assert "Retry" in (error.hint or "")


def test_a_released_slot_goes_to_the_first_waiter_even_from_a_worker_thread() -> None:
    async def scenario() -> list[int]:
        gate = ConcurrencyGate(limit=1, queue=2, wait_seconds=5)
        await gate.enter()
        order: list[int] = []

        async def wait(n: int) -> None:
            await gate.enter()
            order.append(n)

        first, second = asyncio.create_task(wait(1)), asyncio.create_task(wait(2))
        await asyncio.sleep(0.01)
        assert order == []
        await asyncio.to_thread(gate.release)  # statements end on worker threads
        await first
        assert gate.running == 1 and order == [1]
        gate.release()
        await second
        gate.release()
        assert (gate.running, gate.queued) == (0, 0)
        return order

    assert asyncio.run(scenario()) == [1, 2]


def test_queued_statement_gives_up_after_the_configured_wait_and_says_so() -> None:
    async def scenario() -> tuple[float, QueryError]:
        gate = ConcurrencyGate(limit=1, queue=5, wait_seconds=0.2)
        await gate.enter()
        started = time.monotonic()
        with pytest.raises(QueryError) as caught:
            await gate.enter()
        waited = time.monotonic() - started
        assert gate.queued == 0
        return waited, caught.value

    waited, error = asyncio.run(scenario())
    assert 0.19 <= waited < 0.5
    assert "no slot came free within 0.2 s" in error.message


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
