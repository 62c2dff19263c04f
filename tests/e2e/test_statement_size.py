"""Statement size: work outside DuckDB grows linearly, counts against statement_timeout, and stops on cancel.

Before issue 14 a 100,000-value IN list kept audit redaction busy for minutes after DuckDB had
finished, and 65,535 bind parameters ended the connection ("negative parameter count").
"""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest

from tests.e2e.protocols import PROTOCOLS, refused
from tests.harness import EngineHostProcess


def in_list(count: int) -> str:
    """A count over a governed table with an IN list of `count` short literals (~2 characters each)."""
    return "SELECT count(*) FROM crm.customers WHERE customer_id IN (" + ",".join(
        str(i % 10) for i in range(count)) + ")"


def _timed(conn: psycopg.Connection, sql: str) -> float:
    started = time.perf_counter()
    conn.execute(sql).fetchall()
    return time.perf_counter() - started


LONG = 60_000


@pytest.fixture(scope="module")
def unbounded_seconds(engine_host: EngineHostProcess) -> float:
    """How long a LONG-value IN list takes with no timeout and no cancel (each run's text is new)."""
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        return _timed(conn, in_list(LONG) + " AND 0 = 0")


@pytest.mark.slow  # times statements of 10x the size: CI runs it (`pytest -m slow`)
def test_a_ten_times_longer_in_list_costs_at_most_about_ten_times_as_much(engine_host: EngineHostProcess) -> None:
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        _timed(conn, in_list(1_000))  # warm-up: sqlglot's and DuckDB's first-use costs
        small = min(_timed(conn, in_list(6_000) + f" AND {i} = {i}") for i in range(2))
        large = _timed(conn, in_list(60_000))
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
    # Linear work gives ~10x; a quadratic stage gives ~100x. 25x leaves room for a noisy machine.
    assert large < 25 * small + 1.0, (small, large)


@pytest.mark.slow  # binds 65,535 parameters: CI runs it (`pytest -m slow`)
def test_psycopg_executes_a_statement_with_65535_parameters(engine_host: EngineHostProcess) -> None:
    count = 65_535
    sql = "SELECT count(*), sum(x) FROM range(70000) AS t(x) WHERE x IN (" + ",".join(["%s"] * count) + ")"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        assert conn.execute(sql, list(range(count)), prepare=True).fetchall() == [(count, count * (count - 1) // 2)]
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_asyncpg_executes_a_statement_with_as_many_parameters_as_it_can_send(engine_host: EngineHostProcess) -> None:
    count = 32_767  # asyncpg's own limit ("the number of query arguments cannot exceed 32767")

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user=engine_host.user,
                                     password=engine_host.password, database="hd", ssl=False)
        try:
            sql = "SELECT count(*) FROM range(40000) AS t(x) WHERE x IN (" + ",".join(
                f"${i + 1}" for i in range(count)) + ")"
            return list(await conn.fetch(sql, *range(count)))
        finally:
            await conn.close()

    assert [tuple(r) for r in asyncio.run(run())] == [(count,)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_statement_timeout_counts_the_stages_before_duckdb(engine_host: EngineHostProcess, protocol: str,
                                                           unbounded_seconds: float) -> None:
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 50")
        started = time.perf_counter()
        error = refused(conn, in_list(LONG) + f" AND '{protocol}' = '{protocol}'", protocol)
        took = time.perf_counter() - started
        assert (error.sqlstate, error.diag.message_detail) == ("57014", "HD_ERR_STATEMENT_TIMEOUT")
        conn.execute("SET statement_timeout = 0")
        assert conn.execute("SELECT 2").fetchall() == [(2,)]
    assert took < unbounded_seconds, (took, unbounded_seconds)


def test_a_cancel_stops_a_statement_while_it_is_still_being_planned(engine_host: EngineHostProcess,
                                                                     unbounded_seconds: float) -> None:
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.05, conn.cancel)
        timer.start()
        started = time.perf_counter()
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute(in_list(LONG) + " AND 2 = 2").fetchall()
        took = time.perf_counter() - started
        timer.join()
        assert caught.value.diag.message_detail == "HD_ERR_CANCELED"
        assert conn.execute("SELECT 3").fetchall() == [(3,)]
    assert took < unbounded_seconds, (took, unbounded_seconds)
