"""Shadow mode's comparison on real results: the 22 TPC-H queries on PostgreSQL and on DuckDB agree.

TPC-H SF0.01 is generated with `tpchgen-cli`, loaded into the real PostgreSQL (HD_TEST_PG_DSN,
default 127.0.0.1:5432) and into an in-process DuckDB, and every query's two results are streamed
through `compare_results` as a replay would: PostgreSQL inside `BEGIN READ ONLY` through a
server-side cursor, DuckDB batch by batch, each side typed by PostgreSQL type OIDs (DuckDB's through
the engine's own type table). The types differ where the engines differ (avg() is numeric on one side
and double on the other), so each verdict must be exact or semantic, never mismatch. Planted
differences on the same data must be caught. Skips, saying why, when no PostgreSQL is reachable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from engine_host.pgcompat.types.table import pg_type_for_duckdb
from hd_core.shadow.compare import Comparison, ResultColumns, SideError, SideOutcome, SideResult, compare_results
from hd_core.shadow.report import StatementResult, build_report
from tests.e2e.tpch_queries import QUERIES
from tests.tpch_data import TPCH_TABLES, drop_schema, generate_tpch, load_tpch_into_postgres

BATCH_ROWS = 50


@pytest.fixture(scope="module")
def tpch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_tpch(tmp_path_factory.mktemp("shadow-tpch"), 0.01)


@pytest.fixture(scope="module")
def tpch_pg(reference_pg: str, tpch_files: dict[str, Path]) -> Iterator[str]:
    """The data in PostgreSQL under a schema of its own (dropped at the end)."""
    schema = f"shadow_tpch_{uuid.uuid4().hex[:8]}"
    load_tpch_into_postgres(reference_pg, schema, tpch_files)
    yield schema
    drop_schema(reference_pg, schema)


def _duckdb(files: dict[str, Path], changes: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA tpch")
    for table in TPCH_TABLES:
        con.execute(f"CREATE TABLE tpch.{table} AS SELECT * FROM read_parquet(?)", [str(files[table])])
    for change in changes:
        con.execute(change)
    con.execute("SET search_path = 'tpch'")
    return con


@pytest.fixture(scope="module")
def tpch_duckdb(tpch_files: dict[str, Path]) -> Iterator[duckdb.DuckDBPyConnection]:
    con = _duckdb(tpch_files)
    yield con
    con.close()


class Timed:
    """Milliseconds spent running a statement and reading its batches (filled in as they are read)."""

    def __init__(self) -> None:
        self.ms = 0.0

    def batches(self, fetch: Any) -> Iterator[list[tuple[Any, ...]]]:
        while True:
            started = time.perf_counter()
            rows = fetch(BATCH_ROWS)
            self.ms += (time.perf_counter() - started) * 1000
            if not rows:
                return
            yield rows


def _postgres_side(dsn: str, schema: str, sql: str, timer: Timed) -> Iterator[SideOutcome]:
    """Run `sql` as a replay does (READ ONLY, statement_timeout, server-side cursor) and yield its outcome."""
    with psycopg.connect(dsn) as conn:
        conn.read_only = True  # the first statement opens the transaction with BEGIN READ ONLY
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute(f"SET LOCAL search_path = {schema}")
        conn.execute("SET LOCAL statement_timeout = '60s'")
        try:
            with conn.cursor(name="shadow") as cursor:
                started = time.perf_counter()
                cursor.execute(sql)
                first = cursor.fetchmany(BATCH_ROWS)
                timer.ms += (time.perf_counter() - started) * 1000
                assert cursor.description is not None
                columns = ResultColumns(tuple(c.name for c in cursor.description),
                                        tuple(c.type_code for c in cursor.description))
                yield SideResult(columns, _chain(first, timer.batches(cursor.fetchmany)))
        except psycopg.Error as error:
            yield SideError(error.sqlstate or "XX000", str(error))
        finally:
            conn.rollback()


def _chain(first: list[tuple[Any, ...]], rest: Iterator[list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
    if first:
        yield first
        yield from rest


def _duckdb_side(con: duckdb.DuckDBPyConnection, sql: str, timer: Timed) -> SideOutcome:
    cursor = con.cursor()
    cursor.execute("SET search_path = 'tpch'")
    try:
        started = time.perf_counter()
        cursor.execute(sql)
        timer.ms += (time.perf_counter() - started) * 1000
    except duckdb.Error as error:
        return SideError("XX000", str(error))
    description = cursor.description or []
    columns = ResultColumns(tuple(d[0] for d in description), tuple(pg_type_for_duckdb(d[1]).oid for d in description))
    return SideResult(columns, timer.batches(cursor.fetchmany))


def _replay(dsn: str, schema: str, con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Comparison, float, float]:
    reference_time, engine_time = Timed(), Timed()
    outcomes = _postgres_side(dsn, schema, sql, reference_time)
    reference = next(outcomes)
    engine = _duckdb_side(con, sql, engine_time)
    comparison = compare_results(sql, reference, engine)  # consumes both streams
    outcomes.close()
    return comparison, reference_time.ms, engine_time.ms


def test_the_22_tpch_queries_agree_exactly_or_semantically(reference_pg, tpch_pg, tpch_duckdb):
    results = []
    for number, sql in sorted(QUERIES.items()):
        comparison, reference_ms, engine_ms = _replay(reference_pg, tpch_pg, tpch_duckdb, sql)
        results.append(StatementResult(number, number, sql, comparison, reference_ms, engine_ms))
    report = build_report("tpch-sf0.01", results)
    problems = {r.index: r.comparison.to_dict() for r in report.statements
                if r.comparison.verdict not in ("exact", "semantic")}
    assert not problems, problems
    assert report.count("exact") + report.count("semantic") == report.query_count == 22
    assert all(r.comparison.reference_rows for r in report.statements), "a query answered no rows: it proves nothing"
    # The engines type avg() differently, so some verdicts are semantic: the comparison is not trivially exact.
    assert report.count("semantic") >= 1
    assert report.reference.count == report.engine.count == 22 and report.speedup_p50 is not None


@pytest.mark.parametrize(("changes", "sql", "verdict"), [
    # One line item's price changed (by 1000: +1 on a 1e9 sum is within the 1e-9 tolerance): an aggregate differs.
    (("UPDATE tpch.lineitem SET l_extendedprice = l_extendedprice + 1000 WHERE l_orderkey = 1 AND l_linenumber = 1",),
     QUERIES[1], "mismatch"),
    # One nation missing: a row count differs.
    (("DELETE FROM tpch.nation WHERE n_nationkey = 7",), "SELECT n_nationkey, n_name FROM nation", "mismatch"),
    # A column of another type with equal values: bigint keys read as numeric.
    (("ALTER TABLE tpch.region ALTER r_regionkey TYPE DECIMAL(10, 2)",), "SELECT r_regionkey, r_name FROM region",
     "semantic"),
    # PostgreSQL refuses an integer division by zero; DuckDB answers infinity.
    ((), "SELECT n_nationkey / 0 FROM nation", "error"),
])
def test_planted_differences_on_the_same_data_are_classified(reference_pg, tpch_pg, tpch_files, changes, sql,
                                                               verdict):
    con = _duckdb(tpch_files, changes)
    try:
        comparison, _, _ = _replay(reference_pg, tpch_pg, con, sql)
    finally:
        con.close()
    assert comparison.verdict == verdict, comparison
    if verdict == "error":
        assert [(e.side, e.sqlstate) for e in comparison.errors] == [("reference", "22012")]
