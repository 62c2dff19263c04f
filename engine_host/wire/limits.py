"""Connection limits of one engine host: plain values, so the command line can show their defaults
without loading the server."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    """Connection limits of one engine host; the defaults suit a laptop and a fleet member alike."""

    max_connections: int = 500
    # None: the host cap. Lower it so one organisation cannot take every connection.
    max_connections_per_org: int | None = None
    # An idle session (no statement, no open transaction) is ended after this long (57P05); 0 = never.
    idle_session_timeout_seconds: float = 3600.0
    # Argon2 and JWT checks run on a pool of their own; attempts beyond threads + queue get 53300 at once.
    auth_threads: int = max(1, min(4, os.cpu_count() or 1))
    auth_queue: int = 64
    # Connections from one address that have not finished authenticating yet.
    max_startups_per_address: int = 128
    # Failed authentications from one address within the window, after which it is refused until
    # the oldest failure leaves the window; 0 = no limit.
    auth_failures_per_address: int = 100
    auth_failure_window_seconds: float = 60.0
    # File descriptors kept back from connections for the audit log, DuckDB, SQLite and TLS files.
    fd_reserve: int = 64

    def __post_init__(self) -> None:
        if self.max_connections < 1 or (self.max_connections_per_org is not None and self.max_connections_per_org < 1):
            raise ValueError("connection limits must be at least 1")
        if self.auth_threads < 1 or self.auth_queue < 0 or self.max_startups_per_address < 1:
            raise ValueError("auth_threads and max_startups_per_address must be >= 1, auth_queue >= 0")
        if self.idle_session_timeout_seconds < 0 or self.auth_failures_per_address < 0:
            raise ValueError("idle_session_timeout_seconds and auth_failures_per_address must be >= 0")

    @property
    def per_org(self) -> int:
        return self.max_connections_per_org or self.max_connections
