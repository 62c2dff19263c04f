"""A shadow-mode upload becomes a query set of read-only statements; everything else is rejected with its line."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hd_core.errors import InvalidRequest
from hd_core.shadow.query_set import (
    QuerySet,
    QuerySetLimits,
    QuerySetTooLarge,
    QuerySetUnreadable,
    parse_query_set,
    split_sql,
)

# --- splitting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    text: str
    is_code: bool


_NASTY = st.text(alphabet=st.sampled_from(list(";'\"$-*/\\\nab E")), max_size=12)


def _string_literal(body: str) -> Fragment:
    return Fragment("'" + body.replace("'", "''") + "'", True)


def _escape_string(body: str) -> Fragment:
    return Fragment("E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'", True)


def _identifier(body: str) -> Fragment:
    return Fragment('"' + body.replace('"', '""') + '"', True)


def _dollar(tag_body: tuple[str, str]) -> Fragment:
    tag, body = tag_body
    return Fragment(f"${tag}${body}${tag}$", True)


def _line_comment(body: str) -> Fragment:
    return Fragment("--" + body.replace("\n", " ") + "\n", False)


def _block_comment(body: str) -> Fragment:
    inner = body.replace("*/", "* /").replace("/*", "/ *")
    return Fragment(f"/* {inner} /* nested; */ {inner} */", False)


FRAGMENTS = st.one_of(
    st.sampled_from([Fragment(word, True) for word in ("select", "1", "a", "+", ",", "x_1", "(", ")", "from t")]),
    _NASTY.map(_string_literal),
    _NASTY.map(_escape_string),
    _NASTY.map(_identifier),
    st.tuples(st.sampled_from(["", "q", "tag_1"]), _NASTY).filter(
        lambda tb: f"${tb[0]}$" not in tb[1] and not tb[1].endswith("$")).map(_dollar),
    _NASTY.map(_line_comment),
    _NASTY.map(_block_comment),
)
STATEMENTS = st.lists(FRAGMENTS, min_size=1, max_size=8).filter(lambda fs: any(f.is_code for f in fs))


@settings(max_examples=300, deadline=None)
@given(st.lists(STATEMENTS, min_size=1, max_size=5))
def test_splitting_never_breaks_on_a_semicolon_inside_quotes_dollar_quotes_or_comments(statements):
    texts: list[str] = []
    expected_lines: list[int] = []
    line = 1
    for fragments in statements:
        text = ""
        first_code_line = None
        for fragment in fragments:
            if fragment.is_code and first_code_line is None:
                first_code_line = line + text.count("\n")
            text += fragment.text + " "
        texts.append(text)
        expected_lines.append(first_code_line or 0)
        line += text.count("\n") + 1  # the separator below adds one newline
    upload = ";\n".join(texts)
    chunks = [chunk for chunk in split_sql(upload) if chunk.has_code]
    assert [chunk.text.strip() for chunk in chunks] == [text.strip() for text in texts]
    assert [chunk.line for chunk in chunks] == expected_lines


def test_comments_stay_with_the_statement_they_precede_and_lines_are_where_its_code_starts():
    upload = b"-- the daily total\nSELECT 1;\n\n/* second;\n   query */\nSELECT 'a;b';\n-- nothing follows\n"
    query_set = parse_query_set(upload)
    assert [(s.index, s.line, s.sql) for s in query_set.statements] == [
        (1, 2, "-- the daily total\nSELECT 1"),
        (2, 6, "/* second;\n   query */\nSELECT 'a;b'"),
    ]
    assert query_set.rejected == ()


# --- the read-only decision ----------------------------------------------------------------------

READ_ONLY = [
    "SELECT 1",
    "select a, count(*) from t group by a order by 2 desc",
    "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE customers",
    "(SELECT 1) UNION ALL (SELECT 2) ORDER BY 1",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN (FORMAT JSON, COSTS false) SELECT * FROM t",
    "EXPLAIN VERBOSE SELECT 1",
    "SHOW search_path",
    "SHOW ALL",
    "select currval('s'), now(), upper(name) from t",
]


@pytest.mark.parametrize("sql", READ_ONLY)
def test_read_only_statement_kinds_are_accepted(sql):
    query_set = parse_query_set(f"{sql};".encode())
    assert [s.sql for s in query_set.statements] == [sql]
    assert query_set.rejected == ()


REJECTED = [
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("UPDATE t SET a = 1", "UPDATE"),
    ("DELETE FROM t", "DELETE"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "MERGE"),
    ("CREATE TABLE t2 (a int)", "CREATE"),
    ("CREATE TEMP TABLE t2 AS SELECT 1", "CREATE"),
    ("DROP TABLE t", "DROP"),
    ("ALTER TABLE t ADD COLUMN b int", "ALTER"),
    ("TRUNCATE t", "TRUNCATE"),
    ("GRANT SELECT ON t TO bob", "GRANT"),
    ("COPY t FROM STDIN", "COPY"),
    ("COPY t FROM '/etc/passwd'", "COPY"),
    ("SET ROLE admin", "SET"),
    ("SET search_path = x", "SET"),
    ("CALL refresh_everything()", "CALL"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "DO"),
    ("BEGIN", "TRANSACTION"),
    ("VACUUM t", "VACUUM"),
    ("LOCK TABLE t", "LOCK"),
    ("REFRESH MATERIALIZED VIEW v", "REFRESH"),
    ("PREPARE p AS SELECT 1", "PREPARE"),
    ("LISTEN channel", "not a read-only statement kind"),
    ("SELECT nextval('orders_id_seq')", "nextval"),
    ("SELECT setval('s', 1)", "setval"),
    ("SELECT pg_catalog.pg_terminate_backend(42)", "pg_terminate_backend"),
    ("SELECT set_config('role', 'admin', false)", "set_config"),
    ("SELECT a FROM t WHERE pg_advisory_lock(1) IS NOT NULL", "pg_advisory_lock"),
    ("WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone", "DELETE"),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING a) SELECT a FROM x", "INSERT"),
    ("SELECT * INTO copy_of_t FROM t", "INTO"),
    ("SELECT * FROM t FOR UPDATE", "lock"),
    ("SELECT * FROM t FOR SHARE SKIP LOCKED", "lock"),
    ("EXPLAIN ANALYZE SELECT 1", "ANALYZE"),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT 1", "ANALYZE"),
    ("EXPLAIN DELETE FROM t", "DELETE"),
    ("SELECT FROM WHERE", "not parsable"),
    ("SELECT 1 +", "not parsable"),
    ("\\d customers", "not parsable"),
]


@pytest.mark.parametrize(("sql", "reason_part"), REJECTED)
def test_every_statement_that_is_not_read_only_is_rejected_with_its_line(sql, reason_part):
    upload = f"SELECT 1;\n-- next one is refused\n{sql};\nSELECT 2;\n".encode()
    query_set = parse_query_set(upload)
    assert [(s.line, s.sql) for s in query_set.statements] == [(1, "SELECT 1"), (4, "SELECT 2")]
    assert [r.line for r in query_set.rejected] == [3]
    assert reason_part.lower() in query_set.rejected[0].reason.lower()


def test_a_write_hidden_after_a_semicolon_in_a_string_is_still_its_own_rejected_statement():
    query_set = parse_query_set(b"SELECT ';' AS x; DELETE FROM t; SELECT $$;$$")
    assert [s.sql for s in query_set.statements] == ["SELECT ';' AS x", "SELECT $$;$$"]
    assert [r.sql_excerpt for r in query_set.rejected] == ["DELETE FROM t"]


# --- JSONL histories ----------------------------------------------------------------------------


def test_jsonl_history_with_params_and_the_pg_stat_statements_shape():
    lines = [
        {"sql": "SELECT * FROM orders WHERE id = $1 AND status = $2", "params": [7, "open"]},
        {"query": "SELECT count(*) FROM orders;", "calls": 120, "total_exec_time": 33.2, "queryid": 991},
        {"query": "SELECT * FROM orders WHERE id = $1", "calls": 5},  # normalised: constants gone
        {"sql": "UPDATE orders SET status = 'x'"},
        {"sql": "SELECT 1; SELECT 2"},
        {"sql": "SELECT 1", "params": [{"nested": True}]},
        {"statement": "SELECT 1"},
    ]
    text = "\n".join(json.dumps(line) for line in lines[:3]) + "\n\nnot json at all\n" + \
        "\n".join(json.dumps(line) for line in lines[3:]) + "\n"
    query_set = parse_query_set(text.encode())
    assert query_set.source_format == "jsonl"
    assert [(s.line, s.sql, s.params) for s in query_set.statements] == [
        (1, "SELECT * FROM orders WHERE id = $1 AND status = $2", (7, "open")),
        (2, "SELECT count(*) FROM orders", ()),
    ]
    reasons = {r.line: r.reason for r in query_set.rejected}
    assert sorted(reasons) == [3, 5, 6, 7, 8, 9]
    assert "$1" in reasons[3] and "pg_stat_statements" in reasons[3]
    assert "not a JSON object" in reasons[5]
    assert "UPDATE" in reasons[6]
    assert "more than one statement" in reasons[7]
    assert "params" in reasons[8]
    assert '"sql"' in reasons[9]


def test_the_format_can_be_forced_and_the_query_set_round_trips_through_its_document():
    upload = b'{"sql": "SELECT 1"}\n'
    as_sql = parse_query_set(upload, source_format="sql")
    assert as_sql.statements == () and as_sql.rejected[0].line == 1  # JSON is not a read-only SQL statement
    query_set = parse_query_set(upload, source_format="jsonl")
    assert QuerySet.from_dict(json.loads(json.dumps(query_set.to_dict()))) == query_set
    assert query_set.id == parse_query_set(upload).id != parse_query_set(b'{"sql": "SELECT 2"}\n').id


# --- limits -----------------------------------------------------------------------------------------


def test_limits_are_refused_with_their_codes_before_any_statement_is_parsed():
    limits = QuerySetLimits(max_bytes=100, max_statements=3, max_line_chars=40)
    with pytest.raises(QuerySetTooLarge, match="at most 100") as too_big:
        parse_query_set(b"SELECT 1;" * 20, limits=limits)
    assert too_big.value.code == "HD_ERR_QUERY_SET_TOO_LARGE" and isinstance(too_big.value, InvalidRequest)
    with pytest.raises(QuerySetTooLarge, match="4 statements; at most 3"):
        parse_query_set(b"SELECT 1;\nSELECT 2;\nSELECT 3;\nSELECT 4;", limits=limits)
    with pytest.raises(QuerySetTooLarge, match="line 2 is 50 characters"):
        parse_query_set(b"SELECT 1;\nSELECT '" + b"x" * 40 + b"';", limits=limits)


def test_a_statement_over_its_own_limit_is_rejected_alone():
    limits = QuerySetLimits(max_statement_chars=20)
    query_set = parse_query_set(b"SELECT 1;\nSELECT 'a long literal here';", limits=limits)
    assert [s.sql for s in query_set.statements] == ["SELECT 1"]
    assert query_set.rejected[0].line == 2 and "at most 20" in query_set.rejected[0].reason


@pytest.mark.parametrize("upload", [b"", b"  \n-- only a comment\n", b"\xff\xfe SELECT 1", b"SELECT 1\x00"])
def test_an_upload_without_statements_or_not_utf8_is_unreadable(upload):
    with pytest.raises(QuerySetUnreadable) as caught:
        parse_query_set(upload)
    assert caught.value.code == "HD_ERR_QUERY_SET_UNREADABLE"
