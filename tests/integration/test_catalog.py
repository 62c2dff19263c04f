"""Catalog and introspection queries of real clients, answered from a real DuckDB database.

The SQL in tests/integration/catalog_queries/ was captured on the wire from psql 15, SQLAlchemy 2
(psycopg), psycopg 3, asyncpg and pgjdbc/DBeaver talking to PostgreSQL 15; each entry records the
column names PostgreSQL returned for it, which the DuckDB answer must reproduce.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.pgcompat.catalog import CatalogResponder
from engine_host.pgcompat.catalog.relations import _SPECS

QUERIES = Path(__file__).parent / "catalog_queries"

FIXTURE = """
CREATE SCHEMA sales;
CREATE SCHEMA hr;
CREATE TABLE main.customers (
    id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, email VARCHAR UNIQUE,
    created_at TIMESTAMPTZ DEFAULT current_timestamp);
COMMENT ON TABLE main.customers IS 'People who buy things';
COMMENT ON COLUMN main.customers.email IS 'Contact address';
CREATE TABLE sales.accounts (id INTEGER PRIMARY KEY, name VARCHAR);
CREATE TABLE sales.orders (
    id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES sales.accounts (id),
    amount DECIMAL(10,2) CHECK (amount >= 0), status VARCHAR DEFAULT 'new', placed_at TIMESTAMPTZ,
    tags VARCHAR[], note TEXT, qty BIGINT, ratio DOUBLE, paid BOOLEAN, d DATE, blob BLOB);
CREATE INDEX orders_account_idx ON sales.orders (account_id);
CREATE UNIQUE INDEX orders_status_placed_uq ON sales.orders (status, placed_at);
CREATE VIEW sales.big_orders AS SELECT id, amount FROM sales.orders WHERE amount > 100;
CREATE VIEW main.customer_names AS SELECT name FROM main.customers;
CREATE TABLE hr.employees (emp_id INTEGER PRIMARY KEY, dept VARCHAR, salary DECIMAL(12,2));
CREATE TABLE hr.salaries (emp_id INTEGER PRIMARY KEY, amount DECIMAL(12,2));
CREATE TABLE hr.payslips (id INTEGER PRIMARY KEY, emp_id INTEGER REFERENCES hr.salaries (emp_id));
CREATE VIEW hr.salary_view AS SELECT emp_id FROM hr.salaries;
COMMENT ON TABLE hr.salaries IS 'secret comment';
CREATE SEQUENCE sales.order_ids START 100;
CREATE TABLE sales.pg_class (relname VARCHAR, secret VARCHAR);
INSERT INTO sales.pg_class VALUES ('not-a-catalog', 'user data');
INSERT INTO sales.accounts VALUES (1, 'acme');
"""


@dataclass
class Catalog:
    con: duckdb.DuckDBPyConnection
    responder: CatalogResponder

    def oid(self, qualified: str) -> int:
        schema, name = qualified.split(".")
        row = self.con.execute(
            "SELECT table_oid FROM duckdb_tables() WHERE schema_name = ? AND table_name = ? "
            "UNION ALL SELECT view_oid FROM duckdb_views() WHERE schema_name = ? AND view_name = ?",
            [schema, name, schema, name]).fetchone()
        assert row is not None
        return int(row[0])

    def schema_oid(self, name: str) -> int:
        row = self.con.execute(
            "SELECT oid FROM duckdb_schemas() WHERE schema_name = ? AND database_name = ?",
            [name, DATA_CATALOG]).fetchone()
        assert row is not None
        return int(row[0])

    def run(self, sql: str, params: Sequence[Any] | None = None, **options: Any) -> tuple[list[str], list[tuple]]:
        """Rewrite `sql` as the server would, execute it on a session cursor, return (columns, rows)."""
        rewritten = self.responder.rewrite(sql, **options)
        assert rewritten is not None, f"not recognised as a catalog query: {sql}"
        return self.execute(rewritten, params)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
        cursor = self.con.cursor()
        cursor.execute(sql, list(params) if params else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the extra Arrow copy does not matter for catalog sizes
            table = cursor.to_arrow_table()
        columns = [c.to_pylist() for c in table.columns]
        return table.column_names, list(zip(*columns, strict=True)) if columns else []


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    # As in the engine (engine/duckdb_engine.py): user objects in the attached data catalog, the
    # catalog machinery and sessions in the default one.
    con.execute(f"ATTACH ':memory:' AS {DATA_CATALOG}; USE {DATA_CATALOG}")
    con.execute(FIXTURE)
    con.execute("USE memory")
    responder = CatalogResponder(server_version="15.8", database_name="hd", owner="hd")
    responder.install(con)
    responder.install(con)  # idempotent: a restart re-runs it on the same database file
    # Same lock-down as the engine's Database, so the answers are proven to work on the real thing.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return Catalog(con, responder)


# --- captured client queries -----------------------------------------------------------------


@dataclass(frozen=True)
class Captured:
    client: str
    name: str
    sql: str
    params: list[Any]
    columns: list[str]


def _captured() -> list[Captured]:
    entries = []
    for path in sorted(QUERIES.glob("*.sql")):
        text = path.read_text()
        pattern = r"-- query: (.*?)\n(?:-- params: (.*?)\n)?-- columns: (.*?)\n(.*?);\n"
        for name, params, columns, sql in re.findall(pattern, text, re.S):
            entries.append(Captured(path.stem, name, sql, json.loads(params) if params else [], json.loads(columns)))
    return entries


CAPTURED = _captured()


def _bind(catalog: Catalog, entry: Captured) -> tuple[str, list[Any]]:
    """Substitute the fixture's OIDs where the capture had PostgreSQL's."""
    params = []
    for value in entry.params:
        if isinstance(value, str) and value.startswith("{oid:"):
            value = catalog.oid(value[5:-1])
        elif isinstance(value, str) and value.startswith("{nsp:"):
            value = catalog.schema_oid(value[5:-1])
        params.append(value)
    return entry.sql.replace("{oid}", str(catalog.oid("sales.orders"))), params


def test_every_client_query_was_captured() -> None:
    clients = {entry.client for entry in CAPTURED}
    assert clients == {"psql", "sqlalchemy", "psycopg", "asyncpg", "dbeaver", "information_schema"}
    assert len(CAPTURED) >= 95


@pytest.mark.parametrize("entry", CAPTURED, ids=lambda e: f"{e.client}:{e.name}")
def test_captured_client_query_runs_with_postgres_column_names(catalog: Catalog, entry: Captured) -> None:
    sql, params = _bind(catalog, entry)
    columns, _ = catalog.run(sql, params)
    assert columns == entry.columns


def _query(name: str) -> Captured:
    return next(e for e in CAPTURED if e.name == name)


def _run_captured(catalog: Catalog, name: str) -> list[tuple]:
    entry = _query(name)
    sql, params = _bind(catalog, entry)
    return catalog.run(sql, params)[1]


# --- psql ---------------------------------------------------------------------------------------


def test_psql_dt_lists_the_tables_of_the_search_path(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\dt #1") == [("main", "customers", "table", "hd")]


def test_psql_d_lists_tables_and_views_of_the_search_path(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\d #1") == [
        ("main", "customer_names", "view", "hd"), ("main", "customers", "table", "hd")]


def test_psql_dt_with_schema_pattern_lists_that_schema(catalog: Catalog) -> None:
    rows = _run_captured(catalog, "psql \\dt sales.* #1")
    assert rows == [("sales", "accounts", "table", "hd"), ("sales", "orders", "table", "hd"),
                    ("sales", "pg_class", "table", "hd")]


def test_psql_describe_finds_the_table_by_pattern(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\d sales.orders #1") == [(catalog.oid("sales.orders"), "sales", "orders")]
    assert _run_captured(catalog, "psql \\d customers #1") == [(catalog.oid("main.customers"), "main", "customers")]


def test_psql_describe_shows_postgres_type_names_and_defaults(catalog: Catalog) -> None:
    rows = _run_captured(catalog, "psql \\d customers #3")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("id", "integer", None, True),
        ("account_id", "integer", None, True),
        ("amount", "numeric(10,2)", None, False),
        ("status", "character varying", "'new'", False),
        ("placed_at", "timestamp with time zone", None, False),
        ("tags", "character varying[]", None, False),
        ("note", "character varying", None, False),
        ("qty", "bigint", None, False),
        ("ratio", "double precision", None, False),
        ("paid", "boolean", None, False),
        ("d", "date", None, False),
        ("blob", "bytea", None, False),
    ]


def test_psql_describe_table_header(catalog: Catalog) -> None:
    relchecks, relkind, relhasindex, *_, relpersistence, relreplident, amname = _run_captured(
        catalog, "psql \\d customers #2")[0]
    assert (relchecks, relkind, relhasindex, relpersistence, relreplident, amname) == (1, "r", True, "p", "d", "heap")


def test_psql_describe_lists_indexes_with_their_definitions(catalog: Catalog) -> None:
    rows = _run_captured(catalog, "psql \\d customers #4")
    assert [(r[0], r[1], r[2], r[5], r[6], r[7]) for r in rows] == [
        ("orders_pkey", True, True, "CREATE UNIQUE INDEX orders_pkey ON sales.orders USING btree (id)",
         "PRIMARY KEY (id)", "p"),
        ("orders_account_idx", False, False,
         "CREATE INDEX orders_account_idx ON sales.orders USING btree (account_id)", None, None),
        ("orders_status_placed_uq", False, True,
         "CREATE UNIQUE INDEX orders_status_placed_uq ON sales.orders USING btree (status, placed_at)", None, None),
    ]


def test_psql_describe_lists_check_and_foreign_key_constraints(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\d sales.orders #5") == [("orders_amount_check", "CHECK ((amount >= 0))")]
    fks = _run_captured(catalog, "psql \\d customers #5")
    assert [(r[1], r[2], r[3]) for r in fks] == [
        ("orders_account_id_fkey", "FOREIGN KEY (account_id) REFERENCES sales.accounts(id)", "sales.orders")]


def test_psql_describe_lists_referencing_tables(catalog: Catalog) -> None:
    sql = _query("psql \\d customers #6").sql.replace("{oid}", str(catalog.oid("sales.accounts")))
    _, rows = catalog.run(sql)
    assert rows == [("orders_account_id_fkey", "sales.orders",
                     "FOREIGN KEY (account_id) REFERENCES sales.accounts(id)")]


def test_psql_describe_plus_shows_column_comments(catalog: Catalog) -> None:
    sql = _query("psql \\d+ sales.orders #3").sql.replace("{oid}", str(catalog.oid("main.customers")))
    _, rows = catalog.run(sql)
    assert [(r[0], r[-1]) for r in rows] == [("id", None), ("name", None), ("email", "Contact address"),
                                              ("created_at", None)]


def test_psql_dt_plus_shows_table_comments(catalog: Catalog) -> None:
    rows = _run_captured(catalog, "psql \\dt+ #1")
    assert rows == [("main", "customers", "table", "hd", "permanent", "heap", None, "People who buy things")]


def test_psql_dn_lists_user_schemas_only(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\dn #1") == [("hr", "hd"), ("main", "hd"), ("sales", "hd")]


def test_psql_l_lists_the_served_database(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\l #1") == [("hd", "hd", "UTF8", "C", "C", None, "libc", None)]


def test_psql_dv_and_di_and_du(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psql \\dv #1") == [("main", "customer_names", "view", "hd")]
    assert _run_captured(catalog, "psql \\dv sales.* #1") == [("sales", "big_orders", "view", "hd")]
    assert _run_captured(catalog, "psql \\di #1") == [
        ("main", "customers_email_key", "index", "hd", "customers"),
        ("main", "customers_pkey", "index", "hd", "customers")]
    assert [r[0] for r in _run_captured(catalog, "psql \\du #1")] == ["hd"]


# --- SQLAlchemy, psycopg, asyncpg ---------------------------------------------------------------


def test_version_is_parsed_by_sqlalchemy(catalog: Catalog) -> None:
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    _, rows = catalog.run("select pg_catalog.version()")
    version = rows[0][0]
    assert version.startswith("PostgreSQL 15.8 (Hardened Duck, DuckDB v")

    class Result:
        def scalar(self) -> str:
            return str(version)

    class Connection:
        def exec_driver_sql(self, sql: str) -> Result:
            return Result()

    assert PGDialect_psycopg()._get_server_version_info(Connection()) == (15, 8)


def test_sqlalchemy_reflects_columns(catalog: Catalog) -> None:
    rows = _run_captured(catalog, "sqlalchemy get_columns #1")
    assert [(r[0], r[1], r[2], r[3]) for r in rows][:5] == [
        ("id", "integer", None, True), ("account_id", "integer", None, True),
        ("amount", "numeric(10,2)", None, False), ("status", "character varying", "'new'", False),
        ("placed_at", "timestamp with time zone", None, False)]


def test_sqlalchemy_reflects_keys_indexes_and_comments(catalog: Catalog) -> None:
    orders = catalog.oid("sales.orders")
    assert _run_captured(catalog, "sqlalchemy get_pk_constraint #2") == [
        (orders, ["id"], "orders_pkey", None, 1, False)]
    assert [(r[1], r[2], r[3]) for r in _run_captured(catalog, "sqlalchemy get_foreign_keys #1")] == [
        ("orders_account_id_fkey", "FOREIGN KEY (account_id) REFERENCES sales.accounts(id)", "sales")]
    indexes = _run_captured(catalog, "sqlalchemy get_indexes #3")
    assert [(r[1], r[2], r[11]) for r in indexes] == [
        ("orders_account_idx", False, ["account_id"]), ("orders_status_placed_uq", True, ["status", "placed_at"])]
    assert [(r[1], r[2]) for r in _run_captured(catalog, "sqlalchemy get_unique_constraints #2")] == [
        (["email"], "customers_email_key")]
    assert [(r[1], r[2]) for r in _run_captured(catalog, "sqlalchemy get_check_constraints #1")] == [
        ("orders_amount_check", "CHECK ((amount >= 0))")]
    assert _run_captured(catalog, "sqlalchemy get_table_comment #1") == [("customers", "People who buy things")]
    assert _run_captured(catalog, "sqlalchemy get_view_definition #1") == [
        ("SELECT id, amount FROM sales.orders WHERE (amount > 100)",)]
    assert _run_captured(catalog, "sqlalchemy get_table_names #1") == [("accounts",), ("orders",), ("pg_class",)]
    assert _run_captured(catalog, "sqlalchemy has_table #1") == [("orders",)]


def test_psycopg_type_info(catalog: Catalog) -> None:
    assert _run_captured(catalog, "psycopg psycopg TypeInfo int4 #1") == [("int4", 23, 1007, "integer", ",")]
    assert _run_captured(catalog, "psycopg psycopg TypeInfo hstore-ish text[] #1") == [
        ("_text", 1009, 0, "text[]", ",")]
    assert _run_captured(catalog, "psycopg psycopg RangeInfo int4range #1") == [
        ("int4range", 3904, 3905, "int4range", 23)]
    assert _run_captured(catalog, "sqlalchemy connect #3") == []  # hstore: not installed, as psycopg expects


def test_asyncpg_introspects_builtin_array_types(catalog: Catalog) -> None:
    rows = _run_captured(catalog, "asyncpg asyncpg tags #2")
    by_oid = {r[0]: r for r in rows}
    assert set(by_oid) == {1015, 1043}
    _oid, ns, name, kind, _basetype, elemtype, elemdelim, *_rest, depth, _b, elemtype_name, _r = by_oid[1015]
    assert (ns, name, kind, elemtype, elemdelim, depth, elemtype_name) == (
        "pg_catalog", "_varchar", "b", 1043, ",", 0, "character varying")
    assert _run_captured(catalog, "asyncpg asyncpg tags #1") == [("off", "off")]


# --- DBeaver / pgjdbc ---------------------------------------------------------------------------


def test_dbeaver_probes(catalog: Catalog) -> None:
    assert _run_captured(catalog, "dbeaver defaults") == [("hd", "main", "hd")]
    keywords = _run_captured(catalog, "dbeaver keywords (pgjdbc getSQLKeywords)")[0][0]
    assert "select" not in keywords.split(",") and "analyze" in keywords.split(",")
    schemas = [r[2] for r in _run_captured(catalog, "dbeaver schemas")]
    assert schemas == ["hr", "information_schema", "main", "pg_catalog", "sales"]
    assert _run_captured(catalog, "pgjdbc type by name") == [(23, "int4")]
    assert _run_captured(catalog, "pgjdbc type by oid") == [(True, "b", "_varchar", 1015)]
    _, rows = catalog.run("SELECT txid_current(), pg_backend_pid(), inet_server_addr(), pg_is_in_recovery()",
                          backend_pid=4242)
    assert rows[0][1:] == (4242, None, False)


def test_information_schema_describes_the_fixture(catalog: Catalog) -> None:
    tables = _run_captured(catalog, "information_schema user tables")
    assert ("sales", "orders", "BASE TABLE") in tables and ("sales", "big_orders", "VIEW") in tables
    columns = _run_captured(catalog, "information_schema columns of orders")
    assert columns[2] == ("amount", "numeric", "YES", 10, 2, "numeric", None)
    assert columns[5][:2] == ("tags", "ARRAY")
    keys = _run_captured(catalog, "information_schema primary and foreign keys")
    assert ("FOREIGN KEY", "orders", "account_id", "accounts", "id") in keys


# --- what is and is not a catalog query ----------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT 1",
    "SELECT * FROM sales.orders WHERE id = $1",
    "INSERT INTO sales.orders (id) VALUES ($1)",
    "SELECT now(), current_timestamp",
    "WITH pg_class AS (SELECT 1 AS x) SELECT x FROM pg_class",
    "SELECT relname FROM sales.pg_class",
    "SELECT * FROM pg_class, sales.orders",
    "SELECT relname, (SELECT count(*) FROM sales.orders) FROM pg_catalog.pg_class",
    "WITH pg_class AS (SELECT * FROM sales.orders) SELECT * FROM pg_class",
    "SELECT version() FROM sales.orders",
    "SELECT * FROM pg_class WHERE relname IN (SELECT secret FROM sales.pg_class)",
    "SELECT getenv('HOME'), version()",
    "SELECT * FROM pg_class, read_csv('/etc/passwd')",
    "SELECT * FROM duckdb_tables() JOIN pg_class ON true",
    "SELECT * FROM hd_pg.pg_class",
    "DELETE FROM pg_catalog.pg_class",
    "SELECT 1; SELECT relname FROM pg_class",
])
def test_statements_that_are_not_catalog_queries_are_left_alone(catalog: Catalog, sql: str) -> None:
    assert catalog.responder.rewrite(sql) is None


def test_unqualified_catalog_name_means_the_catalog_as_in_postgres(catalog: Catalog) -> None:
    # PostgreSQL searches pg_catalog first, so a user table called pg_class never shadows it.
    _, rows = catalog.run("SELECT relname FROM pg_class WHERE relname = 'not-a-catalog' OR relname = 'orders'")
    assert rows == [("orders",)]


def test_cte_over_the_catalog_is_answered(catalog: Catalog) -> None:
    _, rows = catalog.run("WITH t AS (SELECT relname, relnamespace FROM pg_class WHERE relkind = 'v') "
                          "SELECT relname FROM t WHERE relnamespace NOT IN (11, 13207) ORDER BY 1")
    assert rows == [("big_orders",), ("customer_names",), ("salary_view",)]


def test_array_literal_under_any_is_an_array(catalog: Catalog) -> None:
    # pgspecial's \dt binds its relkind list client-side: `c.relkind = ANY('{r,p,""}')`.
    _, rows = catalog.run("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE c.relkind = ANY('{r,p,\"\"}') AND n.nspname ~ '^(hr)$' "
                          "ORDER BY 1, 2")
    assert rows == [("hr", "employees"), ("hr", "payslips"), ("hr", "salaries")]
    _, rows = catalog.run("SELECT count(*) FROM pg_class WHERE relkind <> ALL('{r,i,S,v}') AND relnamespace > 99")
    assert rows == [(0,)]


def test_unaliased_columns_of_ctes_are_named_as_postgres_names_them(catalog: Catalog) -> None:
    # pgcli's casing query orders by a CTE's `count` column and filters on another's `row_number`.
    _, rows = catalog.run(
        "WITH words AS (SELECT relname AS word, COUNT(1) FROM pg_catalog.pg_class WHERE relname LIKE '%orders' "
        "GROUP BY word), ranked AS (SELECT word, ROW_NUMBER() OVER (PARTITION BY LOWER(word) ORDER BY Count DESC) "
        "FROM words) SELECT word FROM ranked WHERE Row_Number = 1 ORDER BY 1")
    assert rows == [("big_orders",), ("orders",)]


def test_scalar_function_in_from_is_one_row_named_by_its_alias(catalog: Catalog) -> None:
    _, rows = catalog.run("SELECT s, s[2] FROM string_to_array(current_setting('search_path'), ',') s",
                          settings={"search_path": "sales,main"})
    assert rows == [(["sales", "main"], "main")]
    columns, rows = catalog.run("SELECT * FROM current_setting('search_path')", settings={"search_path": "hr"})
    assert (columns, rows) == (["current_setting"], [("hr",)])


def test_grafana_tables_on_the_search_path(catalog: Catalog) -> None:
    sql = ("SELECT quote_ident(table_name) AS \"table\" FROM information_schema.tables WHERE table_schema IN ("
           "SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END "
           "FROM generate_series(array_lower(string_to_array(current_setting('search_path'), ','), 1), "
           "array_upper(string_to_array(current_setting('search_path'), ','), 1)) AS i, "
           "string_to_array(current_setting('search_path'), ',') s) ORDER BY 1")
    _, rows = catalog.run(sql, user="hr", settings={"search_path": '"$user", nowhere'})
    assert rows == [("employees",), ("payslips",), ("salaries",), ("salary_view",)]
    _, rows = catalog.run(sql, user="alice", settings={"search_path": "hr"}, visible=_hide_salaries)
    assert rows == [("employees",), ("payslips",)]


def test_pg_proc_lists_exactly_the_callable_builtins_with_postgres_types(catalog: Catalog) -> None:
    from hd_core.sql_functions import ALLOWED_FUNCTIONS

    _, names = catalog.run("SELECT DISTINCT proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
                           "ON n.oid = p.pronamespace WHERE n.nspname = 'pg_catalog'")
    listed = {name for (name,) in names}
    assert listed <= ALLOWED_FUNCTIONS
    assert {"lower", "string_agg", "sum", "row_number", "regexp_replace", "date_trunc"} <= listed
    assert not listed & {"read_csv", "getenv", "query", "current_setting", "json_serialize_plan", "error"}
    _, rows = catalog.run(
        "SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prokind, "
        "p.prorettype::regtype::text, COALESCE(p.proallargtypes::regtype[], p.proargtypes::regtype[])::text[], "
        "p.proargmodes FROM pg_catalog.pg_proc p WHERE p.proname IN ('lower', 'row_number', 'concat') "
        "OR (p.proname = 'string_agg' AND p.pronargs = 2) ORDER BY 1")
    assert rows == [
        ("concat", "value anyelement, VARIADIC variadic anyarray", "anyelement", "f", "anyelement",
         ["anyelement", "anyarray"], ["i", "v"]),
        ("lower", "string text", "text", "f", "text", ["text"], None),
        ("row_number", "", "bigint", "w", "bigint", [], None),
        ("string_agg", "str anyelement, arg text", "text", "a", "text", ["anyelement", "text"], None),
    ]


def test_finished_answers_are_reused_only_for_the_same_session_values(catalog: Catalog) -> None:
    sql = "SELECT current_user, relname FROM pg_class WHERE relname IN ('salaries', 'accounts') ORDER BY 2"
    _, rows = catalog.run(sql, user="alice", visible=_hide_salaries)
    assert rows == [("alice", "accounts")]
    assert catalog.run(sql, user="alice", visible=_hide_salaries)[1] == rows
    assert catalog.run(sql, user="bob", visible=_hide_salaries)[1] == [("bob", "accounts")]
    everything = catalog.run(sql, user="alice", visible=lambda s, t: True)[1]
    assert everything == [("alice", "accounts"), ("alice", "salaries")]
    first = catalog.responder.rewrite(sql, user="carol", settings={"search_path": "hr"}, visible=_hide_salaries)
    started = time.perf_counter()
    again = catalog.responder.rewrite(sql, user="carol", settings={"search_path": "hr"}, visible=_hide_salaries)
    assert again == first and time.perf_counter() - started < 0.02


def test_parameters_survive_the_rewrite(catalog: Catalog) -> None:
    entry = _query("sqlalchemy get_columns #1")
    rewritten = catalog.responder.rewrite(entry.sql)
    assert rewritten is not None
    assert {f"${n}" for n in range(1, 22)} <= set(re.findall(r"\$\d+", rewritten))
    # pg_get_constraintdef's "pretty" flag is ignored but its $1 must still be bound.
    fks = catalog.responder.rewrite(_query("sqlalchemy get_foreign_keys #1").sql)
    assert fks is not None and "$1" in fks


def test_parameter_types_follow_the_casts_of_the_original_statement(catalog: Catalog) -> None:
    asyncpg_introspection = _query("asyncpg asyncpg tags #2").sql
    assert catalog.responder.parameter_types(asyncpg_introspection) == {1: 1028}  # oid[]
    assert catalog.responder.parameter_types(
        "SELECT relname FROM pg_class WHERE relname = $1::VARCHAR AND relnamespace = $2::oid "
        "AND oid = $3::regclass") == {1: 1043, 2: 26}
    assert catalog.responder.parameter_types("SELECT * FROM sales.orders WHERE id = $1::INTEGER") == {}


def test_unsupported_catalog_relation_fails_with_a_clear_error(catalog: Catalog) -> None:
    rewritten = catalog.responder.rewrite("SELECT * FROM pg_catalog.pg_stat_statements")
    assert rewritten is not None
    with pytest.raises(duckdb.Error, match=r"pg_catalog\.pg_stat_statements is not available"):
        catalog.execute(rewritten)


@pytest.mark.parametrize("spec", list(_SPECS.values()), ids=lambda s: s.qualified)
def test_catalog_relations_have_the_postgres_shape(catalog: Catalog, spec: Any) -> None:
    columns, _ = catalog.run(f"SELECT * FROM {spec.qualified}")
    assert columns == [name for name, _ in spec.columns]


def test_internal_schemas_are_not_listed(catalog: Catalog) -> None:
    _, namespaces = catalog.run("SELECT nspname FROM pg_namespace ORDER BY 1")
    assert namespaces == [("hr",), ("information_schema",), ("main",), ("pg_catalog",), ("sales",)]
    _, relations = catalog.run(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'hd_pg'")
    assert relations == [(0,)]
    _, catalog_tables = catalog.run("SELECT tablename FROM pg_tables WHERE tablename = 'pg_class'")
    assert catalog_tables == [("pg_class",), ("pg_class",)]  # pg_catalog's, and the user's in sales


def test_session_values(catalog: Catalog) -> None:
    _, rows = catalog.run("SELECT current_user, session_user, current_setting('application_name')",
                          user="alice", settings={"application_name": "bi-tool"})
    assert rows == [("alice", "alice", "bi-tool")]
    _, rows = catalog.run("SELECT current_setting('max_identifier_length'), current_schemas(true)")
    assert rows == [("63", ["pg_catalog", "main"])]


def test_regclass_casts_look_up_names_and_print_names(catalog: Catalog) -> None:
    orders = catalog.oid("sales.orders")
    _, rows = catalog.run(
        "SELECT 'sales.orders'::regclass::oid, 'pg_catalog.pg_class'::regclass::oid, 'customers'::regclass::oid, "
        f"'{orders}'::regclass::oid, {orders}::regclass, 'nope'::regclass::oid, to_regtype('integer'), "
        "'character varying[]'::regtype::oid, 23::regtype")
    assert rows == [(orders, 1259, catalog.oid("main.customers"), orders, "sales.orders", None, 23, 1015, "integer")]


# --- visibility --------------------------------------------------------------------------------


def _hide_salaries(schema: str, table: str) -> bool:
    return (schema, table) not in {("hr", "salaries"), ("hr", "salary_view")}


@pytest.mark.parametrize("visible", [
    _hide_salaries,
    [("hr", "employees"), ("hr", "payslips"), ("main", "customers"), ("sales", "orders")],
], ids=["predicate", "collection"])
def test_hidden_tables_disappear_from_every_catalog_answer(catalog: Catalog, visible: Any) -> None:
    salaries = catalog.oid("hr.salaries")
    view = catalog.oid("hr.salary_view")

    def names(sql: str) -> set[Any]:
        return {r[0] for r in catalog.run(sql, visible=visible)[1]}

    assert "salaries" not in names("SELECT relname FROM pg_catalog.pg_class")
    assert "salaries_pkey" not in names("SELECT relname FROM pg_catalog.pg_class")
    assert "salaries" not in names("SELECT tablename FROM pg_tables")
    assert "salary_view" not in names("SELECT viewname FROM pg_views")
    assert "salaries" not in names("SELECT table_name FROM information_schema.tables")
    assert "salaries" not in names("SELECT table_name FROM information_schema.columns")
    assert names(f"SELECT attname FROM pg_attribute WHERE attrelid = {salaries}") == set()
    assert names(f"SELECT indexrelid FROM pg_index WHERE indrelid = {salaries}") == set()
    assert names(f"SELECT description FROM pg_description WHERE objoid = {salaries}") == set()
    assert names("SELECT 'hr.salaries'::regclass::oid") == {None}
    assert names(f"SELECT {salaries}::regclass") == {str(salaries)}
    assert names(f"SELECT obj_description({salaries}, 'pg_class')") == {None}
    assert names(f"SELECT pg_get_viewdef({view})") == {None}
    # A visible table's foreign key into a hidden one would name it, so it is hidden too.
    assert "payslips_emp_id_fkey" not in names("SELECT conname FROM pg_constraint")
    assert "payslips_emp_id_fkey" not in names(
        "SELECT constraint_name FROM information_schema.table_constraints")
    _, rows = catalog.run(_bind(catalog, _query("psql \\dt sales.* #1"))[0].replace("sales", "hr"), visible=visible)
    assert [r[1] for r in rows] == ["employees", "payslips"]


def test_visibility_still_shows_the_catalog_itself(catalog: Catalog) -> None:
    _, rows = catalog.run("SELECT count(*) FROM pg_class WHERE relnamespace = 11", visible=lambda s, t: False)
    assert rows[0][0] == len([s for s in _SPECS.values() if s.schema == "pg_catalog"])
    _, rows = catalog.run("SELECT relname FROM pg_class WHERE relnamespace <> 11 AND relnamespace <> 13207",
                          visible=lambda s, t: False)
    assert rows == []


def test_visibility_predicate_needs_install(catalog: Catalog) -> None:
    fresh = CatalogResponder()
    with pytest.raises(RuntimeError, match="install"):
        fresh.rewrite("SELECT relname FROM pg_class", visible=lambda s, t: True)
    assert fresh.rewrite("SELECT relname FROM pg_class", visible=[("main", "t")]) is not None


# --- speed -------------------------------------------------------------------------------------


def _per_call(fn: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def test_ordinary_sql_costs_microseconds(catalog: Catalog) -> None:
    responder = catalog.responder
    select_one = _per_call(lambda: responder.rewrite("SELECT 1"), 50_000)
    point = _per_call(lambda: responder.rewrite("SELECT * FROM sales.orders WHERE id = $1"), 50_000)
    cached = _per_call(lambda: responder.rewrite("SELECT relname FROM pg_catalog.pg_class"), 2_000)
    print(f"\nrewrite('SELECT 1'): {select_one * 1e6:.2f} us; point lookup: {point * 1e6:.2f} us; "
          f"repeated catalog query: {cached * 1e6:.1f} us")
    assert select_one < 20e-6 and point < 20e-6
