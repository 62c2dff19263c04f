"""json and jsonb: encoders (including JSON built from STRUCT, MAP and UNION values) and parameter decoders."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.types.arrays import _SMALL_ARRAY_ELEMENTS, _list_offsets
from engine_host.pgcompat.types.arrow_types import _is_list, _is_string, pg_type_for_arrow
from engine_host.pgcompat.types.buffers import _rare_rows, _small_validity, _unwrap, as_plain_binary
from engine_host.pgcompat.types.datetime import interval_text
from engine_host.pgcompat.types.numeric import _decimal_text, float_text
from engine_host.pgcompat.types.parameter_format import ParameterFormatError, _bad, _utf8
from engine_host.pgcompat.types.table import PgType

# pyarrow-stubs' overloads reject valid calls that mix scalars, Python literals and arrays of
# different (large/view) layouts, and miss attributes of nested/extension arrays; the compute
# module and raw buffers are therefore used untyped.
pc: Any = _typed_pc


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
    from engine_host.pgcompat.types.encoding import encode_column  # imported here: encoding dispatches to this module
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
    from engine_host.pgcompat.types.encoding import encode_column  # imported here: encoding dispatches to this module
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


def _text_json(data: bytes) -> object:
    text = _utf8(data, "json")
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise _bad("json", text) from None
    return text


def _reject_constant(name: str) -> object:
    raise ValueError(name)


def _binary_jsonb(data: bytes) -> object:
    if not data or data[0] != 1:
        raise ParameterFormatError("unsupported jsonb version number")
    return _text_json(data[1:])
