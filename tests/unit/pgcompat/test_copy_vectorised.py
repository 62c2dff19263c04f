"""COPY FROM's vectorised readers give exactly what the value-by-value decoders give, on any input.

Binary: random rows of every type the vectorised reader converts (NULLs, negatives, numerics with
scale, dates and timestamps before 1970 and 2000, infinities, values out of a Python date's range,
invalid UTF-8), in random CopyData pieces, decode to the values `decode_parameter` gives value by
value. Text: a chunk read by pyarrow with the escapes undone where they occur gives the values the
row-by-row reader gives, and octal/hex escapes are bytes of UTF-8 as in PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_host.pgcompat.copy import decode as decode_module
from engine_host.pgcompat.copy.binary_rows import split_rows, vectorised_column
from engine_host.pgcompat.copy.decode import CopyDecoder, _python_array
from engine_host.pgcompat.copy.encode import BINARY_HEADER
from engine_host.pgcompat.copy.parse import CopyOptions, CopyRefused
from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.numeric import numeric_send
from engine_host.pgcompat.types.table import PgType, numeric_type, pg_type_for_duckdb

INT64 = 2 ** 63
PG_EPOCH = dt.datetime(2000, 1, 1)


def _fixed(fmt: str, values: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return values.map(lambda v: struct.pack(fmt, v))


def _days() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-800_000, 3_000_000), st.sampled_from([2 ** 31 - 1, -2 ** 31, -730_119, 2_921_939]))


def _micros() -> st.SearchStrategy[int]:
    span = 3_000_000 * 86_400_000_000
    return st.one_of(st.integers(-span, span), st.integers(-86_400_000_000, 86_400_000_000),
                     st.sampled_from([INT64 - 1, -INT64, 0, -1]))


def _numeric_value(precision: int, scale: int) -> st.SearchStrategy[bytes]:
    digits = st.integers(-(10 ** (precision + 2)), 10 ** (precision + 2))
    scaled = st.tuples(digits, st.integers(0, scale + 3)).map(lambda t: Decimal(t[0]).scaleb(-t[1]))
    special = st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0"),
                               Decimal("0.00"), Decimal("1E+5"), Decimal("-123.4500")])
    return st.one_of(scaled, special).map(numeric_send)


def _text_value() -> st.SearchStrategy[bytes]:
    characters = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))  # surrogates: not UTF-8
    return st.one_of(st.text(characters, max_size=12).map(str.encode),
                     st.binary(max_size=6))  # some of these are not UTF-8, or hold NUL: the exact decoder refuses


# (PostgreSQL type, the bytes of one non-NULL value)
CASES: dict[str, tuple[PgType, st.SearchStrategy[bytes]]] = {
    "int2": (pg_type_for_duckdb("SMALLINT"), _fixed("!h", st.integers(-2 ** 15, 2 ** 15 - 1))),
    "int4": (pg_type_for_duckdb("INTEGER"), _fixed("!i", st.integers(-2 ** 31, 2 ** 31 - 1))),
    "int8": (pg_type_for_duckdb("BIGINT"), _fixed("!q", st.integers(-INT64, INT64 - 1))),
    "float4": (pg_type_for_duckdb("FLOAT"), _fixed("!f", st.floats(width=32))),
    "float8": (pg_type_for_duckdb("DOUBLE"), _fixed("!d", st.floats())),
    "bool": (pg_type_for_duckdb("BOOLEAN"), st.sampled_from([b"\x00", b"\x01", b"\x02"])),
    "date": (pg_type_for_duckdb("DATE"), _fixed("!i", _days())),
    "time": (pg_type_for_duckdb("TIME"), _fixed("!q", st.integers(0, 86_400_000_000))),
    "timestamp": (pg_type_for_duckdb("TIMESTAMP"), _fixed("!q", _micros())),
    "timestamptz": (pg_type_for_duckdb("TIMESTAMPTZ"), _fixed("!q", _micros())),
    "numeric(12,2)": (numeric_type(12, 2), _numeric_value(12, 2)),
    "numeric(18,0)": (numeric_type(18, 0), _numeric_value(18, 0)),
    "numeric(5,5)": (numeric_type(5, 5), _numeric_value(5, 5)),
    "text": (pg_type_for_duckdb("VARCHAR"), _text_value()),
}


def _exact(raw: bytes | None, pgtype: PgType) -> object:
    try:
        return decode_parameter(raw, pgtype.oid, True)
    except Exception as exc:  # the exact decoder's refusal, to compare with the vectorised reader's
        return ("refused", type(exc).__name__)


def _comparable(values: list[object]) -> list[object]:
    return [("nan",) if isinstance(v, float) and math.isnan(v) else v for v in values]


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_vectorised_binary_column_equals_the_exact_decoder(case, data):
    pgtype, value = CASES[case]
    raws = data.draw(st.lists(st.one_of(st.none(), value), min_size=1, max_size=40))
    buffer = bytearray(b"\x00\x00\x00\x00")  # a pad: offsets into a buffer that starts elsewhere
    offsets, lengths = [], []
    for raw in raws:
        buffer += struct.pack("!i", -1 if raw is None else len(raw))
        offsets.append(len(buffer))
        lengths.append(-1 if raw is None else len(raw))
        buffer += raw or b""
    column = vectorised_column(bytes(buffer), np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64),
                               pgtype)
    exact = [_exact(raw, pgtype) for raw in raws]
    if column is None:  # left to the exact decoder: fine for any input
        return
    assert not any(isinstance(v, tuple) for v in exact), "a value the exact decoder refuses was converted"
    assert _comparable(column.to_pylist()) == _comparable(exact)


def test_the_vectorised_reader_converts_ordinary_values_of_each_type():
    """The property above holds vacuously if everything is left to the exact decoder: it is not."""
    samples = {"int2": b"\xff\xfe", "int4": b"\x80\x00\x00\x00", "int8": struct.pack("!q", -5),
               "float4": struct.pack("!f", 1.5), "float8": struct.pack("!d", -0.1), "bool": b"\x01",
               "date": struct.pack("!i", -11_000), "time": struct.pack("!q", 86_399_999_999),
               "timestamp": struct.pack("!q", -10 ** 15), "timestamptz": struct.pack("!q", 10 ** 12),
               "numeric(12,2)": numeric_send(Decimal("-1234567890.12")),
               "numeric(18,0)": numeric_send(Decimal(10 ** 17)),
               "numeric(5,5)": numeric_send(Decimal("0.00001")), "text": "é€𝄞".encode()}
    for case, raw in samples.items():
        pgtype = CASES[case][0]
        column = vectorised_column(b"\x00\x00\x00\x00" + raw, np.array([4, 0]), np.array([len(raw), -1]), pgtype)
        assert column is not None, case
        assert _comparable(column.to_pylist()) == _comparable([decode_parameter(raw, pgtype.oid, True), None]), case
    before_2000 = vectorised_column(struct.pack("!q", -1), np.array([0]), np.array([8]), CASES["timestamp"][0])
    assert before_2000 is not None and before_2000.to_pylist() == [PG_EPOCH - dt.timedelta(microseconds=1)]


ROW_TYPES = ["int8", "text", "numeric(12,2)", "timestamp", "float8", "int4"]


def _binary_copy(rows: list[list[bytes | None]]) -> bytes:
    out = bytearray(BINARY_HEADER)
    for row in rows:
        out += struct.pack("!h", len(row))
        for raw in row:
            out += struct.pack("!i", -1 if raw is None else len(raw)) + (raw or b"")
    return bytes(out + b"\xff\xff")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_binary_copy_in_any_pieces_decodes_as_value_by_value(data):
    """Rows split anywhere across CopyData, with field counts and lengths that look like row starts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode_module, "CHUNK_BYTES", data.draw(st.sampled_from([16, 300, 1 << 20])))
        _decodes_as_value_by_value(data)


def _decodes_as_value_by_value(data: st.DataObject) -> None:
    types = [CASES[t][0] for t in ROW_TYPES]
    characters = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
    valid = {"text": st.text(characters, max_size=8).map(str.encode)}
    row = st.tuples(*[st.one_of(st.none(), valid.get(t, CASES[t][1])) for t in ROW_TYPES]).map(list)
    rows = data.draw(st.lists(row, max_size=30))
    payload = _binary_copy(rows)
    decoder = CopyDecoder([f"c{i}" for i in range(len(types))], types, CopyOptions(format="binary"))
    got: list[list[object]] = [[] for _ in types]
    piece = data.draw(st.integers(1, 200))
    try:
        for start in range(0, len(payload), piece):
            chunk = decoder.feed(payload[start:start + piece])
            for i, column in enumerate(chunk or []):
                got[i] += column.to_pylist()
        for i, column in enumerate(decoder.finish() or []):
            got[i] += column.to_pylist()
    except CopyRefused:
        assert any(isinstance(_exact(r, types[i]), tuple) for row in rows for i, r in enumerate(row))
        return
    expected = [_python_array([_exact(r[i], t) for r in rows]).to_pylist() for i, t in enumerate(types)]
    assert [_as_cast(c) for c in got] == [_as_cast(c) for c in expected]


def _as_cast(values: list[object]) -> list[object]:
    """Values as the engine's CAST reads them: a chunk holding a value Arrow cannot type (numeric NaN,
    timestamp infinity) sends its column as PostgreSQL text forms, another chunk as typed values."""
    out: list[object] = []
    for v in _comparable(values):
        if isinstance(v, str) and v != "NaN":
            try:
                v = Decimal(v)
            except ArithmeticError:
                pass
        if (isinstance(v, Decimal) and v.is_nan()) or v == "NaN":
            v = ("nan",)
        elif isinstance(v, dt.date | dt.time):
            v = str(v)
        out.append(v)
    return out


def test_split_follows_the_rows_not_look_alike_field_counts():
    """A text value of two bytes 00 02 (the field count) inside a row is not taken for a row start."""
    rows = [[b"\x00\x02\x00\x00\x00\x02\x00\x02", b"x"], [None, b"\x00\x02"], [b"", None]]
    payload = _binary_copy(rows)[len(BINARY_HEADER):-2]
    split = split_rows(payload, 0, [None, None])
    assert split.count == 3 and split.end == len(payload)
    assert split.lengths[0].tolist() == [8, -1, 0] and split.lengths[1].tolist() == [1, 2, -1]


# --- text --------------------------------------------------------------------------------------------

TEXT_TYPES = [pg_type_for_duckdb("INTEGER"), pg_type_for_duckdb("VARCHAR"), pg_type_for_duckdb("VARCHAR")]
_ESCAPED = st.sampled_from(["\\\\", "\\t", "\\n", "\\r", "\\N", "\\101", "\\x41", "\\303\\251", "\\xc3\\xa9", "\\q",
                            "\\.", "\\b", "\\f", "\\v"])
_FIELD = st.one_of(st.just("\\N"), st.lists(st.one_of(
    # Surrogates (Cs) are no UTF-8 text: the chunk could not even be encoded.
    st.text(st.characters(blacklist_characters="\\\t\n\r\x00", blacklist_categories=("Cs",)), max_size=4),
    _ESCAPED), max_size=4).map("".join))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.just("\\N"), st.integers(-10 ** 9, 10 ** 9).map(str)), _FIELD, _FIELD),
                     min_size=1, max_size=20))
def test_text_chunk_equals_the_row_by_row_reader(rows):
    chunk = "".join("\t".join(r) + "\n" for r in rows).encode()
    decoder = CopyDecoder(["a", "b", "c"], TEXT_TYPES, CopyOptions())
    try:
        row_by_row = [c.to_pylist() for c in decoder._text_by_row(chunk)]
    except CopyRefused as refused:
        with pytest.raises(CopyRefused) as raised:
            decoder._text(chunk)
        assert raised.value.sqlstate == refused.sqlstate
        return
    assert [c.to_pylist() for c in decoder._text(chunk)] == row_by_row


@pytest.mark.parametrize("escaped, value", [("\\303\\251t\\303\\251", "été"), ("\\xe2\\x82\\xac", "€"),
                                            ("caf\\xc3\\xa9", "café"), ("\\101\\x42", "AB")])
def test_octal_and_hex_escapes_are_utf8_bytes_as_postgres_reads_them(escaped, value):
    decoder = CopyDecoder(["a", "b"], TEXT_TYPES[:2], CopyOptions())
    decoder.feed(f"1\t{escaped}\n".encode())
    columns = decoder.finish()
    assert columns is not None and columns[1].to_pylist() == [value]


@pytest.mark.parametrize("escaped", ["\\303", "\\xff", "\\000", "a\\x0"])
def test_escapes_that_are_not_utf8_are_refused_with_22021(escaped):
    decoder = CopyDecoder(["a", "b"], TEXT_TYPES[:2], CopyOptions())
    with pytest.raises(CopyRefused) as raised:
        decoder.feed(f"1\t{escaped}\n".encode())
        decoder.finish()
    assert raised.value.sqlstate == "22021"


def test_a_decimal_column_with_nulls_builds_a_valid_arrow_array():
    raw = numeric_send(Decimal("1.5"))
    column = vectorised_column(raw, np.array([0, 0]), np.array([-1, len(raw)]), numeric_type(12, 2))
    assert column is not None
    column.validate(full=True)
    assert column.to_pylist() == [None, Decimal("1.50")] and column.type == pa.decimal128(12, 2)
