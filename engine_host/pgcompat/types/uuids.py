"""uuid: encoders and parameter decoders."""

from __future__ import annotations

import re
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.types.arrow_types import _is_string
from engine_host.pgcompat.types.buffers import (
    _U8,
    _buffer,
    _cast,
    _from_matrix,
    _string_matrix,
    _unwrap,
    _validity,
    as_plain_binary,
)
from engine_host.pgcompat.types.parameter_format import _bad, _binary_length, _utf8
from engine_host.pgcompat.types.table import PgType
from engine_host.pgcompat.types.text import _HEX, _HEX_DIGITS

# pyarrow-stubs' overloads reject valid calls that mix scalars, Python literals and arrays of
# different (large/view) layouts, and miss attributes of nested/extension arrays; the compute
# module and raw buffers are therefore used untyped.
pc: Any = _typed_pc


def _enc_uuid(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    valid = _validity(plain)
    n = len(plain)
    if pa.types.is_fixed_size_binary(plain.type) and plain.type.byte_width == 16:
        raw = np.frombuffer(_buffer(plain, 1), dtype=_U8, count=16 * n, offset=plain.offset * 16).reshape(n, 16)
        if binary:
            return _from_matrix(raw, np.full(n, 16, dtype=np.int64), valid)
        hexed = np.empty((n, 32), dtype=_U8)
        hexed[:, 0::2] = _HEX[raw >> 4]
        hexed[:, 1::2] = _HEX[raw & 0x0F]
        out = np.full((n, 36), ord("-"), dtype=_U8)
        for start, stop, dest in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
            out[:, dest: dest + stop - start] = hexed[:, start:stop]
        return _from_matrix(out, np.full(n, 36, dtype=np.int64), valid)
    if not _is_string(plain.type):
        plain = _cast(plain, pa.string(), "uuid")
    if not binary:
        return as_plain_binary(plain)
    mat, lengths = _string_matrix(pc.utf8_lower(pc.replace_substring(plain, "-", "")).fill_null("0" * 32))
    if n and (mat.shape[1] != 32 or int(lengths.min()) != 32):
        raise pa.ArrowInvalid("malformed uuid value")
    if n == 0:
        return pa.array([], pa.binary())
    nibble = np.full(256, 255, dtype=_U8)
    nibble[np.frombuffer(b"0123456789abcdef", dtype=_U8)] = np.arange(16, dtype=_U8)
    values = nibble[mat]
    if (values == 255).any():
        raise pa.ArrowInvalid("malformed uuid value")
    raw = (values[:, 0::2] << 4) | values[:, 1::2]
    return _from_matrix(raw.astype(_U8), np.full(n, 16, dtype=np.int64), valid)


def _small_uuid(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    t = plain.type
    if pa.types.is_fixed_size_binary(t) and t.byte_width == 16:
        values: list[bytes | None] = plain.to_pylist()
        return values if binary else [None if v is None else _uuid_text(v) for v in values]
    if not binary or not _is_string(t):  # uuid text from a string is the string itself
        return None
    out: list[bytes | None] = []
    for text in plain.to_pylist():
        digits = None if text is None else text.replace("-", "").lower().encode()
        if digits is not None and (len(digits) != 32 or not _HEX_DIGITS.issuperset(digits)):
            return None  # malformed: the general path raises
        out.append(None if digits is None else bytes.fromhex(digits.decode()))
    return out


def _uuid_text(raw: bytes) -> bytes:
    """uuid_out: lower-case hex in groups of 8-4-4-4-12."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


_UUID_TEXT = re.compile(r"^\{?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}\}?$")


def _text_uuid(data: bytes) -> object:
    text = _utf8(data, "uuid").strip()
    if not _UUID_TEXT.match(text) or (text.startswith("{") != text.endswith("}")):
        raise _bad("uuid", text)
    return uuid.UUID(text.strip("{}"))


def _binary_uuid(data: bytes) -> object:
    _binary_length(data, 16, "uuid")
    return uuid.UUID(bytes=data)
