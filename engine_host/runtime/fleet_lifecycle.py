"""A fleet host's part in scaling: termination notices that start the drain, and scale-in protection.

- Termination notices (IMDSv2): the Auto Scaling target lifecycle state turning `Terminated` (scale-in, instance
  refresh, a health replacement) and a Spot interruption notice (`spot/instance-action`, two minutes ahead) both
  start the same drain: the host stops accepting connections and fails /readyz (the NLB stops sending), lets
  running statements finish for `drain_grace_seconds`, interrupts what is left, and exits; the wipe hook's erase
  document stops the service first (`systemctl stop` waits for exactly this drain), then erases the cache.
- Scale-in protection: while the host holds client sessions it is protected from scale-in, so target tracking
  removes idle hosts rather than ones with sessions; the protection is released when the last session ends and
  when a drain begins (a host being replaced must not hold the group up).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

TARGET_LIFECYCLE_STATE_PATH: Final = "/latest/meta-data/autoscaling/target-lifecycle-state"
SPOT_INSTANCE_ACTION_PATH: Final = "/latest/meta-data/spot/instance-action"
NOTICE_POLL_SECONDS: Final = 5.0  # a Spot notice gives two minutes; five seconds of it is the price of polling
PROTECTION_POLL_SECONDS: Final = 15.0


class MetadataReader(Protocol):
    def read_optional(self, path: str) -> str | None: ...


def termination_notice(imds: MetadataReader) -> str | None:
    """Why this instance is about to go away, or None: "auto-scaling-termination" or "spot-interruption"."""
    if imds.read_optional(TARGET_LIFECYCLE_STATE_PATH) == "Terminated":
        return "auto-scaling-termination"
    action = imds.read_optional(SPOT_INSTANCE_ACTION_PATH)
    if action:
        try:
            kind = json.loads(action).get("action")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        # stop and hibernate end the host's service as surely as terminate does.
        if kind in ("terminate", "stop", "hibernate"):
            return "spot-interruption"
    return None


class NoticeWatcher:
    """Polls `check` until it names a reason, then calls `on_notice(reason)` once and stops."""

    def __init__(self, check: Callable[[], str | None], on_notice: Callable[[str], None], *,
                 interval_seconds: float = NOTICE_POLL_SECONDS) -> None:
        self._check = check
        self._on_notice = on_notice
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hd-termination-notices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reason = self._check()
            except Exception:  # the metadata service hiccuping must not end serving; keep asking
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    log.warning("could not read termination notices from instance metadata (%d times)",
                                self._failures, exc_info=True)
                reason = None
            if reason is not None:
                log.warning("termination notice (%s): draining", reason)
                self._on_notice(reason)
                return
            self._stop.wait(self._interval)


class ScaleInProtection:
    """Keeps this instance protected from scale-in exactly while it holds sessions (`sessions() > 0`)."""

    def __init__(self, client: Any, *, auto_scaling_group: str, instance_id: str, sessions: Callable[[], int],
                 interval_seconds: float = PROTECTION_POLL_SECONDS) -> None:
        """`client` is a boto3 Auto Scaling client; the role may set protection on its own group only."""
        self._client = client
        self._group = auto_scaling_group
        self._instance = instance_id
        self._sessions = sessions
        self._interval = interval_seconds
        self._protected: bool | None = None  # unknown until first set
        self._released = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def protected(self) -> bool | None:
        return self._protected

    def update(self) -> None:
        """Set the protection to match the sessions now (one API call, only when it changes)."""
        with self._lock:
            if self._released:
                return
            self._set(self._sessions() > 0)

    def release(self) -> None:
        """Unprotect for good (a drain began): never protect again, whatever the sessions."""
        with self._lock:
            self._released = True
            self._set(False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hd-scale-in-protection", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _set(self, protected: bool) -> None:
        if protected == self._protected:
            return
        self._client.set_instance_protection(InstanceIds=[self._instance], AutoScalingGroupName=self._group,
                                             ProtectedFromScaleIn=protected)
        self._protected = protected
        log.info("scale-in protection %s", "on (sessions open)" if protected else "off")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.update()
            except Exception:  # retried next time; meanwhile a termination still drains the host first
                log.warning("could not update scale-in protection", exc_info=True)
            self._stop.wait(self._interval)
