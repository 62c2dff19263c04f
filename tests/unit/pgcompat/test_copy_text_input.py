"""COPY FROM's text values checked by PostgreSQL's input rules (engine_host/pgcompat/copy/text_input.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from engine_host.pgcompat.copy.decode import CopyDecoder
from engine_host.pgcompat.copy.parse import CopyRefused, parse_copy
from engine_host.pgcompat.copy.text_input import checked_column
from engine_host.pgcompat.types.table import pg_type_for_duckdb


def _check(values: list[str | None], duckdb_type: str) -> list[str | None]:
    column = checked_column(pa.array(values, pa.string()), pg_type_for_duckdb(duckdb_type), duckdb_type, "a",
                            lambda row: row + 1, "t")
    return column.to_pylist()


@pytest.mark.parametrize("duckdb_type, values", [
    ("INTEGER", ["1", "-2147483648", "+7", None]),
    ("BIGINT", ["9223372036854775807"]),
    ("DECIMAL(5,2)", ["999.99", "-0.5", ".5", "12"]),
    ("DOUBLE", ["1.5e30", "-0.0", "12.25"]),
    ("BOOLEAN", ["t", "false"]),
    ("DATE", ["2024-02-29"]),
    ("TIMESTAMP", ["2024-01-02 03:04:05.123456"]),
])
def test_values_in_their_plain_form_reach_the_engine_untouched(duckdb_type, values):
    assert _check(values, duckdb_type) == values


@pytest.mark.parametrize("duckdb_type, value, engine_text", [
    ("INTEGER", " 1 ", "1"),
    ("DECIMAL(5,2)", "999.994", "999.99"),
    ("DECIMAL(5,2)", " 1e2 ", "100.00"),
    ("BOOLEAN", "yes", "true"),
    ("BOOLEAN", " OF ", "false"),
    ("UUID", "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
])
def test_values_postgres_accepts_in_another_form_reach_the_engine_as_the_same_value(duckdb_type, value, engine_text):
    assert _check(["1" if duckdb_type == "INTEGER" else None, value], duckdb_type)[1] == engine_text


@pytest.mark.parametrize("duckdb_type, value, sqlstate, message", [
    ("INTEGER", "1.5", "22P02", 'invalid input syntax for type integer: "1.5"'),
    ("INTEGER", "2147483648", "22003", 'value "2147483648" is out of range for type integer'),
    ("SMALLINT", "32768", "22003", 'value "32768" is out of range for type smallint'),
    ("DECIMAL(5,2)", "999.995", "22003", "numeric field overflow"),
    ("DOUBLE", "1e400", "22003", '"1e400" is out of range for type double precision'),
    ("BOOLEAN", "o", "22P02", 'invalid input syntax for type boolean: "o"'),
    ("UUID", "abc", "22P02", 'invalid input syntax for type uuid: "abc"'),
    ("DATE", "2023-02-29", "22008", 'date/time field value out of range: "2023-02-29"'),
    ("DATE", "garbage", "22007", 'invalid input syntax for type date: "garbage"'),
    ("TIME", "24:00:01", "22008", 'date/time field value out of range: "24:00:01"'),
])
def test_values_postgres_refuses_are_refused_with_its_sqlstate_line_and_column(duckdb_type, value, sqlstate,
                                                                                 message):
    with pytest.raises(CopyRefused) as raised:
        _check([None, value], duckdb_type)
    assert raised.value.sqlstate == sqlstate
    assert raised.value.message.startswith(message)
    assert raised.value.message.endswith(f'(COPY t, line 2, column a: "{value}")')


def test_the_decoder_counts_lines_across_chunks_and_the_header():
    statement = parse_copy("COPY t (a) FROM STDIN (FORMAT csv, HEADER)")
    decoder = CopyDecoder(["a"], [pg_type_for_duckdb("INTEGER")], statement.options, engine_types=["INTEGER"],
                          table="t")
    assert decoder.feed(b"a\n1\n2\n") is None
    assert decoder.finish() is not None
    decoder = CopyDecoder(["a"], [pg_type_for_duckdb("INTEGER")], statement.options, engine_types=["INTEGER"],
                          table="t")
    decoder.feed(b"a\n1\n2\n3\n7.5\n")
    with pytest.raises(CopyRefused) as raised:
        decoder.finish()
    assert raised.value.message.endswith('(COPY t, line 5, column a: "7.5")')
