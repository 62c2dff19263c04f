"""Statement timeouts survive whatever happens to one statement's target (issue 14 item 2).

The in-process host's watchdog is given targets that fail when their deadline comes - a DuckDB
connection already closed (what a timeout of a statement whose session ended used to call, killing
the `hd-statement-watchdog` thread), a callback that raises, clients that leave while a statement
with a timeout runs or while a cursor is open - and then a statement over the wire must still be
cancelled at its timeout with 57014, audited, with its slot released.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine_host.pipeline.governor import Governor
from engine_host.runtime.local import LocalEngineHost
from tests.e2e.rawpg import RawClient, cstr, message
from tests.harness import SwitchableAuditSink, in_process_host

SLOW_QUERY = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"


class _Host:
    def __init__(self, engine: LocalEngineHost, sink: SwitchableAuditSink, key: str):
        assert engine.server is not None and engine.banner is not None and engine.engine is not None
        self.engine, self.sink, self.key = engine, sink, key
        self.port, self.user = engine.server.port, engine.banner.user

    @property
    def governor(self) -> Governor:
        assert self.engine.engine is not None and self.engine.engine.pipeline is not None
        return self.engine.engine.pipeline.governor

    def raw(self) -> RawClient:
        client = RawClient(self.port, tls=False)
        client.login(self.user, self.key)
        return client


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Host]:
    with in_process_host(tmp_path_factory.mktemp("hd-timeouts")) as (engine, sink, key):
        yield _Host(engine, sink, key)


def _times_out(host: _Host) -> None:
    """A slow statement with a 300 ms timeout is cancelled with 57014, and the connection goes on."""
    client = host.raw()
    try:
        client.query("SET statement_timeout = 300")
        started = time.monotonic()
        # Bounds the test if no timeout fires: the statement then ends 57014 HD_ERR_CANCELED instead.
        # (A raw CancelRequest: libpq's blocking cancel would hold the GIL this in-process host needs.)
        rescue = threading.Timer(10, _cancel, (host.port, client.backend_key))
        rescue.start()
        try:
            replies = client.query(SLOW_QUERY)
        finally:
            rescue.cancel()
        took = time.monotonic() - started
        [error] = [m.error_fields() for m in replies if m.kind == b"E"]
        assert (error["C"], error["D"]) == ("57014", "HD_ERR_STATEMENT_TIMEOUT"), error
        assert took < 10, f"the timeout fired after {took:.1f}s"
        assert [m.kind for m in client.query("SELECT 1")] == [b"T", b"D", b"C", b"Z"]
    finally:
        client.close()


def _cancel(port: int, key: tuple[int, int] | None) -> None:
    assert key is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!iiii", 16, 80877102, *key))
        sock.recv(1)


def _closed_duckdb_connection(host: _Host) -> None:
    assert host.engine.engine is not None and host.engine.engine.database is not None
    session = host.engine.engine.database.session()
    session.close()
    host.governor.watchdog.arm(0.0, session.interrupt)


def _raising_callback(host: _Host) -> None:
    def broken() -> None:
        raise RuntimeError("a target that fails")
    host.governor.watchdog.arm(0.0, broken)


def _client_gone_mid_statement(host: _Host) -> None:
    client = host.raw()
    client.query("SET statement_timeout = 200")
    client.send(message(b"Q", cstr(SLOW_QUERY)))
    time.sleep(0.05)  # the statement is running when the client leaves; its timeout comes after
    client.close()


def _client_gone_with_an_open_cursor(host: _Host) -> None:
    client = host.raw()
    client.query("SET statement_timeout = 200")
    client.query("BEGIN")
    assert client.query("DECLARE c NO SCROLL CURSOR FOR SELECT range AS i FROM range(100000000)")[-2].kind == b"C"
    assert [m.kind for m in client.query("FETCH 10 FROM c")].count(b"D") == 10
    time.sleep(0.3)  # the cursor's deadline fires while it waits between FETCHes
    client.close()


@pytest.mark.parametrize("kill", [_closed_duckdb_connection, _raising_callback, _client_gone_mid_statement,
                                  _client_gone_with_an_open_cursor],
                         ids=["closed-duckdb-connection", "raising-callback", "client-gone-mid-statement",
                              "client-gone-with-open-cursor"])
def test_a_later_statement_still_times_out(host: _Host, kill: Callable[[_Host], None]) -> None:
    before = _timeout_records(host)
    kill(host)
    time.sleep(0.4)  # every deadline armed above has come and gone
    _times_out(host)
    assert _timeout_records(host) >= before + 1
    deadline = time.monotonic() + 5
    while host.governor.gate.running and time.monotonic() < deadline:  # a left client's statement ends too
        time.sleep(0.05)
    assert host.governor.gate.running == 0


def test_timeouts_hold_after_every_kind_of_failed_target_at_once(host: _Host) -> None:
    for kill in (_closed_duckdb_connection, _raising_callback, _client_gone_mid_statement,
                 _client_gone_with_an_open_cursor):
        for _ in range(3):
            kill(host)
    time.sleep(0.4)
    before = _timeout_records(host)
    with ThreadPoolExecutor(3) as pool:
        for done in [pool.submit(_times_out, host) for _ in range(3)]:
            done.result(60)  # re-raises a failed check
    assert _timeout_records(host) == before + 3


def _timeout_records(host: _Host) -> int:
    errors = [r.get("error") for r in host.sink.records]
    return sum(1 for e in errors if isinstance(e, dict) and e.get("code") == "HD_ERR_STATEMENT_TIMEOUT")
