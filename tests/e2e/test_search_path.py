"""search_path is honoured for unqualified names, as PostgreSQL honours it (issue 16 item 4).

The proof: with `SET search_path = tpch` the 22 TPC-H queries run unchanged (unqualified names) over
SF0.01 Parquet tables and give PostgreSQL's results on the same data. Around it: path order, missing
schemas skipped, where an unqualified CREATE goes, the plan cache keyed on the path, and another
organisation's table neither found nor shadowing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.tpch_queries import QUERIES
from tests.harness import EngineHostProcess, start_engine_host
from tests.tpch_data import TPCH_TABLES, drop_schema, generate_tpch, load_tpch_into_postgres


@pytest.fixture(scope="module")
def tpch_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SF0.01 as <schema>/<table>/*.parquet under a host's data folder."""
    state = tmp_path_factory.mktemp("hd-tpch")
    for table, generated in generate_tpch(state / "generated", 0.01).items():
        folder = state / "data" / "tpch" / table
        folder.mkdir(parents=True)
        generated.rename(folder / f"{table}.parquet")
    return state


@pytest.fixture(scope="module")
def tpch_host(tpch_data: Path) -> Iterator[EngineHostProcess]:
    host = start_engine_host(tpch_data, "--insecure-plaintext")
    yield host
    host.stop()


@pytest.fixture(scope="module")
def tpch_pg(reference_pg: str, tpch_data: Path) -> Iterator[str]:
    """The same data in PostgreSQL, schema tpch_<random> (so parallel runs do not collide)."""
    schema = f"tpch_{uuid.uuid4().hex[:8]}"
    load_tpch_into_postgres(reference_pg, schema, {
        table: tpch_data / "data" / "tpch" / table / f"{table}.parquet" for table in TPCH_TABLES})
    yield schema
    drop_schema(reference_pg, schema)


def _normalised(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    def value(v: object) -> object:
        if isinstance(v, (decimal.Decimal, float)):
            return round(float(v), 2)
        if isinstance(v, dt.date):
            return v.isoformat()
        return v

    return [tuple(value(v) for v in row) for row in rows]


@pytest.fixture(scope="module")
def tpch_sessions(tpch_host: EngineHostProcess, reference_pg: str, tpch_pg: str) -> Iterator[
        tuple[psycopg.Connection, psycopg.Connection]]:
    ours = psycopg.connect(tpch_host.dsn(sslmode="disable"), autocommit=True)
    theirs = psycopg.connect(reference_pg, autocommit=True)
    ours.execute("SET search_path = tpch")
    theirs.execute(f"SET search_path = {tpch_pg}")
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.mark.parametrize("number", sorted(QUERIES))
def test_tpch_query_runs_unchanged_under_search_path(tpch_sessions, number):
    ours, theirs = tpch_sessions
    expected = _normalised(theirs.execute(QUERIES[number]).fetchall())
    got = _normalised(ours.execute(QUERIES[number]).fetchall())
    assert got == expected
    assert expected, "the reference answered no rows: the comparison would prove nothing"


# --- path semantics, on the demo host ---------------------------------------------------------


def _one(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_unqualified_names_resolve_along_the_path_in_order(engine_host):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT count(*) FROM customers")  # the default path is main
        conn.execute("SET search_path = nosuch, crm, hr")  # a missing schema is skipped
        assert _one(conn, "SHOW search_path") == "nosuch, crm, hr"
        assert _one(conn, "SELECT current_schemas(false)") == ["crm", "hr"]
        assert _one(conn, "SELECT current_schemas(true)") == ["pg_catalog", "crm", "hr"]
        assert _one(conn, "SELECT count(*) FROM customers") == _one(conn, "SELECT count(*) FROM crm.customers")
        assert _one(conn, "SELECT count(*) FROM employees") == _one(conn, "SELECT count(*) FROM hr.employees")


def test_the_first_schema_holding_the_name_wins_and_plans_follow_the_path(engine_host):
    first, second = f"sp_a_{uuid.uuid4().hex[:6]}", f"sp_b_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        for schema, value in ((first, 1), (second, 2)):
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.t AS SELECT {value} AS v")
        conn.execute(f"SET search_path = {first}, {second}")
        assert _one(conn, "SELECT v FROM t") == 1
        conn.execute(f"SET search_path = {second}, {first}")
        assert _one(conn, "SELECT v FROM t") == 2  # the same text, another plan


def test_unqualified_create_goes_to_the_first_existing_schema(engine_host, reference_pg):
    schema = f"sp_new_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = nosuch, {schema}, main")
        conn.execute("CREATE TABLE made_here (x int)")
        conn.execute("INSERT INTO made_here VALUES (7)")
        assert _one(conn, f"SELECT x FROM {schema}.made_here") == 7
    refusals = []
    for dsn in (engine_host.dsn(), reference_pg):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET search_path = nosuch")
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("CREATE TABLE nowhere_to_go (x int)")
            refusals.append((caught.value.sqlstate, caught.value.diag.message_primary))
    assert refusals[0] == refusals[1] == ("3F000", "no schema has been selected to create in")


def test_another_organisations_table_is_not_found_through_the_path(engine_host):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as owner:
        schema = f"sp_acme_{uuid.uuid4().hex[:6]}"
        owner.execute(f"CREATE SCHEMA {schema}")
        owner.execute(f"CREATE TABLE {schema}.secret AS SELECT 1 AS v")
    with psycopg.connect(engine_host.demo_dsn("globex-analyst"), autocommit=True) as conn:
        conn.execute(f"SET search_path = {schema}")
        with pytest.raises(psycopg.errors.UndefinedTable) as unqualified:
            conn.execute("SELECT v FROM secret")
        with pytest.raises(psycopg.errors.UndefinedTable) as missing:
            conn.execute("SELECT v FROM no_such_table_here")
    assert unqualified.value.diag.message_hint == missing.value.diag.message_hint
    assert str(unqualified.value).replace("secret", "X") == str(missing.value).replace("no_such_table_here", "X")
