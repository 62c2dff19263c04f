"""int2, int4, int8, oid, float4, float8 and numeric: encoders and parameter decoders."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.types.arrow_types import _is_string
from engine_host.pgcompat.types.buffers import (
    _INT32_MAX,
    _INT64_MAX,
    _INT64_MIN,
    _U8,
    _buffer,
    _cast,
    _from_fixed,
    _from_matrix,
    _little_endian_ints,
    _opaque_name,
    _packed,
    _per_row,
    _per_value,
    _primitive,
    _rare_rows,
    _replace_rows,
    _unwrap,
    _validity,
    as_plain_binary,
)
from engine_host.pgcompat.types.parameter_format import ParameterFormatError, _bad, _binary_length, _utf8
from engine_host.pgcompat.types.table import MAX_NUMERIC_PRECISION, PgType

# pyarrow-stubs' overloads reject valid calls that mix scalars, Python literals and arrays of
# different (large/view) layouts, and miss attributes of nested/extension arrays; the compute
# module and raw buffers are therefore used untyped.
pc: Any = _typed_pc


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
_INT_WIRE: dict[str, tuple[str, int, int]] = {
    "int2": (">h", -(2**15), 2**15 - 1), "int4": (">i", -(2**31), _INT32_MAX), "int8": (">q", _INT64_MIN, _INT64_MAX),
    "oid": (">I", 0, 2**32 - 1),
}


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
