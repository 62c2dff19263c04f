"""Admission under load and hostile input, against real `hd dev` processes with small limits.

A full host refuses at once (53300 with its state), a queued statement waits at most --queue-wait,
a password message over 10,000 bytes is refused from its header, logins beyond the verifier's queue
are refused without slowing open sessions, the host and organisation connection caps answer as
Postgres does, an idle session ends with 57P05, and at the file-descriptor limit new connections are
refused cleanly while established sessions go on.
"""

from __future__ import annotations

import resource
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests.e2e.rawpg import RawClient, cstr, message, startup_packet
from tests.harness import EngineHostProcess, start_engine_host

SLOW = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"  # runs until cancelled


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    host = start_engine_host(
        tmp_path_factory.mktemp("hd-limits"), "--max-concurrent-statements", "1", "--max-queued-statements", "1",
        "--queue-wait", "0.5", "--max-connections", "8", "--max-connections-per-org", "6",
        "--idle-session-timeout", "1.5", "--auth-threads", "1", "--auth-queue", "2",
        "--auth-failures-per-address", "0")
    yield host
    host.stop()


def _running_slow(host: EngineHostProcess) -> tuple[psycopg.Connection, threading.Thread]:
    """A connection whose statement holds the only slot until the connection is cancelled."""
    conn = psycopg.connect(host.dsn(), autocommit=True)
    worker = threading.Thread(target=lambda: _swallow(conn, SLOW), daemon=True)
    worker.start()
    time.sleep(0.5)
    return conn, worker


def _swallow(conn: psycopg.Connection, sql: str) -> None:
    try:
        conn.execute(sql)
    except psycopg.Error:
        pass


def _stop(conn: psycopg.Connection, worker: threading.Thread) -> None:
    conn.cancel()
    worker.join(10)
    conn.close()


def test_a_full_gate_refuses_at_once_and_a_queued_statement_waits_at_most_the_configured_time(
        tight: EngineHostProcess) -> None:
    slow, worker = _running_slow(tight)
    try:
        with psycopg.connect(tight.dsn(), autocommit=True) as queued, \
                psycopg.connect(tight.dsn(), autocommit=True) as refused:
            waiter = ThreadPoolExecutor(1).submit(_timed_error, queued, "SELECT 1")
            time.sleep(0.2)  # `queued` is now waiting on the event loop for the slot
            took, error = _timed_error(refused, "SELECT 1")
            assert error.sqlstate == "53300" and error.diag.message_detail == "HD_ERR_SERVER_BUSY"
            assert took < 0.1, took
            assert "1 statements are running and 1 are queued" in (error.diag.message_primary or "")
            assert "Retry" in (error.diag.message_hint or "")
            waited, error = waiter.result(10)
            assert error.sqlstate == "53300" and "within 0.5 s" in (error.diag.message_primary or "")
            assert 0.45 <= waited < 1.0, waited
            assert refused.execute("SET application_name = 'still usable'") is not None  # no slot needed
    finally:
        _stop(slow, worker)
    with psycopg.connect(tight.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _timed_error(conn: psycopg.Connection, sql: str) -> tuple[float, psycopg.Error]:
    started = time.monotonic()
    try:
        conn.execute(sql)
    except psycopg.Error as exc:
        return time.monotonic() - started, exc
    raise AssertionError(f"{sql!r} was not refused")


def test_a_queued_statement_runs_when_the_slot_frees(tight: EngineHostProcess) -> None:
    slow, worker = _running_slow(tight)
    with psycopg.connect(tight.dsn(), autocommit=True) as conn:
        result = ThreadPoolExecutor(1).submit(lambda: conn.execute("SELECT 41 + 1").fetchone())
        time.sleep(0.1)
        _stop(slow, worker)
        assert result.result(10) == (42,)


def test_an_oversized_password_is_refused_from_its_header_without_being_read(tight: EngineHostProcess) -> None:
    client = RawClient(tight.port)
    try:
        client.send(startup_packet({"user": tight.user, "database": "hd"}))
        challenge = client.read()
        assert challenge is not None and challenge.kind == b"R"
        client.send(b"p" + struct.pack("!i", 60 * 1024 * 1024))  # claims 60 MB, sends none of it
        started = time.monotonic()
        reply = client.read()
        assert reply is not None and reply.kind == b"E"
        fields = reply.error_fields()
        assert (fields["S"], fields["C"], fields["D"]) == ("FATAL", "08P01", "HD_ERR_PROTOCOL")
        assert "10000-byte limit" in fields["M"]
        assert time.monotonic() - started < 1
    finally:
        client.close()


def test_an_oversized_startup_packet_is_refused_from_its_length(tight: EngineHostProcess) -> None:
    client = RawClient(tight.port, tls=False)
    try:
        client.send(struct.pack("!ii", 10_001, 196608))
        reply = client.read()
        assert reply is not None and reply.kind == b"E" and reply.error_fields()["C"] == "08P01"
    finally:
        client.close()


def _wrong_password(port: int, user: str) -> str:
    client = RawClient(port)
    try:
        client.send(startup_packet({"user": user, "database": "hd"}))
        challenge = client.read()
        if challenge is None or challenge.kind != b"R":
            return "closed"
        client.send(message(b"p", cstr("hd_live_not_a_key_" + "x" * 40)))
        reply = client.read()
        return reply.error_fields()["C"] if reply is not None and reply.kind == b"E" else "closed"
    finally:
        client.close()


def test_a_login_flood_is_refused_beyond_the_verifier_queue_and_open_sessions_stay_fast(
        tight: EngineHostProcess) -> None:
    with psycopg.connect(tight.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        stop = threading.Event()
        outcomes: list[str] = []

        def flood() -> None:
            while not stop.is_set():
                outcomes.append(_wrong_password(tight.port, tight.user))

        flooders = [threading.Thread(target=flood, daemon=True) for _ in range(5)]
        for thread in flooders:
            thread.start()
        try:
            time.sleep(0.5)
            slowest = 0.0
            for _ in range(20):
                started = time.monotonic()
                assert conn.execute("SELECT 1").fetchone() == (1,)
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 0.25, slowest
        finally:
            stop.set()
            for thread in flooders:
                thread.join(10)
    assert "28P01" in outcomes  # wrong passwords are checked...
    assert "53300" in outcomes  # ...and those beyond 1 checking + 2 waiting are refused at once
    assert set(outcomes) <= {"28P01", "53300", "closed"}


def test_the_host_and_organisation_connection_caps_answer_as_postgres(tight: EngineHostProcess) -> None:
    opened: list[psycopg.Connection] = []
    try:
        for _ in range(6):
            opened.append(psycopg.connect(tight.dsn(), autocommit=True))
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(tight.dsn())
        assert 'too many connections for organisation' in str(caught.value)
        for conn in opened:  # nobody already connected was touched
            assert conn.execute("SELECT 1").fetchone() == (1,)
        raw = [RawClient(tight.port, tls=False) for _ in range(2)]  # 8 open: the host's cap
        try:
            with pytest.raises(psycopg.OperationalError) as caught:
                psycopg.connect(tight.dsn())
            assert "sorry, too many clients already" in str(caught.value)
        finally:
            for client in raw:
                client.close()
    finally:
        for conn in opened:
            conn.close()
    time.sleep(0.2)
    with psycopg.connect(tight.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_idle_session_ends_with_57p05_but_one_in_a_transaction_does_not(tight: EngineHostProcess) -> None:
    idle = psycopg.connect(tight.dsn(), autocommit=True)
    busy = psycopg.connect(tight.dsn())
    try:
        busy.execute("SELECT 1")  # opens a transaction: never ended by the idle timeout
        time.sleep(2.5)
        with pytest.raises(psycopg.OperationalError) as caught:
            idle.execute("SELECT 1")
        assert "idle-session timeout" in str(caught.value)
        assert busy.execute("SELECT 2").fetchone() == (2,)
    finally:
        idle.close()
        busy.close()


def test_failed_logins_from_one_address_are_limited(tmp_path: Path) -> None:
    host = start_engine_host(tmp_path, "--auth-failures-per-address", "3")
    try:
        assert [_wrong_password(host.port, host.user) for _ in range(3)] == ["28P01"] * 3
        client = RawClient(host.port, tls=False)
        try:
            reply = client.read()  # refused before anything is read: no TLS, no startup packet
            assert reply is not None and reply.kind == b"E"
            fields = reply.error_fields()
            assert (fields["C"], fields["D"]) == ("53300", "HD_ERR_TOO_MANY_ATTEMPTS")
        finally:
            client.close()
    finally:
        host.stop()


@pytest.mark.slow  # opens connections up to the descriptor limit: CI runs it (`pytest -m slow`)
def test_at_the_file_descriptor_limit_new_connections_are_refused_cleanly(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the host process
    try:
        host = start_engine_host(tmp_path, "--max-startups-per-address", "1000")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sockets: list[RawClient] = []
    try:
        established = psycopg.connect(host.dsn(), autocommit=True)
        refused = 0
        for _ in range(300):
            try:
                client = RawClient(host.port, tls=False, timeout=2)
            except OSError:
                refused += 1
                continue
            sockets.append(client)
        codes = set()
        for client in sockets[-20:]:
            client.send(startup_packet({"user": host.user, "database": "hd"}))
            reply = client.read()
            codes.add(reply.error_fields().get("M") if reply is not None and reply.kind == b"E" else "closed")
        assert "sorry, too many clients already (out of file descriptors)" in codes, codes
        assert established.execute("SELECT 1").fetchone() == (1,)  # never killed
        for client in sockets:
            client.close()
        sockets.clear()
        time.sleep(0.5)
        with psycopg.connect(host.dsn(), autocommit=True) as later:
            assert later.execute("SELECT 2").fetchone() == (2,)
        established.close()
    finally:
        for client in sockets:
            client.close()
        host.stop()
    output = "".join(host.output)
    assert "Traceback" not in output
    assert output.count("file-descriptor limit") + output.count("cannot accept connections") <= 10, output[-3000:]
