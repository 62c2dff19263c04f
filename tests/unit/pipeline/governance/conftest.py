"""A real in-memory DuckDB with a demo-like warehouse, and the governance stages wired as the pipeline wires them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import duckdb
import pytest
import sqlglot

from engine_host.pipeline.governance.guard import check_statement, parse_statement
from engine_host.pipeline.governance.rewrite import MaskSpec, TablePolicy, apply_policies
from engine_host.pipeline.governance.tables import extract_tables
from engine_host.pipeline.governance.transpile import to_duckdb
from hd_core.policies import MaskFunction

COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "crm.customers": (("customer_id", "INTEGER"), ("org_id", "VARCHAR"), ("full_name", "VARCHAR"),
                      ("email", "VARCHAR"), ("ssn", "VARCHAR"), ("score", "INTEGER")),
    "sales.orders": (("order_id", "INTEGER"), ("org_id", "VARCHAR"), ("customer_id", "INTEGER"),
                     ("amount", "DECIMAL(10,2)")),
    "sales.refunds": (("refund_id", "INTEGER"), ("org_id", "VARCHAR"), ("full_name", "VARCHAR")),
    "main.notes": (("note_id", "INTEGER"), ("body", "VARCHAR")),
}

ACME_FILTER = "org_id = 'org_acme'"
MASKS = {"ssn": MaskSpec(MaskFunction.FULL, 0), "email": MaskSpec(MaskFunction.PARTIAL, 4),
         "full_name": MaskSpec(MaskFunction.HASH, 0), "score": MaskSpec(MaskFunction.NULL, 0)}


def resolve(catalog: str | None, schema: str | None, table: str) -> str | None:
    if catalog not in (None, "hd", "memory"):
        return None
    name = f"{schema or 'main'}.{table}"
    return name if name in COLUMNS else None


def policies() -> dict[str, TablePolicy]:
    row_filter = sqlglot.parse_one(ACME_FILTER)
    return {
        "crm.customers": TablePolicy("crm.customers", COLUMNS["crm.customers"], MASKS, row_filter),
        "sales.orders": TablePolicy("sales.orders", COLUMNS["sales.orders"], {}, row_filter),
        "sales.refunds": TablePolicy("sales.refunds", COLUMNS["sales.refunds"],
                                     {"full_name": MaskSpec(MaskFunction.HASH, 0)}, row_filter),
        "main.notes": TablePolicy("main.notes", COLUMNS["main.notes"], {}, None),
    }


def governed_sql(sql: str, dialect: str = "postgres") -> str:
    """What the pipeline would run for `sql` in a session governed by `policies()`."""
    parsed = parse_statement(sql, dialect)
    check_statement(parsed)
    refs = extract_tables(parsed, resolve)
    sql = to_duckdb(apply_policies(parsed, refs, policies()), parsed)
    return f"EXPLAIN {sql}" if parsed.explain else sql


@pytest.fixture
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(":memory:")
    # As in the engine: the data in the `hd_data` catalog, client names resolving in the empty default one.
    con.execute("ATTACH ':memory:' AS hd_keys; ATTACH ':memory:' AS hd_data; USE hd_data")
    con.execute("CREATE SCHEMA crm; CREATE SCHEMA sales")
    con.execute("CREATE MACRO hd_keys.hd_mask_hash(v) AS md5('key' || v)")
    con.execute("CREATE MACRO hd_keys.hd_mask_hash_redacted(v) AS md5(v)")
    con.execute("CREATE TABLE crm.customers (customer_id INTEGER, org_id VARCHAR, full_name VARCHAR, "
                "email VARCHAR, ssn VARCHAR, score INTEGER)")
    con.execute("""INSERT INTO crm.customers VALUES
        (1, 'org_acme', 'Ada Lovelace', 'ada@acme.io', '123-45-6789', 10),
        (2, 'org_acme', 'Alan Turing', 'alan@acme.io', '234-56-7890', 20),
        (3, 'org_other', 'Grace Hopper', 'grace@other.io', '987-65-4321', 30),
        (4, 'org_acme', 'Null Mail', NULL, NULL, NULL)""")
    con.execute("CREATE TABLE sales.orders (order_id INTEGER, org_id VARCHAR, customer_id INTEGER, "
                "amount DECIMAL(10,2))")
    con.execute("""INSERT INTO sales.orders VALUES (10, 'org_acme', 1, 100.00), (11, 'org_acme', 2, 50.00),
        (12, 'org_other', 3, 999.00), (13, 'org_acme', 1, 25.50)""")
    con.execute("CREATE TABLE sales.refunds (refund_id INTEGER, org_id VARCHAR, full_name VARCHAR)")
    con.execute("""INSERT INTO sales.refunds VALUES (1, 'org_acme', 'Ada Lovelace'),
        (2, 'org_other', 'Grace Hopper')""")
    con.execute("CREATE TABLE main.notes (note_id INTEGER, body VARCHAR)")
    con.execute("INSERT INTO main.notes VALUES (1, 'hello')")
    con.execute("USE memory")
    yield con
    con.close()


Run = Callable[..., list[tuple]]


@pytest.fixture
def run(db: duckdb.DuckDBPyConnection) -> Run:
    def execute(sql: str, dialect: str = "postgres", params: list | None = None) -> list[tuple]:
        return db.execute(governed_sql(sql, dialect), params or []).fetchall()

    return execute
