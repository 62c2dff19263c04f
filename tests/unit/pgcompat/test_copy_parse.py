"""COPY's syntax: both option forms psql and drivers send, and refusals with PostgreSQL's SQLSTATEs."""

from __future__ import annotations

import pytest

from engine_host.pgcompat.copy.parse import STAR, CopyRefused, parse_copy


def test_query_copy_keeps_the_query_whole_even_with_parentheses_in_strings():
    statement = parse_copy("COPY ( select ')' as p, f(1) from t ) TO STDOUT csv header")
    assert statement.query == "select ')' as p, f(1) from t"
    assert statement.copies_out and statement.options.csv and statement.options.header


def test_new_style_options_with_postgres_defaults():
    statement = parse_copy('copy s."T" (a, "B") from stdin with (format csv, header match, force_null (a))')
    assert (statement.schema, statement.table, statement.columns) == ("s", "T", ("a", "B"))
    options = statement.options
    assert (options.delimiter, options.null, options.quote, options.escape) == (",", "", '"', '"')
    assert options.header_match and options.force_null == ("a",)


def test_old_style_options_psql_sends():
    options = parse_copy("COPY t TO STDOUT WITH CSV HEADER DELIMITER AS ';' NULL AS 'x' FORCE QUOTE *").options
    assert (options.delimiter, options.null, options.force_quote) == (";", "x", STAR)
    assert parse_copy("COPY t FROM STDIN BINARY").options.binary
    assert parse_copy("COPY t TO STDOUT (DELIMITER E'\\t')").options.delimiter == "\t"


@pytest.mark.parametrize("text, sqlstate, code", [
    ("COPY t TO '/tmp/x.csv'", "42501", "HD_ERR_COPY_SERVER_FILE"),
    ("COPY t FROM '/etc/passwd'", "42501", "HD_ERR_COPY_SERVER_FILE"),
    ("COPY t TO PROGRAM 'curl x'", "42501", "HD_ERR_COPY_SERVER_FILE"),
    ("COPY t TO STDOUT (FORMAT parquet)", "22023", "HD_ERR_COPY_OPTION"),
    ("COPY t TO STDOUT (COMPRESSION 'gzip')", "42601", "HD_ERR_COPY_OPTION"),
    ("COPY t TO STDOUT (FORMAT binary, NULL 'x')", "42601", "HD_ERR_COPY_SYNTAX"),
    ("COPY t TO STDOUT (QUOTE '\"')", "0A000", "HD_ERR_COPY_OPTION"),
    ("COPY t FROM STDIN (FORMAT csv, FORCE_QUOTE *)", "0A000", "HD_ERR_COPY_OPTION"),
    ("COPY t TO STDOUT (DELIMITER ',,')", "0A000", "HD_ERR_COPY_OPTION"),
    ("COPY t TO STDOUT (FORMAT csv, DELIMITER ',', QUOTE ',')", "22023", "HD_ERR_COPY_OPTION"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", "0A000", "HD_ERR_UNSUPPORTED"),
    ("COPY (SELECT 1) FROM STDIN", "42601", "HD_ERR_COPY_SYNTAX"),
    ("COPY t FROM STDIN WHERE a > 1", "0A000", "HD_ERR_UNSUPPORTED"),
    ("COPY t TO STDOUT; DROP TABLE t", "42601", "HD_ERR_COPY_SYNTAX"),
    ("COPY t TO STDOUT (FORMAT csv, FORMAT text)", "42601", "HD_ERR_COPY_SYNTAX"),
])
def test_refusals(text, sqlstate, code):
    with pytest.raises(CopyRefused) as raised:
        parse_copy(text)
    assert (raised.value.sqlstate, raised.value.code) == (sqlstate, code)


def test_server_file_refusal_points_to_stdin_and_psql_copy():
    with pytest.raises(CopyRefused) as raised:
        parse_copy("COPY t TO '/tmp/x'")
    assert "STDOUT" in raised.value.hint and "\\copy" in raised.value.hint
