"""The guard: one statement, allowed kinds only, nothing that escapes the policies."""

from __future__ import annotations

import pytest
from sqlglot import exp

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import check_statement, parse_statement, space_parameters


def _refused(sql: str, dialect: str = "postgres", *, catalog: bool = False) -> QueryError:
    with pytest.raises(QueryError) as info:
        check_statement(parse_statement(sql, dialect), catalog=catalog)
    return info.value


def _kind(sql: str, dialect: str = "postgres") -> str:
    return check_statement(parse_statement(sql, dialect)).kind


def test_multiple_statements_are_refused() -> None:
    error = _refused("SELECT 1; SELECT 2")
    assert (error.sqlstate, error.code) == ("42601", "HD_ERR_MULTIPLE_STATEMENTS")


def test_syntax_error_carries_sqlglot_message_and_hint() -> None:
    error = _refused("SELECT FROM WHERE (")
    assert (error.sqlstate, error.code) == ("42601", "HD_ERR_SYNTAX") and error.hint
    assert _refused("").code == "HD_ERR_SYNTAX"


@pytest.mark.parametrize(("sql", "kind"), [
    ("SELECT 1", "select"), ("SELECT 1 UNION SELECT 2", "select"), ("VALUES (1), (2)", "select"),
    ("INSERT INTO t VALUES (1)", "insert"), ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", "insert"),
    ("UPDATE t SET a = 1", "update"), ("DELETE FROM t", "delete"), ("CREATE TABLE t (a INT)", "create_table"),
    ("CREATE TABLE t AS SELECT 1", "create_table_as"), ("CREATE SCHEMA s", "create_schema"),
    ("DROP TABLE t", "drop_table"), ("ALTER TABLE t ADD COLUMN b INT", "alter_table"),
    ("ALTER TABLE t DROP COLUMN b", "alter_table"), ("ALTER TABLE t RENAME COLUMN a TO b", "alter_table"),
    ("ALTER TABLE t ALTER COLUMN a TYPE BIGINT", "alter_table"), ("EXPLAIN SELECT 1", "explain"),
])
def test_allowed_statement_kinds(sql: str, kind: str) -> None:
    assert _kind(sql) == kind


def test_explain_remembers_the_explained_kind() -> None:
    parsed = parse_statement("-- note\n/* x /* nested */ */ EXPLAIN DELETE FROM t")
    assert parsed.explain and check_statement(parsed).explained == "delete"


@pytest.mark.parametrize("sql", ["EXPLAIN ANALYZE SELECT 1", "EXPLAIN ANALYSE SELECT 1",
                                 "EXPLAIN (FORMAT JSON) SELECT 1", "EXPLAIN VERBOSE SELECT 1",
                                 "EXPLAIN EXPLAIN SELECT 1", "EXPLAIN SET x = 1"])
def test_explain_with_options_or_of_refused_statement_is_refused(sql: str) -> None:
    assert _refused(sql).sqlstate in ("42501", "42601")


@pytest.mark.parametrize(("sql", "dialect"), [
    ("ATTACH 'x.db' AS x", "duckdb"), ("DETACH x", "duckdb"), ("COPY t TO 'x.csv'", "postgres"),
    ("COPY t FROM 'x.csv'", "duckdb"), ("INSTALL httpfs", "duckdb"), ("LOAD httpfs", "duckdb"),
    ("PRAGMA version", "duckdb"), ("CALL pragma_version()", "duckdb"), ("SET threads = 1", "postgres"),
    ("SET VARIABLE x = 1", "duckdb"), ("RESET threads", "postgres"), ("USE hd.main", "duckdb"),
    ("VACUUM", "duckdb"), ("ANALYZE", "duckdb"), ("CHECKPOINT", "duckdb"), ("SUMMARIZE t", "duckdb"),
    ("SUMMARIZE SELECT 1", "duckdb"), ("DESCRIBE t", "duckdb"), ("SHOW TABLES", "duckdb"),
    ("CREATE MACRO m(x) AS x", "duckdb"), ("CREATE FUNCTION f(x) AS x", "duckdb"),
    ("CREATE SECRET s (TYPE s3)", "duckdb"), ("CREATE VIEW v AS SELECT 1", "postgres"),
    ("CREATE SEQUENCE s", "postgres"), ("CREATE INDEX i ON t (a)", "postgres"),
    ("CREATE TYPE ty AS ENUM ('a')", "postgres"), ("CREATE TEMP TABLE t (a INT)", "postgres"),
    ("CREATE TEMPORARY TABLE t AS SELECT 1", "duckdb"), ("DROP VIEW v", "postgres"), ("DROP SCHEMA s", "postgres"),
    ("DROP MACRO m", "duckdb"), ("DROP SEQUENCE s", "postgres"), ("ALTER TABLE t RENAME TO u", "postgres"),
    ("ALTER VIEW v RENAME TO w", "postgres"),
    ("MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE", "postgres"),
    ("PIVOT t ON a USING sum(b)", "duckdb"), ("CREATE SCHEMA hd_pg", "postgres"),
    ("GRANT SELECT ON t TO x", "postgres"),
    ("BEGIN", "postgres"),
])
def test_refused_statement_kinds(sql: str, dialect: str) -> None:
    error = _refused(sql, dialect)
    assert (error.sqlstate, error.code) == ("42501", "HD_ERR_STATEMENT_NOT_ALLOWED"), error.message


@pytest.mark.parametrize("sql", ["EXPORT DATABASE 'x'", "IMPORT DATABASE 'x'"])
def test_export_and_import_do_not_get_through(sql: str) -> None:
    assert _refused(sql, "duckdb").sqlstate in ("42501", "42601")


def test_upsert_is_unsupported() -> None:
    for sql, dialect in [("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 1", "postgres"),
                         ("INSERT OR REPLACE INTO t VALUES (1)", "duckdb")]:
        error = _refused(sql, dialect)
        assert (error.sqlstate, error.code) == ("0A000", "HD_ERR_UNSUPPORTED")


def test_nested_data_changing_statement_is_refused() -> None:
    assert _refused("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").code == "HD_ERR_STATEMENT_NOT_ALLOWED"


@pytest.mark.parametrize("call", [
    "query('SELECT 1')", "read_csv('x.csv')", "read_parquet('x.parquet')", "read_text('/etc/passwd')",
    "read_blob('x')", "glob('*')", "parquet_metadata('x')", "parquet_schema('x')", "sniff_csv('x')",
    "duckdb_settings()", "duckdb_tables()", "pragma_version()", "current_setting('threads')", "getvariable('k')",
    "getenv('HOME')", "stats(1)", "which_secret('s3://x', 's3')", "checkpoint()", "force_checkpoint()",
    "json_execute_serialized_sql('x')", "sql_auto_complete('SEL')", "test_all_types()", "test_vector_types(1)",
    "load_extension('x')", "install_extension('x')", "enable_profiling()", "disable_profiling()",
    "hd_mask_hash('x')", "hd_pg.hd_mask_hash('x')", "other.f(1)", "pg_read_file('x')", "version()",
    "set_config('a', 'b', false)", "has_table_privilege('t', 'select')", "format_type(23, -1)",
])
def test_denied_functions_in_select_list(call: str) -> None:
    error = _refused(f"SELECT {call}", "duckdb")
    assert (error.sqlstate, error.code) == ("42501", "HD_ERR_FUNCTION_NOT_ALLOWED"), error.message


@pytest.mark.parametrize("source", [
    "query_table('t')", "read_csv_auto('x.csv')", "parquet_scan('x')", "seq_scan()", "sniff_csv('x')",
    "duckdb_functions()", "pragma_table_info('t')", "test_all_types()", "main.f(1)", "json_each('[]')",
])
def test_denied_table_functions(source: str) -> None:
    error = _refused(f"SELECT * FROM {source}", "duckdb")
    assert (error.sqlstate, error.code) == ("42501", "HD_ERR_FUNCTION_NOT_ALLOWED"), error.message


@pytest.mark.parametrize("source", ["range(3) r(x)", "generate_series(1, 3) g(x)", "unnest([1, 2]) u(x)"])
def test_allowed_table_functions(source: str) -> None:
    assert _kind(f"SELECT * FROM {source}", "duckdb") == "select"


def test_denied_function_hidden_in_a_subquery_or_argument() -> None:
    assert _refused("SELECT (SELECT max(x) FROM (SELECT length(read_text('x')) AS x) s)", "duckdb").code == \
        "HD_ERR_FUNCTION_NOT_ALLOWED"
    assert _refused("SELECT * FROM range(length(getenv('HOME')))", "duckdb").code == "HD_ERR_FUNCTION_NOT_ALLOWED"


def test_string_literal_as_table_is_refused() -> None:
    assert _refused("SELECT * FROM 'data/x.parquet'", "duckdb").sqlstate == "42501"
    assert _refused("FROM '/etc/passwd'", "duckdb").sqlstate == "42501"


@pytest.mark.parametrize("relation", ["pg_catalog.pg_class", "information_schema.tables", "hd_pg.keys",
                                      "system.main.duckdb_tables", "temp.main.t", "temp.t"])
def test_machinery_relations_are_refused(relation: str) -> None:
    error = _refused(f"SELECT * FROM {relation}", "duckdb")
    assert error.sqlstate == "42501"


def test_catalog_queries_may_use_catalog_functions_and_relations() -> None:
    for sql in ["SELECT current_setting('server_version'), version(), pg_get_userbyid(1)",
                "SELECT * FROM pg_catalog.pg_class c JOIN information_schema.tables t ON true",
                "SELECT has_table_privilege('x', 'select'), format_type(23, -1)"]:
        assert check_statement(parse_statement(sql), catalog=True).kind == "select"


def test_catalog_queries_are_otherwise_checked_the_same() -> None:
    assert _refused("SELECT read_text('x')", catalog=True).code == "HD_ERR_FUNCTION_NOT_ALLOWED"
    assert _refused("SELECT * FROM hd_pg.x", catalog=True).sqlstate == "42501"
    assert _refused("COPY t TO 'x'", catalog=True).code == "HD_ERR_STATEMENT_NOT_ALLOWED"


@pytest.mark.parametrize(("sql", "dialect"), [
    ("SELECT TOP 3 IFF(a > 1, 'x', 'y') FROM t QUALIFY ROW_NUMBER() OVER (ORDER BY a) = 1", "snowflake"),
    ("SELECT SAFE_DIVIDE(a, b) FROM `proj.ds.t`", "bigquery"),
    ("SELECT GETDATE(), NVL(a, 1) FROM t", "redshift"),
    ("SELECT a::INT FROM t LIMIT 1", "duckdb"),
])
def test_other_dialects_parse_and_pass_the_guard(sql: str, dialect: str) -> None:
    assert _kind(sql, dialect) == "select"


@pytest.mark.parametrize(("sql", "spaced"), [
    ("SELECT $1,$2", "SELECT $1 ,$2"),
    ("SELECT ($1,$2)", "SELECT ($1 ,$2 )"),
    ("SELECT $1::int+$2", "SELECT $1 ::int+$2"),
    # Inside strings, quoted names, comments and dollar quotes nothing changes.
    ("SELECT '$1,$2', E'\\',$3', \"$1,$2\" FROM t -- $1,$2\n",
     "SELECT '$1,$2', E'\\',$3', \"$1,$2\" FROM t -- $1,$2\n"),
    ("SELECT $$ $1,$2 $$, $q$ $1,$2 $q$,$1", "SELECT $$ $1,$2 $$, $q$ $1,$2 $q$,$1"),
    ("SELECT 1 /* /* $1,$2 */ $1,$2 */,$1)", "SELECT 1 /* /* $1,$2 */ $1,$2 */,$1 )"),
    ("SELECT a$1,$2 FROM t", "SELECT a$1,$2 FROM t"),  # `a$1` is one name
])
def test_space_parameters_separates_placeholders_outside_literals_only(sql: str, spaced: str) -> None:
    assert space_parameters(sql) == spaced


def test_parameters_without_spaces_parse_as_postgres_reads_them() -> None:
    # sqlglot reads `$1,$2` as a dollar-quoted string tagged `1,`; psycopg sends `%s,%s` exactly so.
    parsed = parse_statement("SELECT a FROM t WHERE a IN ($1,$2,$3) AND b = '$1,$2'")
    assert len(list(parsed.tree.find_all(exp.Parameter, exp.Placeholder))) == 3
    assert "'$1,$2'" in parsed.tree.sql(dialect="duckdb")
