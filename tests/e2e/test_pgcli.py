"""pgcli's discovery and completion against the engine, compared with PostgreSQL 15.

pgcli learns a database through its `PGExecute` class (completion: schemata, tables, views, columns,
functions, types, casing, search_path, foreign keys) and lists objects through pgspecial's backslash
commands, which send their own catalog queries (some with client-side bound lists). Each call runs on the
engine and on the reference PostgreSQL, where the demo's tables are mirrored into a scratch database under
the same schema, table and column names and types (tests/e2e/client_matrix/mirror.py; `main` in place
of `public`, as the engine has it). The module has a host of its own: casing() and foreignkeys() read every
name and key a host holds, so tables other modules leave on the shared host would differ from the mirror.
User relations are compared on the demo's schemas; catalog relations on the ones both servers list, with PostgreSQL's
shape. What must differ is named where it is compared: owners (`hd` vs `postgres`), the database list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgcli.pgexecute import PGExecute
from pgspecial.main import PGSpecial

from tests.e2e.client_matrix.cases import DEMO_SCHEMAS
from tests.e2e.client_matrix.mirror import scratch_database
from tests.harness import EngineHostProcess, start_engine_host

CATALOG_SCHEMAS = ("pg_catalog", "information_schema")


@pytest.fixture(scope="module")
def engine_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    """This module's own `hd dev --demo` host (it overrides the session's shared one here)."""
    host = start_engine_host(tmp_path_factory.mktemp("hd-pgcli"), "--demo", "--insecure-plaintext")
    yield host
    host.stop()


def _connect(dsn: str) -> PGExecute:
    return PGExecute(dsn=dsn)


@pytest.fixture(scope="module")
def clients(engine_host, reference_pg) -> Iterator[tuple[PGExecute, PGExecute]]:
    """(engine as the Owner, PostgreSQL over the mirrored demo tables), both through pgcli's PGExecute."""
    with scratch_database(reference_pg, engine_host.dsn()) as pg_dsn:
        engine, pg = _connect(engine_host.dsn()), _connect(pg_dsn)
        yield engine, pg
        engine.conn.close()
        pg.conn.close()


def _special(client: PGExecute, command: str) -> tuple[list[str] | None, list[tuple[Any, ...]]]:
    """(headers, rows) of a backslash command run as pgcli runs it; fails on a pgcli-reported error."""
    results = list(client.run(command, pgspecial=PGSpecial()))
    assert len(results) == 1
    _title, rows, headers, status, _sql, success, _special_cmd = results[0]
    assert success, status
    return headers, [tuple(row) for row in rows or []]


def _user(relations: list[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {r for r in relations if r[0] in DEMO_SCHEMAS}


def _catalog(relations: list[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {r for r in relations if r[0] in CATALOG_SCHEMAS}


def test_schemata_are_postgres_schemas(clients):
    engine, pg = clients
    listed = set(engine.schemata())
    assert set(DEMO_SCHEMAS) | {"main", *CATALOG_SCHEMAS} <= listed
    # PostgreSQL lists the same ones (and its pg_toast and temp schemas; other modules' schemas only the engine).
    assert {s for s in listed if s in DEMO_SCHEMAS + CATALOG_SCHEMAS + ("main",)} <= set(pg.schemata())


def test_tables_and_views_list_the_same_relations(clients):
    engine, pg = clients
    tables, views = list(engine.tables()), list(engine.views())
    pg_tables, pg_views = list(pg.tables()), list(pg.views())
    assert _user(tables) == _user(pg_tables)
    assert ("crm", "customers") in _user(tables)
    assert _user(views) == _user(pg_views)
    # The catalog relations the engine lists are PostgreSQL's, of the same kind (a catalog table is no view).
    assert _catalog(tables) <= _catalog(pg_tables)
    assert _catalog(views) <= _catalog(pg_views)
    assert ("pg_catalog", "pg_class") in _catalog(tables) and ("information_schema", "tables") in _catalog(views)


def test_columns_match_postgres(clients):
    engine, pg = clients
    columns = list(engine.table_columns())
    assert _user(columns) == _user(list(pg.table_columns()))
    assert ("crm", "customers", "customer_id", "bigint", False, None) in columns
    # Catalog views have PostgreSQL's columns in PostgreSQL's order.
    view_columns = list(engine.view_columns())
    pg_view_columns = list(pg.view_columns())
    for schema, view in _catalog(list(engine.views())):
        ours = [c[2] for c in view_columns if c[:2] == (schema, view)]
        theirs = [c[2] for c in pg_view_columns if c[:2] == (schema, view)]
        assert ours == theirs, f"{schema}.{view}"


def test_functions_complete_the_callable_builtins(clients):
    engine, pg = clients
    functions = list(engine.functions())
    pg_signatures = {(f.schema_name, f.func_name, f.arg_types, f.return_type, f.is_aggregate, f.is_window)
                     for f in pg.functions()}
    signatures = {(f.schema_name, f.func_name, f.arg_types, f.return_type, f.is_aggregate, f.is_window)
                  for f in functions}
    assert {f.schema_name for f in functions} == {"pg_catalog"}  # the demo defines no functions of its own
    for expected in (("pg_catalog", "lower", ("text",), "text", False, False),
                     ("pg_catalog", "upper", ("text",), "text", False, False),
                     ("pg_catalog", "row_number", None, "bigint", False, True),
                     ("pg_catalog", "sum", ("numeric",), "numeric", True, False)):
        assert expected in signatures
        assert expected in pg_signatures
    assert len({f.func_name for f in functions}) > 300


def test_types_casing_search_path_and_foreign_keys_match_postgres(clients):
    engine, pg = clients
    assert list(engine.datatypes()) == list(pg.datatypes()) == []  # no user-defined types on either side
    assert list(engine.casing()) == list(pg.casing())
    assert list(engine.search_path()) == list(pg.search_path()) == ["pg_catalog", "main"]
    assert list(engine.foreignkeys()) == list(pg.foreignkeys())


@pytest.mark.parametrize("command", ["\\dt crm.*", "\\dt *.*", "\\dv", "\\dt"])
def test_relation_listings_match_postgres(clients, command):
    engine, pg = clients
    headers, rows = _special(engine, command)
    pg_headers, pg_rows = _special(pg, command)
    assert headers == pg_headers == ["Schema", "Name", "Type", "Owner"]
    # Owners differ by design (the engine's Owner role is `hd`); schema, name and type must not.
    def listed(found: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        return {row[:3] for row in found if row[0] in (*DEMO_SCHEMAS, "main")}

    assert listed(rows) == listed(pg_rows)
    if command == "\\dt crm.*":
        assert listed(rows) == {("crm", "customers", "table")}


def test_describe_table_matches_postgres(clients):
    engine, pg = clients
    assert _special(engine, "\\d crm.customers") == _special(pg, "\\d crm.customers")


def test_schema_function_and_database_listings(clients):
    engine, pg = clients
    headers, schemas = _special(engine, "\\dn")
    pg_headers, pg_schemas = _special(pg, "\\dn")
    assert headers == pg_headers
    ours = {s[0] for s in schemas if s[0] in (*DEMO_SCHEMAS, "main")}
    assert ours == {s[0] for s in pg_schemas if s[0] in (*DEMO_SCHEMAS, "main")} == {*DEMO_SCHEMAS, "main"}
    # \df lists functions outside pg_catalog: none on either side.
    assert _special(engine, "\\df") == _special(pg, "\\df")
    headers, databases = _special(engine, "\\l")
    assert headers == _special(pg, "\\l")[0]
    assert [d[0] for d in databases] == ["hd"]  # the one served database (PostgreSQL lists its own)


@pytest.fixture(scope="module")
def owners_table(engine_host) -> tuple[str, str]:
    """A table of the Owner's organisation in a schema of its own: no other organisation may see it."""
    schema = f"pgcli_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.ledger (entry_id INTEGER, amount NUMERIC(10, 2))")
    return schema, "ledger"


def test_the_analyst_sees_only_what_the_analyst_may_read(engine_host, clients, owners_table):
    owner, _ = clients
    schema, table = owners_table
    analyst = _connect(engine_host.demo_dsn("acme-analyst"))
    globex = _connect(engine_host.demo_dsn("globex-analyst"))
    try:
        owners = {r for r in owner.tables() if r[0] not in CATALOG_SCHEMAS}
        assert owners_table in owners
        assert _special(owner, f"\\dt {schema}.*")[1] == [(schema, table, "table", "hd")]
        analysts = {r for r in analyst.tables() if r[0] not in CATALOG_SCHEMAS}
        assert ("crm", "customers") in analysts and analysts <= owners
        assert _special(analyst, "\\dt crm.*")[1] == [("crm", "customers", "table", "hd")]
        assert {c[:2] for c in analyst.table_columns() if c[0] not in CATALOG_SCHEMAS} <= analysts
        assert list(analyst.casing()) == list(owner.casing())
        assert {f.func_name for f in analyst.functions()} == {f.func_name for f in owner.functions()}
        # Another organisation's analyst: the Owner's table is in no answer, its schema empty.
        assert owners_table not in set(globex.tables())
        assert owners_table not in {c[:2] for c in globex.table_columns()}
        assert owners_table not in {row[:2] for row in _special(globex, "\\dt *.*")[1]}
        assert _special(globex, f"\\dt {schema}.*")[1] == []
        assert _special(globex, f"\\d {schema}.{table}")[1] == []
    finally:
        analyst.conn.close()
        globex.conn.close()
