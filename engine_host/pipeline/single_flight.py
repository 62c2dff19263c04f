"""One computation per key at a time: statements that need a plan another statement is computing wait for it.

Under load many sessions send the same statement at once while the plan cache is cold; each would
otherwise parse, rewrite and transpile it again, all of them holding the GIL. Only a success is
shared: a computation that fails (a refusal, a cancelled or timed-out leader) hands nothing on, and
each waiter then computes for itself, so every statement gets, and audits, its own error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")

# How often a waiting statement looks whether it was cancelled or ran out of time.
_POLL_SECONDS = 0.05


class _Flight(Generic[_V]):
    """A computation in progress; `value` is set only if it succeeded."""

    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: _V | None = None


class SingleFlight(Generic[_K, _V]):
    """Runs `compute` once per key among concurrent callers; the others wait (bounded) for its result."""

    def __init__(self, max_wait_seconds: float) -> None:
        self._max_wait = max_wait_seconds
        self._lock = threading.Lock()
        self._flights: dict[_K, _Flight[_V]] = {}

    def run(self, key: _K, compute: Callable[[], _V], checkpoint: Callable[[], None]) -> tuple[_V, bool]:
        """The value for `key` and whether it came from another caller's computation.

        A waiter calls `checkpoint` every 50 ms (it raises to end the wait: cancel, timeout) and
        stops waiting after `max_wait_seconds`, then computes itself, as it does when the
        computation it waited for failed.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if leader:
            try:
                flight.value = compute()
                return flight.value, False
            finally:
                with self._lock:
                    del self._flights[key]
                flight.done.set()
        deadline = time.monotonic() + self._max_wait
        while not flight.done.wait(max(0.0, min(_POLL_SECONDS, deadline - time.monotonic()))):
            checkpoint()
            if time.monotonic() >= deadline:
                break
        value = flight.value
        if value is not None:
            return value, True
        return compute(), False

    def in_flight(self) -> int:
        """How many keys are being computed now."""
        with self._lock:
            return len(self._flights)
