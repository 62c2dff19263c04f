"""The PostgreSQL type each Arrow column of a DuckDB result is sent as.

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

from typing import Any

import pyarrow as pa

from engine_host.pgcompat.types.table import (
    BOOL,
    BYTEA,
    DATE,
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
    PgType,
    array_of,
    numeric_type,
)

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
