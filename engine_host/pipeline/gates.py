"""Admission control for statements: the concurrency gate, per-key rate limits and statement timeouts.

Each refuses with a clear error instead of letting work pile up: a host that is full says so
(53300 "server busy") after a bounded wait, a key over its rate gets 53400 with how long to wait,
and a statement past its timeout is interrupted (57014).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine_host.pipeline.errors import QueryError


class ConcurrencyGate:
    """At most `limit` statements run at once; up to `queue` more wait at most `wait_seconds` for a slot."""

    def __init__(self, limit: int = 100, queue: int = 200, wait_seconds: float = 5.0):
        if limit < 1 or queue < 0:
            raise ValueError("concurrency limit must be >= 1 and queue >= 0")
        self.limit = limit
        self.queue = queue
        self.wait_seconds = wait_seconds
        self._cond = threading.Condition()
        self._running = 0
        self._waiting = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        """Statements waiting for a slot right now."""
        return self._waiting

    def acquire(self) -> None:
        """Take a slot or raise 53300 when the queue is full or the wait ran out."""
        with self._cond:
            if self._running < self.limit:
                self._running += 1
                return
            if self._waiting >= self.queue:
                raise _busy(self)
            self._waiting += 1
            try:
                deadline = time.monotonic() + self.wait_seconds
                while self._running >= self.limit:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        if self._running >= self.limit:
                            raise _busy(self)
                self._running += 1
            finally:
                self._waiting -= 1

    def release(self) -> None:
        with self._cond:
            if self._running <= 0:
                raise RuntimeError("ConcurrencyGate.release() without acquire()")
            self._running -= 1
            self._cond.notify()


def _busy(gate: ConcurrencyGate) -> QueryError:
    return QueryError(
        "53300", "HD_ERR_SERVER_BUSY",
        f"server busy: {gate.limit} statements are running and {gate.queue} are queued on this host",
        hint="Retry shortly with backoff, or spread the load over more engine hosts.",
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `rate` statements per second on average, bursts up to `burst`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float | None = None) -> None:
        """Spend one token of `key`'s bucket or raise 53400 saying when to retry."""
        capacity = burst if burst is not None else max(1.0, 2 * rate)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait_ms = int((1 - bucket.tokens) / rate * 1000) + 1
        raise QueryError(
            "53400", "HD_ERR_RATE_LIMITED",
            f"rate limit exceeded: this credential may run {rate:g} statements per second",
            hint=f"Retry in {wait_ms} ms, or ask an admin to raise the organisation's statements_per_second quota.",
        )


@dataclass(order=True)
class _Deadline:
    at: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


def _nothing() -> None:
    return None


class Watchdog:
    """One thread that fires callbacks at deadlines (statement timeouts) without a thread per statement."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._heap: list[_Deadline] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, seconds: float, callback: Callable[[], None]) -> _Deadline:
        """Call `callback` (on the watchdog thread) after `seconds`, unless cancelled first."""
        deadline = _Deadline(self._clock() + seconds, next(self._seq), callback)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hd-statement-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, deadline)
            self._cond.notify()
        return deadline

    @staticmethod
    def cancel(deadline: _Deadline) -> None:
        deadline.cancelled = True
        # The entry waits in the heap until its time; drop the callback now so it pins nothing
        # (it closes over a session's DuckDB connection).
        deadline.callback = _nothing

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0].at > self._clock()):
                    timeout = self._heap[0].at - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                due = heapq.heappop(self._heap)
            if not due.cancelled:
                due.callback()
