"""A client that drops a result at any byte leaves nothing behind (issue 14 item 1).

A real `hd dev` host, a raw protocol client that walks away from a large result (before reading,
after the first DataRow, mid-stream, with Terminate, with a TCP reset, from a suspended portal) in
the simple and the extended protocol. Each time the concurrency slot comes back
(`hd_statements_in_flight` is 0 again), the statement has exactly one completion record saying the
connection ended, and after far more drops than the host has slots it still serves at once.
"""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests.e2e.rawpg import RawClient, cstr, message, startup_packet
from tests.harness import EngineHostProcess, query_audit_records, start_engine_host

# ~220 MB of DataRows: far more than socket buffers and the audit read-ahead (65,536 rows) hold.
LARGE = "SELECT range AS i, repeat('x', 100) AS s FROM range(2000000)"
SLOTS = 16  # fewer slots than drops: one leaked slot per drop would refuse statements within the test
DROPS = 160


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    started = start_engine_host(tmp_path_factory.mktemp("hd-drops"), "--demo", "--insecure-plaintext",
                                "--metrics-port", "0", "--max-concurrent-statements", str(SLOTS))
    yield started
    started.stop()


def _in_flight(host: EngineHostProcess) -> float:
    port = next(int(m.group(1)) for line in host.output
                if (m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^hd_statements_in_flight (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


def _wait_idle(host: EngineHostProcess, seconds: float = 10.0) -> float:
    """The in-flight gauge once it is 0, or its last value after `seconds`."""
    deadline = time.monotonic() + seconds
    while (value := _in_flight(host)) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _records(state_dir: Path, request_id: str) -> list[dict]:
    return [record for record in query_audit_records(state_dir) if record.get("request_id") == request_id]


def _client(host: EngineHostProcess, request_id: str) -> RawClient:
    client = RawClient(host.port, tls=False)
    client.send(startup_packet({"user": host.user, "database": "hd", "request_id": request_id}))
    assert client.read().kind == b"R"  # type: ignore[union-attr]
    client.send(message(b"p", cstr(host.password)))
    assert client.read_until(b"Z")[-1].kind == b"Z"
    return client


def _start(client: RawClient, protocol: str, max_rows: int = 0) -> None:
    if protocol == "simple":
        client.send(message(b"Q", cstr(LARGE)))
        return
    client.send(message(b"P", cstr("") + cstr(LARGE) + struct.pack("!h", 0))
                + message(b"B", cstr("") + cstr("") + struct.pack("!hhh", 0, 0, 0))
                + message(b"E", cstr("") + struct.pack("!i", max_rows))
                + (message(b"H") if max_rows else message(b"S")))


def _read_rows(client: RawClient, count: int) -> bytes:
    """Read until `count` DataRows arrived (or the portal suspended); the kind of the last message."""
    seen = 0
    while True:
        msg = client.read()
        assert msg is not None and msg.kind != b"E", msg and msg.error_fields()
        if msg.kind == b"D":
            seen += 1
            if seen >= count:
                return msg.kind
        elif msg.kind == b"s":
            return msg.kind


def _drop(client: RawClient, how: str) -> None:
    if how == "terminate":
        client.send(message(b"X"))
    if how == "reset":  # SO_LINGER 0: close sends RST, not FIN
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


# (where the client stops reading, how it goes); every one in both protocols.
DROP_POINTS = {
    "before-reading": (0, "close"),
    "after-first-row": (1, "close"),
    "mid-stream": (100_000, "close"),  # past the read-ahead: the interim record is written
    "terminate-mid-result": (5_000, "terminate"),
    "reset-mid-result": (5_000, "reset"),
}


def _abandon(host: EngineHostProcess, protocol: str, point: str, request_id: str) -> None:
    rows, how = DROP_POINTS[point]
    client = _client(host, request_id)
    _start(client, protocol)
    if rows:
        _read_rows(client, rows)
    _drop(client, how)


@pytest.mark.parametrize("point", list(DROP_POINTS))
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_dropped_result_releases_its_slot_and_gets_one_completion_record(
        host: EngineHostProcess, protocol: str, point: str) -> None:
    request_id = f"drop-{protocol}-{point}-{uuid.uuid4().hex[:8]}"
    _abandon(host, protocol, point, request_id)
    assert _wait_idle(host) == 0
    records = _completion_records(host, request_id)
    assert len(records) == 1, records
    assert records[0]["error"] is not None, records
    assert (records[0]["error"]["sqlstate"], records[0]["error"]["code"]) == ("08006", "HD_ERR_CONNECTION_ENDED")


def _completion_records(host: EngineHostProcess, request_id: str) -> list[dict]:
    """One statement's records but its interim one (a streamed result's record before its first row)."""
    deadline = time.monotonic() + 10
    while not (records := _records(host.state_dir, request_id)) or (len(records) == 1 and _streamed(records[0])):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len({r["query_id"] for r in records}) == 1, records
    interim = [r for r in records[:-1] if _streamed(r)]
    assert len(interim) == len(records) - 1, records  # any record but the last is the interim one
    return records[len(interim):]


def _streamed(record: dict) -> bool:
    return any(v["stage"] == "stream" for v in record["verdicts"])


def test_suspended_portal_of_a_client_gone_is_finished_with_its_connection(host: EngineHostProcess) -> None:
    request_id = f"drop-suspended-{uuid.uuid4().hex[:8]}"
    client = _client(host, request_id)
    _start(client, "extended", max_rows=100_000)
    assert _read_rows(client, 10**9) == b"s"  # PortalSuspended: the portal waits for the next Execute
    _drop(client, "close")
    assert _wait_idle(host) == 0
    [record] = _completion_records(host, request_id)
    assert record["error"]["code"] == "HD_ERR_CONNECTION_ENDED" and record["rows_returned"] >= 100_000


@pytest.mark.slow  # drops results by the hundred: CI runs it (`pytest -m slow`)
def test_many_dropped_results_leave_the_host_serving(host: EngineHostProcess) -> None:
    tag = f"many-{uuid.uuid4().hex[:8]}"
    plan = [(protocol, point) for protocol in ("simple", "extended") for point in DROP_POINTS]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _abandon(host, plan[i % len(plan)][0], plan[i % len(plan)][1], f"{tag}-{i}"),
                      range(DROPS)))
    dropping = time.monotonic() - started
    assert _wait_idle(host) == 0
    with psycopg.connect(host.dsn(sslmode="disable"), autocommit=True) as conn:
        began = time.monotonic()
        assert conn.execute("SELECT count(*) FROM range(1000)").fetchone() == (1000,)
        assert time.monotonic() - began < 2  # no wait for a slot: none is held by a dropped result
    for i in range(DROPS):
        [record] = _completion_records(host, f"{tag}-{i}")
        assert (record["error"] or {}).get("code") == "HD_ERR_CONNECTION_ENDED", (i, plan[i % len(plan)], dropping)
