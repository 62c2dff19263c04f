"""Who may open a connection: the host's and each organisation's connection caps, per-address limits, fds.

Every check runs on the event loop when a connection is accepted (or, for the organisation cap, once
it has authenticated), so a refusal never waits for a thread. A refusal is Postgres's: 53300
"sorry, too many clients already" at the host cap, "too many connections for organisation" at an
organisation's; an address with too many attempts in progress, or too many failed ones lately, is
refused before anything it sends is read. The process's file-descriptor limit is a cap too: a
reserve is kept for the audit log, DuckDB and the control store, so established sessions never
starve and new connections are refused cleanly instead of failing somewhere deeper.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable

from engine_host.pipeline.errors import QueryError
from engine_host.wire.limits import ConnectionLimits

log = logging.getLogger(__name__)


class ConnectionRefused(QueryError):
    """A connection the host will not serve; `at_once`: close without reading its startup packet."""

    def __init__(self, code: str, message: str, *, hint: str | None = None, at_once: bool = False):
        super().__init__("53300", code, message, hint=hint)
        self.at_once = at_once


def too_many_clients(detail: str = "") -> ConnectionRefused:
    return ConnectionRefused(
        "HD_ERR_TOO_MANY_CONNECTIONS", "sorry, too many clients already" + detail,
        hint="Close idle connections or use a connection pool; retry after a short backoff.",
    )


class RateLimitedLog:
    """A warning logged at most once per `interval` seconds, with how many were suppressed in between."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            log.warning(message + " (%d more since the last such line)", *args, suppressed)
        else:
            log.warning(message, *args)


class ConnectionTicket:
    """One admitted connection's place in the counts; `release` gives it back (once)."""

    def __init__(self, admission: ConnectionAdmission, address: str):
        self._admission = admission
        self.address = address
        self.org_id: str | None = None
        self._released = False

    def authenticated(self, org_id: str) -> None:
        """The connection proved who it is: it leaves the address's startups and joins its organisation."""
        self._admission._authenticated(self, org_id)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self)


class ConnectionAdmission:
    """The counts behind the connection limits. Event loop only: no locks."""

    def __init__(self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self.open = 0
        self._startups: dict[str, int] = {}
        self._orgs: dict[str, int] = {}
        self._failures: dict[str, deque[float]] = {}
        self._fd_budget: int | None = None
        self._log = RateLimitedLog(clock=clock)

    def measure_file_descriptors(self) -> None:
        """Size the fd budget: the soft RLIMIT_NOFILE less what is open now and the reserve."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            self._fd_budget = None
            return
        self._fd_budget = max(0, soft - _open_descriptors() - self.limits.fd_reserve)
        if self._fd_budget < self.limits.max_connections:
            log.warning("the file-descriptor limit (%d) allows %d connections, fewer than max_connections (%d); "
                        "raise it with `ulimit -n`", soft, self._fd_budget, self.limits.max_connections)

    def admit(self, address: str) -> ConnectionTicket:
        """Count a new connection from `address`, or raise ConnectionRefused."""
        limits = self.limits
        if self._recent_failures(address) >= limits.auth_failures_per_address > 0:
            retry = self._failures[address][0] + limits.auth_failure_window_seconds - self._clock()
            self._log.warning("refusing connections from %s: %d failed authentications in %g s",
                              address, limits.auth_failures_per_address, limits.auth_failure_window_seconds)
            raise ConnectionRefused(
                "HD_ERR_TOO_MANY_ATTEMPTS", f"too many failed authentication attempts from {address}",
                hint=f"Retry in {max(1, int(retry) + 1)} s with the right credentials.", at_once=True)
        if self._startups.get(address, 0) >= limits.max_startups_per_address:
            self._log.warning("refusing connections from %s: %d attempts already in progress",
                              address, limits.max_startups_per_address)
            raise ConnectionRefused(
                "HD_ERR_TOO_MANY_ATTEMPTS", f"too many connection attempts in progress from {address}",
                hint="Wait for earlier connections to finish authenticating.", at_once=True)
        if self.open >= limits.max_connections:
            self._log.warning("refusing connections: %d open, the limit is %d (--max-connections)",
                              self.open, limits.max_connections)
            raise too_many_clients()
        if self._fd_budget is not None and self.open >= self._fd_budget:
            self._log.warning("refusing connections: %d open and the process is near its file-descriptor limit "
                              "(raise `ulimit -n`)", self.open)
            raise too_many_clients(" (out of file descriptors)")
        self.open += 1
        self._startups[address] = self._startups.get(address, 0) + 1
        return ConnectionTicket(self, address)

    def failed(self, address: str) -> None:
        """Count a failed authentication from `address`."""
        limit = self.limits.auth_failures_per_address
        if limit:
            self._failures.setdefault(address, deque(maxlen=limit)).append(self._clock())

    def connections_of(self, org_id: str) -> int:
        return self._orgs.get(org_id, 0)

    def _recent_failures(self, address: str) -> int:
        failures = self._failures.get(address)
        if not failures:
            return 0
        horizon = self._clock() - self.limits.auth_failure_window_seconds
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0
        return len(failures)

    def _authenticated(self, ticket: ConnectionTicket, org_id: str) -> None:
        if ticket.org_id is not None:
            return
        if self._orgs.get(org_id, 0) >= self.limits.per_org:
            self._log.warning("refusing a connection of %s: the organisation has %d open (the limit)",
                              org_id, self.limits.per_org)
            raise ConnectionRefused(
                "HD_ERR_TOO_MANY_CONNECTIONS", f'too many connections for organisation "{org_id}"',
                hint="Close idle connections or use a connection pool; an admin can raise "
                     "--max-connections-per-org.")
        self._leave_startup(ticket.address)
        ticket.org_id = org_id
        self._orgs[org_id] = self._orgs.get(org_id, 0) + 1

    def _release(self, ticket: ConnectionTicket) -> None:
        self.open -= 1
        if ticket.org_id is None:
            self._leave_startup(ticket.address)
            return
        left = self._orgs[ticket.org_id] - 1
        if left:
            self._orgs[ticket.org_id] = left
        else:
            del self._orgs[ticket.org_id]

    def _leave_startup(self, address: str) -> None:
        left = self._startups[address] - 1
        if left:
            self._startups[address] = left
        else:
            del self._startups[address]


def _open_descriptors() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0
