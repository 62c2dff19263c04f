"""PostgreSQL v3 protocol messages: reading frontend messages and building backend ones.

This module knows bytes and message types only. Nothing here knows about sessions,
policies or DuckDB; the connection handler translates between these messages and
the statement pipeline.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

# pyarrow-stubs' overloads reject binary_join_element_wise over mixed binary layouts; used untyped.
pc: Any = _typed_pc

PROTOCOL_VERSION_3 = 196608  # 3.0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# A startup packet carries a handful of short parameters; anything near this is hostile.
MAX_STARTUP_LENGTH = 10_000
# Largest frontend message we accept (a Bind with big parameters, a long query text).
MAX_MESSAGE_LENGTH = 64 * 1024 * 1024

_INT16 = struct.Struct("!h")
# Counts (parameters, format codes, parameter types) are unsigned: PostgreSQL reads them with
# pq_getmsgint(msg, 2) and accepts up to 65,535 bind parameters.
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_HEADER = struct.Struct("!ci")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol message; the connection must close."""

    sqlstate = "08P01"


# --- frontend messages ------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    sql: str


@dataclass(frozen=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Close:
    kind: str
    name: str


@dataclass(frozen=True)
class Sync:
    pass


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Terminate:
    pass


@dataclass(frozen=True)
class CopyData:
    data: bytes


@dataclass(frozen=True)
class CopyDone:
    pass


@dataclass(frozen=True)
class CopyFail:
    message: str


@dataclass(frozen=True)
class PasswordMessage:
    password: str


FrontendMessage = (Query | Parse | Bind | Describe | Execute | Close | Sync | Flush | Terminate | PasswordMessage
                   | CopyData | CopyDone | CopyFail)


@dataclass(frozen=True)
class StartupMessage:
    protocol: int
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True)
class SslRequest:
    pass


@dataclass(frozen=True)
class GssEncRequest:
    pass


InitialMessage = StartupMessage | CancelRequest | SslRequest | GssEncRequest


class _Reader:
    """A cursor over one message body that raises ProtocolViolation instead of IndexError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def int16(self) -> int:
        return int(self._unpack(_INT16, 2))

    def uint16(self) -> int:
        return int(self._unpack(_UINT16, 2))

    def int32(self) -> int:
        return int(self._unpack(_INT32, 4))

    def uint32(self) -> int:
        return int(self._unpack(_UINT32, 4))

    def _unpack(self, fmt: struct.Struct, size: int) -> int:
        if self._pos + size > len(self._data):
            raise ProtocolViolation("message is shorter than its fields")
        (value,) = fmt.unpack_from(self._data, self._pos)
        self._pos += size
        return int(value)

    def byte(self) -> str:
        if self._pos >= len(self._data):
            raise ProtocolViolation("message is shorter than its fields")
        value = self._data[self._pos : self._pos + 1].decode("latin-1")
        self._pos += 1
        return value

    def cstring(self) -> str:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise ProtocolViolation("string field is not NUL-terminated")
        raw = self._data[self._pos : end]
        self._pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("invalid UTF-8 in a string field") from exc

    def raw(self, size: int) -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise ProtocolViolation("length field exceeds the message")
        value = self._data[self._pos : self._pos + size]
        self._pos += size
        return value

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolViolation("trailing bytes after the message fields")


def parse_initial(body: bytes) -> InitialMessage:
    """Decode the first packet of a connection (its body after the length word)."""
    reader = _Reader(body)
    code = reader.int32()
    if code == SSL_REQUEST_CODE:
        reader.end()
        return SslRequest()
    if code == GSSENC_REQUEST_CODE:
        reader.end()
        return GssEncRequest()
    if code == CANCEL_REQUEST_CODE:
        message = CancelRequest(reader.int32(), reader.int32())
        reader.end()
        return message
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    params: dict[str, str] = {}
    while True:
        key = reader.cstring()
        if key == "":
            break
        params[key] = reader.cstring()
    reader.end()
    return StartupMessage(code, params)


def _format_codes(reader: _Reader) -> tuple[int, ...]:
    codes = tuple(reader.int16() for _ in range(reader.uint16()))
    if any(code not in (0, 1) for code in codes):
        raise ProtocolViolation("format codes must be 0 (text) or 1 (binary)")
    return codes


def _parse_bind(reader: _Reader) -> Bind:
    portal = reader.cstring()
    statement = reader.cstring()
    param_formats = _format_codes(reader)
    count = reader.uint16()
    params: list[bytes | None] = []
    for _ in range(count):
        size = reader.int32()
        params.append(None if size == -1 else reader.raw(size))
    return Bind(portal, statement, param_formats, tuple(params), _format_codes(reader))


def parse_frontend(kind: bytes, body: bytes) -> FrontendMessage:
    """Decode one regular frontend message; raises ProtocolViolation for anything malformed."""
    reader = _Reader(body)
    message: FrontendMessage
    if kind == b"Q":
        message = Query(reader.cstring())
    elif kind == b"P":
        name, sql = reader.cstring(), reader.cstring()
        count = reader.uint16()
        message = Parse(name, sql, tuple(reader.uint32() for _ in range(count)))
    elif kind == b"B":
        message = _parse_bind(reader)
    elif kind == b"D":
        message = Describe(_describe_kind(reader), reader.cstring())
    elif kind == b"E":
        message = Execute(reader.cstring(), reader.int32())
    elif kind == b"C":
        message = Close(_describe_kind(reader), reader.cstring())
    elif kind == b"S":
        message = Sync()
    elif kind == b"H":
        message = Flush()
    elif kind == b"X":
        message = Terminate()
    elif kind == b"p":
        message = PasswordMessage(reader.cstring())
    elif kind == b"d":
        return CopyData(body)
    elif kind == b"c":
        message = CopyDone()
    elif kind == b"f":
        message = CopyFail(reader.cstring())
    else:
        raise ProtocolViolation(f"unknown message type {kind!r}")
    reader.end()
    return message


def _describe_kind(reader: _Reader) -> str:
    kind = reader.byte()
    if kind not in ("S", "P"):
        raise ProtocolViolation("Describe/Close target must be 'S' or 'P'")
    return kind


# --- backend messages -------------------------------------------------------------------


def _message(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload) + 4) + payload


def _cstr(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\x00", b"") + b"\x00"


def authentication_ok() -> bytes:
    return _message(b"R", _INT32.pack(0))


def authentication_cleartext_password() -> bytes:
    return _message(b"R", _INT32.pack(3))


def parameter_status(name: str, value: str) -> bytes:
    return _message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return _message(b"K", _INT32.pack(process_id) + _INT32.pack(secret_key))


def ready_for_query(status: str) -> bytes:
    return _message(b"Z", status.encode("ascii"))


def parse_complete() -> bytes:
    return _message(b"1")


def bind_complete() -> bytes:
    return _message(b"2")


def close_complete() -> bytes:
    return _message(b"3")


def no_data() -> bytes:
    return _message(b"n")


def copy_out_response(binary: bool, columns: int) -> bytes:
    """CopyOutResponse: the overall format and each column's (the same for every column, as PostgreSQL sends)."""
    fmt = 1 if binary else 0
    return _message(b"H", bytes([fmt]) + _INT16.pack(columns) + _INT16.pack(fmt) * columns)


def copy_in_response(binary: bool, columns: int) -> bytes:
    """CopyInResponse: the overall format and each column's."""
    fmt = 1 if binary else 0
    return _message(b"G", bytes([fmt]) + _INT16.pack(columns) + _INT16.pack(fmt) * columns)


def copy_data(payload: bytes) -> bytes:
    return _message(b"d", payload)


def copy_data_frames(payloads: pa.Array) -> bytes:
    """One CopyData message per value of a BinaryArray, framed together (vectorised: no per-row Python)."""
    n = len(payloads)
    if n == 0:
        return b""
    lengths = pc.binary_length(payloads).to_numpy(zero_copy_only=False).astype(np.int64)
    headers = np.empty(n, dtype=[("type", "u1"), ("length", ">i4")])
    headers["type"] = ord("d")
    headers["length"] = lengths + 4
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(5), n, [None, pa.py_buffer(headers.tobytes())])
    large = int(lengths.sum()) + 5 * n > 2**31 - 1
    kind = pa.large_binary() if large else pa.binary()
    framed = pc.binary_join_element_wise(fixed.cast(kind), payloads.cast(kind), b"")
    offsets = np.frombuffer(framed.buffers()[1], dtype=np.int64 if large else np.int32,
                            count=n + 1, offset=framed.offset * (8 if large else 4))
    return framed.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


def copy_done() -> bytes:
    return _message(b"c")


def empty_query_response() -> bytes:
    return _message(b"I")


def portal_suspended() -> bytes:
    return _message(b"s")


def command_complete(tag: str) -> bytes:
    return _message(b"C", _cstr(tag))


def parameter_description(oids: Sequence[int]) -> bytes:
    return _message(b"t", _UINT16.pack(len(oids)) + b"".join(_UINT32.pack(oid) for oid in oids))


@dataclass(frozen=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    type_oid: int
    type_size: int
    type_modifier: int = -1
    format_code: int = 0
    table_oid: int = 0
    column_number: int = 0


_FIELD = struct.Struct("!IhIhih")


def row_description(fields: Iterable[FieldDescription]) -> bytes:
    items = list(fields)
    body = bytearray(_INT16.pack(len(items)))
    for item in items:
        body += _cstr(item.name)
        body += _FIELD.pack(
            item.table_oid,
            item.column_number,
            item.type_oid,
            item.type_size,
            item.type_modifier,
            item.format_code,
        )
    return _message(b"T", bytes(body))


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None,
            position: int | None = None) -> bytes:
    body = bytearray()
    for code, value in (
        (b"S", severity),
        (b"V", severity),
        (b"C", sqlstate),
        (b"M", message),
        (b"D", detail),
        (b"H", hint),
        (b"P", str(position) if position else None),
    ):
        if value:
            body += code + _cstr(value)
    body += b"\x00"
    return bytes(body)


def error_response(sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None,
                   severity: str = "ERROR", position: int | None = None) -> bytes:
    return _message(b"E", _fields(severity, sqlstate, message, detail, hint, position))


def notice_response(message: str, *, sqlstate: str = "00000", detail: str | None = None,
                    severity: str = "NOTICE") -> bytes:
    return _message(b"N", _fields(severity, sqlstate, message, detail, None))
