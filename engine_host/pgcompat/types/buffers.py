"""Arrow buffers and NumPy byte matrices the family encoders build encoded columns from."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

# pyarrow-stubs' overloads reject valid calls that mix scalars, Python literals and arrays of
# different (large/view) layouts, and miss attributes of nested/extension arrays; the compute
# module and raw buffers are therefore used untyped.
pc: Any = _typed_pc


_U8 = np.uint8
_ZERO = ord("0")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


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


def _cast(arr: pa.Array, target: pa.DataType, what: str) -> pa.Array:
    """`arr` as `target`, or an Arrow error naming the PostgreSQL type when it does not fit."""
    if arr.type == target:
        return arr
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise pa.ArrowInvalid(f"cannot send {arr.type} values as {what}: {exc}") from None


def _rare_rows(mask: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if valid is not None:
        mask = mask & valid
    return np.flatnonzero(mask)


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


def _little_endian_ints(arr: pa.Array, width: int) -> list[int | None]:
    """The signed little-endian integers of a fixed-width array's values buffer (decimals, HUGEINT), None for nulls."""
    raw = memoryview(_buffer(arr, 1)) if len(arr) else memoryview(b"")
    start = arr.offset * width
    return [int.from_bytes(raw[start + i * width: start + (i + 1) * width], "little", signed=True) if valid else None
            for i, valid in enumerate(_small_validity(arr))]


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
