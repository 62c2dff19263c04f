"""DataRow framing: whole batches of encoded column values to PostgreSQL DataRow messages at once.

A DataRow is b'D', an int32 length (counting itself, not the 'D'), an int16 column count, then per
column an int32 value length (-1 for NULL, with no bytes) and the value bytes. The rows of a batch
are laid out with Arrow's element-wise binary join: each row is the join of a fixed-width header
piece and, per column, a fixed-width length prefix and the variable-width value. Consecutive
fixed-width pieces (the header, length prefixes, and columns whose values all have one width, such
as binary integers) are merged into one NumPy record first, so the join sees as few pieces as
possible; when every piece is fixed-width the rows come straight out of NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.types.buffers import as_plain_binary

# pyarrow-stubs' overloads reject binary_join_element_wise over mixed binary layouts; used untyped.
pc: Any = _typed_pc

_INT32_MAX = 2**31 - 1


def frame_data_rows(columns: Sequence[pa.Array], num_rows: int | None = None) -> bytes:
    """The DataRow messages for n rows given one encoded BinaryArray per column (all of length n).

    `num_rows` is only needed for rows with zero columns, whose count the columns cannot tell.
    """
    if not columns:
        count = num_rows or 0
        return b"D\x00\x00\x00\x06\x00\x00" * count
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("all columns of a batch must have the same length")
    if n == 0:
        return b""
    if len(columns) > 0x7FFF:
        raise ValueError("a DataRow holds at most 32767 columns")

    # Per column: byte lengths (0 for NULL), the field length word (-1 for NULL), and whether every
    # value has the same width and none is NULL (then the values can join a fixed-width record).
    sizes = np.full(n, 6, dtype=np.int64)
    pieces: list[tuple[str, object]] = []  # ("fixed", (n, w) uint8 matrix) or ("var", BinaryArray)
    fixed_parts: list[np.ndarray] = []
    header_slot = len(fixed_parts)
    fixed_parts.append(np.empty((n, 7), dtype=np.uint8))  # filled once the row sizes are known
    for column in columns:
        array = _as_binary(column)
        lengths = np.asarray(pc.binary_length(array).fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        byte_lengths = np.maximum(lengths, 0)
        sizes += 4 + byte_lengths
        fixed_parts.append(lengths.astype(">i4").view(np.uint8).reshape(n, 4))
        width = int(lengths[0])
        if width >= 0 and bool((lengths == width).all()):
            fixed_parts.append(_fixed_matrix(array, width))
        else:
            pieces.append(("fixed", _concat(fixed_parts)))
            fixed_parts = []
            pieces.append(("var", array.fill_null(b"") if array.null_count else array))
    if fixed_parts:
        pieces.append(("fixed", _concat(fixed_parts)))

    header = np.empty(n, dtype=[("type", "u1"), ("length", ">i4"), ("count", ">i2")])
    header["type"] = ord("D")
    header["length"] = sizes
    header["count"] = len(columns)
    first = pieces[0][1]
    assert isinstance(first, np.ndarray)
    first[:, header_slot: header_slot + 7] = header.view(np.uint8).reshape(n, 7)

    total = int(sizes.sum()) + n
    if len(pieces) == 1:
        return first.tobytes()
    large = total > _INT32_MAX
    arrays = [_matrix_array(p, large) if kind == "fixed" else _widen(p, large) for kind, p in pieces
              if not (kind == "fixed" and isinstance(p, np.ndarray) and p.shape[1] == 0)]
    joined = pc.binary_join_element_wise(*arrays, b"")
    return _data_bytes(joined)


def _as_binary(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return as_plain_binary(column)


def _buffer(array: pa.Array, index: int) -> Any:
    return array.buffers()[index]


def _py_buffer(data: Any) -> pa.Buffer:
    return pa.py_buffer(data)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=1)


def _fixed_matrix(array: pa.Array, width: int) -> np.ndarray:
    """The values of a binary array whose values all have `width` bytes, as an (n, width) matrix."""
    n = len(array)
    if width == 0:
        return np.empty((n, 0), dtype=np.uint8)
    large = pa.types.is_large_binary(array.type)
    offset_type = np.int64 if large else np.int32
    offsets = np.frombuffer(_buffer(array, 1), dtype=offset_type, count=n + 1,
                            offset=array.offset * np.dtype(offset_type).itemsize)
    data = np.frombuffer(_buffer(array, 2), dtype=np.uint8)
    start = int(offsets[0])
    return data[start: start + n * width].reshape(n, width)


def _matrix_array(matrix: object, large: bool) -> pa.Array:
    assert isinstance(matrix, np.ndarray)
    n, width = matrix.shape
    offsets = np.arange(n + 1, dtype=np.int64 if large else np.int32) * width
    return pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), n,
                                 [None, _py_buffer(offsets), _py_buffer(np.ascontiguousarray(matrix))])


def _widen(array: object, large: bool) -> pa.Array:
    assert isinstance(array, pa.Array)
    if large and not pa.types.is_large_binary(array.type):
        return array.cast(pa.large_binary())
    return array


def _data_bytes(joined: pa.Array) -> bytes:
    """The concatenated values of a binary array without nulls: the slice of its data buffer."""
    large = pa.types.is_large_binary(joined.type)
    offset_type = np.int64 if large else np.int32
    offsets = np.frombuffer(_buffer(joined, 1), dtype=offset_type, count=len(joined) + 1,
                            offset=joined.offset * np.dtype(offset_type).itemsize)
    data = _buffer(joined, 2)
    return memoryview(data)[int(offsets[0]): int(offsets[-1])].tobytes()


def frame_data_rows_small(rows: list[list[bytes | None]]) -> bytes:
    """DataRow messages for a handful of rows built in Python (SHOW results, catalog answers)."""
    out = bytearray()
    for row in rows:
        body = bytearray(len(row).to_bytes(2, "big"))
        for value in row:
            if value is None:
                body += b"\xff\xff\xff\xff"
            else:
                body += len(value).to_bytes(4, "big") + value
        out += b"D" + (len(body) + 4).to_bytes(4, "big") + body
    return bytes(out)
