"""A session runs a repeated parameterless read through the DuckDB plan it kept, and never a stale one.

The plan of a statement's text is kept (a DuckDB prepared statement) so binding and optimising is paid
once per session; DuckDB binds it again by itself when what it read was replaced, which these tests
pin down for what the engine replaces under running sessions: a table's view (a new native copy), a
mask macro (a new key) and a table dropped and created with other columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from engine_host.engine import duckdb_engine
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database, EngineSession


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    def setup(con: duckdb.DuckDBPyConnection) -> None:
        for name, value in (("copy_a", 1), ("copy_b", 2)):
            con.execute(f"ATTACH '{tmp_path / name}.duckdb' AS {name}")
            con.execute(f"CREATE TABLE {name}.t AS SELECT {value} AS x")
        con.execute(f"CREATE VIEW {DATA_CATALOG}.main.v AS SELECT x FROM copy_a.t")
        con.execute("ATTACH ':memory:' AS keys")  # as the mask macros live in their own catalog
        con.execute("CREATE MACRO keys.main.mask(v) AS v || '-old'")

    db = Database(tmp_path / "engine.duckdb", allowed_directories=[tmp_path])
    db.open(setup=[setup])
    yield db
    db.close()


def _read(session: EngineSession, sql: str) -> list[tuple[object, ...]]:
    stream = session.run(sql, reuse_plan=True)
    try:
        table = []
        while (batch := stream.next_batch()) is not None:
            table.extend(zip(*(column.to_pylist() for column in batch.columns), strict=True))
        return table
    finally:
        stream.close()


def _kept(session: EngineSession) -> list[str]:
    return list(session._plans._names)


def test_a_repeated_read_runs_the_plan_kept_for_its_text(database: Database,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    session = database.session()
    sql = f"SELECT x FROM {DATA_CATALOG}.main.v"
    prepared: list[str] = []
    real = session._plans._cursor

    class Counting:
        def execute(self, text: str, *args: object) -> object:
            prepared.append(text.split()[0])
            return real.execute(text, *args)

    monkeypatch.setattr(session._plans, "_cursor", Counting())
    assert _read(session, sql) == [(1,)]
    assert _read(session, sql) == [(1,)]
    assert _read(session, sql) == [(1,)]
    assert prepared == ["PREPARE"] and _kept(session) == [sql]
    session.close()


def test_a_kept_plan_reads_the_view_that_replaced_the_one_it_was_planned_on(database: Database) -> None:
    session = database.session()
    sql = f"SELECT x FROM {DATA_CATALOG}.main.v"
    assert _read(session, sql) == [(1,)]
    database.connection.execute(f"CREATE OR REPLACE VIEW {DATA_CATALOG}.main.v AS SELECT x FROM copy_b.t")
    assert _read(session, sql) == [(2,)]
    session.close()


def test_a_kept_plan_uses_the_macro_that_replaced_the_one_it_was_planned_with(database: Database) -> None:
    session = database.session()
    sql = "SELECT keys.main.mask('a') AS m"
    assert _read(session, sql) == [("a-old",)]
    database.connection.execute("CREATE OR REPLACE MACRO keys.main.mask(v) AS v || '-new'")
    assert _read(session, sql) == [("a-new",)]
    session.close()


def test_a_kept_plan_follows_a_table_dropped_and_created_with_other_columns(database: Database) -> None:
    session = database.session()
    con = database.connection
    con.execute(f"CREATE TABLE {DATA_CATALOG}.main.w AS SELECT 1 AS a, 2 AS b")
    sql = f"SELECT * FROM {DATA_CATALOG}.main.w"
    assert _read(session, sql) == [(1, 2)]
    con.execute(f"DROP TABLE {DATA_CATALOG}.main.w")
    con.execute(f"CREATE TABLE {DATA_CATALOG}.main.w AS SELECT 'c' AS c")
    assert _read(session, sql) == [("c",)]
    con.execute(f"DROP TABLE {DATA_CATALOG}.main.w")
    with pytest.raises(duckdb.CatalogException, match="w does not exist"):
        _read(session, sql)
    session.close()


def test_a_read_that_cannot_be_planned_fails_as_written_and_is_not_kept(database: Database) -> None:
    session = database.session()
    sql = f"SELECT nope FROM {DATA_CATALOG}.main.v"
    with pytest.raises(duckdb.BinderException) as failure:
        _read(session, sql)
    assert "PREPARE" not in str(failure.value) and "hd_plan" not in str(failure.value)
    assert _kept(session) == []
    session.close()


def test_a_session_keeps_a_bounded_number_of_plans_and_drops_the_least_recently_used(
        database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_engine, "PREPARED_PLANS_PER_SESSION", 3)
    session = database.session()
    texts = [f"SELECT {n} AS n" for n in range(4)]
    for sql in texts[:3]:
        _read(session, sql)
    _read(session, texts[0])  # used again: the second is now the least recently used
    _read(session, texts[3])
    assert _kept(session) == [texts[2], texts[0], texts[3]]
    dropped = session._cursor.execute("SELECT 1")  # the connection still works after DEALLOCATE
    assert dropped.fetchall() == [(1,)]
    with pytest.raises(duckdb.Error):
        session._cursor.execute("EXECUTE hd_plan_1")  # texts[1]'s statement was deallocated
    session.close()


def test_writes_and_statements_with_values_are_never_kept(database: Database) -> None:
    session = database.session()
    session.run(f"CREATE TABLE {DATA_CATALOG}.main.u (x INT)").close()
    session.run(f"INSERT INTO {DATA_CATALOG}.main.u VALUES (1)").close()
    stream = session.run(f"SELECT x FROM {DATA_CATALOG}.main.u WHERE x = $1", [1], reuse_plan=True)
    stream.close()
    assert _kept(session) == []
    session.close()
