"""PostgreSQL types for DuckDB values: type mapping, result encoding and parameter decoding.

Results arrive as Arrow arrays from DuckDB and leave as per-column arrays of encoded values (text or
binary format, exactly as PostgreSQL 15 prints or `*_send`s them with DateStyle=ISO, TimeZone=UTC,
IntervalStyle=postgres, extra_float_digits=1). The common scalar types are encoded with Arrow compute
kernels and NumPy over whole batches; only arrays of rare element types, intervals in text, JSON built
from nested values and a few DuckDB-only types fall back to a per-row Python loop. Batches of at most
SMALL_BATCH_ROWS rows (point lookups, `SELECT 1`) are encoded value by value instead, where the kernels'
fixed cost per call would dominate; both paths give the same bytes (tests/unit/engine/test_pgtypes.py).

Mapping choices (DuckDB -> PostgreSQL):

- unsigned integers go to the next wider signed type (UTINYINT -> int2, USMALLINT -> int4,
  UINTEGER -> int8); UBIGINT, HUGEINT, UHUGEINT and BIGNUM/VARINT go to unconstrained numeric,
  because no PostgreSQL integer holds them.
- STRUCT, MAP, UNION and VARIANT go to json: clients parse it into dicts and lists, whereas a
  PostgreSQL record has no standard client-side parser. MAP becomes an object with stringified keys
  (as DuckDB's own to_json does); a UNION becomes its active member's value.
- LIST and fixed-size ARRAY go to the PostgreSQL array of their innermost element type (nested lists
  become multi-dimensional arrays; ragged ones can only be sent in text format).
- ENUM, UNKNOWN, "NULL" and anything unrecognised go to text.
- TIMESTAMP_S/_MS/_NS go to timestamp (nanoseconds are truncated to PostgreSQL's microseconds),
  TIME WITH TIME ZONE to timetz, BIT to varbit, JSON to json (not jsonb: json keeps DuckDB's text
  exactly as stored).

The engine exports Arrow with `arrow_lossless_conversion = true`, so DuckDB-specific types arrive as
extension types (arrow.bool8, arrow.uuid, arrow.json, and arrow.opaque for HUGEINT, UHUGEINT,
BIGNUM, TIME WITH TIME ZONE and BIT), which pg_type_for_arrow recognises and every value is exact.
DuckDB's default export is handled too, but it drops information: UUID and JSON arrive as plain
strings, BIT as plain binary, TIME WITH TIME ZONE without its offset (sent as +00) and UHUGEINT as a
wrapping decimal128; encoding with the binder's type (pg_type_for_duckdb) recovers all but the last
two.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.types.table import (  # the one type table; encoding and decoding live here
    BOOL,
    BYTEA,
    DATE,
    ELEMENT_OF_ARRAY,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    INTERVAL,
    JSON,
    MAX_NUMERIC_PRECISION,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    TIMETZ,
    UUID,
    VARBIT,
    WIRE_TYPE_BY_OID,
    PgType,
    array_of,
    duckdb_type_for_oid,
    numeric_type,
    pg_type_by_oid,
    pg_type_for_duckdb,
)

# pyarrow-stubs' overloads reject valid calls that mix scalars, Python literals and arrays of
# different (large/view) layouts, and miss attributes of nested/extension arrays; the compute
# module and raw buffers are therefore used untyped.
pc: Any = _typed_pc

__all__ = [
    "ParameterFormatError",
    "PgType",
    "decode_parameter",
    "duckdb_type_for_oid",
    "encode_column",
    "pg_type_by_oid",
    "pg_type_for_arrow",
    "pg_type_for_duckdb",
]


class ParameterFormatError(ValueError):
    """A Bind parameter is not a valid value of its declared type (SQLSTATE 22P02)."""


_OPAQUE_TYPES: dict[str, PgType] = {
    "hugeint": NUMERIC, "uhugeint": NUMERIC, "bignum": NUMERIC, "varint": NUMERIC,
    "time_tz": TIMETZ, "bit": VARBIT,
}


def pg_type_for_arrow(arrow_type: pa.DataType) -> PgType:
    """The PostgreSQL type a column of an Arrow result batch is sent as."""
    t: Any = arrow_type
    if isinstance(t, pa.BaseExtensionType):
        extension = t.extension_name
        if extension == "arrow.uuid":
            return UUID
        if extension == "arrow.json":
            return JSON
        if extension == "arrow.bool8":  # DuckDB's lossless export sends BOOLEAN as one byte per value
            return BOOL
        if extension == "arrow.opaque":
            mapped = _OPAQUE_TYPES.get(getattr(t, "type_name", ""))
            if mapped is not None:
                return mapped
        return pg_type_for_arrow(t.storage_type)
    if pa.types.is_boolean(t):
        return BOOL
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return INT2
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return INT4
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return INT8
    if pa.types.is_uint64(t):
        return NUMERIC
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return FLOAT4
    if pa.types.is_float64(t):
        return FLOAT8
    if pa.types.is_decimal(t):
        precision = min(t.precision, MAX_NUMERIC_PRECISION)
        return numeric_type(precision, t.scale) if 0 <= t.scale <= precision else NUMERIC
    if _is_string(t):
        return TEXT
    if _is_binary(t):
        return BYTEA
    if pa.types.is_date(t):
        return DATE
    if pa.types.is_time(t):
        return TIME
    if pa.types.is_timestamp(t):
        return TIMESTAMPTZ if t.tz else TIMESTAMP
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return INTERVAL
    if _is_list(t):
        return array_of(pg_type_for_arrow(t.value_type))
    if pa.types.is_dictionary(t):
        return pg_type_for_arrow(t.value_type)
    if pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t):
        return JSON
    return TEXT


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _is_binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
                or pa.types.is_fixed_size_binary(t))


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
                or pa.types.is_list_view(t) or pa.types.is_large_list_view(t))


# --- vectorised building blocks ----------------------------------------------------------------

_U8 = np.uint8
_ZERO = ord("0")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
# Days and microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
_US_PER_DAY = 86_400_000_000


def _buffer(arr: pa.Array, index: int) -> Any:
    """One of an array's raw buffers (None where absent); slice offsets are the caller's business."""
    return arr.buffers()[index]


def _py_buffer(data: Any) -> pa.Buffer:
    return pa.py_buffer(data)


def _validity(arr: pa.Array) -> np.ndarray | None:
    """A boolean mask of non-null rows, or None when there are no nulls."""
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _primitive(arr: pa.Array, dtype: str) -> np.ndarray:
    """The values buffer of a fixed-width array as NumPy (null slots hold arbitrary values)."""
    dtype_ = np.dtype(dtype)
    buf = _buffer(arr, 1)
    if buf is None or len(arr) == 0:
        return np.zeros(len(arr), dtype=dtype_)
    return np.frombuffer(buf, dtype=dtype_, count=len(arr), offset=arr.offset * dtype_.itemsize)


def _binary_array(offsets: np.ndarray, data: np.ndarray | bytes, valid: np.ndarray | None) -> pa.Array:
    """A (large_)binary array from int64 offsets (starting at 0), a data buffer and a validity mask."""
    n = len(offsets) - 1
    large = n > 0 and int(offsets[-1]) > _INT32_MAX
    offsets_buffer = _py_buffer(offsets.astype(np.int64 if large else np.int32))
    validity = None
    null_count = 0
    if valid is not None:
        validity = pa.array(valid, pa.bool_()).buffers()[1]
        null_count = int(n - np.count_nonzero(valid))
    data_buffer = _py_buffer(data if isinstance(data, bytes) else np.ascontiguousarray(data))
    return pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), n,
                                 [validity, offsets_buffer, data_buffer], null_count)


def _from_matrix(mat: np.ndarray, lengths: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """Row i of the result is the first lengths[i] bytes of mat[i] (nothing for null rows)."""
    n, width = mat.shape
    if valid is not None:
        lengths = np.where(valid, lengths, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if n and int(lengths.min(initial=width)) == width:
        data = mat.reshape(-1)
    else:
        data = mat[np.arange(width)[None, :] < lengths[:, None]]
    return _binary_array(offsets, data, valid)


def _from_fixed(values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """Each value's raw bytes (a big-endian dtype, or a structured record) as one binary value."""
    width = values.dtype.itemsize
    mat = np.ascontiguousarray(values).view(_U8).reshape(len(values), width)
    return _from_matrix(mat, np.full(len(values), width, dtype=np.int64), valid)


# "00".."99" as little-endian uint16 pairs of ASCII digits, for two digits per table lookup.
_DIGIT_PAIRS = np.array([[_ZERO + i // 10, _ZERO + i % 10] for i in range(100)], dtype=_U8).view("<u2").ravel()


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded ASCII decimal digits of non-negative integers, as an (n, width) matrix."""
    remaining: Any = values.astype(np.int32 if width <= 9 else np.int64)
    n = len(values)
    out = np.empty((n, width), dtype=_U8)
    position = width
    while position >= 2:
        quotient = remaining // 100
        pair = np.take(_DIGIT_PAIRS, remaining - quotient * 100)
        out[:, position - 2: position] = pair.view(_U8).reshape(n, 2)
        remaining = quotient
        position -= 2
    if position:
        out[:, 0] = (remaining % 10 + _ZERO).astype(_U8)
    return out


def _string_matrix(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A (string or binary) array as a zero-padded (n, max length) byte matrix and its row lengths."""
    arr = as_plain_binary(arr)
    n = len(arr)
    offsets = _offsets(arr)
    lengths = np.diff(offsets)
    width = int(lengths.max(initial=0))
    if width == 0:
        return np.zeros((n, 0), dtype=_U8), lengths
    data = np.frombuffer(_buffer(arr, 2), dtype=_U8) if _buffer(arr, 2) is not None else np.zeros(1, _U8)
    index = offsets[:-1, None] + np.arange(width)[None, :]
    inside = np.arange(width)[None, :] < lengths[:, None]
    mat = np.where(inside, data[np.minimum(index, len(data) - 1)], 0).astype(_U8)
    return mat, lengths


def _offsets(arr: pa.Array) -> np.ndarray:
    """The absolute int64 offsets (n + 1) of a binary/string array, honouring its slice offset."""
    large = pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type)
    dtype = np.int64 if large else np.int32
    buf = _buffer(arr, 1)
    if buf is None or len(arr) == 0:
        return np.zeros(len(arr) + 1, dtype=np.int64)
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(buf, dtype=dtype, count=len(arr) + 1, offset=arr.offset * itemsize).astype(np.int64)


def as_plain_binary(arr: pa.Array) -> pa.Array:
    """String/binary of any layout as binary or large_binary (zero-copy where Arrow allows)."""
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return arr
    if pa.types.is_string(t):
        return arr.view(pa.binary())
    if pa.types.is_large_string(t):
        return arr.view(pa.large_binary())
    return arr.cast(pa.binary())


def _replace_rows(encoded: pa.Array, rows: np.ndarray, values: list[bytes]) -> pa.Array:
    """`encoded` with the given rows replaced by per-row values (the rare-value fallback)."""
    if len(rows) == 0:
        return encoded
    mask = np.zeros(len(encoded), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(encoded, pa.array(mask), pa.array(values, encoded.type))


def _per_row(arr: pa.Array, fn: Callable[[Any], bytes]) -> pa.Array:
    """Python fallback: fn applied to every non-null value."""
    return pa.array(_per_value(arr, fn), pa.binary())


def _per_value(arr: pa.Array, fn: Callable[[Any], bytes]) -> list[bytes | None]:
    return [None if v is None else fn(v) for v in arr.to_pylist()]


# --- result encoding -----------------------------------------------------------------------------

def encode_column(array: pa.Array | pa.ChunkedArray, pgtype: PgType, binary: bool) -> pa.Array:
    """Encode one result column to PostgreSQL text or binary values (a BinaryArray, nulls kept)."""
    arr = _single_array(array)
    if len(arr) <= SMALL_BATCH_ROWS:
        small = _encode_small(arr, pgtype, binary)
        if small is not None:
            return small
    if pgtype.element is not None:
        return _encode_array(arr, pgtype, binary)
    encoders = _ENCODERS.get(pgtype.name)
    if encoders is None:  # a type we announce but have no encoder for is sent as its text form
        return _encode_as_text(arr)
    return encoders[0](arr, binary, pgtype)


def _single_array(array: pa.Array | pa.ChunkedArray) -> Any:
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 1:
            return array.chunk(0)
        if array.num_chunks == 0:
            return pa.array([], array.type)
        return array.combine_chunks()
    return array


def _unwrap(array: pa.Array) -> Any:
    """Dictionary-decoded storage of extension and dictionary arrays."""
    arr: Any = array
    if isinstance(arr.type, pa.BaseExtensionType):
        arr = arr.storage
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _opaque_name(arr: pa.Array) -> str:
    t = arr.type
    return str(getattr(t, "type_name", "")) if isinstance(t, pa.BaseExtensionType) else ""


def _encode_as_text(arr: pa.Array) -> pa.Array:
    """The PostgreSQL text form of a value of whatever type the array naturally maps to."""
    natural = pg_type_for_arrow(arr.type)
    if natural is TEXT:
        plain = _unwrap(arr)
        if _is_string(plain.type) or _is_binary(plain.type):
            return as_plain_binary(plain)
        if pa.types.is_null(plain.type):
            return pa.nulls(len(plain), pa.binary())
        return _per_row(plain, lambda v: str(v).encode())
    return encode_column(arr, natural, False)


def _cast(arr: pa.Array, target: pa.DataType, what: str) -> pa.Array:
    """`arr` as `target`, or an Arrow error naming the PostgreSQL type when it does not fit."""
    if arr.type == target:
        return arr
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise pa.ArrowInvalid(f"cannot send {arr.type} values as {what}: {exc}") from None


# bool

def _enc_bool(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    arr = _cast(_unwrap(arr), pa.bool_(), "boolean")
    valid = _validity(arr)
    values = np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    byte = values.astype(_U8) if binary else np.where(values, ord("t"), ord("f")).astype(_U8)
    return _from_matrix(byte.reshape(-1, 1), np.ones(len(arr), dtype=np.int64), valid)


# integers and floats

_INT_ARROW = {2: pa.int16(), 4: pa.int32(), 8: pa.int64()}
_INT_NAMES = {2: "smallint", 4: "integer", 8: "bigint"}


def _enc_int(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    if not binary and (pa.types.is_integer(plain.type) or pa.types.is_decimal(plain.type)):
        return as_plain_binary(plain.cast(pa.string()))
    target = _INT_ARROW[pgtype.size]
    plain = _cast(plain, target, _INT_NAMES[pgtype.size])
    if not binary:
        return as_plain_binary(plain.cast(pa.string()))
    return _from_fixed(_primitive(plain, f"<i{pgtype.size}").astype(f">i{pgtype.size}"), _validity(plain))


def _enc_oid(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    """oid is an unsigned 32-bit integer on the wire (catalog answers carry it as DuckDB UINTEGER)."""
    plain = _cast(_unwrap(arr), pa.uint32(), "oid")
    if not binary:
        return as_plain_binary(plain.cast(pa.string()))
    return _from_fixed(_primitive(plain, "<u4").astype(">u4"), _validity(plain))


def _enc_float(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    single = pgtype.size == 4
    plain = _cast(_unwrap(arr), pa.float32() if single else pa.float64(), pgtype.name)
    valid = _validity(plain)
    if binary:
        return _from_fixed(_primitive(plain, "<f4" if single else "<f8").astype(">f4" if single else ">f8"), valid)
    return _float_text(plain, single, valid)


def _float_text(arr: pa.Array, single: bool, valid: np.ndarray | None) -> pa.Array:
    """Shortest round-trip text exactly as PostgreSQL's float4out/float8out (Ryu) print it.

    Arrow's formatter yields the same shortest digits for magnitudes below 2**53 (float4: 2**24),
    and the same layout wherever both use fixed notation: PostgreSQL does for decimal exponents
    -4..14 (float8) or -4..5 (float4), Arrow for roughly -6..9. A shortest representation's exponent
    is >= -4 exactly when the value is at least the float nearest 1e-4 (and < 15 exactly when below
    1e15), so those bounds select the rows Arrow already got right; the rest (exponent notation on
    either side, infinities, NaN) are laid out again in Python.
    """
    n = len(arr)
    text = pc.cast(arr, pa.string())
    values = _primitive(arr, "<f4" if single else "<f8")
    magnitude = np.abs(values)
    low = np.float32(1e-4) if single else np.float64(1e-4)
    high = np.float32(1e6) if single else np.float64(1e15)
    with np.errstate(invalid="ignore"):
        pg_fixed = ((magnitude >= low) & (magnitude < high)) | (magnitude == 0)
    arrow_fixed = ~np.asarray(pc.match_substring(text, "e").fill_null(False).to_numpy(zero_copy_only=False),
                              dtype=bool)
    encoded = as_plain_binary(text)
    rows = _rare_rows(~(pg_fixed & arrow_fixed), valid) if n else np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        return encoded
    arrow_text = text.take(pa.array(rows)).to_pylist()
    return _replace_rows(encoded, rows, [float_text(float(values[i]), single, str(t)).encode()
                                         for i, t in zip(rows, arrow_text, strict=True)])


def float_text(value: float, single: bool, shortest: str | None = None) -> str:
    """One float as PostgreSQL prints it; `shortest` is a known shortest round-trip spelling of it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    if abs(value) >= (2.0**24 if single else 2.0**53):
        digits, exponent = _shortest_inside_bounds(abs(value), single)
    else:
        if shortest is None:
            shortest = np.format_float_scientific(np.float32(value), unique=True) if single else repr(value)
        digits, exponent = _split_decimal(shortest.lstrip("-"))
    if -4 <= exponent < (6 if single else 15):
        if exponent < 0:
            return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
        integer = digits[: exponent + 1].ljust(exponent + 1, "0")
        rest = digits[exponent + 1:]
        return f"{sign}{integer}.{rest}" if rest else f"{sign}{integer}"
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _split_decimal(text: str) -> tuple[str, int]:
    """(significant digits, decimal exponent of the first) of a positive decimal like '1.5e-07'."""
    mantissa, _, exponent_text = text.lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    leading_zeros = len(whole + fraction) - len(digits)
    return digits.rstrip("0") or "0", len(whole) - 1 - leading_zeros + int(exponent_text or 0)


def _shortest_inside_bounds(magnitude: float, single: bool) -> tuple[str, int]:
    """Ryu's shortest digits as PostgreSQL builds it: never a decimal exactly halfway to a neighbour.

    Python and Arrow accept a halfway decimal when the float's mantissa is even; PostgreSQL's d2s/f2s
    do not. That can only make a difference once floats are integers spaced at least 2 apart, which
    is why only magnitudes from 2**53 (float4: 2**24) take this exact, slower path.
    """
    value = int(magnitude)  # exact: every float this large is an integer
    if single:
        f = np.float32(magnitude)
        below = int(np.nextafter(f, np.float32(0)))
        with np.errstate(over="ignore"):  # the largest float4's upper neighbour is infinity
            above_float = float(np.nextafter(f, np.float32(np.inf)))
    else:
        below = int(math.nextafter(magnitude, 0.0))
        above_float = math.nextafter(magnitude, math.inf)
    above = int(above_float) if math.isfinite(above_float) else 2 * value - below
    # The open interval of decimals that read back as this float, doubled to stay in integers.
    low, high = value + below, value + above
    length = len(str(value))
    for precision in range(1, length + 1):
        unit = 10 ** (length - precision)
        down = value // unit * unit
        candidates = [c for c in (down, down + unit) if low < 2 * c < high]
        if candidates:
            # Closest to the value; on a tie the even last digit, as Ryu rounds.
            best = min(candidates, key=lambda c: (abs(c - value), (c // unit) % 2))
            digits = str(best).rstrip("0")
            return digits, len(str(best)) - 1
    return str(value).rstrip("0"), length - 1

# numeric

def _enc_numeric(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    opaque = _opaque_name(arr)
    plain = _unwrap(arr)
    if opaque == "hugeint" and pa.types.is_fixed_size_binary(plain.type):
        # DuckDB's HUGEINT bytes are a little-endian two's complement int128, the decimal128 layout.
        plain = pa.Array.from_buffers(pa.decimal128(38, 0), len(plain), plain.buffers(), plain.null_count,
                                      plain.offset)
    elif opaque in ("uhugeint", "bignum", "varint") or pa.types.is_fixed_size_binary(plain.type):
        unsigned = opaque != "bignum" and opaque != "varint"
        decode = _uhugeint_value if unsigned else _bignum_value
        return _per_row(plain, lambda v: _numeric_bytes(decode(v), binary, None))
    if pa.types.is_decimal(plain.type) or pa.types.is_integer(plain.type):
        if binary:
            return _numeric_binary(plain)
        return _numeric_text(plain)
    if pa.types.is_floating(plain.type) or _is_string(plain.type) or pa.types.is_null(plain.type):
        return _per_row(plain, lambda v: _numeric_bytes(_to_decimal(v), binary, None))
    raise pa.ArrowInvalid(f"cannot send {arr.type} values as numeric")


def _numeric_text(arr: pa.Array) -> pa.Array:
    """numeric_out for decimal or integer arrays: all digits of the scale, never exponent notation."""
    strings = pc.cast(arr, pa.string())
    text = as_plain_binary(strings)
    if not pa.types.is_decimal(arr.type) or arr.type.scale <= 6:
        return text
    # Arrow switches to exponent notation ('0E-10', '1.5E-8') when a value is small for its scale.
    rows = _rare_rows(np.asarray(pc.match_substring(strings, "E").fill_null(False).to_numpy(zero_copy_only=False),
                                 dtype=bool), None)
    values: list[Any] = arr.take(pa.array(rows)).to_pylist() if len(rows) else []
    return _replace_rows(text, rows, [_decimal_text(v).encode() for v in values])


def _to_decimal(value: object) -> Decimal:
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        raise pa.ArrowInvalid(f"{value!r} is not a numeric value") from None


def _hugeint_value(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _uhugeint_value(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=False)


def _bignum_value(raw: bytes) -> int:
    # DuckDB BIGNUM: a 3-byte header (top bit set for non-negative, low bits the byte count) then the
    # big-endian magnitude; negative numbers store every byte inverted.
    if len(raw) < 4:
        raise pa.ArrowInvalid("malformed BIGNUM value")
    if raw[0] & 0x80:
        return int.from_bytes(raw[3:], "big")
    return -int.from_bytes(bytes(b ^ 0xFF for b in raw[3:]), "big")


def _numeric_binary(arr: pa.Array) -> pa.Array:
    """numeric_send for decimal128 or integer arrays, vectorised with 32-bit limb arithmetic."""
    n = len(arr)
    valid = _validity(arr)
    t = arr.type
    mask32 = np.uint64(0xFFFFFFFF)
    if pa.types.is_decimal(t):
        if t.bit_width != 128:
            return _per_row(arr, lambda v: _numeric_bytes(v, True, None))
        raw = np.frombuffer(_buffer(arr, 1), dtype="<u8", count=2 * n, offset=arr.offset * 16).reshape(n, 2)
        lo, hi = raw[:, 0].copy(), raw[:, 1].copy()
        negative = (hi >> np.uint64(63)).astype(bool)
        neg_lo = ~lo + np.uint64(1)
        neg_hi = ~hi + (neg_lo == 0).astype(np.uint64)
        lo = np.where(negative, neg_lo, lo)
        hi = np.where(negative, neg_hi, hi)
        # DECIMAL(38,0) also carries HUGEINT, whose magnitudes reach 39 digits.
        scale, digits_needed = t.scale, (t.precision if t.precision < 38 else 39)
    else:
        if pa.types.is_unsigned_integer(t):
            mag = _primitive(arr.cast(pa.uint64()), "<u8").copy()
            negative = np.zeros(n, dtype=bool)
        else:
            signed = _primitive(arr.cast(pa.int64()), "<i8")
            negative = signed < 0
            as_unsigned = signed.view(np.uint64)
            mag = np.where(negative, ~as_unsigned + np.uint64(1), as_unsigned)
        lo, hi = mag, np.zeros(n, dtype=np.uint64)
        scale, digits_needed = 0, 20
    if scale < 0:  # Arrow allows negative decimal scales; PostgreSQL's dscale cannot be negative
        return _per_row(arr, lambda v: _numeric_bytes(v, True, None))
    if valid is not None:
        lo = np.where(valid, lo, np.uint64(0))
        hi = np.where(valid, hi, np.uint64(0))
    divide: Callable[[int], np.ndarray]
    if not hi.any():
        # Every magnitude fits 64 bits (all but the widest decimals): divide directly.
        digits_needed = min(digits_needed, 20)
        magnitude = lo

        def divide(divisor: int) -> np.ndarray:
            nonlocal magnitude
            magnitude, remainder = np.divmod(magnitude, np.uint64(divisor))
            return remainder
    else:
        limbs = [hi >> np.uint64(32), hi & mask32, lo >> np.uint64(32), lo & mask32]

        def divide(divisor: int) -> np.ndarray:
            # Schoolbook long division over 32-bit limbs: each step stays below 2**46.
            d = np.uint64(divisor)
            remainder = np.zeros(n, dtype=np.uint64)
            for k in range(4):
                current = (remainder << np.uint64(32)) | limbs[k]
                limbs[k] = current // d
                remainder = current % d
            return remainder

    frac_groups = -(-scale // 4)
    pad = 4 * frac_groups - scale
    groups: list[np.ndarray] = []  # least significant first
    if pad:
        groups.append(divide(10 ** (4 - pad)) * np.uint64(10**pad))
    total_groups = -(-(digits_needed + pad) // 4)
    while len(groups) < total_groups:
        groups.append(divide(10_000))
    g = len(groups)
    mat = np.stack(groups[::-1], axis=1).astype(np.int64)  # most significant first
    nonzero = mat != 0
    any_digit = nonzero.any(axis=1)
    first = nonzero.argmax(axis=1)
    last = g - 1 - nonzero[:, ::-1].argmax(axis=1)
    ndigits = np.where(any_digit, last - first + 1, 0)
    weight = np.where(any_digit, (g - 1 - first) - frac_groups, 0)
    header = np.empty(n, dtype=[("ndigits", ">i2"), ("weight", ">i2"), ("sign", ">u2"), ("dscale", ">i2")])
    header["ndigits"] = ndigits
    header["weight"] = weight
    header["sign"] = np.where(negative & any_digit, 0x4000, 0)
    header["dscale"] = scale
    shifted = np.take_along_axis(mat, np.minimum(first[:, None] + np.arange(g)[None, :], g - 1), axis=1)
    body = shifted.astype(">u2").view(_U8).reshape(n, 2 * g)
    out = np.concatenate([header.view(_U8).reshape(n, 8), body], axis=1)
    return _from_matrix(out, 8 + 2 * ndigits, valid)


_NUMERIC_NAN = 0xC000
_NUMERIC_PINF = 0xD000
_NUMERIC_NINF = 0xF000


def _numeric_bytes(value: Decimal | int, binary: bool, dscale: int | None) -> bytes:
    """One numeric value in text or binary form (the Python path for rare sources)."""
    if isinstance(value, int):
        value = Decimal(value)
    if not binary:
        if value.is_nan():
            return b"NaN"
        if value.is_infinite():
            return b"Infinity" if value > 0 else b"-Infinity"
        return _decimal_text(value).encode()
    return numeric_send(value, dscale)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return "0" if text in ("-0", "") else (text[1:] if text.startswith("-") and not value.is_signed() else text)


def numeric_send(value: Decimal, dscale: int | None = None) -> bytes:
    """PostgreSQL's binary numeric for one Decimal (dscale defaults to the Decimal's own scale)."""
    if value.is_nan():
        return struct.pack("!hhHh", 0, 0, _NUMERIC_NAN, 0)
    if value.is_infinite():
        # PostgreSQL reports dscale bits of its short header for infinities: always 32.
        return struct.pack("!hhHh", 0, 0, _NUMERIC_PINF if value > 0 else _NUMERIC_NINF, 32)
    sign, _, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    scale = max(0, -exponent) if dscale is None else dscale
    magnitude = int(value.copy_abs().scaleb(scale, Context(prec=MAX_NUMERIC_PRECISION * 2)))
    return _numeric_send_scaled(magnitude, sign == 1, scale)


def _numeric_send_scaled(magnitude: int, negative: bool, scale: int) -> bytes:
    """numeric_send of the finite value (-1 if negative else 1) * magnitude / 10**scale, with dscale `scale`."""
    frac_groups = -(-scale // 4)
    pad = 4 * frac_groups - scale
    magnitude *= 10**pad
    groups: list[int] = []
    while magnitude:
        magnitude, group = divmod(magnitude, 10_000)
        groups.append(group)
    groups.reverse()  # most significant first
    weight = len(groups) - 1 - frac_groups
    while groups and groups[-1] == 0:
        groups.pop()
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    if not groups:
        return struct.pack("!hhHh", 0, 0, 0, scale)
    header = struct.pack("!hhHh", len(groups), weight, 0x4000 if negative else 0, scale)
    return header + struct.pack(f"!{len(groups)}H", *groups)


def _scaled_text(unscaled: int, scale: int) -> str:
    """numeric_out of unscaled / 10**scale: every digit of the scale, never exponent notation."""
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    sign = "-" if unscaled < 0 else ""
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}" if scale else sign + digits


# text-like types

def _enc_text(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
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


# dates and times

def _civil(days: Any) -> tuple[Any, Any, Any]:
    """(year, month, day) of days since 1970-01-01 in the proleptic Gregorian calendar (year 0 = 1 BC).

    Works alike on one Python int and on an int64 NumPy array (element-wise).
    """
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 - 12 * (mp >= 10)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _date_matrix(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'YYYY-MM-DD' for every row, and which rows have a 4-digit AD year (the others need the fallback)."""
    year, month, day = _civil(days)
    ordinary = (year >= 1) & (year <= 9999)
    n = len(days)
    mat = np.empty((n, 10), dtype=_U8)
    mat[:, 0:4] = _digits(np.clip(year, 0, 9999), 4)
    mat[:, 4] = mat[:, 7] = ord("-")
    mat[:, 5:7] = _digits(month, 2)
    mat[:, 8:10] = _digits(day, 2)
    return mat, ordinary


def _time_of_day_matrix(us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'HH:MM:SS[.ffffff]' with trailing fractional zeros removed (as PostgreSQL prints), and lengths."""
    n = len(us)
    seconds, fraction = np.divmod(us.astype(np.int64), 1_000_000)
    seconds = seconds.astype(np.int32)
    minutes, second = np.divmod(seconds, 60)
    hour, minute = np.divmod(minutes, 60)
    mat = np.empty((n, 15), dtype=_U8)
    mat[:, 0:2] = _digits(hour, 2)
    mat[:, 2] = mat[:, 5] = ord(":")
    mat[:, 3:5] = _digits(minute, 2)
    mat[:, 6:8] = _digits(second, 2)
    mat[:, 8] = ord(".")
    mat[:, 9:15] = _digits(fraction, 6)
    significant = mat[:, 9:15] != _ZERO
    last = 5 - significant[:, ::-1].argmax(axis=1)  # index of the last non-zero fractional digit
    lengths = np.where(significant.any(axis=1), 10 + last, 8)
    return mat, lengths


_DATE_INFINITY = 2**31 - 1
_DATE_NINFINITY_DUCKDB = -(2**31 - 1)
_DATE_NINFINITY_PG = -(2**31)


def _enc_date(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _cast(_unwrap(arr), pa.date32(), "date")
    valid = _validity(plain)
    days = _primitive(plain, "<i4").astype(np.int64)
    pos_inf = days == _DATE_INFINITY
    neg_inf = days <= _DATE_NINFINITY_DUCKDB
    if binary:
        pg = np.where(pos_inf, _DATE_INFINITY, np.where(neg_inf, _DATE_NINFINITY_PG, days - _PG_EPOCH_DAYS))
        return _from_fixed(pg.astype(">i4"), valid)
    mat, ordinary = _date_matrix(days)
    encoded = _from_matrix(mat, np.full(len(days), 10, dtype=np.int64), valid)
    rare = _rare_rows(~ordinary, valid)
    return _replace_rows(encoded, rare, [_date_text(int(days[i])) for i in rare])


def _rare_rows(mask: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if valid is not None:
        mask = mask & valid
    return np.flatnonzero(mask)


def _date_parts_text(days: int) -> tuple[str, bool]:
    """'YYYY-MM-DD' (at least four year digits) and whether the date is BC, for any day number."""
    year, month, day = _civil(days)
    bc = year <= 0
    # % formats these several times faster than an f-string with format specs (a per-value hot path).
    return "%04d-%02d-%02d" % ((1 - year) if bc else year, month, day), bc  # noqa: UP031 - speed


def _date_text(days: int) -> bytes:
    if days >= _DATE_INFINITY:
        return b"infinity"
    if days <= _DATE_NINFINITY_DUCKDB:
        return b"-infinity"
    text, bc = _date_parts_text(days)
    return (text + (" BC" if bc else "")).encode()


_TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}


def _to_us(raw: Any, unit: str) -> Any:
    """Microseconds of a time, timestamp or duration count in `unit` (an int or an int64 array; ns floored)."""
    return raw // 1000 if unit == "ns" else raw * _TIME_UNITS[unit]


def _time_us(plain: pa.Array) -> np.ndarray:
    """Microseconds since midnight of a time32/time64 array (nanoseconds truncated)."""
    raw = _primitive(plain, "<i4" if pa.types.is_time32(plain.type) else "<i8").astype(np.int64)
    return _to_us(raw, plain.type.unit)


def _time_us_values(plain: pa.Array) -> list[int | None]:
    """Microseconds since midnight of each value of a time32/time64 array, as Python ints (None for nulls)."""
    t: Any = plain.type
    raw = plain.view(pa.int32() if pa.types.is_time32(t) else pa.int64()).to_pylist()
    return [None if r is None else _to_us(r, t.unit) for r in raw]


def _clock_text(us: int) -> str:
    """'HH:MM:SS[.ffffff]' of non-negative microseconds, trailing fractional zeros dropped (as PostgreSQL prints)."""
    seconds, fraction = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    # % formats these several times faster than an f-string with format specs (a per-value hot path).
    if fraction:
        return ("%02d:%02d:%02d.%06d" % (hours, minute, second, fraction)).rstrip("0")  # noqa: UP031 - speed
    return "%02d:%02d:%02d" % (hours, minute, second)  # noqa: UP031 - speed


def _enc_time(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    if not pa.types.is_time(plain.type):
        plain = _cast(plain, pa.time64("us"), "time")
    valid = _validity(plain)
    us = _time_us(plain)
    if binary:
        return _from_fixed(us.astype(">i8"), valid)
    mat, lengths = _time_of_day_matrix(us)
    return _from_matrix(mat, lengths, valid)


def _timestamp_us(raw: Any, unit: str) -> tuple[Any, Any, Any]:
    """Microseconds since the Unix epoch of raw timestamp counts, and whether each is DuckDB's +/-infinity.

    `raw` is one Python int or an int64 NumPy array (then the three results are arrays).
    """
    return _to_us(raw, unit), raw == _INT64_MAX, raw <= _INT64_MIN + 1


def _enc_timestamp(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    with_tz = pgtype.name == "timestamptz"
    plain = _unwrap(arr)
    if not pa.types.is_timestamp(plain.type):
        plain = _cast(plain, pa.timestamp("us", "UTC" if with_tz else None), pgtype.name)
    valid = _validity(plain)
    us, pos_inf, neg_inf = _timestamp_us(_primitive(plain, "<i8").astype(np.int64), plain.type.unit)
    if binary:
        pg = np.where(pos_inf, _INT64_MAX, np.where(neg_inf, _INT64_MIN, us - _PG_EPOCH_US))
        return _from_fixed(pg.astype(">i8"), valid)
    finite = ~(pos_inf | neg_inf)
    safe_us = np.where(finite, us, 0)
    days = np.floor_divide(safe_us, _US_PER_DAY)
    date_mat, ordinary = _date_matrix(days)
    time_mat, time_len = _time_of_day_matrix(safe_us - days * _US_PER_DAY)
    n = len(us)
    mat = np.zeros((n, 10 + 1 + 15 + 3), dtype=_U8)
    mat[:, 0:10] = date_mat
    mat[:, 10] = ord(" ")
    mat[:, 11:26] = time_mat
    lengths = 11 + time_len
    if with_tz:
        rows = np.arange(n)[:, None]
        mat[rows, lengths[:, None] + np.arange(3)[None, :]] = np.frombuffer(b"+00", dtype=_U8)
        lengths = lengths + 3
    encoded = _from_matrix(mat, lengths, valid)
    rare = _rare_rows(~(ordinary & finite), valid)
    return _replace_rows(encoded, rare, [_timestamp_text(int(us[i]), bool(pos_inf[i]), bool(neg_inf[i]), with_tz)
                                         for i in rare])


def _timestamp_text(us: int, pos_inf: bool, neg_inf: bool, with_tz: bool) -> bytes:
    if pos_inf:
        return b"infinity"
    if neg_inf:
        return b"-infinity"
    days, tod = divmod(us, _US_PER_DAY)
    date_text, bc = _date_parts_text(days)
    return f"{date_text} {_clock_text(tod)}{'+00' if with_tz else ''}{' BC' if bc else ''}".encode()


def _enc_timetz(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    return pa.array(_timetz_values(arr, binary, pgtype), pa.binary())


def _timetz_values(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None]:
    """timetz is encoded value by value whatever the batch size (DuckDB's packed layout has no Arrow kernel)."""
    opaque = _opaque_name(arr)
    plain = _unwrap(arr)
    if opaque == "time_tz" or pa.types.is_fixed_size_binary(plain.type):
        values = [None if v is None else _duckdb_timetz(v) for v in plain.to_pylist()]
    else:
        # DuckDB's default Arrow export drops the offset of TIME WITH TIME ZONE; the local time
        # is all there is, sent with offset +00.
        if not pa.types.is_time(plain.type):
            plain = _cast(plain, pa.time64("us"), "time with time zone")
        values = [None if us is None else (us, 0) for us in _time_us_values(plain)]
    return [None if v is None else _timetz_bytes(v[0], v[1], binary) for v in values]


_TIMETZ_MAX_OFFSET = 16 * 60 * 60 - 1


def _duckdb_timetz(raw: bytes) -> tuple[int, int]:
    """(microseconds, UTC offset in seconds) of DuckDB's packed dtime_tz_t."""
    bits = int.from_bytes(raw, "little")
    return bits >> 24, _TIMETZ_MAX_OFFSET - (bits & 0xFFFFFF)


def _timetz_bytes(us: int, offset: int, binary: bool) -> bytes:
    if binary:
        return struct.pack("!qi", us, -offset)
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{sign}{hours:02d}"
    if minutes or seconds:
        zone += f":{minutes:02d}"
    if seconds:
        zone += f":{seconds:02d}"
    return (_clock_text(us) + zone).encode()


def _enc_interval(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    valid = _validity(plain)
    n = len(plain)
    if pa.types.is_duration(plain.type):
        raw = _primitive(plain, "<i8").astype(np.int64)
        us = _to_us(raw, plain.type.unit)
        months = np.zeros(n, dtype=np.int64)
        days = np.zeros(n, dtype=np.int64)
    elif plain.type == pa.month_day_nano_interval():
        parts = np.frombuffer(_buffer(plain, 1), dtype=[("months", "<i4"), ("days", "<i4"), ("ns", "<i8")],
                              count=n, offset=plain.offset * 16) if n else np.zeros(0, dtype=[
                                  ("months", "<i4"), ("days", "<i4"), ("ns", "<i8")])
        months = parts["months"].astype(np.int64)
        days = parts["days"].astype(np.int64)
        # DuckDB stores microseconds; PostgreSQL keeps no finer unit, so truncate toward zero.
        us = _ns_to_us_toward_zero(parts["ns"].astype(np.int64))
    else:
        raise pa.ArrowInvalid(f"cannot send {arr.type} values as interval")
    if binary:
        record = np.empty(n, dtype=[("us", ">i8"), ("days", ">i4"), ("months", ">i4")])
        record["us"], record["days"], record["months"] = us, days, months
        return _from_fixed(record, valid)
    return pa.array([None if valid is not None and not valid[i] else
                     interval_text(int(months[i]), int(days[i]), int(us[i])).encode() for i in range(n)], pa.binary())


def _ns_to_us_toward_zero(ns: Any) -> Any:
    """Nanoseconds (an int or an int64 array) to microseconds, truncated toward zero."""
    return ns // 1000 + ((ns % 1000 != 0) & (ns < 0))


def interval_text(months: int, days: int, us: int) -> str:
    """An interval as PostgreSQL prints it with IntervalStyle=postgres."""
    years = int(months / 12)  # C division: truncation toward zero
    mons = months - years * 12
    parts: list[str] = []
    before = False  # the previous field was negative (PostgreSQL then shows '+' on the next positive one)
    for value, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if value == 0:
            continue
        parts.append(f"{'+' if before and value > 0 else ''}{value} {unit}{'' if value == 1 else 's'}")
        before = value < 0
    if not parts or us != 0:
        sign = "-" if us < 0 else ("+" if before else "")
        parts.append(sign + _clock_text(abs(us)))
    return " ".join(parts)


# uuid, json, varbit

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


def _enc_json(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    if _is_string(plain.type):
        text = as_plain_binary(plain)
    else:
        fragments = _json_fragments(arr)
        text = as_plain_binary(pc.if_else(pc.is_valid(arr), fragments, pa.scalar(None, pa.string())))
    if binary and pgtype.name == "jsonb":
        # jsonb's binary form is a version byte (1) followed by the text.
        return pc.binary_join_element_wise(pa.scalar(b"\x01", pa.binary()), text.cast(pa.binary()), b"")
    return text


# Leaf types whose PostgreSQL text form is already a JSON number.
_JSON_NUMBERS = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"})
_JSON_CONTROL = r"[\x00-\x1f]"


def _json_fragments(arr: pa.Array) -> pa.Array:
    """Compact JSON text for every row of a nested column ('null' for nulls), built column-wise.

    STRUCT becomes an object, MAP an object keyed by the key's text, LIST an array; leaves are JSON
    numbers and booleans where they are numbers and booleans, embedded as-is for JSON, and otherwise
    JSON strings of their PostgreSQL text form (so dates, UUIDs and BC timestamps read as in psql).
    """
    plain: Any = _unwrap(arr)
    t = plain.type
    null = pa.scalar("null", pa.string())
    if pa.types.is_struct(t):
        parts: list[Any] = []
        # field() rather than flatten(): flatten() pushes parent nulls into children, which Arrow
        # aborts on for union children; rows under a null parent are replaced below anyway.
        for index in range(t.num_fields):
            key = json.dumps(t.field(index).name, ensure_ascii=False)
            parts += ["," if index else "", key + ":", _json_fragments(plain.field(index))]
        if not parts:
            body: Any = pa.array(["{}"] * len(plain), pa.string())
        else:
            body = pc.binary_join_element_wise("{", *parts, "}", "")
        return pc.if_else(pc.is_valid(plain), body, null)
    if pa.types.is_map(t) or _is_list(t):
        if not pa.types.is_map(t) and not pa.types.is_list(t) and not pa.types.is_large_list(t):
            plain = plain.cast(pa.large_list(t.value_type))
        offsets = _list_offsets(plain)
        # The child array of the whole (unsliced) list, cut to this slice's rows.
        items = plain.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if len(plain) else plain.values
        if pa.types.is_map(t):
            keys, values = items.field(0), items.field(1)
            key_text = _json_fragments(pc.cast(encode_column(keys, pg_type_for_arrow(keys.type), False), pa.string()))
            elements = pc.binary_join_element_wise(key_text, ":", _json_fragments(values), "")
            opening, closing = "{", "}"
        else:
            elements = _json_fragments(items)
            opening, closing = "[", "]"
        lists = pa.LargeListArray.from_arrays(pa.array(offsets - offsets[0], pa.int64()), elements)
        body = pc.binary_join_element_wise(opening, pc.binary_join(lists, ","), closing, "")
        return pc.if_else(pc.is_valid(plain), body, null)
    if pa.types.is_union(t):
        return pa.array(["null" if v is None else _json_text(v) for v in plain.to_pylist()], pa.string())
    pgtype = pg_type_for_arrow(arr.type)
    text = pc.cast(encode_column(arr, pgtype, False), pa.string())
    if pgtype.name in ("json", "jsonb"):
        return text.fill_null("null")
    if pgtype.name == "bool":
        return pc.if_else(pc.equal(text, "t"), "true", "false").fill_null("null")
    if pgtype.name in _JSON_NUMBERS:
        # PostgreSQL's to_json quotes the non-numbers NaN and Infinity.
        special = pc.match_substring_regex(text, "[NI]")
        return pc.if_else(special, pc.binary_join_element_wise('"', text, '"', ""), text).fill_null("null")
    escaped = pc.replace_substring_regex(text, r'(["\\])', r"\\\1")
    for char, escape in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        escaped = pc.replace_substring(escaped, char, escape)
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    rows = _rare_rows(np.asarray(pc.match_substring_regex(escaped, _JSON_CONTROL).fill_null(False)
                                 .to_numpy(zero_copy_only=False), dtype=bool), None)
    if len(rows):  # other control characters need \u escapes, which Arrow's regex cannot produce
        originals = text.take(pa.array(rows)).to_pylist()
        quoted = pc.replace_with_mask(quoted, pa.array(np.isin(np.arange(len(text)), rows)),
                                      pa.array([json.dumps(v, ensure_ascii=False) for v in originals], pa.string()))
    return quoted.fill_null("null")


def _json_text(value: object) -> str:
    """Compact JSON for one value from Arrow's to_pylist (the UNION member of a json column)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = float_text(value, False)
        return text if math.isfinite(value) else json.dumps(text)  # PostgreSQL's to_json quotes NaN/Infinity
    if isinstance(value, Decimal):
        return _decimal_text(value) if value.is_finite() else json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return json.dumps("\\x" + value.hex())
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(_json_key(k), ensure_ascii=False)}:{_json_text(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    if isinstance(value, dt.datetime):
        return json.dumps(value.isoformat())
    if isinstance(value, dt.date | dt.time):
        return json.dumps(value.isoformat())
    if isinstance(value, dt.timedelta):
        return json.dumps(interval_text(0, value.days, value.seconds * 1_000_000 + value.microseconds))
    if isinstance(value, pa.MonthDayNano):
        return json.dumps(interval_text(value.months, value.days, int(value.nanoseconds / 1000)))
    if isinstance(value, uuid.UUID):
        return json.dumps(str(value))
    return json.dumps(str(value), ensure_ascii=False)


def _json_key(key: object) -> str:
    return key if isinstance(key, str) else _json_text(key).strip('"')


def _enc_varbit(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    return pa.array(_varbit_values(arr, binary, pgtype), pa.binary())


def _varbit_values(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None]:
    """varbit is encoded value by value whatever the batch size."""
    plain = _unwrap(arr)
    if _is_string(plain.type):
        return _per_value(plain, lambda v: _varbit_bytes(v, binary))
    return _per_value(as_plain_binary(plain), lambda v: _varbit_bytes(_duckdb_bits(v), binary))


def _duckdb_bits(raw: bytes) -> str:
    # DuckDB BIT: the first byte is the number of padding bits at the start of the second byte.
    if not raw:
        return ""
    bits = "".join(f"{byte:08b}" for byte in raw[1:])
    return bits[raw[0]:]


def _varbit_bytes(bits: str, binary: bool) -> bytes:
    if not binary:
        return bits.encode()
    padded = bits + "0" * (-len(bits) % 8)
    data = int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""
    return struct.pack("!i", len(bits)) + data


# arrays

# Element types whose text form never needs quoting inside an array literal.
_UNQUOTED_ELEMENTS = frozenset({"bool", "int2", "int4", "int8", "float4", "float8", "numeric", "oid", "date", "uuid"})
_NEEDS_QUOTES = r'(^$)|(^[Nn][Uu][Ll][Ll]$)|[{}",\\ \t\n\r\v\f]'


def _encode_array(arr: pa.Array, pgtype: PgType, binary: bool) -> pa.Array:
    element = pgtype.element
    assert element is not None
    plain: Any = _unwrap(arr)
    if not _is_list(plain.type):
        if _is_string(plain.type) and not binary:  # already an array literal
            return as_plain_binary(plain)
        raise pa.ArrowInvalid(f"cannot send {arr.type} values as {pgtype.name}")
    if pa.types.is_fixed_size_list(plain.type) or pa.types.is_list_view(plain.type) \
            or pa.types.is_large_list_view(plain.type):
        plain = plain.cast(pa.large_list(plain.type.value_type))
    if _is_list(plain.type.value_type):
        return _encode_nested_array(plain, element, binary)
    values = plain.values
    start = _list_offsets(plain)
    values = values.slice(int(start[0]), int(start[-1] - start[0]))
    start = start - start[0]
    encoded = encode_column(values, element, binary)
    valid = _validity(plain)
    if binary:
        return _array_binary(encoded, start, element, valid)
    return _array_text(encoded, start, element, valid)


def _list_offsets(arr: pa.Array) -> np.ndarray:
    large = pa.types.is_large_list(arr.type)
    dtype = np.int64 if large else np.int32
    itemsize = np.dtype(dtype).itemsize
    buf = _buffer(arr, 1)
    if buf is None or len(arr) == 0:
        return np.zeros(len(arr) + 1, dtype=np.int64)
    return np.frombuffer(buf, dtype=dtype, count=len(arr) + 1, offset=arr.offset * itemsize).astype(np.int64)


def _quoted_elements(encoded: pa.Array, element: PgType) -> pa.Array:
    """Element texts as array_out writes them: quoted and escaped where needed, NULL for nulls."""
    text = encoded.cast(pa.string())
    if element.name not in _UNQUOTED_ELEMENTS:
        escaped = pc.replace_substring_regex(text, r'(["\\])', r"\\\1")
        quoted = pc.binary_join_element_wise('"', escaped, '"', "")
        text = pc.if_else(pc.match_substring_regex(text, _NEEDS_QUOTES), quoted, text)
    return text.fill_null("NULL")


def _array_text(encoded: pa.Array, offsets: np.ndarray, element: PgType, valid: np.ndarray | None) -> pa.Array:
    items = _quoted_elements(encoded, element)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), items)
    joined = pc.binary_join(lists, ",")
    result = pc.binary_join_element_wise("{", joined, "}", "")
    if valid is not None:
        result = pc.if_else(pa.array(valid), result, pa.scalar(None, pa.string()))
    return as_plain_binary(result)


def _array_binary(encoded: pa.Array, offsets: np.ndarray, element: PgType, valid: np.ndarray | None) -> pa.Array:
    n = len(offsets) - 1
    counts = np.diff(offsets)
    element_valid = _validity(encoded)
    # Each element as int32 length (-1 for NULL) followed by its bytes.
    lengths = pc.binary_length(encoded).fill_null(-1).to_numpy(zero_copy_only=False).astype(">i4")
    prefixed = pc.binary_join_element_wise(_from_fixed(lengths, None), encoded.fill_null(b""), b"")
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), prefixed)
    body = pc.binary_join(lists, b"")
    has_null = np.zeros(n, dtype=np.int32)
    if element_valid is not None:
        null_positions = np.flatnonzero(~element_valid)
        has_null[np.searchsorted(offsets, null_positions, side="right") - 1] = 1
    header = np.empty(n, dtype=[("ndim", ">i4"), ("flags", ">i4"), ("oid", ">i4"), ("dim", ">i4"), ("lb", ">i4")])
    header["ndim"] = np.where(counts > 0, 1, 0)
    header["flags"] = has_null
    header["oid"] = element.oid
    header["dim"] = counts
    header["lb"] = 1
    header_bytes = _from_matrix(header.view(_U8).reshape(n, 20), np.where(counts > 0, 20, 12), None)
    result = pc.binary_join_element_wise(header_bytes, body, b"")
    if valid is not None:
        result = pc.if_else(pa.array(valid), result, pa.scalar(None, result.type))
    return result


def _encode_nested_array(plain: pa.Array, element: PgType, binary: bool) -> pa.Array:
    """Multi-dimensional arrays from nested lists; elements encoded in bulk, rows assembled in Python."""
    leaves: Any = plain
    depth = 0
    while _is_list(leaves.type):
        if not pa.types.is_list(leaves.type) and not pa.types.is_large_list(leaves.type):
            leaves = leaves.cast(pa.large_list(leaves.type.value_type))
        leaves = leaves.flatten()
        depth += 1
    encoded = encode_column(leaves, element, binary).to_pylist()
    quote = element.name not in _UNQUOTED_ELEMENTS
    position = 0

    def take(value: object) -> object:
        # Replace each leaf by its encoded bytes, walking in the same order flatten() produced them.
        nonlocal position
        if isinstance(value, list):
            return [take(v) for v in value]
        result = encoded[position]
        position += 1
        return result

    out: list[bytes | None] = []
    for row in plain.to_pylist():
        if row is None:
            out.append(None)
            continue
        before = position
        tree = take(row)
        if binary:
            out.append(_nested_binary(tree, element, depth))
        else:  # PostgreSQL has no empty sub-arrays: an array without elements is just '{}'
            out.append(_nested_text(tree, quote).encode() if position > before else b"{}")
    return pa.array(out, pa.binary())


def _quote_element(value: bytes | None, quote: bool) -> str:
    if value is None:
        return "NULL"
    text = value.decode()
    if quote and re.search(_NEEDS_QUOTES, text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _nested_text(tree: object, quote: bool) -> str:
    if isinstance(tree, list):
        return "{" + ",".join(_nested_text(item, quote) for item in tree) + "}"
    return _quote_element(tree if isinstance(tree, bytes | None) else None, quote)


def _nested_binary(tree: object, element: PgType, depth: int) -> bytes:
    dims: list[int] = []
    level: object = tree
    for _ in range(depth):
        if not isinstance(level, list):
            raise pa.ArrowInvalid("multidimensional arrays must have sub-arrays with matching dimensions")
        dims.append(len(level))
        if not level:
            break
        level = level[0]
    flat: list[bytes | None] = []

    def walk(node: object, d: int) -> None:
        if d == len(dims):
            if isinstance(node, list):
                raise pa.ArrowInvalid("multidimensional arrays must have sub-arrays with matching dimensions")
            flat.append(node if isinstance(node, bytes) else None)
            return
        if not isinstance(node, list) or len(node) != dims[d]:
            raise pa.ArrowInvalid("multidimensional arrays must have sub-arrays with matching dimensions")
        for child in node:
            walk(child, d + 1)

    walk(tree, 0)
    if not flat:
        return struct.pack("!iii", 0, 0, element.oid)
    has_null = any(v is None for v in flat)
    parts = [struct.pack("!iii", len(dims), int(has_null), element.oid)]
    parts += [struct.pack("!ii", d, 1) for d in dims]
    parts += [struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in flat]
    return b"".join(parts)


# --- small batches -------------------------------------------------------------------------------
#
# The kernels above pay a fixed cost per call (Arrow casts, NumPy temporaries) that dwarfs the work for
# the handful of rows a point lookup or `SELECT 1` returns. Up to SMALL_BATCH_ROWS rows, encode_column
# therefore encodes value by value with the per-value helpers the kernels use for their rare rows. Each
# small encoder returns None for a layout it does not handle, or for a value the general path reports
# as an error (out of range, malformed), so that the general path gives the same bytes or the same
# error; test_pgtypes checks both paths against each other for every type and format.

SMALL_BATCH_ROWS = 16
# Arrays are assembled row by row in Python: past this many elements in all the kernels are cheaper.
_SMALL_ARRAY_ELEMENTS = 128

_PACK_I8 = struct.Struct(">q").pack
_INT_WIRE: dict[str, tuple[str, int, int]] = {
    "int2": (">h", -(2**15), 2**15 - 1), "int4": (">i", -(2**31), _INT32_MAX), "int8": (">q", _INT64_MIN, _INT64_MAX),
    "oid": (">I", 0, 2**32 - 1),
}


def _encode_small(arr: pa.Array, pgtype: PgType, binary: bool) -> pa.Array | None:
    """The encoded column built value by value, or None when the general path must encode it."""
    if pgtype.element is not None:
        values = _small_array(arr, pgtype, binary)
    else:
        small = _ENCODERS.get(pgtype.name, (None, None))[1]
        values = None if small is None else small(arr, binary, pgtype)
    return None if values is None else _binary_from_values(values)


def _binary_from_values(values: list[bytes | None]) -> pa.Array:
    """A BinaryArray of per-row values (None for NULL), built from its buffers (pa.array costs more for a few)."""
    n = len(values)
    present = [v for v in values if v is not None]
    data = b"".join(present)
    if len(data) > _INT32_MAX:
        return pa.array(values, pa.large_binary())
    pack = _OFFSET_STRUCTS.get(n)
    if pack is None:
        pack = _OFFSET_STRUCTS[n] = struct.Struct(f"<{n + 1}i").pack
    if len(present) == n:  # (an explicit null count, even 0, costs Arrow more than none)
        offsets = pack(0, *itertools.accumulate(map(len, present)))
        return pa.Array.from_buffers(pa.binary(), n, [None, _py_buffer(offsets), _py_buffer(data)])
    offsets = pack(0, *itertools.accumulate([0 if v is None else len(v) for v in values]))
    bitmap = sum([1 << i for i, v in enumerate(values) if v is not None]).to_bytes((n + 7) // 8, "little")
    return pa.Array.from_buffers(pa.binary(), n, [_py_buffer(bitmap), _py_buffer(offsets), _py_buffer(data)],
                                 n - len(present))


_OFFSET_STRUCTS: dict[int, Callable[..., bytes]] = {}


def _packed(values: list[int | None], fmt: str, low: int, high: int) -> list[bytes | None] | None:
    """Each integer packed with `fmt`; None when one is outside [low, high] (the general path's error)."""
    if any(v is not None and not low <= v <= high for v in values):
        return None
    pack = struct.Struct(fmt).pack
    return [None if v is None else pack(v) for v in values]


def _small_bool(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    # Integers are what DuckDB's lossless export sends (arrow.bool8); any non-zero value is true.
    if not (pa.types.is_boolean(plain.type) or pa.types.is_integer(plain.type)):
        return None
    true, false = (b"\x01", b"\x00") if binary else (b"t", b"f")
    return [None if v is None else true if v else false for v in plain.to_pylist()]


def _small_int(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_integer(plain.type):
        return None
    values = plain.to_pylist()
    fmt, low, high = _INT_WIRE[pgtype.name]
    if binary:
        return _packed(values, fmt, low, high)
    # Integer text is printed without a range check, except for oid, which is cast to uint32 first.
    if pgtype.name == "oid" and _packed(values, fmt, low, high) is None:
        return None
    return [None if v is None else b"%d" % v for v in values]


def _small_float(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    single = pgtype.size == 4
    if plain.type != (pa.float32() if single else pa.float64()):
        return None
    values = plain.to_pylist()
    if not binary:
        return [None if v is None else float_text(v, single).encode() for v in values]
    # The stored bytes reversed: exactly the big-endian IEEE value, NaN payloads included.
    raw = memoryview(_buffer(plain, 1)) if values else memoryview(b"")
    width = pgtype.size
    start = plain.offset * width
    return [None if v is None else raw[start + i * width: start + (i + 1) * width].tobytes()[::-1]
            for i, v in enumerate(values)]


def _small_numeric(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    opaque = _opaque_name(arr)
    plain = _unwrap(arr)
    t = plain.type
    unscaled: list[int | None]
    if opaque == "hugeint" and pa.types.is_fixed_size_binary(t):
        unscaled, scale = _little_endian_ints(plain, 16), 0  # DuckDB's HUGEINT: a little-endian int128
    elif opaque in ("uhugeint", "bignum", "varint") or pa.types.is_fixed_size_binary(t):
        decode = _bignum_value if opaque in ("bignum", "varint") else _uhugeint_value
        return _per_value(plain, lambda v: _numeric_bytes(decode(v), binary, None))
    elif pa.types.is_decimal(t):
        if t.scale < 0:
            return None
        unscaled, scale = _little_endian_ints(plain, t.bit_width // 8), t.scale
    elif pa.types.is_integer(t):
        unscaled, scale = plain.to_pylist(), 0
    elif pa.types.is_floating(t) or _is_string(t) or pa.types.is_null(t):
        return _per_value(plain, lambda v: _numeric_bytes(_to_decimal(v), binary, None))
    else:
        return None
    if binary:
        return [None if u is None else _numeric_send_scaled(abs(u), u < 0, scale) for u in unscaled]
    return [None if u is None else _scaled_text(u, scale).encode() for u in unscaled]


def _little_endian_ints(arr: pa.Array, width: int) -> list[int | None]:
    """The signed little-endian integers of a fixed-width array's values buffer (decimals, HUGEINT), None for nulls."""
    raw = memoryview(_buffer(arr, 1)) if len(arr) else memoryview(b"")
    start = arr.offset * width
    return [int.from_bytes(raw[start + i * width: start + (i + 1) * width], "little", signed=True) if valid else None
            for i, valid in enumerate(_small_validity(arr))]


def _small_bytea(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if binary or not _is_binary(plain.type):  # binary bytea is the stored bytes already
        return None
    return [None if v is None else b"\\x" + v.hex().encode() for v in plain.to_pylist()]


def _small_date(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_date32(plain.type):
        return None
    days: list[int | None] = plain.view(pa.int32()).to_pylist()
    if not binary:
        return [None if d is None else _date_text(d) for d in days]
    return _packed([None if d is None else _INT32_MAX if d == _DATE_INFINITY else
                    _DATE_NINFINITY_PG if d <= _DATE_NINFINITY_DUCKDB else d - _PG_EPOCH_DAYS for d in days],
                   ">i", -(2**31), _INT32_MAX)


def _small_time(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_time(plain.type):
        return None
    values = _time_us_values(plain)
    if binary:
        return _packed(values, ">q", _INT64_MIN, _INT64_MAX)
    if any(us is not None and not 0 <= us <= _US_PER_DAY for us in values):
        return None
    return [None if us is None else _clock_text(us).encode() for us in values]


def _small_timestamp(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_timestamp(plain.type):
        return None
    with_tz = pgtype.name == "timestamptz"
    unit = plain.type.unit
    out: list[bytes | None] = []
    for raw in plain.view(pa.int64()).to_pylist():
        if raw is None:
            out.append(None)
            continue
        us, pos_inf, neg_inf = _timestamp_us(raw, unit)
        pg = _INT64_MAX if pos_inf else _INT64_MIN if neg_inf else us - _PG_EPOCH_US
        if not (_INT64_MIN <= us <= _INT64_MAX and _INT64_MIN <= pg <= _INT64_MAX):
            return None  # wraps around in the kernel's int64 arithmetic; leave that to it
        out.append(_PACK_I8(pg) if binary else _timestamp_text(us, pos_inf, neg_inf, with_tz))
    return out


def _small_interval(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    t = plain.type
    parts: list[tuple[int, int, int] | None]
    if pa.types.is_duration(t):
        parts = [None if r is None else (0, 0, _to_us(r, t.unit)) for r in plain.view(pa.int64()).to_pylist()]
    elif t == pa.month_day_nano_interval():
        parts = [None if v is None else (v.months, v.days, _ns_to_us_toward_zero(v.nanoseconds))
                 for v in plain.to_pylist()]
    else:
        return None
    if any(p is not None and not _INT64_MIN <= p[2] <= _INT64_MAX for p in parts):
        return None
    if binary:
        return [None if p is None else struct.pack(">qii", p[2], p[1], p[0]) for p in parts]
    return [None if p is None else interval_text(*p).encode() for p in parts]


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


_NESTED_TYPES = (pa.StructType, pa.MapType, pa.UnionType, pa.ListType, pa.LargeListType, pa.FixedSizeListType,
                 pa.ListViewType, pa.LargeListViewType)


def _small_json(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    prefix = b"\x01" if binary and pgtype.name == "jsonb" else b""  # jsonb's binary form: a version byte
    if not prefix and not isinstance(arr.type, _NESTED_TYPES):  # json text: the stored string itself
        return None
    plain = _unwrap(arr)
    if _is_string(plain.type):
        return [None if v is None else prefix + v for v in as_plain_binary(plain).to_pylist()]
    fragments = _json_values(arr)
    if fragments is None:
        return None
    return [prefix + f.encode() if valid else None for f, valid in zip(fragments, _small_validity(plain), strict=True)]


def _json_values(arr: pa.Array) -> list[str] | None:
    """_json_fragments row by row: compact JSON per row ('null' for nulls); None past the element limit."""
    plain: Any = _unwrap(arr)
    t = plain.type
    valid = _small_validity(plain)
    if pa.types.is_struct(t):
        members: list[tuple[str, list[str]]] = []
        for index in range(t.num_fields):
            values = _json_values(plain.field(index))
            if values is None:
                return None
            members.append((json.dumps(t.field(index).name, ensure_ascii=False) + ":", values))
        return ["{" + ",".join(key + values[row] for key, values in members) + "}" if ok else "null"
                for row, ok in enumerate(valid)]
    if pa.types.is_map(t) or _is_list(t):
        if not pa.types.is_map(t) and not pa.types.is_list(t) and not pa.types.is_large_list(t):
            plain = plain.cast(pa.large_list(t.value_type))
        offsets = _list_offsets(plain).tolist()
        first, count = offsets[0], offsets[-1] - offsets[0]
        if count > _SMALL_ARRAY_ELEMENTS:
            return None
        items = plain.values.slice(first, count)
        if pa.types.is_map(t):
            keys, values = items.field(0), items.field(1)
            key_text = _json_values(encode_column(keys, pg_type_for_arrow(keys.type), False).cast(pa.string()))
            value_text = _json_values(values)
            if key_text is None or value_text is None:
                return None
            elements = [f"{k}:{v}" for k, v in zip(key_text, value_text, strict=True)]
            opening, closing = "{", "}"
        else:
            elements_or_none = _json_values(items)
            if elements_or_none is None:
                return None
            elements, opening, closing = elements_or_none, "[", "]"
        return [opening + ",".join(elements[offsets[row] - first: offsets[row + 1] - first]) + closing if ok
                else "null" for row, ok in enumerate(valid)]
    if pa.types.is_union(t):
        return ["null" if v is None else _json_text(v) for v in plain.to_pylist()]
    pgtype = pg_type_for_arrow(arr.type)
    texts: list[bytes | None] = encode_column(arr, pgtype, False).to_pylist()
    return [_json_leaf(text, pgtype.name) for text in texts]


def _json_leaf(text: bytes | None, type_name: str) -> str:
    """One leaf of _json_fragments from its PostgreSQL text."""
    if text is None:
        return "null"
    if type_name in ("json", "jsonb"):
        return text.decode()
    if type_name == "bool":
        return "true" if text == b"t" else "false"
    if type_name in _JSON_NUMBERS:
        return f'"{text.decode()}"' if b"N" in text or b"I" in text else text.decode()
    # The kernel's escapes (quote, backslash, \n, \r, \t, and json.dumps for other control characters)
    # are json.dumps's.
    return json.dumps(text.decode(), ensure_ascii=False)


def _small_array(arr: pa.Array, pgtype: PgType, binary: bool) -> list[bytes | None] | None:
    """One-dimensional arrays: elements through encode_column, each row assembled as array_out/array_send."""
    element = pgtype.element
    assert element is not None
    plain: Any = _unwrap(arr)
    t = plain.type
    if not _is_list(t) or _is_list(t.value_type):  # array literals in strings, multi-dimensional arrays
        return None
    if pa.types.is_fixed_size_list(t) and plain.null_count == 0:
        # DuckDB's ARRAY: every row holds list_size values (the cast to a list costs more than all the rest).
        offsets = [(plain.offset + i) * t.list_size for i in range(len(plain) + 1)]
    else:
        if not pa.types.is_list(t) and not pa.types.is_large_list(t):
            plain = plain.cast(pa.large_list(t.value_type))
        offsets = _list_offsets(plain).tolist()
    first, count = offsets[0], offsets[-1] - offsets[0]
    if count > _SMALL_ARRAY_ELEMENTS:
        return None
    items = encode_column(plain.values.slice(first, count), element, binary).to_pylist()
    quote = element.name not in _UNQUOTED_ELEMENTS
    out: list[bytes | None] = []
    for i, valid in enumerate(_small_validity(plain)):
        row = items[offsets[i] - first: offsets[i + 1] - first]
        out.append(None if not valid else _nested_binary(row, element, 1) if binary else
                   _nested_text(row, quote).encode())
    return out


def _small_validity(arr: pa.Array) -> list[bool]:
    """Whether each row is non-null, read from the validity bitmap (a union's nulls are its members')."""
    n = len(arr)
    if pa.types.is_union(arr.type):
        return [v is not None for v in arr.to_pylist()]
    if arr.null_count == 0:
        return [True] * n
    bitmap = _buffer(arr, 0)
    if bitmap is None:
        return [False] * n
    bits = int.from_bytes(memoryview(bitmap).tobytes(), "little") >> arr.offset
    return [bool(bits >> i & 1) for i in range(n)]


_Kernel = Callable[[pa.Array, bool, PgType], pa.Array]
_Small = Callable[[pa.Array, bool, PgType], list[bytes | None] | None]

# Per type name: the column kernel, and the value-by-value encoder for small batches (None where the
# kernel passes the stored strings or bytes through and nothing is cheaper).
_ENCODERS: dict[str, tuple[_Kernel, _Small | None]] = {
    "bool": (_enc_bool, _small_bool),
    "int2": (_enc_int, _small_int), "int4": (_enc_int, _small_int), "int8": (_enc_int, _small_int),
    "oid": (_enc_oid, _small_int),
    "float4": (_enc_float, _small_float), "float8": (_enc_float, _small_float),
    "numeric": (_enc_numeric, _small_numeric),
    "text": (_enc_text, None), "varchar": (_enc_text, None), "bpchar": (_enc_text, None), "name": (_enc_text, None),
    "char": (_enc_text, None),
    "bytea": (_enc_bytea, _small_bytea),
    "date": (_enc_date, _small_date),
    "time": (_enc_time, _small_time),
    "timestamp": (_enc_timestamp, _small_timestamp), "timestamptz": (_enc_timestamp, _small_timestamp),
    "timetz": (_enc_timetz, _timetz_values),
    "interval": (_enc_interval, _small_interval),
    "uuid": (_enc_uuid, _small_uuid),
    "json": (_enc_json, _small_json), "jsonb": (_enc_json, _small_json),
    "varbit": (_enc_varbit, _varbit_values), "bit": (_enc_varbit, _varbit_values),
}


# --- parameter decoding ----------------------------------------------------------------------------

_UTC = dt.UTC
_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_PG_EPOCH_DATETIME = dt.datetime(2000, 1, 1)


def decode_parameter(data: bytes | None, oid: int, binary: bool) -> object:
    """A Bind parameter as a Python value DuckDB binds; ParameterFormatError for malformed input."""
    if data is None:
        return None
    element = ELEMENT_OF_ARRAY.get(oid)
    if element is not None:
        return _decode_array_binary(data, element) if binary else _decode_array_text(_utf8(data, "array"), element)
    pgtype = WIRE_TYPE_BY_OID.get(oid)
    if pgtype is None:
        if binary:
            return bytes(data)
        return _utf8(data, "unknown")
    decoder = (_BINARY_DECODERS if binary else _TEXT_DECODERS)[pgtype.name]
    return decoder(bytes(data))


def _utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterFormatError(f"invalid byte sequence for encoding \"UTF8\" in {what} value") from None
    if "\x00" in text:
        raise ParameterFormatError(f"invalid byte sequence for encoding \"UTF8\": 0x00 in {what} value")
    return text


def _bad(type_name: str, data: bytes | str) -> ParameterFormatError:
    shown = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if len(shown) > 64:
        shown = shown[:61] + "..."
    return ParameterFormatError(f'invalid input syntax for type {type_name}: "{shown}"')


def _binary_length(data: bytes, size: int, type_name: str) -> None:
    if len(data) != size:
        raise ParameterFormatError(f"incorrect binary data format for type {type_name}: "
                                   f"expected {size} bytes, got {len(data)}")


# text decoders

_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
_INT_RANGES = {"int2": ("smallint", 16), "int4": ("integer", 32), "int8": ("bigint", 64), "oid": ("oid", 32)}


def _text_int(name: str) -> Callable[[bytes], object]:
    type_name, bits = _INT_RANGES[name]
    low, high = (0, 2**32 - 1) if name == "oid" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)

    def decode(data: bytes) -> object:
        text = _utf8(data, type_name)
        if not _INTEGER_TEXT.match(text):
            raise _bad(type_name, text)
        value = int(text)
        if not low <= value <= high:
            raise ParameterFormatError(f'value "{text.strip()}" is out of range for type {type_name}')
        return value

    return decode


_FLOAT_TEXT = re.compile(r"^\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)\s*$", re.IGNORECASE)


def _text_float(name: str) -> Callable[[bytes], object]:
    type_name = "real" if name == "float4" else "double precision"
    limit = float(np.finfo(np.float32).max) if name == "float4" else math.inf

    def decode(data: bytes) -> object:
        text = _utf8(data, type_name)
        if not _FLOAT_TEXT.match(text):
            raise _bad(type_name, text)
        value = float(text)
        is_word = any(c.isalpha() and c not in "eE" for c in text)
        if not is_word and (abs(value) > limit or math.isinf(value)):
            raise ParameterFormatError(f'"{text.strip()}" is out of range for type {type_name}')
        # A real parameter holds a single-precision value, exactly as its binary form would.
        return float(np.float32(value)) if name == "float4" else value

    return decode


_NUMERIC_TEXT = re.compile(r"^\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|infinity|inf)\s*$", re.IGNORECASE)


def _text_numeric(data: bytes) -> object:
    text = _utf8(data, "numeric")
    if not _NUMERIC_TEXT.match(text):
        raise _bad("numeric", text)
    return Decimal(text.strip())


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


def _text_str(name: str) -> Callable[[bytes], object]:
    return lambda data: _utf8(data, name)


def _text_json(data: bytes) -> object:
    text = _utf8(data, "json")
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise _bad("json", text) from None
    return text


def _reject_constant(name: str) -> object:
    raise ValueError(name)


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


_DATE_RE = r"(?P<year>\d{4,})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
_TIME_RE = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
_ZONE_RE = r"(?P<zone>[zZ]|UTC|GMT|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)"
_DATE_TEXT = re.compile(rf"^\s*{_DATE_RE}(?:[ T]+{_TIME_RE}\s*{_ZONE_RE}?)?(?P<bc>\s+BC)?\s*$", re.IGNORECASE)
_TIMESTAMP_TEXT = re.compile(rf"^\s*{_DATE_RE}(?:[ T]+{_TIME_RE})?\s*{_ZONE_RE}?(?P<bc>\s+BC)?\s*$", re.IGNORECASE)
_TIME_TEXT = re.compile(rf"^\s*{_TIME_RE}\s*{_ZONE_RE}?\s*$", re.IGNORECASE)
_SPECIAL_DATES = ("infinity", "-infinity", "+infinity")


def _fraction_us(fraction: str | None) -> int:
    if not fraction:
        return 0
    # PostgreSQL rounds to microseconds; so does this (half away from zero on the 7th digit).
    return int(Decimal("0." + fraction).quantize(Decimal("0.000001"), rounding="ROUND_HALF_UP") * 1_000_000)


def _relative_day(word: str) -> dt.date | None:
    today = dt.datetime.now(_UTC).date()
    return {"today": today, "tomorrow": today + dt.timedelta(days=1), "yesterday": today - dt.timedelta(days=1),
            "epoch": dt.date(1970, 1, 1)}.get(word)


def _text_date(data: bytes) -> object:
    text = _utf8(data, "date")
    word = text.strip().lower()
    if word in _SPECIAL_DATES:
        return word.lstrip("+")  # Python dates have no infinity; DuckDB casts the string
    relative = _relative_day(word)
    if relative is not None:
        return relative
    match = _DATE_TEXT.match(text)
    if not match:
        raise _bad("date", text)
    return _make_date(match, text, "date")


def _make_date(match: re.Match[str], text: str, type_name: str) -> object:
    year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
    bc = bool(match["bc"])
    out_of_range = ParameterFormatError(f'date/time field value out of range for type {type_name}: "{text.strip()}"')
    if year == 0:
        raise out_of_range
    try:
        # 2000 is a leap year, so this validates month and day for years Python cannot hold.
        check = dt.date(2000 if year > 9999 or bc else year, month, day)
    except ValueError:
        raise out_of_range from None
    if bc or year > 9999:
        if month == 2 and day == 29 and not _is_leap(1 - year if bc else year):
            raise out_of_range
        # Python's date cannot hold these; DuckDB parses its own spelling of them.
        return _duckdb_date_literal(_days_from_civil(match))
    return check


def _days_from_civil(match: re.Match[str]) -> int:
    """Days since 1970-01-01 of a matched (possibly BC or 5-digit-year) date."""
    year = int(match["year"])
    if match["bc"]:
        year = 1 - year
    month, day = int(match["month"]), int(match["day"])
    # Howard Hinnant's days_from_civil, valid for any proleptic Gregorian year.
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _duckdb_date_literal(days: int) -> str:
    """A date DuckDB parses, for days Python's date cannot hold ('0044-03-15 (BC)', '10000-01-01')."""
    text, bc = _date_parts_text(days)
    return text + (" (BC)" if bc else "")


def _duckdb_timestamp_literal(us: int, with_tz: bool) -> str:
    """A timestamp DuckDB parses for instants beyond Python's datetime (DuckDB puts '(BC)' after the date)."""
    days, tod = divmod(us, _US_PER_DAY)
    return f"{_duckdb_date_literal(days)} {_clock_text(tod)}{'+00' if with_tz else ''}"


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _time_parts(match: re.Match[str], text: str, type_name: str) -> int:
    hour, minute = int(match["hour"]), int(match["minute"])
    second = int(match["second"] or 0)
    us = _fraction_us(match["fraction"])
    total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + us
    if minute > 59 or second > 60 or total > _US_PER_DAY:
        raise ParameterFormatError(f'date/time field value out of range for type {type_name}: "{text.strip()}"')
    return total


def _zone_offset(zone: str | None) -> int | None:
    """UTC offset in seconds of a zone suffix, or None when there is none."""
    if not zone:
        return None
    if zone.upper() in ("Z", "UTC", "GMT"):
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    if len(digits) <= 2:
        hours, minutes, seconds = int(digits), 0, 0
    else:
        head = len(digits) - (4 if len(digits) > 4 else 2)
        hours = int(digits[:head])
        minutes = int(digits[head: head + 2])
        seconds = int(digits[head + 2:] or 0)
    return sign * (hours * 3600 + minutes * 60 + seconds)


def _text_time(data: bytes) -> object:
    text = _utf8(data, "time without time zone")
    match = _TIME_TEXT.match(text)
    if not match:
        raise _bad("time without time zone", text)
    us = _time_parts(match, text, "time without time zone")
    if us == _US_PER_DAY:
        return "24:00:00"
    return _time_from_us(us)


def _time_from_us(us: int, tz: dt.tzinfo | None = None) -> dt.time:
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return dt.time(hour, minute, second, micro, tzinfo=tz)


def _text_timetz(data: bytes) -> object:
    text = _utf8(data, "time with time zone")
    match = _TIME_TEXT.match(text)
    if not match:
        raise _bad("time with time zone", text)
    us = _time_parts(match, text, "time with time zone")
    if us == _US_PER_DAY:
        raise ParameterFormatError(f'date/time field value out of range for type time with time zone: "{text}"')
    return _timetz_literal(us, _zone_offset(match["zone"]) or 0)


def _timetz_literal(us: int, offset: int) -> str:
    """A TIME WITH TIME ZONE literal for DuckDB, which rejects Python times with negative UTC offsets."""
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{_time_from_us(us).isoformat()}{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"


def _text_timestamp(with_tz: bool) -> Callable[[bytes], object]:
    type_name = "timestamp with time zone" if with_tz else "timestamp without time zone"

    def decode(data: bytes) -> object:
        text = _utf8(data, type_name)
        word = text.strip().lower()
        if word in _SPECIAL_DATES:
            return word.lstrip("+")
        if word == "now":
            now = dt.datetime.now(_UTC)
            return now if with_tz else now.replace(tzinfo=None)
        relative = _relative_day(word)
        if relative is not None:
            midnight = dt.datetime.combine(relative, dt.time())
            return midnight.replace(tzinfo=_UTC) if with_tz else midnight
        match = _TIMESTAMP_TEXT.match(text)
        if not match:
            raise _bad(type_name, text)
        day = _make_date(match, text, type_name)
        us = _time_parts(match, text, type_name) if match["hour"] else 0
        offset = _zone_offset(match["zone"]) if with_tz else None  # timestamp ignores a zone, as PG does
        if isinstance(day, str):  # beyond Python's datetime: a literal DuckDB parses
            offset_us = (offset or 0) * 1_000_000
            return _duckdb_timestamp_literal(_days_from_civil(match) * _US_PER_DAY + us - offset_us, with_tz)
        assert isinstance(day, dt.date)
        value = dt.datetime.combine(day, dt.time()) + dt.timedelta(microseconds=us)
        if not with_tz:
            return value
        value = value.replace(tzinfo=dt.timezone(dt.timedelta(seconds=offset or 0)))
        return value.astimezone(_UTC)

    return decode


_UUID_TEXT = re.compile(r"^\{?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}\}?$")


def _text_uuid(data: bytes) -> object:
    text = _utf8(data, "uuid").strip()
    if not _UUID_TEXT.match(text) or (text.startswith("{") != text.endswith("}")):
        raise _bad("uuid", text)
    return uuid.UUID(text.strip("{}"))


def _text_varbit(data: bytes) -> object:
    text = _utf8(data, "bit varying").strip()
    if text[:1] in ("b", "B"):
        text = text[1:]
    elif text[:1] in ("x", "X"):
        try:
            return "".join(f"{int(c, 16):04b}" for c in text[1:])
        except ValueError:
            raise _bad("bit varying", text) from None
    if any(c not in "01" for c in text):
        raise ParameterFormatError(f'"{text[:20]}" is not a valid binary digit')
    return text


_INTERVAL_UNITS: dict[str, tuple[str, int]] = {}
for _names, _field, _factor in (
    (("microsecond", "microseconds", "us", "usec", "usecs", "useconds"), "us", 1),
    (("millisecond", "milliseconds", "ms", "msec", "msecs", "mseconds"), "us", 1_000),
    (("second", "seconds", "s", "sec", "secs"), "us", 1_000_000),
    (("minute", "minutes", "m", "min", "mins"), "us", 60_000_000),
    (("hour", "hours", "h", "hr", "hrs"), "us", 3_600_000_000),
    (("day", "days", "d"), "days", 1),
    (("week", "weeks", "w"), "days", 7),
    (("month", "months", "mon", "mons"), "months", 1),
    (("year", "years", "y", "yr", "yrs"), "months", 12),
    (("decade", "decades"), "months", 120),
    (("century", "centuries"), "months", 1200),
    (("millennium", "millennia", "millenniums"), "months", 12000),
):
    for _name in _names:
        _INTERVAL_UNITS[_name] = (_field, _factor)

_INTERVAL_TOKEN = re.compile(
    r"\s*(?:(?P<clock>[+-]?\d+:\d+(?::\d+(?:\.\d*)?)?)"
    r"|(?P<yearmonth>[+-]?\d+-\d+)(?![\d.:])"
    r"|(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))\s*(?P<unit>[a-zA-Z]+)?"
    r"|(?P<ago>ago\b))",
)
_ISO_INTERVAL = re.compile(
    r"^P(?:(?P<Y>-?[\d.]+)Y)?(?:(?P<M>-?[\d.]+)M)?(?:(?P<W>-?[\d.]+)W)?(?:(?P<D>-?[\d.]+)D)?"
    r"(?:T(?:(?P<h>-?[\d.]+)H)?(?:(?P<m>-?[\d.]+)M)?(?:(?P<s>-?[\d.]+)S)?)?$",
)


def parse_interval(text: str) -> tuple[int, int, int]:
    """(months, days, microseconds) of a PostgreSQL interval literal (postgres, verbose or ISO 8601 style)."""
    source = text.strip()
    if not source:
        raise ValueError("empty interval")
    months: Decimal = Decimal(0)
    days: Decimal = Decimal(0)
    us: Decimal = Decimal(0)

    def add(field: str, amount: Decimal) -> None:
        nonlocal months, days, us
        # Fractions spill downward as PostgreSQL does: months into 30-day days, days into 24-hour days.
        if field == "months":
            whole = int(amount)
            months += whole
            amount = (amount - whole) * 30
            field = "days"
        if field == "days":
            whole = int(amount)
            days += whole
            amount = (amount - whole) * _US_PER_DAY
            field = "us"
        us += amount

    iso = _ISO_INTERVAL.match(source.upper()) if source[:1] in "pP" else None
    if iso:
        for key, iso_field, multiplier in (("Y", "months", 12), ("M", "months", 1), ("W", "days", 7), ("D", "days", 1),
                                   ("h", "us", 3_600_000_000), ("m", "us", 60_000_000), ("s", "us", 1_000_000)):
            value = iso.group(key)
            if value is not None:
                add(iso_field, Decimal(value) * multiplier)
        return int(months), int(days), int(us.to_integral_value())
    if source.startswith("@"):
        source = source[1:]
    tokens: list[re.Match[str]] = []
    position = 0
    while source[position:].strip():
        match = _INTERVAL_TOKEN.match(source, position)
        if not match or match.end() == position:
            raise ValueError(text)
        tokens.append(match)
        position = match.end()
    negate = False
    seen = False
    for index, match in enumerate(tokens):
        if match["ago"]:
            negate = True
        elif match["clock"]:
            clock = match["clock"]
            sign = -1 if clock.startswith("-") else 1
            pieces = clock.lstrip("+-").split(":")
            hours, minutes = int(pieces[0]), int(pieces[1])
            seconds = Decimal(pieces[2]) if len(pieces) > 2 else Decimal(0)
            if minutes > 59 or seconds >= 60:
                raise ValueError(text)
            add("us", sign * ((hours * 60 + minutes) * 60 + seconds) * 1_000_000)
        elif match["yearmonth"]:  # SQL-standard year-month literal, '1-2' is 1 year 2 months
            sign = -1 if match["yearmonth"].startswith("-") else 1
            years, months_part = match["yearmonth"].lstrip("+-").split("-")
            if int(months_part) > 11:
                raise ValueError(text)
            add("months", Decimal(sign * (int(years) * 12 + int(months_part))))
        else:
            number = Decimal(match["number"])
            unit = match["unit"]
            if unit is None:
                # A bare number is seconds, except right before a time of day ('3 04:05:06'), where it is days.
                followed_by_clock = index + 1 < len(tokens) and tokens[index + 1]["clock"] is not None
                unit = "day" if followed_by_clock else "second"
            unit = unit.lower()
            if unit not in _INTERVAL_UNITS:
                raise ValueError(text)
            field, factor = _INTERVAL_UNITS[unit]
            add(field, number * Decimal(factor))
        seen = True
    if not seen:
        raise ValueError(text)
    sign = -1 if negate else 1
    return sign * int(months), sign * int(days), sign * int(us.to_integral_value())


def _interval_value(months: int, days: int, us: int) -> object:
    """A timedelta when the interval has no months (exact); else a string DuckDB casts exactly."""
    if months == 0:
        return dt.timedelta(days=days, microseconds=us)
    return f"{months} months {days} days {us} microseconds"


def _text_interval(data: bytes) -> object:
    text = _utf8(data, "interval")
    try:
        months, days, us = parse_interval(text)
    except (ValueError, ArithmeticError):
        raise _bad("interval", text) from None
    _check_interval_range(months, days, us)
    return _interval_value(months, days, us)


def _check_interval_range(months: int, days: int, us: int) -> None:
    if not (-(2**31) <= months < 2**31 and -(2**31) <= days < 2**31 and _INT64_MIN <= us <= _INT64_MAX):
        raise ParameterFormatError("interval out of range")


# text arrays

def _decode_array_text(text: str, element: PgType) -> list[object]:
    """array_in: '{1,2,NULL}', '{{1,2},{3,4}}', '{"a b","x\\"y"}' and an optional '[1:2]=' prefix."""
    source = text.strip()
    if source.startswith("["):
        equals = source.find("=")
        if equals < 0 or not re.fullmatch(r"(\[[+-]?\d+:[+-]?\d+\])+", source[:equals].strip()):
            raise _bad(f"{element.name}[]", text)
        source = source[equals + 1:].strip()
    decode = _TEXT_DECODERS[element.name]
    position = 0

    def parse_level() -> list[object]:
        nonlocal position
        if position >= len(source) or source[position] != "{":
            raise _bad(f"{element.name}[]", text)
        position += 1
        items: list[object] = []
        expect_item = True
        while True:
            while position < len(source) and source[position].isspace():
                position += 1
            if position >= len(source):
                raise _bad(f"{element.name}[]", text)
            char = source[position]
            if char == "}" and (not items or not expect_item):
                position += 1
                return items
            if not expect_item:
                if char != ",":
                    raise _bad(f"{element.name}[]", text)
                position += 1
                expect_item = True
                continue
            if char == "{":
                items.append(parse_level())
            else:
                items.append(parse_scalar())
            expect_item = False

    def parse_scalar() -> object:
        nonlocal position
        if source[position] == '"':
            position += 1
            chars: list[str] = []
            while position < len(source) and source[position] != '"':
                if source[position] == "\\":
                    position += 1
                if position < len(source):
                    chars.append(source[position])
                    position += 1
            if position >= len(source):
                raise _bad(f"{element.name}[]", text)
            position += 1
            return decode("".join(chars).encode())
        chars = []
        while position < len(source) and source[position] not in ",}":
            if source[position] == "\\":
                position += 1
            if position < len(source):
                chars.append(source[position])
                position += 1
        raw = "".join(chars).strip()
        if raw.upper() == "NULL":
            return None
        if raw == "" or any(c in raw for c in '{"'):
            raise _bad(f"{element.name}[]", text)
        return decode(raw.encode())

    result = parse_level()
    if source[position:].strip():
        raise _bad(f"{element.name}[]", text)
    return result


# binary decoders

def _binary_int(name: str, size: int, fmt: str) -> Callable[[bytes], object]:
    type_name = _INT_RANGES[name][0]

    def decode(data: bytes) -> object:
        _binary_length(data, size, type_name)
        return struct.unpack(fmt, data)[0]

    return decode


def _binary_float(size: int, fmt: str, type_name: str) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        _binary_length(data, size, type_name)
        return struct.unpack(fmt, data)[0]

    return decode


def _binary_bool(data: bytes) -> object:
    _binary_length(data, 1, "boolean")
    return data != b"\x00"


def _binary_numeric(data: bytes) -> object:
    if len(data) < 8:
        raise ParameterFormatError("insufficient data left in message for type numeric")
    ndigits, weight, sign, dscale = struct.unpack("!hhHh", data[:8])
    if ndigits < 0 or len(data) != 8 + 2 * ndigits:
        raise ParameterFormatError("invalid length in external numeric value")
    if sign == _NUMERIC_NAN:
        return Decimal("NaN")
    if sign in (_NUMERIC_PINF, _NUMERIC_NINF):
        return Decimal("Infinity") if sign == _NUMERIC_PINF else Decimal("-Infinity")
    if sign not in (0, 0x4000):
        raise ParameterFormatError("invalid sign in external numeric value")
    if dscale < 0 or dscale > 0x3FFF:
        raise ParameterFormatError("invalid scale in external numeric value")
    digits = struct.unpack(f"!{ndigits}H", data[8:])
    if any(d >= 10_000 for d in digits):
        raise ParameterFormatError("invalid digit in external numeric value")
    magnitude = 0
    for d in digits:
        magnitude = magnitude * 10_000 + d
    exponent = 4 * (weight - ndigits + 1)
    value = Decimal(magnitude).scaleb(exponent, Context(prec=MAX_NUMERIC_PRECISION * 2))
    quantum = Decimal(1).scaleb(-dscale)
    value = value.quantize(quantum, context=Context(prec=MAX_NUMERIC_PRECISION * 2))
    return value.copy_negate() if sign == 0x4000 else value


def _binary_str(name: str) -> Callable[[bytes], object]:
    return lambda data: _utf8(data, name)


def _binary_jsonb(data: bytes) -> object:
    if not data or data[0] != 1:
        raise ParameterFormatError("unsupported jsonb version number")
    return _text_json(data[1:])


def _binary_bytea(data: bytes) -> object:
    return data


def _binary_date(data: bytes) -> object:
    _binary_length(data, 4, "date")
    days = struct.unpack("!i", data)[0]
    if days == _DATE_INFINITY:
        return "infinity"
    if days == _DATE_NINFINITY_PG:
        return "-infinity"
    try:
        return _PG_EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        return _duckdb_date_literal(days + _PG_EPOCH_DAYS)


def _binary_time(data: bytes) -> object:
    _binary_length(data, 8, "time without time zone")
    us = struct.unpack("!q", data)[0]
    if not 0 <= us <= _US_PER_DAY:
        raise ParameterFormatError("time out of range")
    return "24:00:00" if us == _US_PER_DAY else _time_from_us(us)


def _binary_timetz(data: bytes) -> object:
    _binary_length(data, 12, "time with time zone")
    us, zone = struct.unpack("!qi", data)
    if not 0 <= us < _US_PER_DAY or not -_TIMETZ_MAX_OFFSET <= zone <= _TIMETZ_MAX_OFFSET:
        raise ParameterFormatError("time with time zone out of range")
    return _timetz_literal(us, -zone)


def _binary_timestamp(with_tz: bool) -> Callable[[bytes], object]:
    type_name = "timestamp with time zone" if with_tz else "timestamp without time zone"

    def decode(data: bytes) -> object:
        _binary_length(data, 8, type_name)
        us = struct.unpack("!q", data)[0]
        if us == _INT64_MAX:
            return "infinity"
        if us == _INT64_MIN:
            return "-infinity"
        try:
            value = _PG_EPOCH_DATETIME + dt.timedelta(microseconds=us)
        except OverflowError:
            return _duckdb_timestamp_literal(us + _PG_EPOCH_US, with_tz)
        return value.replace(tzinfo=_UTC) if with_tz else value

    return decode


def _binary_interval(data: bytes) -> object:
    _binary_length(data, 16, "interval")
    us, days, months = struct.unpack("!qii", data)
    return _interval_value(months, days, us)


def _binary_uuid(data: bytes) -> object:
    _binary_length(data, 16, "uuid")
    return uuid.UUID(bytes=data)


def _binary_varbit(data: bytes) -> object:
    if len(data) < 4:
        raise ParameterFormatError("insufficient data left in message for type bit varying")
    bit_length = struct.unpack("!i", data[:4])[0]
    body = data[4:]
    if bit_length < 0 or len(body) != (bit_length + 7) // 8:
        raise ParameterFormatError("invalid length in external bit string")
    return "".join(f"{b:08b}" for b in body)[:bit_length]


def _binary_char(data: bytes) -> object:
    return _utf8(data, "char")


def _decode_array_binary(data: bytes, element: PgType) -> list[object]:
    """array_recv: ndim, flags, element oid, (dim, lower bound) per dimension, then the elements."""
    name = f"{element.name}[]"
    if len(data) < 12:
        raise ParameterFormatError(f"insufficient data left in message for type {name}")
    ndim, flags, element_oid = struct.unpack("!iii", data[:12])
    if ndim < 0 or ndim > 6:
        raise ParameterFormatError(f"invalid number of dimensions in {name} value: {ndim}")
    if flags not in (0, 1):
        raise ParameterFormatError(f"invalid array flags in {name} value")
    if element_oid != element.oid:
        raise ParameterFormatError(f"binary data has array element type {element_oid} instead of {element.oid}"
                                   f" ({element.name})")
    position = 12
    if len(data) < position + 8 * ndim:
        raise ParameterFormatError(f"insufficient data left in message for type {name}")
    dims = [struct.unpack("!ii", data[position + 8 * i: position + 8 * i + 8])[0] for i in range(ndim)]
    position += 8 * ndim
    if ndim == 0:
        if position != len(data):
            raise ParameterFormatError(f"incorrect binary data format in {name} value")
        return []
    if any(d < 0 for d in dims) or math.prod(dims) > 100_000_000:
        raise ParameterFormatError(f"invalid array dimensions in {name} value")
    decode = _BINARY_DECODERS[element.name]
    flat: list[object] = []
    for _ in range(math.prod(dims)):
        if len(data) < position + 4:
            raise ParameterFormatError(f"insufficient data left in message for type {name}")
        length = struct.unpack("!i", data[position: position + 4])[0]
        position += 4
        if length == -1:
            flat.append(None)
            continue
        if length < 0 or len(data) < position + length:
            raise ParameterFormatError(f"insufficient data left in message for type {name}")
        flat.append(decode(data[position: position + length]))
        position += length
    if position != len(data):
        raise ParameterFormatError(f"incorrect binary data format in {name} value")
    for size in reversed(dims[1:]):
        flat = [flat[i: i + size] for i in range(0, len(flat), size)]
    return flat


_TEXT_DECODERS: dict[str, Callable[[bytes], object]] = {
    "bool": _text_bool,
    "int2": _text_int("int2"), "int4": _text_int("int4"), "int8": _text_int("int8"), "oid": _text_int("oid"),
    "float4": _text_float("float4"), "float8": _text_float("float8"),
    "numeric": _text_numeric,
    "text": _text_str("text"), "varchar": _text_str("character varying"), "bpchar": _text_str("character"),
    "name": _text_str("name"), "char": _text_str("char"),
    "json": _text_json, "jsonb": _text_json,
    "bytea": _text_bytea,
    "date": _text_date,
    "time": _text_time,
    "timetz": _text_timetz,
    "timestamp": _text_timestamp(False), "timestamptz": _text_timestamp(True),
    "interval": _text_interval,
    "uuid": _text_uuid,
    "bit": _text_varbit, "varbit": _text_varbit,
}

_BINARY_DECODERS: dict[str, Callable[[bytes], object]] = {
    "bool": _binary_bool,
    "int2": _binary_int("int2", 2, "!h"), "int4": _binary_int("int4", 4, "!i"),
    "int8": _binary_int("int8", 8, "!q"), "oid": _binary_int("oid", 4, "!I"),
    "float4": _binary_float(4, "!f", "real"), "float8": _binary_float(8, "!d", "double precision"),
    "numeric": _binary_numeric,
    "text": _binary_str("text"), "varchar": _binary_str("character varying"), "bpchar": _binary_str("character"),
    "name": _binary_str("name"), "char": _binary_char,
    "json": _text_json, "jsonb": _binary_jsonb,
    "bytea": _binary_bytea,
    "date": _binary_date,
    "time": _binary_time,
    "timetz": _binary_timetz,
    "timestamp": _binary_timestamp(False), "timestamptz": _binary_timestamp(True),
    "interval": _binary_interval,
    "uuid": _binary_uuid,
    "bit": _binary_varbit, "varbit": _binary_varbit,
}
