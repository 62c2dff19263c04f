"""bit and varbit: encoders and parameter decoders."""

from __future__ import annotations

import struct

import pyarrow as pa

from engine_host.pgcompat.types.arrow_types import _is_string
from engine_host.pgcompat.types.buffers import _per_value, _unwrap, as_plain_binary
from engine_host.pgcompat.types.parameter_format import ParameterFormatError, _bad, _utf8
from engine_host.pgcompat.types.table import PgType


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


def _binary_varbit(data: bytes) -> object:
    if len(data) < 4:
        raise ParameterFormatError("insufficient data left in message for type bit varying")
    bit_length = struct.unpack("!i", data[:4])[0]
    body = data[4:]
    if bit_length < 0 or len(body) != (bit_length + 7) // 8:
        raise ParameterFormatError("invalid length in external bit string")
    return "".join(f"{b:08b}" for b in body)[:bit_length]
