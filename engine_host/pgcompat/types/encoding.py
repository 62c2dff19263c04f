"""Result encoding: a DuckDB result column to PostgreSQL text or binary values, dispatched by type.

Results arrive as Arrow arrays from DuckDB and leave as per-column arrays of encoded values (text or
binary format, exactly as PostgreSQL 15 prints or `*_send`s them with DateStyle=ISO, TimeZone=UTC,
IntervalStyle=postgres, extra_float_digits=1). The common scalar types are encoded with Arrow compute
kernels and NumPy over whole batches; only arrays of rare element types, intervals in text, JSON built
from nested values and a few DuckDB-only types fall back to a per-row Python loop. Batches of at most
SMALL_BATCH_ROWS rows (point lookups, `SELECT 1`) are encoded value by value instead, where the kernels'
fixed cost per call would dominate; both paths give the same bytes (tests/unit/pgcompat/test_type_codecs.py).

Each type family's kernel and small-batch encoder live in its own module (numeric, text, datetime, ...);
this module holds the table that picks them by type name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from engine_host.pgcompat.types.arrays import _encode_array, _small_array
from engine_host.pgcompat.types.arrow_types import _is_binary, _is_string, pg_type_for_arrow
from engine_host.pgcompat.types.bitstrings import _enc_varbit, _varbit_values
from engine_host.pgcompat.types.boolean import _enc_bool, _small_bool
from engine_host.pgcompat.types.buffers import _binary_from_values, _per_row, _unwrap, as_plain_binary
from engine_host.pgcompat.types.datetime import (
    _enc_date,
    _enc_interval,
    _enc_time,
    _enc_timestamp,
    _enc_timetz,
    _small_date,
    _small_interval,
    _small_time,
    _small_timestamp,
    _timetz_values,
)
from engine_host.pgcompat.types.declared import enc_regtype
from engine_host.pgcompat.types.json import _enc_json, _small_json
from engine_host.pgcompat.types.numeric import (
    _enc_float,
    _enc_int,
    _enc_numeric,
    _enc_oid,
    _small_float,
    _small_int,
    _small_numeric,
)
from engine_host.pgcompat.types.table import TEXT, PgType
from engine_host.pgcompat.types.text import _enc_bytea, _enc_text, _small_bytea
from engine_host.pgcompat.types.uuids import _enc_uuid, _small_uuid


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


# The family kernels pay a fixed cost per call (Arrow casts, NumPy temporaries) that dwarfs the work for
# the handful of rows a point lookup or `SELECT 1` returns. Up to SMALL_BATCH_ROWS rows, encode_column
# therefore encodes value by value with the per-value helpers the kernels use for their rare rows. Each
# small encoder returns None for a layout it does not handle, or for a value the general path reports
# as an error (out of range, malformed), so that the general path gives the same bytes or the same
# error; test_type_codecs checks both paths against each other for every type and format.

SMALL_BATCH_ROWS = 16


def _encode_small(arr: pa.Array, pgtype: PgType, binary: bool) -> pa.Array | None:
    """The encoded column built value by value, or None when the general path must encode it."""
    if pgtype.element is not None:
        values = _small_array(arr, pgtype, binary)
    else:
        small = _ENCODERS.get(pgtype.name, (None, None))[1]
        values = None if small is None else small(arr, binary, pgtype)
    return None if values is None else _binary_from_values(values)


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
    "regtype": (enc_regtype, None),
}
