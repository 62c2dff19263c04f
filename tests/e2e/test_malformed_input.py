"""Broken, hostile and truncated input ends that one connection with an error; everyone else is unaffected."""

from __future__ import annotations

import random
import struct
import time

import pytest

from tests.e2e.rawpg import RawClient, cstr, message, startup_packet

FUZZ_SECONDS = 4.0


@pytest.fixture()
def healthy(engine_host):
    """A logged-in connection that must keep working while others misbehave."""
    client = RawClient(engine_host.port)
    client.login(engine_host.user, engine_host.password)
    yield client
    client.close()


def _assert_still_serves(client: RawClient) -> None:
    reply = client.query("SELECT 41 + 1")
    data = [m for m in reply if m.kind == b"D"]
    assert data and data[0].body.endswith(b"42"), reply


def _closed_with_error(client: RawClient) -> dict[str, str] | None:
    """Read until the server closes; return the last ErrorResponse's fields, if one was sent."""
    fields = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = client.read()
        if msg is None:
            return fields
        if msg.kind == b"E":
            fields = msg.error_fields()
    raise AssertionError("server did not close the connection")


def _logged_in(engine_host) -> RawClient:
    client = RawClient(engine_host.port)
    client.login(engine_host.user, engine_host.password)
    return client


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"Q" + struct.pack("!i", 2), id="length-below-minimum"),
        pytest.param(b"Q" + struct.pack("!i", -5), id="negative-length"),
        pytest.param(b"Q" + struct.pack("!i", 2_000_000_000), id="oversized-message"),
        pytest.param(b"\x01" + struct.pack("!i", 4), id="unknown-message-type"),
        pytest.param(message(b"Q", b"SELECT 1"), id="query-without-nul"),
        pytest.param(message(b"Q", b"SELECT '\xff\xfe'\x00"), id="non-utf8-query"),
        pytest.param(message(b"P", b"\x00SELECT 1\x00" + struct.pack("!h", -1)), id="parse-negative-count"),
        pytest.param(message(b"P", b"\x00SELECT $1\x00" + struct.pack("!h", 5)), id="parse-truncated-oids"),
        pytest.param(message(b"B", b"\x00\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", 100) + b"ab"),
                     id="bind-value-longer-than-message"),
        pytest.param(message(b"B", b"\x00\x00" + struct.pack("!hh", 1, 7)), id="bind-bad-format-code"),
        pytest.param(message(b"D", b"X\x00"), id="describe-bad-target"),
        pytest.param(message(b"E", b"\x00"), id="execute-truncated"),
        pytest.param(message(b"S", b"extra"), id="sync-with-trailing-bytes"),
        pytest.param(message(b"p", cstr("again")), id="password-after-login"),
    ],
)
def test_malformed_message_closes_only_that_connection_with_a_protocol_error(engine_host, healthy, payload):
    victim = _logged_in(engine_host)
    victim.send(payload)
    fields = _closed_with_error(victim)
    assert fields is not None, "an ErrorResponse should explain the disconnect"
    assert fields["S"] == "FATAL"
    assert fields["C"] == "08P01"
    _assert_still_serves(healthy)


def test_truncated_message_then_disconnect_leaves_server_serving(engine_host, healthy):
    victim = _logged_in(engine_host)
    victim.send(b"Q" + struct.pack("!i", 100) + b"SELECT")
    victim.close()
    _assert_still_serves(healthy)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(struct.pack("!i", 4), id="startup-too-short"),
        pytest.param(struct.pack("!ii", 1_000_000, 196608), id="startup-too-long"),
        pytest.param(struct.pack("!ii", 8, 12345678), id="unknown-protocol"),
        pytest.param(startup_packet({"user": "x"})[:-1] + b"x", id="startup-unterminated"),
    ],
)
def test_malformed_startup_is_refused_and_server_keeps_serving(engine_host, healthy, packet):
    client = RawClient(engine_host.port, tls=False)
    client.send(packet)
    fields = _closed_with_error(client)
    assert fields is None or fields["C"] in ("08P01", "28000")
    _assert_still_serves(healthy)


def test_query_errors_do_not_close_the_connection(healthy):
    reply = healthy.query("SELEC nonsense")
    errors = [m.error_fields() for m in reply if m.kind == b"E"]
    assert errors and errors[0]["C"] == "42601"
    assert reply[-1].kind == b"Z"
    _assert_still_serves(healthy)


def test_extended_protocol_error_skips_to_sync(healthy):
    healthy.send(
        message(b"P", b"\x00SELECT * FROM no_such_table\x00\x00\x00")
        + message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
        + message(b"E", b"\x00\x00\x00\x00\x00")
        + message(b"S")
    )
    reply = healthy.read_until(b"Z")
    kinds = [m.kind for m in reply]
    assert kinds == [b"E", b"Z"], kinds
    assert reply[0].error_fields()["C"] == "42P01"
    _assert_still_serves(healthy)


def test_bounded_fuzz_loop_never_takes_the_server_down(engine_host, healthy):
    rng = random.Random(20261123)
    kinds = [b"Q", b"P", b"B", b"D", b"E", b"C", b"S", b"H", b"X", b"p", b"F", b"d", b"\x00"]
    deadline = time.monotonic() + FUZZ_SECONDS
    rounds = 0
    while time.monotonic() < deadline and rounds < 300:
        rounds += 1
        client = _logged_in(engine_host)
        try:
            for _ in range(rng.randint(1, 4)):
                body = rng.randbytes(rng.randint(0, 64))
                if rng.random() < 0.5:
                    client.send(message(rng.choice(kinds), body))
                else:
                    client.send(rng.choice(kinds) + rng.randbytes(rng.randint(0, 12)))
            client.sock.settimeout(0.3)
            for _ in range(20):
                try:
                    if client.read() is None:
                        break
                except TimeoutError:
                    break
        finally:
            client.close()
    assert rounds > 10
    _assert_still_serves(healthy)
