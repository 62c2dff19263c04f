"""The asyncio listener: accepts connections, routes CancelRequests and shuts down cleanly."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.wire.connection import PgConnection
from hd_core.models import Principal

log = logging.getLogger(__name__)

# (user name, password, client address) -> the principal, or AuthenticationFailed
Authenticate = Callable[[str, str, str | None], Principal]
# Called for each new connection before authentication; raises an HdError with a `sqlstate` to refuse it
# (the heartbeat's ServiceGate.check_new_connection once the grace period has run out).
Admission = Callable[[], None]


class PgServer:
    """A PostgreSQL-protocol server in front of one statement pipeline."""

    def __init__(
        self,
        pipeline: StatementPipeline,
        authenticate: Authenticate,
        *,
        ssl_context: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 5439,
        allow_plaintext: bool = False,
        worker_threads: int = 64,
        admission: Admission | None = None,
    ):
        if ssl_context is None and not allow_plaintext:
            raise ValueError("a TLS context is required unless plaintext is explicitly allowed")
        self.pipeline = pipeline
        self.authenticate = authenticate
        self.ssl_context = ssl_context
        self.allow_plaintext = allow_plaintext
        self.admission = admission
        self.host = host
        self.port = port
        # DuckDB and Argon2 release the GIL; a pool wide enough for many concurrent sessions keeps one
        # slow statement from holding up the others.
        self.executor = ThreadPoolExecutor(max_workers=worker_threads, thread_name_prefix="hd-worker")
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[int, PgConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_pid = secrets.randbelow(1 << 20) + 1000

    def next_process_id(self) -> int:
        self._next_pid += 1
        return self._next_pid

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        sockets: tuple[Any, ...] = tuple(self._server.sockets or ())
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("listening on %s:%s (%s)", self.host, self.port,
                 "TLS 1.3" if self.ssl_context else "PLAINTEXT - loopback only")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PgConnection(self, reader, writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await connection.run()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def register(self, connection: PgConnection) -> None:
        self._connections[connection.process_id] = connection

    def forget(self, connection: PgConnection) -> None:
        if self._connections.get(connection.process_id) is connection:
            del self._connections[connection.process_id]

    def cancel(self, process_id: int, secret_key: int) -> None:
        """Handle a CancelRequest: interrupt the target's running statement if the key matches."""
        target = self._connections.get(process_id)
        if target is None:
            return
        if hmac.compare_digest(target.secret_key.to_bytes(4, "big"), (secret_key & 0xFFFFFFFF).to_bytes(4, "big")):
            target.cancel()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def shutdown(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let running statements finish for `grace_seconds`, then interrupt the rest."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections.values()):
            await connection.terminate_idle()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
        if pending:
            log.warning("interrupting %d statements still running after %.0fs", len(pending), grace_seconds)
            for connection in list(self._connections.values()):
                connection.cancel()
            await asyncio.wait(pending, timeout=grace_seconds)
        if self._server is not None:
            await self._server.wait_closed()
        self.executor.shutdown(wait=True, cancel_futures=True)
