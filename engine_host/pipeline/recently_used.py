"""A bounded, thread-safe cache that keeps what was used most recently: the pipeline's plan caches."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class RecentlyUsed(Generic[_K, _V]):
    """At most `capacity` entries; adding one more forgets the least recently used.

    With `weight`, the entries also weigh at most `max_weight` together (e.g. characters of SQL
    text held): the least recently used go until they fit, and an entry heavier than the whole
    budget is not kept at all.
    """

    def __init__(self, capacity: int, *, max_weight: int | None = None,
                 weight: Callable[[_K, _V], int] | None = None):
        self._capacity = capacity
        self._max_weight = max_weight
        self._weigh = weight
        self._weights: dict[_K, int] = {}
        self._total = 0
        self._entries: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        """The value stored under `key` (now the most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> None:
        weight = self._weigh(key, value) if self._weigh is not None else 0
        with self._lock:
            if self._max_weight is not None and weight > self._max_weight:
                return
            self._total += weight - self._weights.get(key, 0)
            self._weights[key] = weight
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity or (
                    self._max_weight is not None and self._total > self._max_weight):
                old, _ = self._entries.popitem(last=False)
                self._total -= self._weights.pop(old, 0)
