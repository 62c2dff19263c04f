"""Protocol message codec: frontend parsing rejects malformed bodies, backend builders frame correctly."""

from __future__ import annotations

import struct

import pytest

from engine_host.wire import messages as m


def test_startup_message_parses_parameters():
    body = struct.pack("!i", m.PROTOCOL_VERSION_3) + b"user\x00alice\x00database\x00hd\x00\x00"
    parsed = m.parse_initial(body)
    assert parsed == m.StartupMessage(m.PROTOCOL_VERSION_3, {"user": "alice", "database": "hd"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (struct.pack("!i", m.SSL_REQUEST_CODE), m.SslRequest()),
        (struct.pack("!i", m.GSSENC_REQUEST_CODE), m.GssEncRequest()),
        (struct.pack("!iii", m.CANCEL_REQUEST_CODE, 42, 7), m.CancelRequest(42, 7)),
    ],
)
def test_special_initial_packets_are_recognised(body, expected):
    assert m.parse_initial(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        struct.pack("!i", 2 << 16),  # protocol 2
        struct.pack("!i", m.PROTOCOL_VERSION_3) + b"user\x00alice",  # unterminated
        struct.pack("!ii", m.SSL_REQUEST_CODE, 1),  # trailing bytes
        b"\x00\x03",
    ],
)
def test_malformed_initial_packets_raise_protocol_violation(body):
    with pytest.raises(m.ProtocolViolation):
        m.parse_initial(body)


def test_bind_parses_formats_nulls_and_values():
    body = (b"p1\x00s1\x00" + struct.pack("!hh", 1, 1) + struct.pack("!h", 2) + struct.pack("!i", -1)
            + struct.pack("!i", 3) + b"abc" + struct.pack("!hh", 1, 0))
    parsed = m.parse_frontend(b"B", body)
    assert parsed == m.Bind("p1", "s1", (1,), (None, b"abc"), (0,))


def test_parse_reads_parameter_oids_as_unsigned():
    body = b"\x00SELECT $1\x00" + struct.pack("!hI", 1, 4_000_000_000)
    assert m.parse_frontend(b"P", body) == m.Parse("", "SELECT $1", (4_000_000_000,))


def test_bind_reads_counts_as_unsigned_up_to_65535_parameters():
    # PostgreSQL reads the counts with pq_getmsgint(msg, 2): 65,535 parameters are valid, not "negative".
    count = 65_535
    body = (b"\x00\x00" + struct.pack("!HH", 1, 0) + struct.pack("!H", count)
            + (struct.pack("!i", 1) + b"7") * count + struct.pack("!HH", 1, 1))
    parsed = m.parse_frontend(b"B", body)
    assert isinstance(parsed, m.Bind)
    assert len(parsed.params) == count and parsed.params[-1] == b"7" and parsed.result_formats == (1,)


def test_parse_reads_65535_parameter_types_and_describes_them_back():
    count = 65_535
    body = b"\x00SELECT 1\x00" + struct.pack("!H", count) + struct.pack("!I", 23) * count
    parsed = m.parse_frontend(b"P", body)
    assert isinstance(parsed, m.Parse) and len(parsed.param_oids) == count
    described = m.parameter_description(parsed.param_oids)
    assert described[:7] == b"t" + struct.pack("!iH", 4 + 2 + 4 * count, count)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (b"Q", b"SELECT 1"),
        (b"Q", b"\xff\x00"),
        (b"E", b"\x00"),
        (b"D", b"Z\x00"),
        (b"B", b"\x00\x00" + struct.pack("!hh", 1, 2)),
        (b"S", b"x"),
        (b"?", b""),
    ],
)
def test_malformed_frontend_messages_raise_protocol_violation(kind, body):
    with pytest.raises(m.ProtocolViolation):
        m.parse_frontend(kind, body)


def test_row_description_layout_matches_the_protocol():
    data = m.row_description([m.FieldDescription("id", 23, 4, -1, 1)])
    assert data[:1] == b"T"
    (length,) = struct.unpack("!i", data[1:5])
    assert length == len(data) - 1
    assert data[5:7] == struct.pack("!h", 1)
    assert data[7:10] == b"id\x00"
    assert struct.unpack("!IhIhih", data[10:]) == (0, 0, 23, 4, -1, 1)


def test_error_response_carries_severity_sqlstate_message_and_detail():
    data = m.error_response("28P01", "password authentication failed", detail="HD_ERR_AUTH_FAILED")
    fields = dict((p[:1], p[1:]) for p in data[5:].split(b"\x00") if p)
    assert fields[b"S"] == b"ERROR"
    assert fields[b"C"] == b"28P01"
    assert fields[b"D"] == b"HD_ERR_AUTH_FAILED"


def test_strings_with_nul_bytes_cannot_break_framing():
    data = m.command_complete("SELECT\x001")
    assert data == b"C" + struct.pack("!i", 12) + b"SELECT1\x00"
