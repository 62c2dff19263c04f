"""Binary COPY rows read a chunk at a time with numpy, not a value at a time in Python.

A binary COPY row is a 16-bit field count, then per field a 32-bit length (-1: NULL) and that many
bytes. Where rows start depends on every length before them, so the split is found in two steps:
every offset holding the row's field count is a candidate row start; for all candidates at once the
fields are walked (one vectorised step per column: read the length, check it, skip the bytes), which
gives each candidate the offset where its row would end. The rows are then the chain of candidates
from the first row start, each ending where the next begins: a candidate inside a row's bytes is
never on that chain. Whatever the chain does not reach (a row cut off by the end of the CopyData
received so far, the trailer, malformed input) is left to the exact decoder, which reads it or
refuses it with PostgreSQL's error.

Columns of the types below are then converted in one step each (fixed-width values gathered and
byte-swapped, text gathered into an Arrow string array, numeric digits summed into an int64);
a column holding a value these conversions do not reproduce exactly (infinities, out-of-range dates,
invalid UTF-8, a numeric wider than the column) is decoded value by value by the exact decoder, so
the result is always the exact decoder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine_host.pgcompat.types.table import PgType

# Days and microseconds from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
_EPOCH_DAYS = 10_957
_EPOCH_US = _EPOCH_DAYS * 86_400 * 1_000_000
# Dates and timestamps a Python date/datetime holds (0001-01-01 .. 9999-12-31), relative to 2000-01-01:
# the exact decoder turns anything outside (and the infinities) into literals for the engine to cast.
_MIN_DAY, _MAX_DAY = -730_119, 2_921_939
_MIN_US, _MAX_US = _MIN_DAY * 86_400_000_000, (_MAX_DAY + 1) * 86_400_000_000 - 1
_US_PER_DAY = 86_400_000_000
_POW10 = np.array([10 ** k for k in range(19)], dtype=np.int64)

# Type name -> (byte width, numpy kind, Arrow type) of the fixed-width types read in one step.
_FIXED: dict[str, tuple[int, str, pa.DataType]] = {
    "int2": (2, "i2", pa.int16()),
    "int4": (4, "i4", pa.int32()),
    "int8": (8, "i8", pa.int64()),
    "oid": (4, "u4", pa.uint32()),
    "float4": (4, "f4", pa.float32()),
    "float8": (8, "f8", pa.float64()),
    "bool": (1, "u1", pa.bool_()),
    "date": (4, "i4", pa.date32()),
    "time": (8, "i8", pa.time64("us")),
    "timestamp": (8, "i8", pa.timestamp("us")),
    "timestamptz": (8, "i8", pa.timestamp("us", tz="UTC")),
}
_STRINGS = frozenset({"text", "varchar", "bpchar", "name"})


def field_width(pgtype: PgType) -> int | None:
    """The length every non-NULL field of this type has in binary COPY, if it is one the split checks."""
    if pgtype.element is not None:
        return None
    fixed = _FIXED.get(pgtype.name)
    return fixed[0] if fixed is not None else None


@dataclass
class BinaryRows:
    """Whole rows found at the front of a buffer: per field, each row's value offset and length (-1: NULL)."""

    count: int
    offsets: list[np.ndarray]
    lengths: list[np.ndarray]
    end: int  # the offset just after the last row found


def split_rows(buffer: bytes | bytearray, start: int, widths: Sequence[int | None]) -> BinaryRows:
    """The run of whole, well-formed rows from `start` (none if `start` does not begin one)."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    n = len(data)
    fields = len(widths)
    none = BinaryRows(0, [], [], start)
    if fields == 0 or n - start < 2 + 4 * fields:
        return none
    hi, lo = (fields >> 8) & 0xFF, fields & 0xFF
    candidates = np.flatnonzero((data[start:n - 1] == hi) & (data[start + 1:n] == lo)).astype(np.int64) + start
    if len(candidates) == 0 or candidates[0] != start:
        return none
    ok = np.ones(len(candidates), dtype=bool)
    pos = candidates + 2
    offsets: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for width in widths:
        ok &= pos + 4 <= n
        length = _int32_at(data, np.where(ok, pos, start))
        ok &= (length >= -1) if width is None else ((length == width) | (length == -1))
        offsets.append(pos + 4)
        lengths.append(length)
        pos = pos + 4 + np.where(ok, np.maximum(length, 0), 0)
        ok &= pos <= n
    # Each candidate's successor: the index of the candidate where its row ends, len() if none does,
    # -1 if it is no whole, well-formed row.
    following = np.searchsorted(candidates, pos)
    found = following < len(candidates)
    found[found] = candidates[following[found]] == pos[found]
    successor = np.where(ok, np.where(found, following, len(candidates)), -1).tolist()
    chain: list[int] = []
    index, stop = 0, len(candidates)
    while index < stop:  # a step per row, over a Python list: the chain of rows from `start`
        after = successor[index]
        if after < 0:
            break
        chain.append(index)
        index = after
    if not chain:
        return none
    rows = np.array(chain, dtype=np.int64)
    return BinaryRows(len(chain), [o[rows] for o in offsets], [length[rows] for length in lengths],
                      int(pos[chain[-1]]))


def _int32_at(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The big-endian int32 at each offset (each offset + 4 within `data`)."""
    return _big_endian(data, at, "i4").astype(np.int64)


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _big_endian(data: np.ndarray, at: np.ndarray, kind: str) -> np.ndarray:
    """The big-endian value of numpy kind `kind` ("i4", "f8", "u2"...) at each offset, in native order.

    Built a byte at a time from 1-D gathers, which numpy does several times faster than gathering
    rows of a 2-D window.
    """
    width = int(kind[1:])
    unsigned = _UNSIGNED[width]
    value = data[at].astype(unsigned)
    for k in range(1, width):
        value = (value << unsigned(8)) | data[at + k]
    return value.view(np.dtype(kind))


def vectorised_column(buffer: bytes | bytearray, offsets: np.ndarray, lengths: np.ndarray,
                      pgtype: PgType) -> pa.Array | None:
    """The column as Arrow values equal to the exact decoder's; None where only the exact decoder can read it."""
    if pgtype.element is not None:
        return None
    data = np.frombuffer(buffer, dtype=np.uint8)
    nulls = lengths < 0
    if pgtype.name in _FIXED:
        return _fixed_column(data, offsets, nulls, pgtype.name)
    if pgtype.name in _STRINGS:
        return _string_column(data, offsets, lengths, nulls)
    if pgtype.name == "numeric":
        return _numeric_column(data, offsets, lengths, nulls, pgtype.modifier)
    return None


def _fixed_column(data: np.ndarray, offsets: np.ndarray, nulls: np.ndarray, name: str) -> pa.Array | None:
    _, kind, arrow_type = _FIXED[name]
    if nulls.all():
        return pa.nulls(len(nulls)).cast(arrow_type)
    values = _big_endian(data, np.where(nulls, offsets[~nulls][0], offsets), kind)
    if name == "bool":
        return pa.array(values != 0, mask=nulls)
    if name == "date":
        if not _within(values, nulls, _MIN_DAY, _MAX_DAY):
            return None
        return pa.array(values.astype(np.int32) + _EPOCH_DAYS, pa.date32(), mask=nulls)
    if name == "time":
        if not _within(values, nulls, 0, _US_PER_DAY - 1):  # 24:00:00 is no Python time: the exact decoder's
            return None
        return pa.array(values.astype(np.int64), arrow_type, mask=nulls)
    if name in ("timestamp", "timestamptz"):
        if not _within(values, nulls, _MIN_US, _MAX_US):
            return None
        return pa.array(values.astype(np.int64) + _EPOCH_US, arrow_type, mask=nulls)
    return pa.array(values, arrow_type, mask=nulls)


def _exact_at(digit: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Where digit * 10^exponent is a whole number (always where the digit is 0)."""
    below = np.clip(-exponent, 0, 4)
    return (digit == 0) | ((exponent > -4) & (digit % _POW10[below] == 0))


def _within(values: np.ndarray, nulls: np.ndarray, low: int, high: int) -> bool:
    present = values[~nulls]
    return bool(((present >= low) & (present <= high)).all())


def _string_column(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, nulls: np.ndarray) -> pa.Array | None:
    sizes = np.where(nulls, 0, lengths)
    ends = np.cumsum(sizes)
    if len(ends) and ends[-1] >= 2 ** 31:
        return None
    bounds = np.zeros(len(sizes) + 1, dtype=np.int32)
    bounds[1:] = ends
    # Byte j of the column is byte (value's offset + j - value's start in the column) of the buffer.
    index = np.repeat(offsets - bounds[:-1], sizes) + np.arange(int(bounds[-1]), dtype=np.int64)
    text = data[index]
    if (text == 0).any():  # PostgreSQL refuses NUL in text: the exact decoder says so
        return None
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little").tobytes()) if nulls.any() else None
    buffers = [validity, pa.py_buffer(bounds.tobytes()), pa.py_buffer(text.tobytes())]
    column = pa.Array.from_buffers(pa.string(), len(sizes), buffers)
    try:
        column.validate(full=True)  # UTF-8
    except pa.ArrowInvalid:
        return None
    return column


def _numeric_column(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, nulls: np.ndarray,
                    modifier: int) -> pa.Array | None:
    """numeric(p, s) with p <= 18, every value exact at scale s: an int64 of units of 10^-s per value."""
    if modifier < 4:
        return None
    precision, scale = ((modifier - 4) >> 16) & 0xFFFF, (modifier - 4) & 0xFFFF
    if not 0 < precision <= 18 or scale > precision:
        return None
    count = len(nulls)
    if nulls.all():
        return pa.nulls(count).cast(pa.decimal128(precision, scale))
    present = ~nulls
    at = np.where(nulls, offsets[present][0], offsets)
    sizes = np.where(nulls, 8, lengths)
    if (sizes < 8).any():
        return None
    ndigits, weight, sign, dscale = (_big_endian(data, at + 2 * k, "i2").astype(np.int64) for k in range(4))
    sign &= 0xFFFF
    if ((ndigits < 0) | (sizes != 8 + 2 * ndigits) | ((sign != 0) & (sign != 0x4000)) | (dscale < 0)
            | (dscale > 0x3FFF))[present].any():
        return None  # NaN, infinities and malformed values: the exact decoder's to read or refuse
    ndigits = np.where(nulls, 0, ndigits)
    most = int(ndigits.max()) if count else 0
    value = np.zeros(count, dtype=np.int64)
    for i in range(most):
        has = ndigits > i
        digit = np.where(has, _big_endian(data, np.where(has, at + 8 + 2 * i, at), "u2").astype(np.int64), 0)
        if (digit >= 10_000).any():
            return None
        place = 4 * (weight - i)  # the digit counts units of 10^place
        exponent = place + scale
        # A digit with figures below the column's scale (or below the value's own dscale) rounds, and one
        # of 10^precision or more overflows: the exact decoder's to read or refuse.
        fits = (exponent < precision) & (digit < _POW10[np.clip(precision - exponent, 0, 18)])
        if not ((digit == 0) | (_exact_at(digit, exponent) & _exact_at(digit, place + dscale) & fits)).all():
            return None
        term = np.where(exponent >= 0, digit * _POW10[np.clip(exponent, 0, 18)],
                        digit // _POW10[np.clip(-exponent, 0, 18)])
        value += term
        if (value >= 10 ** precision).any():
            return None
    value = np.where(sign == 0x4000, -value, value)
    words = np.empty((count, 2), dtype=np.int64)
    words[:, 0] = value
    words[:, 1] = np.where(value < 0, -1, 0)
    validity = pa.py_buffer(np.packbits(present, bitorder="little").tobytes()) if nulls.any() else None
    return pa.Array.from_buffers(pa.decimal128(precision, scale), count, [validity, pa.py_buffer(words.tobytes())])
