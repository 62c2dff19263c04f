"""What a connection needs from the server that accepted it, handed over as one small object.

A `PgConnection` sees the statement pipeline, the credential verifier, TLS and plaintext rules, the
admission check and limits, the two thread pools, and the table of live connections (for process
ids, cancel requests and shutdown), and nothing else of the listener: it holds no reference back to
`PgServer`, which builds one `ConnectionServices` at start and hands it to every connection.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.wire.admission import ConnectionAdmission
from engine_host.wire.limits import ConnectionLimits
from engine_host.wire.verifier import CredentialVerifier

if TYPE_CHECKING:
    from engine_host.wire.connection import PgConnection

# Called for each new connection before authentication; raises an HdError with a `sqlstate` to refuse it
# (the heartbeat's ServiceGate.check_new_connection once the grace period has run out).
Admission = Callable[[], None]


class ConnectionRegistry(Protocol):
    """The live connections, as one connection sees them: its process id, cancel requests, shutdown."""

    @property
    def stopping(self) -> bool:
        """Whether shutdown has begun: a login completing now is refused (57P03), not started."""
        ...

    def next_process_id(self) -> int: ...

    def register(self, connection: PgConnection) -> None: ...

    def forget(self, connection: PgConnection) -> None: ...

    def cancel(self, process_id: int, secret_key: int) -> None:
        """Interrupt the running statement of `process_id` if `secret_key` is its key."""
        ...


@dataclass(frozen=True)
class ConnectionServices:
    """Everything a connection uses from its server, built once per server."""

    pipeline: StatementPipeline
    verifier: CredentialVerifier
    ssl_context: ssl.SSLContext | None
    allow_plaintext: bool
    admission: Admission | None
    limits: ConnectionLimits
    connection_admission: ConnectionAdmission  # counts failed logins per peer, among other caps
    executor: ThreadPoolExecutor  # statements, Parse/Describe, opening sessions
    side_executor: ThreadPoolExecutor  # refusals' audit records, never behind running statements
    registry: ConnectionRegistry
