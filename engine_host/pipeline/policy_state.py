"""The policy snapshot an engine host enforces, and the watcher that keeps it current.

The host serves nothing until a full snapshot is loaded (connections get 57P03 until `ready`).
A background thread polls the store's policy version (a single-row read) every `interval`
seconds and loads a new full snapshot when it changed, so policy changes take effect within
seconds without a restart. Swapping the snapshot is one reference assignment: a statement sees
the old snapshot or the new one, never a mix. If a reload fails the old snapshot stays in force
and the failure is logged; it is retried on the next tick.
"""

from __future__ import annotations

import logging
import threading

from hd_core.policies import PolicySnapshot
from hd_core.ports import PolicySource

log = logging.getLogger(__name__)


class PolicyState:
    """Holds the current PolicySnapshot of one engine host."""

    def __init__(self, store: PolicySource, *, interval_seconds: float = 1.0):
        self._store = store
        self._interval = interval_seconds
        self._snapshot: PolicySnapshot | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """Whether a full snapshot has been loaded (the startup gate)."""
        return self._ready.is_set()

    @property
    def snapshot(self) -> PolicySnapshot:
        snapshot = self._snapshot
        if snapshot is None:
            raise RuntimeError("no policy snapshot loaded yet")
        return snapshot

    def load(self) -> PolicySnapshot:
        """Load the full snapshot now (blocking) and make it current."""
        with self._lock:
            snapshot = self._store.policy_snapshot()
            current = self._snapshot
            if current is None or snapshot.version != current.version:
                self._snapshot = snapshot
                log.info("policy snapshot version %d loaded", snapshot.version)
            self._ready.set()
            return self.snapshot

    def refresh_if_changed(self) -> bool:
        """Reload when the store's version differs from ours; True if a new snapshot was loaded."""
        current = self._snapshot
        if current is not None and self._store.policy_version() == current.version:
            return False
        before = current.version if current is not None else None
        return self.load().version != before

    def start(self) -> None:
        """Start watching the store (the first load is the caller's: `load()` before serving)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="hd-policy-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh_if_changed()
            except Exception:  # keep enforcing the last good snapshot; the store may be back next tick
                log.exception("policy snapshot reload failed; keeping version %s",
                              self._snapshot.version if self._snapshot else None)
