"""One client connection: startup, TLS, authentication and the simple and extended query protocols.

The connection translates protocol messages into calls on the statement pipeline and the
pipeline's outcomes back into messages. It never interprets SQL itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import secrets
import ssl
import threading
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from engine_host.pgcompat.copy.encode import Payloads
from engine_host.pgcompat.types.encoding import encode_column
from engine_host.pipeline.copy import CopyIn, CopyOut, CopyOutcome
from engine_host.pipeline.errors import QueryError, from_engine_error
from engine_host.pipeline.pipeline import Kind, PreparedStatement
from engine_host.pipeline.results import Outcome, ResultColumn, RowSource, format_code
from engine_host.pipeline.session import IDLE, Session
from engine_host.pipeline.settings import duration_milliseconds
from engine_host.wire import messages as m
from engine_host.wire.datarow import frame_data_rows, frame_data_rows_small
from hd_core.errors import AuthenticationFailed, HdError

if TYPE_CHECKING:
    from engine_host.wire.admission import ConnectionRefused, ConnectionTicket
    from engine_host.wire.connection_services import ConnectionServices

log = logging.getLogger(__name__)
T = TypeVar("T")

STARTUP_TIMEOUT_SECONDS = 15.0
# A refused connection gets this long to send its startup packet and read why it is refused.
REFUSAL_TIMEOUT_SECONDS = 3.0
# Largest password message read before authentication (Postgres: 10,000 bytes for a startup packet);
# an API key is ~60 bytes and a JWT ~1-2 KB. A larger one is refused from its length, unread.
MAX_PASSWORD_MESSAGE_LENGTH = 10_000
# How long a closing connection's unsent output may wait for a client that is not reading.
CLOSE_TIMEOUT_SECONDS = 5.0
# Buffered output is written once it passes this size, so a large result streams instead of piling up.
FLUSH_THRESHOLD = 256 * 1024
READ_CHUNK = 256 * 1024


class ConnectionClosing(Exception):
    """The connection must end now (client gone, fatal error or server shutdown)."""


@dataclass
class Portal:
    """A bound statement: parameters fixed, optionally partly executed (suspended)."""

    statement: PreparedStatement
    params: tuple[bytes | None, ...]
    param_formats: tuple[int, ...]
    result_formats: tuple[int, ...]
    described: list[ResultColumn] | None = None
    outcome: Outcome | None = None
    rows_sent: int = 0
    done: bool = False
    complete_tag: str | None = None

    def close(self) -> None:
        if self.outcome is not None and self.outcome.rows is not None:
            self.outcome.rows.close()


@dataclass
class ConnectionState:
    statements: dict[str, PreparedStatement] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    skipping_to_sync: bool = False


class PgConnection:
    """Serves one client socket until it disconnects, terminates or the server shuts down."""

    def __init__(self, services: ConnectionServices, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.services = services
        self.reader = reader
        self.writer = writer
        self.process_id = services.registry.next_process_id()
        self.secret_key = secrets.randbits(31)
        self.session: Session | None = None
        self.busy = False
        self.closing = False
        self._out = bytearray()
        self._inbox = bytearray()
        self._terminated = False
        self._state = ConnectionState()
        # The handler running (or suspended mid-result) on a worker thread, and the lock it runs under.
        self._work: Generator[None, None, None] | None = None
        # The messages the running handler works through; a COPY FROM STDIN asks for more (`_want_input`).
        self._batch: deque[tuple[bytes, bytes]] = deque()
        self._want_input = False
        # Set by a CancelRequest while a COPY FROM STDIN waits for the client's data (nothing runs to interrupt).
        self._copy_waiting: CopyIn | None = None
        self._copy_cancelled = asyncio.Event()
        self._handling = threading.Lock()
        peer = writer.get_extra_info("peername")
        self.peer_host = str(peer[0]) if peer else "unknown"
        self.ticket: ConnectionTicket | None = None  # this connection's place in the connection limits

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            ready = await asyncio.wait_for(self._startup(), STARTUP_TIMEOUT_SECONDS)
            if ready:
                await self._serve()
        except m.ProtocolViolation as exc:
            await self._fatal(exc.sqlstate, "HD_ERR_PROTOCOL", f"protocol violation: {exc}")
        except TimeoutError:
            await self._fatal("08P01", "HD_ERR_STARTUP_TIMEOUT", "startup did not complete in time")
        except (ConnectionError, asyncio.IncompleteReadError, ConnectionClosing, ssl.SSLError):
            pass
        except Exception:  # a bug must end this connection only, never the server
            log.exception("connection %s failed", self.process_id)
            await self._fatal("XX000", "HD_ERR_INTERNAL", "internal error; the connection was closed")
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        self.services.registry.forget(self)
        try:
            await self._blocking(self._release)
        except RuntimeError:  # the worker pool has already stopped (server shutdown): release here
            self._release()
        self.writer.close()
        try:
            # A client that reads nothing would keep buffered output (and this task) forever: drop it.
            async with asyncio.timeout(0 if self.services.registry.stopping else CLOSE_TIMEOUT_SECONDS):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    def _release(self) -> None:
        """Release everything the connection holds, however it ended (worker thread; idempotent).

        The session goes first: it finishes every statement still running (slot, lease, stream,
        timeout, completion record), so a result abandoned at any byte, in either protocol, is
        ended here. Waits for a handler still running on a worker thread.
        """
        with self._handling:
            session, self.session = self.session, None
            work, self._work = self._work, None
            portals = list(self._state.portals.values())
            self._state.portals.clear()
            try:
                if session is not None:
                    session.close()
            finally:
                if work is not None:
                    work.close()  # its own `finally` blocks find their statements already finished
                for portal in portals:
                    portal.close()

    def cancel(self) -> None:
        """Interrupt the statement this connection is running, if any (CancelRequest)."""
        if self.busy and self.session is not None:
            self.session.engine.interrupt()
            if self._copy_waiting is not None:
                self._copy_cancelled.set()

    async def terminate_idle(self) -> None:
        """Server shutdown: tell an idle client why it is disconnected and close."""
        self.closing = True
        if not self.busy:
            await self._fatal("57P01", "HD_ERR_SHUTDOWN", "terminating connection due to administrator command")
            self.writer.close()

    # --- I/O helpers -------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run DuckDB (or Argon2) work on the worker pool so the event loop keeps serving others."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.services.executor, functools.partial(fn, *args))

    def _send(self, data: bytes) -> None:
        self._out += data

    async def _flush(self) -> None:
        if self._out:
            self.writer.write(bytes(self._out))
            self._out.clear()
        await self.writer.drain()

    async def _fatal(self, sqlstate: str, code: str, message: str, hint: str | None = None) -> None:
        try:
            self._send(m.error_response(sqlstate, message, detail=code, hint=hint, severity="FATAL"))
            await self._flush()
        except (ConnectionError, RuntimeError, ssl.SSLError, OSError):
            pass

    async def _read_initial(self) -> m.InitialMessage:
        length = int.from_bytes(await self.reader.readexactly(4), "big", signed=True)
        if length < 8 or length > m.MAX_STARTUP_LENGTH:
            raise m.ProtocolViolation("invalid startup packet length")
        return m.parse_initial(await self.reader.readexactly(length - 4))

    async def _read_message(self, limit: int = m.MAX_MESSAGE_LENGTH) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        kind = header[:1]
        length = int.from_bytes(header[1:], "big", signed=True)
        if length < 4:
            raise m.ProtocolViolation("invalid message length")
        if length > limit:  # refused from the header: the body is never read
            raise m.ProtocolViolation(f"message of {length} bytes exceeds the {limit}-byte limit")
        return kind, await self.reader.readexactly(length - 4)

    # --- startup and authentication ---------------------------------------------------------

    async def refuse(self, refusal: ConnectionRefused, *, at_once: bool) -> None:
        """Refuse the connection: after its startup packet, as Postgres does, or `at_once` (nothing read).

        A refused client still gets its CancelRequest served (Postgres handles those whatever the load).
        """
        try:
            if not at_once:
                async with asyncio.timeout(REFUSAL_TIMEOUT_SECONDS):
                    await self._startup(refusal)
            else:
                await self._fatal(refusal.sqlstate, refusal.code, refusal.message, refusal.hint)
        except (m.ProtocolViolation, TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError,
                OSError):
            pass
        finally:
            self.writer.close()

    async def _startup(self, refusal: ConnectionRefused | None = None) -> bool:
        tls = False
        while True:
            message = await self._read_initial()
            if isinstance(message, m.SslRequest):
                if tls:
                    raise m.ProtocolViolation("duplicate SSLRequest")
                if self.services.ssl_context is None:
                    self.writer.write(b"N")
                    continue
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.services.ssl_context)
                tls = True
                continue
            if isinstance(message, m.GssEncRequest):
                self.writer.write(b"N")  # no GSSAPI: the client falls back to TLS or plaintext
                continue
            if isinstance(message, m.CancelRequest):
                self.services.registry.cancel(message.process_id, message.secret_key)
                return False
            if refusal is not None:
                await self._fatal(refusal.sqlstate, refusal.code, refusal.message, refusal.hint)
                return False
            return await self._authenticate(message, tls)

    def _plaintext_allowed(self) -> bool:
        if not self.services.allow_plaintext:
            return False
        try:
            return ipaddress.ip_address(self.peer_host.split("%")[0]).is_loopback
        except ValueError:
            return False

    async def _authenticate(self, startup: m.StartupMessage, tls: bool) -> bool:
        if not self.services.pipeline.ready:
            await self._fatal("57P03", "HD_ERR_STARTING_UP",
                              "the database system is starting up (policies are still loading)")
            return False
        if self.services.admission is not None:
            try:
                self.services.admission()
            except HdError as exc:
                await self._fatal(getattr(exc, "sqlstate", "08004"), exc.code, str(exc))
                return False
        if not tls and not self._plaintext_allowed():
            await self._fatal(
                "28000", "HD_ERR_TLS_REQUIRED",
                "TLS is required: connect with sslmode=require (plaintext is refused)",
            )
            return False
        user = startup.params.get("user", "")
        unknown = [k for k in startup.params if k.startswith("_pq_.")]
        if startup.protocol & 0xFFFF or unknown:
            self._send(_negotiate_protocol_version(unknown))
        self._send(m.authentication_cleartext_password())
        await self._flush()
        kind, body = await self._read_message(MAX_PASSWORD_MESSAGE_LENGTH)
        if kind != b"p":
            raise m.ProtocolViolation("expected a password message")
        password = m.parse_frontend(kind, body)
        assert isinstance(password, m.PasswordMessage)
        if self.services.registry.stopping:  # the host is shutting down: no new session, and no new work on its pools
            await self._fatal("57P03", "HD_ERR_SHUTDOWN", "the database system is shutting down")
            return False
        try:
            principal = await self.services.verifier.verify(user, password.password, self.peer_host)
            if self.ticket is not None:
                self.ticket.authenticated(principal.org_id)  # the organisation's connection cap
        except AuthenticationFailed:
            self.services.connection_admission.failed(self.peer_host)
            await self._fatal("28P01", "HD_ERR_AUTH_FAILED", f'password authentication failed for user "{user}"')
            return False
        except QueryError as exc:  # too many checks pending, or the organisation's cap
            await self._fatal(exc.sqlstate, exc.code, exc.message, exc.hint)
            return False
        try:
            self.session = await self._blocking(
                self.services.pipeline.open_session, principal, self.peer_host, dict(startup.params), self.process_id
            )
        except QueryError as exc:
            await self._fatal(exc.sqlstate, exc.code, exc.message)
            return False
        # PostgreSQL has one namespace for Parse'd and PREPAREd statements: the session's.
        self._state.statements = self.session.statements
        self._send(m.authentication_ok())
        for name, value in self.session.settings.reported():
            self._send(m.parameter_status(name, value))
        self._send(m.backend_key_data(self.process_id, self.secret_key))
        self._send(m.ready_for_query(IDLE))
        await self._flush()
        self.services.registry.register(self)
        return True

    # --- message loop -------------------------------------------------------------------------
    #
    # Messages already received are handled together in one hop to a worker thread: a driver's
    # Parse/Bind/Describe/Execute/Sync costs one thread switch, not five. The handlers are
    # generators that yield whenever the output buffer is full, so the event loop can write and
    # drain() before they go on: a slow client holds up only its own result, with bounded memory.

    async def _serve(self) -> None:
        while not self.closing:
            messages = await self._read_batch()
            if not await self._enter_gate(messages):  # refused at once: answered, its statements dropped
                if self._terminated:
                    return
                continue
            self.busy = True
            try:
                self._batch = messages
                self._work = work = self._handle(messages)
                while await self._blocking(self._advance, work):
                    await self._flush()
                    if self._want_input:  # COPY FROM STDIN has used up what came: read the client's next data
                        self._want_input = False
                        messages.extend(await self._read_copy_input())
                self._work = None
                self._leave_gate()  # before the last ReadyForQuery goes out: a client told "done" holds no slot
                await self._flush()
            finally:
                self.busy = False
                self._leave_gate()
            if self._terminated:
                return
        await self._fatal("57P01", "HD_ERR_SHUTDOWN", "terminating connection due to administrator command")

    async def _read_batch(self) -> deque[tuple[bytes, bytes]]:
        """Every complete message received so far (at least one), as (type, body) pairs."""
        while True:
            messages = self._take_complete_messages()
            if messages:
                return messages
            chunk = await self._read_while_idle()
            if not chunk:
                raise ConnectionClosing()
            self._inbox += chunk

    async def _read_copy_input(self) -> deque[tuple[bytes, bytes]]:
        """The client's next messages during COPY FROM STDIN; none if a cancel or the statement's deadline came first.

        Nothing runs in the engine while the server waits for CopyData, so a CancelRequest or
        statement_timeout has nothing to interrupt: the wait itself ends, and the COPY's next step
        (its checkpoint) fails it with 57014, as PostgreSQL ends a COPY whose client stalls.
        """
        sink = self._copy_waiting
        if sink is None:
            return await self._read_batch()
        read = asyncio.ensure_future(self._read_batch())
        cancelled = asyncio.ensure_future(self._copy_cancelled.wait())
        try:
            await asyncio.wait((read, cancelled), timeout=sink.seconds_left(),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read
        if read.cancelled():
            return deque()
        return read.result()

    async def _read_while_idle(self) -> bytes:
        """Read what the client sends next; a session idle past its idle timeout ends, as in PostgreSQL.

        Outside a transaction: idle_session_timeout (the host's --idle-session-timeout, or the session's
        own if shorter), FATAL 57P05. Inside one: the session's idle_in_transaction_session_timeout,
        FATAL 25P03 (the transaction is rolled back as the connection closes).
        """
        session = self.session
        if session is None:
            return await self.reader.read(READ_CHUNK)
        if session.in_transaction:
            timeout = duration_milliseconds(session.settings.get("idle_in_transaction_session_timeout")) / 1000
            refusal = ("25P03", "HD_ERR_IDLE_IN_TRANSACTION_TIMEOUT",
                       "terminating connection due to idle-in-transaction timeout",
                       f"A transaction left idle for {timeout:g} s is ended (idle_in_transaction_session_timeout); "
                       "reconnect, and COMMIT or ROLLBACK promptly.")
        else:
            host = self.services.limits.idle_session_timeout_seconds
            own = duration_milliseconds(session.settings.get("idle_session_timeout")) / 1000
            timeout = min(host, own) if host and own else (host or own)
            refusal = ("57P05", "HD_ERR_IDLE_SESSION_TIMEOUT", "terminating connection due to idle-session timeout",
                       f"Sessions idle for {timeout:g} s are closed (idle_session_timeout, --idle-session-timeout); "
                       "reconnect.")
        if not timeout:
            return await self.reader.read(READ_CHUNK)
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(READ_CHUNK)
        except TimeoutError:
            await self._fatal(*refusal)
            raise ConnectionClosing() from None

    # --- concurrency admission: decided here, on the event loop, before a worker thread is taken ---

    async def _enter_gate(self, messages: deque[tuple[bytes, bytes]]) -> bool:
        """Take a concurrency slot if the batch runs a statement in the engine; False if refused (answered)."""
        session = self.session
        if session is None:
            return True
        texts = self._statements_run_by(messages)
        if not texts:
            return True
        try:
            await self.services.pipeline.enter_gate(session)
        except QueryError as exc:
            await self._refuse_batch(session, messages, texts, exc)
            return False
        return True

    def _leave_gate(self) -> None:
        if self.session is not None:
            self.services.pipeline.leave_gate(self.session)

    def _statements_run_by(self, messages: deque[tuple[bytes, bytes]]) -> list[bytes]:
        """The SQL (raw) of each statement the batch runs in the engine: a Query, or an Execute of one."""
        takes_slot = self.services.pipeline.takes_slot
        parsed: dict[bytes, bytes] = {}
        bound: dict[bytes, bytes | None] = {}
        texts: list[bytes] = []
        for kind, body in messages:
            if kind == b"Q":
                sql = _cstrings(body, 1)[0]
                if takes_slot(_prefix(sql)):
                    texts.append(sql)
            elif kind == b"P":
                name, sql = _cstrings(body, 2)
                parsed[name] = sql
            elif kind == b"B":
                portal, name = _cstrings(body, 2)
                known = self._state.statements.get(name.decode("utf-8", "replace"))
                bound[portal] = parsed.get(name, known.text.encode() if known is not None else None)
            elif kind == b"E":
                portal = _cstrings(body, 1)[0]
                target: bytes | None
                if portal in bound:
                    target = bound[portal]
                else:
                    existing = self._state.portals.get(portal.decode("utf-8", "replace"))
                    if existing is not None and existing.done:
                        continue
                    target = existing.statement.text.encode() if existing is not None else None
                if target is None or takes_slot(_prefix(target)):  # unknown: counted; the thread refuses it
                    texts.append(target or b"")
        return texts

    async def _refuse_batch(self, session: Session, messages: deque[tuple[bytes, bytes]], texts: list[bytes],
                            error: QueryError) -> None:
        """Answer a refused batch as Postgres answers a failed statement, without a worker thread."""
        session.statement_failed()
        loop = asyncio.get_running_loop()
        for raw in texts:  # audited off the worker pool, so a refusal never waits behind statements
            await loop.run_in_executor(self.services.side_executor, self.services.pipeline.record_refusal,
                                       session, raw.decode("utf-8", "replace"), error)
        state = self._state
        for kind, _ in messages:
            if kind == b"X":
                self._terminated = True
                break
            if kind == b"Q":
                self._send_error(error)
                self._send(m.ready_for_query(session.transaction_status))
            elif kind == b"S":
                state.skipping_to_sync = False
                self._send(m.ready_for_query(session.transaction_status))
            elif kind != b"H" and not state.skipping_to_sync:
                self._send_error(error)
                state.skipping_to_sync = True
        await self._flush()

    def _take_complete_messages(self) -> deque[tuple[bytes, bytes]]:
        buf, pos = self._inbox, 0
        found: deque[tuple[bytes, bytes]] = deque()
        while len(buf) - pos >= 5:
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big", signed=True)
            if length < 4:
                raise m.ProtocolViolation("invalid message length")
            if length > m.MAX_MESSAGE_LENGTH:
                raise m.ProtocolViolation(f"message of {length} bytes exceeds the {m.MAX_MESSAGE_LENGTH}-byte limit")
            if len(buf) - pos - 1 < length:
                break
            found.append((bytes(buf[pos : pos + 1]), bytes(buf[pos + 5 : pos + 1 + length])))
            pos += 1 + length
        del buf[:pos]
        return found

    def _handle(self, messages: deque[tuple[bytes, bytes]]) -> Generator[None, None, None]:
        """Handle a batch of messages (runs on a worker thread); yields when output should be written."""
        while messages:
            kind, body = messages.popleft()
            message = m.parse_frontend(kind, body)
            if isinstance(message, m.Terminate):
                self._terminated = True
                return
            if isinstance(message, m.PasswordMessage):
                raise m.ProtocolViolation("unexpected password message")
            if self._state.skipping_to_sync and not isinstance(message, m.Sync | m.Flush):
                continue
            if isinstance(message, m.CopyData | m.CopyDone | m.CopyFail):
                continue  # the rest of a COPY FROM STDIN that failed: ignored, as PostgreSQL does
            if isinstance(message, m.Query):
                yield from self._simple_query(message.sql, last=not messages)
            elif isinstance(message, m.Sync):
                self._sync()
            elif isinstance(message, m.Flush):
                yield
            else:
                try:
                    yield from self._extended(message)
                except QueryError as exc:
                    # Any error poisons an open transaction, a Parse or Bind refusal too, as in PostgreSQL.
                    self._session().statement_failed()
                    self._send_error(exc)
                    self._state.skipping_to_sync = True
                    yield  # Postgres sends an error at once; drivers that sent Flush (not Sync) wait for it

    def _advance(self, work: Generator[None, None, None]) -> bool:
        """Run the handler to its next yield (worker thread); False once it has finished."""
        with self._handling:
            return next(work, _DONE) is not _DONE

    def _session(self) -> Session:
        if self.session is None:
            raise ConnectionClosing()
        return self.session

    def _send_error(self, exc: QueryError) -> None:
        self._send(m.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint,
                                    position=exc.position))

    def _apply_outcome(self, outcome: Outcome) -> None:
        """Send an outcome's notices and setting changes."""
        for note in outcome.notices:
            self._send(m.notice_response(note, severity="WARNING", sqlstate="25001"))
        for name, value in outcome.parameter_status:
            self._send(m.parameter_status(name, value))

    def _send_rows(self, rows: RowSource, columns: list[ResultColumn], formats: Sequence[int],
                   limit: int | None) -> Generator[None, None, tuple[int, bool]]:
        """Send up to `limit` rows as DataRows, yielding whenever the buffer is full.

        Returns (via StopIteration) the number of rows sent and whether the result is used up.
        """
        binary = [format_code(formats, i) == 1 for i in range(len(columns))]
        sent = 0
        try:
            while limit is None or sent < limit:
                batch = rows.read(None if limit is None else limit - sent)
                if batch is None:
                    return sent, True
                self._out += _encode(batch, columns, binary)
                sent += batch.num_rows
                if len(self._out) >= FLUSH_THRESHOLD:
                    yield
            return sent, rows.at_end()
        except (duckdb.Error, pa.ArrowException) as exc:  # a statement can fail mid-stream (e.g. a cast)
            raise _engine_error(exc) from None

    # --- COPY ------------------------------------------------------------------------------------

    def _copy(self, outcome: CopyOutcome) -> Generator[None, None, str]:
        """Run a COPY's data exchange; its command tag (via StopIteration)."""
        if outcome.copy_out is not None:
            return (yield from self._copy_out(outcome.copy_out))
        assert outcome.copy_in is not None
        return (yield from self._copy_in(outcome.copy_in))

    def _copy_out(self, copy: CopyOut) -> Generator[None, None, str]:
        """CopyOutResponse, a CopyData per row (as PostgreSQL sends them), CopyDone."""
        encoder = copy.encoder
        rows = 0
        try:
            # Rows are read (and so audited) before CopyOutResponse: a refusal comes as an error alone.
            batch = copy.rows.read()
            self._send(m.copy_out_response(encoder.options.binary, len(encoder.names)))
            self._send_payloads(encoder.start())
            while batch is not None:
                self._send_payloads(encoder.encode(batch))
                rows += batch.num_rows
                if len(self._out) >= FLUSH_THRESHOLD:
                    yield
                batch = copy.rows.read()
            self._send_payloads(encoder.finish())
        except (duckdb.Error, pa.ArrowException) as exc:  # a statement can fail mid-stream (e.g. a cast)
            raise _engine_error(exc) from None
        finally:
            copy.rows.close()
        self._send(m.copy_done())
        return f"COPY {rows}"

    def _send_payloads(self, payloads: list[Payloads]) -> None:
        for payload in payloads:
            self._out += m.copy_data(payload) if isinstance(payload, bytes) else m.copy_data_frames(payload)

    def _copy_in(self, sink: CopyIn) -> Generator[None, None, str]:
        """CopyInResponse, then CopyData until CopyDone (the tag) or CopyFail (57014, rolled back)."""
        self._send(m.copy_in_response(sink.binary, sink.columns))
        messages = self._batch
        self._copy_cancelled.clear()
        self._copy_waiting = sink
        try:
            while True:
                if not messages:
                    sink.checkpoint()  # a cancel or the statement's deadline may have ended the wait
                    self._want_input = True
                    yield
                    continue
                kind, body = messages.popleft()
                if kind == b"d":
                    sink.write(body)
                elif kind == b"c":
                    return sink.done()
                elif kind == b"f":
                    message = m.parse_frontend(kind, body)
                    assert isinstance(message, m.CopyFail)
                    raise sink.fail(message.message)
                elif kind in (b"H", b"S"):
                    continue  # PostgreSQL ignores Flush and Sync during COPY FROM STDIN
                elif kind == b"X":
                    self._terminated = True
                    raise ConnectionClosing()
                else:
                    raise sink.abort(QueryError("08P01", "HD_ERR_PROTOCOL",
                                                f"unexpected message type 0x{kind[0]:02X} during COPY from stdin"))
        finally:
            self._copy_waiting = None
            sink.abandon()  # a no-op once it ended; else the connection ended mid-COPY

    # --- simple query ---------------------------------------------------------------------------

    def _simple_query(self, sql: str, *, last: bool = True) -> Iterator[None]:
        session = self._session()
        pipeline = self.services.pipeline
        try:
            # Splitting costs a parse; a string without an inner ';' is one statement (or none).
            if ";" in sql.strip().rstrip(";"):
                statements = pipeline.split(session, sql)
            else:
                statements = [sql] if sql.strip(" \t\r\n;") else []
        except QueryError as exc:
            statements = []
            self._send_error(exc)
        else:
            if not statements:
                self._send(m.empty_query_response())
        for text in statements:
            outcome: Outcome | None = None
            try:
                prepared = pipeline.prepare(session, text, run_now=True)
                outcome = pipeline.execute(session, prepared)
                self._apply_outcome(outcome)
                if isinstance(outcome, CopyOutcome):
                    tag = yield from self._copy(outcome)
                    self._send(m.command_complete(tag))
                elif outcome.rows is not None and outcome.columns is not None:
                    self._send(_row_description(tuple(outcome.columns), ()))
                    sent, _ = yield from self._send_rows(outcome.rows, outcome.columns, (), None)
                    self._send(m.command_complete(outcome.command_tag(sent)))
                else:
                    self._send(m.command_complete(outcome.tag))
            except QueryError as exc:
                session.statement_failed()
                self._send_error(exc)
                break
            finally:
                # However the result ends (sent, failed, or this handler closed with the connection),
                # nothing it holds outlives it; a finished result closes as a no-op.
                if outcome is not None and outcome.rows is not None:
                    outcome.rows.close()
        self._send(m.ready_for_query(session.transaction_status))
        if not last:
            yield  # the batch's last ReadyForQuery is written once the batch has let go of its slot

    # --- extended query -------------------------------------------------------------------------

    def _extended(self, message: m.FrontendMessage) -> Iterator[None]:
        state = self._state
        session = self._session()
        if isinstance(message, m.Parse):
            if message.name and message.name in state.statements:
                raise QueryError("42P05", "HD_ERR_DUPLICATE_STATEMENT",
                                 f'prepared statement "{message.name}" already exists')
            state.statements[message.name] = self._parse(session, message.sql, message.param_oids)
            self._send(m.parse_complete())
        elif isinstance(message, m.Bind):
            self._bind(message)
        elif isinstance(message, m.Describe):
            self._describe(session, message)
        elif isinstance(message, m.Execute):
            yield from self._execute(session, message)
        elif isinstance(message, m.Close):
            if message.kind == "S":
                state.statements.pop(message.name, None)
            else:
                portal = state.portals.pop(message.name, None)
                if portal is not None:
                    portal.close()
            self._send(m.close_complete())

    def _parse(self, session: Session, sql: str, oids: Sequence[int]) -> PreparedStatement:
        if not sql.strip(" \t\r\n;"):
            return PreparedStatement(text="", kind=Kind.ENGINE, engine_sql="", statement_type="EMPTY")
        pipeline = self.services.pipeline
        prepared = pipeline.prepare(session, sql, oids)
        pipeline.parameter_types(session, prepared)  # binds now so errors surface at Parse, as in Postgres
        return prepared

    def _bind(self, message: m.Bind) -> None:
        state = self._state
        statement = state.statements.get(message.statement)
        if statement is None:
            raise QueryError("26000", "HD_ERR_NO_SUCH_STATEMENT",
                             f'prepared statement "{message.statement}" does not exist')
        if message.portal and message.portal in state.portals:
            raise QueryError("42P03", "HD_ERR_DUPLICATE_CURSOR", f'portal "{message.portal}" already exists')
        old = state.portals.pop(message.portal, None)
        if old is not None:
            old.close()
        state.portals[message.portal] = Portal(statement, message.params, message.param_formats,
                                               message.result_formats)
        self._send(m.bind_complete())

    def _describe(self, session: Session, message: m.Describe) -> None:
        pipeline = self.services.pipeline
        if message.kind == "S":
            prepared = self._state.statements.get(message.name)
            if prepared is None:
                raise QueryError("26000", "HD_ERR_NO_SUCH_STATEMENT",
                                 f'prepared statement "{message.name}" does not exist')
            if prepared.statement_type == "EMPTY":
                self._send(m.parameter_description([]))
                self._send(m.no_data())
                return
            types = pipeline.parameter_types(session, prepared)
            columns = pipeline.result_columns(session, prepared)
            self._send(m.parameter_description([t.oid for t in types]))
            self._send(_row_description(tuple(columns), ()) if columns else m.no_data())
            return
        portal = self._state.portals.get(message.name)
        if portal is None:
            cursor_columns = pipeline.describe_cursor(session, message.name)
            if cursor_columns is None:
                raise QueryError("34000", "HD_ERR_NO_SUCH_CURSOR", f'portal "{message.name}" does not exist')
            self._send(_row_description(tuple(cursor_columns), ()))
            return
        if portal.statement.statement_type == "EMPTY":
            self._send(m.no_data())
            return
        columns = pipeline.result_columns(session, portal.statement, portal.params, portal.param_formats)
        portal.described = columns
        self._send(_row_description(tuple(columns), tuple(portal.result_formats)) if columns else m.no_data())

    def _execute(self, session: Session, message: m.Execute) -> Iterator[None]:
        portal = self._state.portals.get(message.portal)
        if portal is None:
            raise QueryError("34000", "HD_ERR_NO_SUCH_CURSOR", f'portal "{message.portal}" does not exist')
        if portal.statement.statement_type == "EMPTY":
            self._send(m.empty_query_response())
            return
        if portal.done:
            # Executing a completed portal again returns no more rows, as Postgres does.
            self._send(m.command_complete(portal.complete_tag or ""))
            return
        if portal.outcome is None:
            portal.outcome = self.services.pipeline.execute(session, portal.statement, portal.params,
                                                          portal.param_formats)
            self._apply_outcome(portal.outcome)
        outcome = portal.outcome
        if isinstance(outcome, CopyOutcome):
            try:
                tag = yield from self._copy(outcome)
            except QueryError:
                session.statement_failed()
                raise
            portal.done, portal.complete_tag = True, tag
            self._send(m.command_complete(tag))
            return
        if outcome.rows is None or outcome.columns is None:
            portal.done, portal.complete_tag = True, outcome.tag
            self._send(m.command_complete(outcome.tag))
            return
        columns = _consistent_columns(portal.described, outcome.columns)
        limit = message.max_rows if message.max_rows > 0 else None
        try:
            sent, exhausted = yield from self._send_rows(outcome.rows, columns, portal.result_formats, limit)
        except QueryError:
            session.statement_failed()
            raise
        portal.rows_sent += sent
        if exhausted:
            portal.done = True
            portal.complete_tag = outcome.command_tag(portal.rows_sent)
            self._send(m.command_complete(portal.complete_tag))
        else:
            self._send(m.portal_suspended())

    def _sync(self) -> None:
        state = self._state
        state.skipping_to_sync = False
        session = self._session()
        if not session.in_transaction:
            # Outside a transaction block portals live until Sync, as in Postgres.
            for portal in state.portals.values():
                portal.close()
            state.portals.clear()
        self._send(m.ready_for_query(session.transaction_status))


_DONE = object()


def _cstrings(body: bytes, count: int) -> list[bytes]:
    """The first `count` NUL-terminated strings of a message body (missing ones empty)."""
    parts = body.split(b"\x00", count)[:count]
    return parts + [b""] * (count - len(parts))


def _prefix(sql: bytes) -> str:
    """Enough of a statement to tell what kind it is (its first keyword, after comments)."""
    return sql[:4096].decode("utf-8", "replace")


def _fields(columns: list[ResultColumn] | None, formats: Sequence[int]) -> list[m.FieldDescription]:
    return [
        m.FieldDescription(c.name, c.pgtype.oid, c.pgtype.size, c.pgtype.modifier, format_code(formats, i))
        for i, c in enumerate(columns or [])
    ]


@functools.lru_cache(maxsize=1024)
def _row_description(columns: tuple[ResultColumn, ...], formats: tuple[int, ...]) -> bytes:
    """The RowDescription message for these columns and formats (drivers Describe every execution)."""
    return m.row_description(_fields(list(columns), formats))


def _consistent_columns(described: list[ResultColumn] | None, produced: list[ResultColumn]) -> list[ResultColumn]:
    """Encode with the types the client was told at Describe, when it was told."""
    if described is not None and len(described) == len(produced):
        return described
    return produced


# Below this many rows, framing in Python beats the fixed cost of the vectorised path.
SMALL_BATCH_ROWS = 16


def _encode(batch: pa.RecordBatch, columns: list[ResultColumn], binary: list[bool]) -> bytes:
    """Encode one batch to DataRow messages."""
    encoded = [encode_column(batch.column(i), col.pgtype, binary[i]) for i, col in enumerate(columns)]
    if batch.num_rows <= SMALL_BATCH_ROWS and encoded:
        cells = [array.to_pylist() for array in encoded]
        return frame_data_rows_small([[cells[c][r] for c in range(len(cells))] for r in range(batch.num_rows)])
    return frame_data_rows(encoded, batch.num_rows)


def _engine_error(exc: Exception) -> QueryError:
    error = from_engine_error(exc)
    if error.code == "HD_ERR_ENGINE":
        correlation = uuid.uuid4().hex[:12]
        log.error("engine failure while streaming rows [%s]: %s", correlation, exc)
        return QueryError("XX000", "HD_ERR_ENGINE", f"query failed (correlation id {correlation})")
    return error


def _negotiate_protocol_version(unknown: list[str]) -> bytes:
    body = (0).to_bytes(4, "big") + len(unknown).to_bytes(4, "big")
    body += b"".join(name.encode() + b"\x00" for name in unknown)
    return b"v" + (len(body) + 4).to_bytes(4, "big") + body
