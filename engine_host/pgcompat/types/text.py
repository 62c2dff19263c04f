"""text, varchar, bpchar, name, char and bytea: encoders and parameter decoders."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from engine_host.pgcompat.types.arrow_types import _is_binary, _is_string
from engine_host.pgcompat.types.buffers import (
    _U8,
    _binary_array,
    _buffer,
    _cast,
    _offsets,
    _unwrap,
    _validity,
    as_plain_binary,
)
from engine_host.pgcompat.types.parameter_format import ParameterFormatError, _utf8
from engine_host.pgcompat.types.table import PgType


def _enc_text(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    from engine_host.pgcompat.types.encoding import _encode_as_text  # imported here: encoding dispatches to this module
    plain = _unwrap(arr)
    if _is_string(plain.type):
        return as_plain_binary(plain)
    # Text of a non-string value (a column described as text but produced as something else): its
    # natural text form, which is also text's binary form.
    return _encode_as_text(arr)


def _enc_bytea(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    if not _is_binary(plain.type):
        plain = _cast(plain, pa.binary(), "bytea")
    plain = as_plain_binary(plain)
    if binary:
        return plain
    return _bytea_hex(plain)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=_U8)


def _bytea_hex(arr: pa.Array) -> pa.Array:
    r"""`\x` followed by two lower-case hex digits per byte, as byteaout prints with bytea_output=hex."""
    n = len(arr)
    valid = _validity(arr)
    offsets = _offsets(arr)
    lengths = np.diff(offsets)
    if valid is not None:
        lengths = np.where(valid, lengths, 0)
    out_lengths = np.where(valid if valid is not None else True, 2 + 2 * lengths, 0)
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(out_lengths, out=out_offsets[1:])
    total = int(lengths.sum())
    out = np.empty(int(out_offsets[-1]), dtype=_U8)
    starts = out_offsets[:-1][out_lengths > 0]
    out[starts] = ord("\\")
    out[starts + 1] = ord("x")
    if total:
        data = np.frombuffer(_buffer(arr, 2), dtype=_U8)
        row = np.repeat(np.arange(n), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = data[offsets[:-1][row] + within]
        dest = out_offsets[:-1][row] + 2 + 2 * within
        out[dest] = _HEX[src >> 4]
        out[dest + 1] = _HEX[src & 0x0F]
    return _binary_array(out_offsets, out, valid)


def _small_bytea(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if binary or not _is_binary(plain.type):  # binary bytea is the stored bytes already
        return None
    return [None if v is None else b"\\x" + v.hex().encode() for v in plain.to_pylist()]


def _text_str(name: str) -> Callable[[bytes], object]:
    return lambda data: _utf8(data, name)


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _text_bytea(data: bytes) -> object:
    if data[:2] == b"\\x":
        body = bytes(b for b in data[2:] if b not in b" \t\n\r")
        if len(body) % 2 or any(b not in _HEX_DIGITS for b in body):
            raise ParameterFormatError("invalid hexadecimal data for type bytea")
        return bytes.fromhex(body.decode())
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte != 0x5C:
            out.append(byte)
            i += 1
        elif data[i + 1: i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        elif re.fullmatch(rb"[0-3][0-7][0-7]", data[i + 1: i + 4]):
            out.append(int(data[i + 1: i + 4], 8))
            i += 4
        else:
            raise ParameterFormatError("invalid input syntax for type bytea")
    return bytes(out)


def _binary_str(name: str) -> Callable[[bytes], object]:
    return lambda data: _utf8(data, name)


def _binary_bytea(data: bytes) -> object:
    return data


def _binary_char(data: bytes) -> object:
    return _utf8(data, "char")
