"""bool: encoders (text 't'/'f', binary one byte) and parameter decoders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine_host.pgcompat.types.buffers import _U8, _cast, _from_matrix, _unwrap, _validity
from engine_host.pgcompat.types.parameter_format import _bad, _binary_length, _utf8
from engine_host.pgcompat.types.table import PgType


def _enc_bool(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    arr = _cast(_unwrap(arr), pa.bool_(), "boolean")
    valid = _validity(arr)
    values = np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    byte = values.astype(_U8) if binary else np.where(values, ord("t"), ord("f")).astype(_U8)
    return _from_matrix(byte.reshape(-1, 1), np.ones(len(arr), dtype=np.int64), valid)


def _small_bool(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    # Integers are what DuckDB's lossless export sends (arrow.bool8); any non-zero value is true.
    if not (pa.types.is_boolean(plain.type) or pa.types.is_integer(plain.type)):
        return None
    true, false = (b"\x01", b"\x00") if binary else (b"t", b"f")
    return [None if v is None else true if v else false for v in plain.to_pylist()]


_TRUE = ("t", "true", "y", "yes", "on", "1")
_FALSE = ("f", "false", "n", "no", "off", "0")


def _text_bool(data: bytes) -> object:
    text = _utf8(data, "boolean").strip().lower()
    # PostgreSQL's boolin accepts any unique prefix of true/false/yes/no, and on/off from 2 letters.
    if text and (any(w.startswith(text) for w in ("true", "yes")) or text in ("on", "1")):
        return True
    if text and (any(w.startswith(text) for w in ("false", "no")) or text in ("of", "off", "0")):
        return False
    raise _bad("boolean", data)


def _binary_bool(data: bytes) -> object:
    _binary_length(data, 1, "boolean")
    return data != b"\x00"
