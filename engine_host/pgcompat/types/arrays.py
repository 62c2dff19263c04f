"""PostgreSQL arrays (from DuckDB LIST and ARRAY): encoders and parameter decoders.

Elements go through the encoding and decoding dispatch, which in turn dispatches arrays here; the
functions that need it import it when called, so that either module can be imported first.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.types.arrow_types import _is_list, _is_string
from engine_host.pgcompat.types.buffers import (
    _U8,
    _buffer,
    _from_fixed,
    _from_matrix,
    _small_validity,
    _unwrap,
    _validity,
    as_plain_binary,
)
from engine_host.pgcompat.types.parameter_format import ParameterFormatError, _bad
from engine_host.pgcompat.types.table import PgType

# pyarrow-stubs' overloads reject valid calls that mix scalars, Python literals and arrays of
# different (large/view) layouts, and miss attributes of nested/extension arrays; the compute
# module and raw buffers are therefore used untyped.
pc: Any = _typed_pc


# Element types whose text form never needs quoting inside an array literal.
_UNQUOTED_ELEMENTS = frozenset({"bool", "int2", "int4", "int8", "float4", "float8", "numeric", "oid", "date", "uuid"})
_NEEDS_QUOTES = r'(^$)|(^[Nn][Uu][Ll][Ll]$)|[{}",\\ \t\n\r\v\f]'


def _encode_array(arr: pa.Array, pgtype: PgType, binary: bool) -> pa.Array:
    from engine_host.pgcompat.types.encoding import encode_column  # imported here: encoding dispatches to this module
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
    from engine_host.pgcompat.types.encoding import encode_column  # imported here: encoding dispatches to this module
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
# Arrays are assembled row by row in Python: past this many elements in all the kernels are cheaper.
_SMALL_ARRAY_ELEMENTS = 128


def _small_array(arr: pa.Array, pgtype: PgType, binary: bool) -> list[bytes | None] | None:
    """One-dimensional arrays: elements through encode_column, each row assembled as array_out/array_send."""
    from engine_host.pgcompat.types.encoding import encode_column  # imported here: encoding dispatches to this module
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


def _decode_array_text(text: str, element: PgType) -> list[object]:
    """array_in: '{1,2,NULL}', '{{1,2},{3,4}}', '{"a b","x\\"y"}' and an optional '[1:2]=' prefix."""
    from engine_host.pgcompat.types.decoding import _TEXT_DECODERS  # imported here: decoding dispatches to this module
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


def _decode_array_binary(data: bytes, element: PgType) -> list[object]:
    """array_recv: ndim, flags, element oid, (dim, lower bound) per dimension, then the elements."""
    from engine_host.pgcompat.types.decoding import (
        _BINARY_DECODERS,  # imported here: decoding dispatches to this module
    )
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
