"""The client matrix's cases: statements every client runs against the engine host and against PostgreSQL 15.

PostgreSQL is the truth: each case is written to what PostgreSQL answers, and the matrix compares the
engine's answer with it value by value, column names and type OIDs included. A case names its statement
once, with `$n` placeholders; each runner turns them into its client's own style (`%s`, `:p1`...).

`{t}` in any statement is a fresh writable table, named per test, created by the case's setup on both
sides and dropped after it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Expect(Enum):
    """How the engine's answer must match PostgreSQL's."""

    SAME_ROWS = "same rows"
    SAME_ROWS_ANY_ORDER = "same rows ignoring order"
    SAME_ERROR = "same error SQLSTATE"


class Kind(Enum):
    """What a case asks of a client; each runner declares the kinds it can do."""

    QUERY = "query"  # one statement (with parameters when the client binds them)
    EXECUTEMANY = "executemany"  # one statement, many parameter rows
    COPY_OUT = "copy out"  # COPY (query) TO STDOUT, or COPY table TO STDOUT
    COPY_IN = "copy in"  # COPY {t} FROM STDIN
    META = "meta"  # a psql backslash command (psql itself, pgcli through pgspecial)
    CATALOG = "catalog"  # pgcli's completion metadata: PGExecute.tables(), columns(), schemata()...
    READ_SQL = "read_sql"  # pandas.read_sql of a query
    READ_SQL_TABLE = "read_sql_table"  # pandas.read_sql of a table name (SQLAlchemy reflection)
    TO_SQL = "to_sql"  # DataFrame.to_sql into {t}, then read back


# The demo's schemas; their tables are mirrored into the reference PostgreSQL from what the Owner reads.
DEMO_SCHEMAS = ("clinical", "crm", "hr", "sales")
# Where the matrix creates its writable tables on both sides.
WRITE_SCHEMA = "main"


@dataclass(frozen=True)
class Case:
    """One statement (or client action) run on both sides and compared."""

    id: str
    sql: str
    params: tuple[Any, ...] = ()
    kind: Kind = Kind.QUERY
    expect: Expect = Expect.SAME_ROWS
    # Run first on the same connection; each step's success or SQLSTATE is compared too.
    setup: tuple[str, ...] = ()
    # Run after the compared statement(s), errors ignored: puts the shared session back.
    teardown: tuple[str, ...] = ()
    # Run after `sql` (without parameters); its answer is compared as well (writes are checked this way).
    check: str | None = None
    # Rows for EXECUTEMANY, COPY_IN and TO_SQL.
    rows: tuple[tuple[Any, ...], ...] = ()
    columns: tuple[str, ...] = ()  # TO_SQL: the DataFrame's column names
    copy_format: str = "text"
    # Result columns (by position) whose values legitimately differ; compared by type and shape, and why.
    shape_only: Mapping[int, str] = field(default_factory=dict)
    # A difference README's compatibility table states, and why; everything else is still compared.
    # name_as_text: catalog columns PostgreSQL types `name` (19) / `name[]` (1003) may arrive as text / text[].
    name_as_text: str = ""
    # numeric_scale: a numeric printed as text (psql) may carry more trailing zeros; compared as numbers.
    numeric_scale: str = ""
    # Errors: the P field (position in the statement) must match too, for clients that report it.
    error_position: bool = False
    # The clients this case is for; None is every client that can run its kind.
    clients: frozenset[str] | None = None

    @property
    def writes(self) -> bool:
        return "{t}" in " ".join((self.sql, *self.setup, self.check or ""))

    @property
    def answers_with_rows(self) -> bool:
        """The statement's own answer is rows (a query, COPY out, a listing), never an empty result."""
        return self.kind in _ROW_KINDS or self.returns_rows

    @property
    def returns_rows(self) -> bool:
        """A plain query a cursor can page through (server-side cursors, DECLARE)."""
        head = self.sql.lstrip().split(None, 1)[0].upper()
        return self.kind is Kind.QUERY and head in {"SELECT", "WITH", "VALUES", "TABLE"}


_ROW_KINDS = frozenset({Kind.COPY_OUT, Kind.META, Kind.CATALOG, Kind.READ_SQL, Kind.READ_SQL_TABLE, Kind.TO_SQL})

NOW_VALUE = "the clock moves between the two runs; its type and shape must match"
USER_VALUE = "the engine's user is the Owner's id, PostgreSQL's is postgres"
DATABASE_VALUE = "the engine's database is hd, the reference's is a scratch database"
OWNER_VALUE = "tables belong to the Owner on the engine and to postgres on the reference"

# varchar, not text: DuckDB keeps one string type, so the engine describes every string column of a table as
# character varying, in its catalog and its RowDescription alike (README, "Postgres compatibility").
NAME_AS_TEXT = ("the catalog's name-typed columns (nspname, relname, unnest(current_schemas())) reach the wire as "
                "text: the catalog answers come from DuckDB, which has one string type")
NUMERIC_SCALE = ("a computed numeric has one scale per column where PostgreSQL picks one per value, so its text "
                 "shows more trailing zeros; the values are equal")
PRODUCT_TABLE = "CREATE TABLE {t} (id integer, name varchar)"
ORDERS_FIRST_TEN = "SELECT order_id, status, amount FROM sales.orders WHERE order_id < 1000011 ORDER BY order_id"


def _typed(case_id: str, expression: str) -> Case:
    return Case(f"type_{case_id}", f"SELECT {expression} AS v")


# --- everyday things: types of every family, NULLs -------------------------------------------

TYPE_CASES = [
    _typed("int2", "CAST(-32768 AS SMALLINT)"),
    _typed("int4", "CAST(2147483647 AS INTEGER)"),
    _typed("int8", "CAST(-9223372036854775808 AS BIGINT)"),
    _typed("float4", "CAST(1.5 AS REAL)"),
    _typed("float8", "CAST(-0.1 AS DOUBLE PRECISION)"),
    _typed("numeric", "CAST('12345.678' AS NUMERIC(12,3))"),
    _typed("bool", "TRUE"),
    _typed("text", "CAST('héllo, wörld' AS TEXT)"),
    _typed("varchar", "CAST('v' AS VARCHAR)"),
    _typed("bytea", "CAST('abc' AS BYTEA)"),
    _typed("date", "DATE '2024-02-29'"),
    _typed("time", "TIME '13:14:15.123456'"),
    _typed("timestamp", "TIMESTAMP '2024-01-02 03:04:05.5'"),
    _typed("timestamptz", "CAST('2024-01-02 03:04:05.123456+00' AS TIMESTAMPTZ)"),
    _typed("interval", "INTERVAL '1 year 2 months 3 days 04:05:06.5'"),
    _typed("uuid", "CAST('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AS UUID)"),
    _typed("json", "CAST('{\"a\": [1, 2]}' AS JSON)"),
    _typed("int_array", "ARRAY[1, 2, NULL]"),
    _typed("text_array", "ARRAY['a b', 'x\"y', NULL, '']"),
    _typed("float8_array", "ARRAY[CAST(1.5 AS DOUBLE PRECISION)]"),
    _typed("date_array", "ARRAY[DATE '2024-01-01']"),
    Case("nulls_typed", "SELECT CAST(NULL AS INTEGER) AS a, CAST(NULL AS TEXT) AS b, CAST(NULL AS DATE) AS c"),
    Case("null_untyped", "SELECT NULL AS n"),
    Case("coalesce_null", "SELECT coalesce(CAST(NULL AS INTEGER), 7) AS v"),
]

# --- the demo's data (mirrored into PostgreSQL) -----------------------------------------------

DATA_CASES = [
    Case("orders_all_columns", "SELECT * FROM sales.orders ORDER BY order_id"),
    Case("customers_all_columns", "SELECT * FROM crm.customers ORDER BY customer_id"),
    Case("encounters_readable_columns", "SELECT encounter_id, mrn, date_of_birth, encounter_type, encounter_at, region "
         "FROM clinical.encounters ORDER BY encounter_id LIMIT 50"),
    Case("employees_by_department",
         "SELECT department, count(*) AS n, sum(salary) AS total FROM hr.employees GROUP BY department",
         expect=Expect.SAME_ROWS_ANY_ORDER),
    Case("orders_join_customers",
         "SELECT o.order_id, c.full_name, o.amount FROM sales.orders o JOIN crm.customers c "
         "ON c.customer_id = o.customer_id WHERE o.amount > 2000 ORDER BY o.order_id"),
    Case("where_no_spaces", "SELECT order_id FROM sales.orders WHERE order_id<1000004 AND status='paid'"),
]

# --- issue 16, item 1: every placement of $n a client can produce -----------------------------

PARAMETER_CASES = [
    Case("param_no_spaces_select", "SELECT $1::integer AS a,$2::text AS b", (41, "x")),
    Case("param_no_spaces_insert", "INSERT INTO {t} VALUES ($1,$2)", (1, "a"), setup=(PRODUCT_TABLE,),
         check="SELECT id, name FROM {t} ORDER BY id"),
    Case("param_in_list_no_spaces", "SELECT order_id FROM sales.orders WHERE order_id IN ($1,$2,$3) ORDER BY 1",
         (1000001, 1000002, 1000005)),
    Case("param_comparison_no_spaces", "SELECT order_id FROM sales.orders WHERE order_id=$1", (1000003,)),
    Case("param_arithmetic", "SELECT $1::integer+$2::integer AS s", (2, 3)),
    Case("param_limit", ORDERS_FIRST_TEN.replace("ORDER BY order_id", "ORDER BY order_id LIMIT $1"), (3,)),
    Case("param_text_untyped", "SELECT order_id FROM sales.orders WHERE status=$1 AND order_id<$2 ORDER BY 1",
         ("paid", 1000020)),
    Case("param_update_no_spaces", "UPDATE {t} SET name=$1 WHERE id=$2", ("z", 2),
         setup=(PRODUCT_TABLE, "INSERT INTO {t} VALUES (1, 'a'), (2, 'b')"),
         check="SELECT id, name FROM {t} ORDER BY id"),
    Case("param_null", "SELECT $1::text IS NULL AS is_null", (None,)),
    Case("param_types", "SELECT $1::numeric AS n,$2::date AS d,$3::timestamptz AS ts,$4::uuid AS u,$5::boolean AS b",
         (decimal.Decimal("12.50"), dt.date(2024, 2, 29), dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
          uuid.UUID(int=7), True)),
    Case("executemany_no_spaces", "INSERT INTO {t} VALUES ($1,$2)", kind=Kind.EXECUTEMANY,
         rows=((1, "a"), (2, "b"), (3, None)), setup=(PRODUCT_TABLE,),
         check="SELECT id, name FROM {t} ORDER BY id"),
]

# --- item 3: arrays as parameters -------------------------------------------------------------

ARRAY_CASES = [
    Case("array_param_any_text", "SELECT order_id FROM sales.orders WHERE status = any($1) AND order_id < 1000011 "
         "ORDER BY 1", (["paid", "refunded"],)),
    Case("array_param_any_int", "SELECT order_id FROM sales.orders WHERE order_id = any($1) ORDER BY 1",
         ([1000001, 1000003, 1000007],)),
    Case("array_param_round_trip", "SELECT $1::integer[] AS a", ([1, None, 3],)),
]

# --- item 4: Postgres semantics clients depend on ---------------------------------------------

SEMANTICS_CASES = [
    Case("current_date_bare", "SELECT current_date"),
    Case("current_timestamp_bare", "SELECT current_timestamp", shape_only={0: NOW_VALUE}),
    Case("localtimestamp_bare", "SELECT localtimestamp", shape_only={0: NOW_VALUE}),
    Case("current_time_bare", "SELECT current_time", shape_only={0: NOW_VALUE}),
    Case("clock_functions_with_from", "SELECT current_date, current_timestamp FROM sales.orders WHERE order_id = "
         "1000001", shape_only={1: NOW_VALUE}),
    Case("integer_division_by_zero", "SELECT 1/0", expect=Expect.SAME_ERROR),
    Case("numeric_division_by_zero", "SELECT 1.0/0", expect=Expect.SAME_ERROR),
    Case("integer_division_truncates", "SELECT 7/2, -7/2, 7.0/2"),
    Case("integer_division_columns", "SELECT amount::integer / 7 AS q FROM sales.orders WHERE order_id < 1000006 "
         "ORDER BY order_id"),
    Case("session_functions_bare", "SELECT current_user, session_user, current_database(), current_schema()",
         shape_only={0: USER_VALUE, 1: USER_VALUE, 2: DATABASE_VALUE}),
    Case("session_functions_with_from", "SELECT current_user, current_database(), current_schema() "
         "FROM sales.orders WHERE order_id < 1000003",
         shape_only={0: USER_VALUE, 1: DATABASE_VALUE}),
    Case("current_user_is_session_user", "SELECT current_user = session_user AS same"),
    Case("current_schema_bare_keyword", "SELECT current_schema"),
    Case("current_schemas", "SELECT * FROM unnest(current_schemas(true))", name_as_text=NAME_AS_TEXT),
    Case("statement_timeout_seconds", "SHOW statement_timeout", setup=("SET statement_timeout = '1s'",),
         teardown=("RESET statement_timeout",)),
    Case("statement_timeout_milliseconds", "SHOW statement_timeout", setup=("SET statement_timeout = '500ms'",),
         teardown=("RESET statement_timeout",)),
    Case("statement_timeout_minutes", "SHOW statement_timeout", setup=("SET statement_timeout = '2min'",),
         teardown=("RESET statement_timeout",)),
    Case("statement_timeout_zero", "SHOW statement_timeout", setup=("SET statement_timeout = 0",),
         teardown=("RESET statement_timeout",)),
    Case("lock_timeout_units", "SHOW lock_timeout", setup=("SET lock_timeout = '1s'",),
         teardown=("RESET lock_timeout",)),
    Case("idle_in_transaction_timeout_units", "SHOW idle_in_transaction_session_timeout",
         setup=("SET idle_in_transaction_session_timeout = '2min'",),
         teardown=("RESET idle_in_transaction_session_timeout",)),
    Case("unaliased_aggregates", "SELECT count(*), sum(salary), min(hired_on), max(region), avg(salary) "
         "FROM hr.employees", numeric_scale=NUMERIC_SCALE),
    Case("unaliased_string_agg", "SELECT string_agg(status, ',' ORDER BY order_id) FROM sales.orders "
         "WHERE order_id < 1000006"),
    Case("sum_int_is_bigint", "SELECT sum(x) FROM (VALUES (1), (2), (3)) AS v(x)"),
    Case("sum_bigint_is_numeric", "SELECT sum(order_id), sum((customer_id % 100)::smallint) FROM sales.orders"),
    Case("avg_int_is_numeric", "SELECT avg(x) FROM (VALUES (1), (2)) AS v(x)", numeric_scale=NUMERIC_SCALE),
    Case("count_grouped_unaliased", "SELECT status, count(*) FROM sales.orders GROUP BY status",
         expect=Expect.SAME_ROWS_ANY_ORDER),
    Case("search_path_show", "SHOW search_path"),
    Case("search_path_unqualified", "SELECT count(*) FROM orders", setup=("SET search_path = sales",),
         teardown=("RESET search_path",)),
    Case("search_path_two_schemas", "SELECT e.full_name, c.full_name FROM employees e JOIN customers c "
         "ON c.customer_id - 1000000 = e.employee_id - 1000000 ORDER BY e.employee_id LIMIT 5",
         setup=("SET search_path TO hr, crm",), teardown=("RESET search_path",)),
    Case("search_path_set_then_show", "SHOW search_path", setup=("SET search_path TO hr, crm",),
         teardown=("RESET search_path",)),
    Case("search_path_current_schema", "SELECT current_schema()", setup=("SET search_path = sales",),
         teardown=("RESET search_path",)),
]

# --- item 2: COPY over the protocol -----------------------------------------------------------

COPY_ROWS = ((1, "a"), (2, None), (3, "tab\there"))

COPY_CASES = [
    Case("copy_out_text", ORDERS_FIRST_TEN, kind=Kind.COPY_OUT, copy_format="text"),
    Case("copy_out_csv", ORDERS_FIRST_TEN, kind=Kind.COPY_OUT, copy_format="csv"),
    Case("copy_out_binary", ORDERS_FIRST_TEN, kind=Kind.COPY_OUT, copy_format="binary"),
    Case("copy_out_table", "sales.orders", kind=Kind.COPY_OUT, copy_format="csv"),
    Case("copy_in_text", "{t}", kind=Kind.COPY_IN, copy_format="text", rows=COPY_ROWS, setup=(PRODUCT_TABLE,),
         check="SELECT id, name FROM {t} ORDER BY id"),
    Case("copy_in_csv", "{t}", kind=Kind.COPY_IN, copy_format="csv", rows=COPY_ROWS, setup=(PRODUCT_TABLE,),
         check="SELECT id, name FROM {t} ORDER BY id"),
]

# --- transactions, prepared statements, errors, writes ----------------------------------------

SESSION_CASES = [
    Case("transaction_rollback", "SELECT count(*) FROM {t}",
         setup=(PRODUCT_TABLE, "BEGIN", "INSERT INTO {t} VALUES (1, 'a')", "ROLLBACK")),
    Case("transaction_commit", "SELECT id, name FROM {t}",
         setup=(PRODUCT_TABLE, "BEGIN", "INSERT INTO {t} VALUES (1, 'a')", "COMMIT")),
    Case("transaction_aborted_after_error", "SELECT 1", expect=Expect.SAME_ERROR,
         setup=("BEGIN", "SELECT 1/0"), teardown=("ROLLBACK",)),
    Case("sql_prepare_execute", "EXECUTE matrix_plan(41)", setup=("PREPARE matrix_plan AS SELECT $1::integer + 1",),
         teardown=("DEALLOCATE matrix_plan",)),
    Case("insert_select_delete", "DELETE FROM {t} WHERE id > 1",
         setup=(PRODUCT_TABLE, "INSERT INTO {t} SELECT x, 'n' || x FROM generate_series(1, 3) AS g(x)"),
         check="SELECT id, name FROM {t} ORDER BY id"),
    Case("error_undefined_table", "SELECT * FROM sales.no_such_table", expect=Expect.SAME_ERROR),
    Case("error_undefined_column", "SELECT no_such_column FROM sales.orders", expect=Expect.SAME_ERROR),
    Case("error_syntax", "SELEC 1", expect=Expect.SAME_ERROR, error_position=True),
    Case("error_syntax_at_end", "SELECT order_id FROM sales.orders WHERE", expect=Expect.SAME_ERROR,
         error_position=True),
    Case("error_syntax_bad_token", "SELECT order_id FROM sales.orders WHERE order_id = = 1", expect=Expect.SAME_ERROR,
         error_position=True),
    Case("error_invalid_text", "SELECT CAST('abc' AS INTEGER)", expect=Expect.SAME_ERROR),
    Case("error_then_next_statement_works", "SELECT 2 AS ok", setup=("SELECT * FROM sales.no_such_table",)),
]

# --- psql discovery, pgcli's completion and \dt ------------------------------------------------

DISCOVERY_CASES = [
    Case("meta_dt_crm", "\\dt crm.*", kind=Kind.META, shape_only={3: OWNER_VALUE}, name_as_text=NAME_AS_TEXT),
    Case("meta_dt_sales", "\\dt sales.*", kind=Kind.META, shape_only={3: OWNER_VALUE}, name_as_text=NAME_AS_TEXT),
    Case("meta_d_table", "\\d sales.orders", kind=Kind.META),
    Case("meta_dn", "\\dn", kind=Kind.META, shape_only={1: OWNER_VALUE}, name_as_text=NAME_AS_TEXT),
    Case("pgcli_tables", "tables", kind=Kind.CATALOG, expect=Expect.SAME_ROWS_ANY_ORDER),
    Case("pgcli_table_columns", "table_columns", kind=Kind.CATALOG, expect=Expect.SAME_ROWS_ANY_ORDER),
    Case("pgcli_schemata", "schemata", kind=Kind.CATALOG, expect=Expect.SAME_ROWS_ANY_ORDER),
    Case("pgcli_search_path", "search_path", kind=Kind.CATALOG),
]

# --- SQLAlchemy 2 + pandas ---------------------------------------------------------------------

FRAME_CASES = [
    Case("read_sql_orders", "SELECT * FROM sales.orders ORDER BY order_id", kind=Kind.READ_SQL),
    Case("read_sql_employees", "SELECT employee_id, salary, hired_on, manager_id FROM hr.employees "
         "ORDER BY employee_id", kind=Kind.READ_SQL),
    Case("read_sql_with_params", "SELECT order_id, amount FROM sales.orders WHERE status = $1 ORDER BY order_id",
         ("paid",), kind=Kind.READ_SQL),
    Case("read_sql_table_orders", "sales.orders", kind=Kind.READ_SQL_TABLE, expect=Expect.SAME_ROWS_ANY_ORDER),
    Case("to_sql_round_trip", "{t}", kind=Kind.TO_SQL,
         columns=("id", "name", "score", "active", "seen_at"),
         rows=((1, "a", 0.5, True, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
               (2, None, None, False, dt.datetime(2024, 6, 1, tzinfo=dt.UTC)),
               (3, "c", -1.25, True, dt.datetime(2020, 2, 29, 23, 59, 59, tzinfo=dt.UTC)))),
]

CASES: list[Case] = [
    *TYPE_CASES, *DATA_CASES, *PARAMETER_CASES, *ARRAY_CASES, *SEMANTICS_CASES, *COPY_CASES, *SESSION_CASES,
    *DISCOVERY_CASES, *FRAME_CASES,
]
