"""Admission control for statements: the concurrency gate, per-key rate limits and statement timeouts.

Each refuses with a clear error instead of letting work pile up: a host that is full says so
(53300 "server busy", with how full it is) after a bounded wait on the event loop, a key over its
rate gets 53400 with how long to wait, and a statement past its timeout is interrupted (57014).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine_host.pipeline.errors import QueryError

log = logging.getLogger(__name__)


class ConcurrencyGate:
    """At most `limit` statements run at once; up to `queue` more wait at most `wait_seconds` for a slot.

    Waiting happens on the event loop (`enter`), never on a worker thread: a refusal needs no thread,
    so a full host answers 53300 at once however busy its workers are. `acquire` (for a caller not on
    the loop) takes a free slot or refuses at once. A released slot goes straight to the first waiter.
    """

    def __init__(self, limit: int = 100, queue: int = 200, wait_seconds: float = 5.0):
        if limit < 1 or queue < 0:
            raise ValueError("concurrency limit must be >= 1 and queue >= 0")
        self.limit = limit
        self.queue = queue
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._running = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        """Statements waiting for a slot right now."""
        return len(self._waiters)

    def acquire(self) -> None:
        """Take a free slot, or raise 53300 at once (a thread never waits here)."""
        with self._lock:
            if self._running < self.limit:
                self._running += 1
                return
            raise self._busy()

    async def enter(self) -> None:
        """Take a slot, waiting on the event loop at most `wait_seconds`; 53300 at once if the queue is full."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running < self.limit:
                self._running += 1
                return
            if len(self._waiters) >= self.queue:
                raise self._busy()
            waiter = _Waiter(loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_seconds)
        except TimeoutError:
            with self._lock:
                if waiter.granted:
                    return  # the slot came just as the wait ran out: keep it
                self._waiters.remove(waiter)
                raise self._busy(waited=True) from None
        except asyncio.CancelledError:
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise
            self.release()  # granted while being cancelled: pass the slot on
            raise

    def release(self) -> None:
        with self._lock:
            if self._running <= 0:
                raise RuntimeError("ConcurrencyGate.release() without acquire()")
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True  # the slot passes to the waiter: `running` is unchanged
                try:
                    waiter.loop.call_soon_threadsafe(_wake, waiter.future)
                    return
                except RuntimeError:  # its loop has closed (shutdown): nobody is waiting there any more
                    continue
            self._running -= 1

    def _busy(self, *, waited: bool = False) -> QueryError:
        state = f"{self._running} statements are running and {len(self._waiters)} are queued"
        limits = f"(limits: {self.limit} running, {self.queue} queued)"
        if waited:
            message = f"server busy: no slot came free within {self.wait_seconds:g} s; {state} {limits}"
        else:
            message = f"server busy: {state} on this host {limits}"
        return QueryError(
            "53300", "HD_ERR_SERVER_BUSY", message,
            hint="Retry after a short backoff, run fewer statements at once, or spread the load over more "
                 "engine hosts (or raise --max-concurrent-statements / --max-queued-statements).",
        )


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
            if self._stopped:
                return deadline  # the host is stopping: its statements are being interrupted anyway
            # A thread that ended anyway is replaced: no statement may go unwatched.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hd-statement-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, deadline)
            if self._heap[0] is deadline:  # otherwise the thread already wakes earlier than this one is due
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
                _fire(due.callback)


def _fire(callback: Callable[[], None]) -> None:
    """Run one deadline's callback; its failure is that statement's alone and never stops the thread.

    A target can be gone by the time its deadline comes (a DuckDB connection closed with its
    session raises "Connection already closed!"); every later statement's timeout still fires.
    """
    try:
        callback()
    except Exception as exc:  # noqa: BLE001 - logged by type only: the text can quote the statement
        log.warning("a statement timeout callback failed (%s); the watchdog goes on", type(exc).__name__)
