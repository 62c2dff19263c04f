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
from engine_host.wire.admission import ConnectionAdmission, ConnectionRefused, RateLimitedLog
from engine_host.wire.connection import PgConnection
from engine_host.wire.connection_services import Admission, ConnectionServices
from engine_host.wire.limits import ConnectionLimits
from engine_host.wire.verifier import Authenticate, CredentialVerifier

__all__ = ["Admission", "Authenticate", "PgServer"]

log = logging.getLogger(__name__)

# Refusals answered after the client's startup packet (as Postgres does, so the client sees why);
# beyond this many at once, further ones are closed without a word rather than hold descriptors.
MAX_REFUSALS_IN_FLIGHT = 64
# Threads beyond the concurrency limit, for work that takes no slot (Parse, Describe, opening sessions).
SPARE_WORKER_THREADS = 16


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
        worker_threads: int | None = None,
        admission: Admission | None = None,
        limits: ConnectionLimits | None = None,
    ):
        if ssl_context is None and not allow_plaintext:
            raise ValueError("a TLS context is required unless plaintext is explicitly allowed")
        self.pipeline = pipeline
        self.ssl_context = ssl_context
        self.allow_plaintext = allow_plaintext
        self.admission = admission
        self.host = host
        self.port = port
        self.limits = limits or ConnectionLimits()
        self.connections = ConnectionAdmission(self.limits)
        # Argon2 and JWT checks never share the statement pool (see verifier.py).
        self.verifier = CredentialVerifier(authenticate, threads=self.limits.auth_threads,
                                           queue=self.limits.auth_queue)
        # DuckDB releases the GIL; every admitted statement gets a thread at once (the concurrency gate
        # decides on the event loop who runs), with spare threads for work that takes no slot.
        if worker_threads is None:
            worker_threads = pipeline.governor.gate.limit + SPARE_WORKER_THREADS
        self.executor = ThreadPoolExecutor(max_workers=worker_threads, thread_name_prefix="hd-worker")
        # Refusals' audit records are written here, not behind running statements on the worker pool.
        self.side_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hd-refusal-audit")
        self._refusing = 0
        self._accept_log = RateLimitedLog()
        self._previous_exception_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[int, PgConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Set when shutdown begins: a login that completes after it is refused (57P03), not started.
        self.stopping = False
        self._next_pid = secrets.randbelow(1 << 20) + 1000
        # What each connection gets of this server; the server answers for the registry itself.
        self.connection_services = ConnectionServices(
            pipeline=pipeline, verifier=self.verifier, ssl_context=ssl_context, allow_plaintext=allow_plaintext,
            admission=admission, limits=self.limits, connection_admission=self.connections,
            executor=self.executor, side_executor=self.side_executor, registry=self,
        )

    def next_process_id(self) -> int:
        self._next_pid += 1
        return self._next_pid

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._previous_exception_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        self.connections.measure_file_descriptors()
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        sockets: tuple[Any, ...] = tuple(self._server.sockets or ())
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("listening on %s:%s (%s)", self.host, self.port,
                 "TLS 1.3" if self.ssl_context else "PLAINTEXT - loopback only")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PgConnection(self.connection_services, reader, writer)
        try:
            ticket = self.connections.admit(connection.peer_host)
        except ConnectionRefused as refusal:
            await self._refuse(connection, refusal)
            return
        connection.ticket = ticket
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await connection.run()
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            # Cancelled by `shutdown` once its cleanup has run; asyncio would report a cancelled
            # connection task as an unhandled exception.
        finally:
            ticket.release()
            if task is not None:
                self._tasks.discard(task)

    async def _refuse(self, connection: PgConnection, refusal: ConnectionRefused) -> None:
        at_once = refusal.at_once or self._refusing >= MAX_REFUSALS_IN_FLIGHT
        self._refusing += 1
        try:
            await connection.refuse(refusal, at_once=at_once)
        finally:
            self._refusing -= 1

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Out of descriptors, asyncio pauses accepting for a second and reports it with a traceback each
        # time; one line a second says the same. Established sessions are untouched either way.
        if context.get("message") == "socket.accept() out of system resource":
            self._accept_log.warning("cannot accept connections (%s); established sessions go on",
                                     context.get("exception"))
            return
        if self._previous_exception_handler is not None:
            self._previous_exception_handler(loop, context)
        else:
            loop.default_exception_handler(context)

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
        """Stop accepting, let running statements finish for `grace_seconds`, then interrupt the rest.

        The worker pools stop only once every connection task has ended and released what it held:
        a task still open after the interrupt (a login half done, a client that does not read) is
        cancelled and its cleanup awaited, so nothing is scheduled on a pool that has shut down.
        """
        self.stopping = True
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(c.terminate_idle() for c in list(self._connections.values())),
                             return_exceptions=True)
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
        if pending:
            log.warning("interrupting the statements of %d connections still open after %.0fs",
                        len(pending), grace_seconds)
            for connection in list(self._connections.values()):
                connection.cancel()
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
        if pending:
            log.warning("closing %d connections still open after the interrupt", len(pending))
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
            if pending:
                log.error("%d connections did not close; their statements may still hold threads", len(pending))
        if self._server is not None:
            await self._server.wait_closed()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.verifier.shutdown()
        self.side_executor.shutdown(wait=True)
