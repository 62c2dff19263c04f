"""Parameter decoding: a Bind parameter's bytes to the Python value DuckDB binds, dispatched by type.

Each type family's text and binary decoders live in its own module; this module holds the tables
that pick them by type name.
"""

from __future__ import annotations

from collections.abc import Callable

from engine_host.pgcompat.types.arrays import _decode_array_binary, _decode_array_text
from engine_host.pgcompat.types.bitstrings import _binary_varbit, _text_varbit
from engine_host.pgcompat.types.boolean import _binary_bool, _text_bool
from engine_host.pgcompat.types.datetime import (
    _binary_date,
    _binary_interval,
    _binary_time,
    _binary_timestamp,
    _binary_timetz,
    _text_date,
    _text_interval,
    _text_time,
    _text_timestamp,
    _text_timetz,
)
from engine_host.pgcompat.types.json import _binary_jsonb, _text_json
from engine_host.pgcompat.types.numeric import (
    _binary_float,
    _binary_int,
    _binary_numeric,
    _text_float,
    _text_int,
    _text_numeric,
)
from engine_host.pgcompat.types.parameter_format import _utf8
from engine_host.pgcompat.types.table import ELEMENT_OF_ARRAY, WIRE_TYPE_BY_OID
from engine_host.pgcompat.types.text import _binary_bytea, _binary_char, _binary_str, _text_bytea, _text_str
from engine_host.pgcompat.types.uuids import _binary_uuid, _text_uuid


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
