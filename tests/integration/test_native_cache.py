"""Native copies of served tables (engine_host/data/native_tables.py), on real DuckDB under the engine's lockdown.

A folder table is served from its Parquet view until its copy is built in the background, then from a
read-only attached database file; a change at the source falls back to Parquet at once and rebuilds,
while a statement that already holds the old copy keeps reading it; copies share one byte budget.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.data.native_tables import NativeTables
from engine_host.data.table_sources import LocalFolderTables, NativeCache
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from engine_host.engine.table_catalog import TableCatalog
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.plan_check import check_bound_plan
from tests.harness import EngineHostProcess


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_table(data_dir: Path, schema: str, table: str, ids: list[int], name: str = "part-0") -> Path:
    path = data_dir / schema / table / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "label": [f"row {i}" for i in ids]}), path)
    return path


class Served:
    """A locked-down engine database over a folder whose tables get native copies."""

    def __init__(self, tmp_path: Path, capacity_bytes: int = 1 << 30, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.data_dir = tmp_path / "data"
        self.source = LocalFolderTables(self.data_dir, NativeCache(tmp_path / "cache", capacity_bytes,
                                                                   max_staleness_seconds=60.0))
        native = self.source.native
        assert native is not None
        native._clock = self.clock  # the staleness bound, without waiting for it
        self.native: NativeTables = native
        self.database = Database(None, allowed_directories=self.source.allowed_directories)
        self.database.open(setup=[self.source.register])
        self.catalog = TableCatalog(self.database.connection)

    def start(self) -> None:
        self.source.attach(self.database.connection, self.catalog)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.database.connection.cursor().execute(sql).fetchall()

    def plan(self, sql: str) -> list[dict[str, Any]]:
        rows = self.database.connection.cursor().execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
        plan = json.loads(dict(rows)["logical_plan"])
        return plan if isinstance(plan, list) else [plan]

    def close(self) -> None:
        self.source.close()
        self.catalog.close()
        self.database.close()


ORDER_IDS = list(range(150_000))  # more than one streamed batch (STREAM_BATCH_ROWS)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    write_table(tmp_path / "data", "crm", "customers", [1, 2, 3])
    write_table(tmp_path / "data", "sales", "orders", ORDER_IDS)
    host = Served(tmp_path)
    host.start()
    assert host.native.wait_idle()
    yield host
    host.close()


def scans(plan: list[dict[str, Any]]) -> list[str]:
    found, stack = [], list(plan)
    while stack:
        node = stack.pop()
        if node.get("name") in ("SEQ_SCAN", "READ_PARQUET", "PARQUET_SCAN"):
            found.append(node.get("extra_info", {}).get("Table") or node["name"])
        stack.extend(node.get("children") or [])
    return found


def test_each_table_is_served_from_its_own_read_only_copy(served: Served) -> None:
    catalog = served.native.served_from("crm.customers")
    assert catalog is not None and catalog.startswith("hd_native_")
    assert served.query(f"SELECT id FROM {DATA_CATALOG}.crm.customers ORDER BY id") == [(1,), (2,), (3,)]
    assert scans(served.plan(f"SELECT * FROM {DATA_CATALOG}.crm.customers")) == [f"{catalog}.crm.customers"]
    with pytest.raises(duckdb.Error, match="read-only"):
        served.query(f"INSERT INTO {catalog}.crm.customers VALUES (4, 'x')")
    # The view keeps its columns and marker: the table catalog sees the same read-only table.
    info = served.catalog.get("crm.customers")
    assert info is not None and not info.writable and [c for c, _ in info.columns] == ["id", "label"]


def test_the_lockdown_reaches_only_the_data_and_native_folders(served: Served, tmp_path: Path) -> None:
    allowed = {path.rstrip("/") for path in served.query("SELECT current_setting('allowed_directories')")[0][0]}
    temp = str(served.database._temp_directory())  # DuckDB adds its spill folder itself
    assert allowed - {temp} == {str(served.data_dir.resolve()), str(served.native.native_dir)}
    outside = tmp_path / "outside.duckdb"
    duckdb.connect(str(outside)).close()
    with pytest.raises(duckdb.Error, match=r"Permission|disabled"):
        served.query(f"ATTACH '{outside}' AS elsewhere (READ_ONLY)")


def test_parquet_serves_the_table_while_its_copy_is_built(tmp_path: Path) -> None:
    write_table(tmp_path / "data", "crm", "customers", [1, 2, 3])
    host = Served(tmp_path)
    release = threading.Event()
    build = host.native._build

    def slow_build(source: Any, path: Path) -> int:
        assert release.wait(30)
        return build(source, path)

    host.native._build = slow_build  # type: ignore[method-assign]
    try:
        host.start()
        assert host.native.served_from("crm.customers") is None
        with host.native.hold(["crm.customers"]):
            assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.crm.customers") == [(3,)]
        assert scans(host.plan(f"SELECT * FROM {DATA_CATALOG}.crm.customers")) == ["READ_PARQUET"]
        release.set()
        assert host.native.wait_idle()
        assert host.native.served_from("crm.customers") is not None
    finally:
        release.set()
        host.close()


def test_a_changed_source_falls_back_at_once_and_a_reader_keeps_the_old_copy(served: Served) -> None:
    old = served.native.served_from("sales.orders")
    assert old is not None
    reader = served.database.session()
    lease = served.native.hold(["sales.orders"])
    stream = reader.run(f"SELECT id FROM {DATA_CATALOG}.sales.orders ORDER BY id")
    first = stream.next_batch()
    assert first is not None and first.num_rows < len(ORDER_IDS)

    write_table(served.data_dir, "sales", "orders", [1, 2])
    served.clock.now += 61  # past the staleness bound: the next statement looks at the files again
    with served.native.hold(["sales.orders"]):
        assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders") == [(2,)]  # fresh, from Parquet
    assert served.native.wait_idle()
    new = served.native.served_from("sales.orders")
    assert new is not None and new != old
    assert old in served.native.attached()  # the reader's lease keeps the old copy attached

    batches = [first]
    while (batch := stream.next_batch()) is not None:
        batches.append(batch)
    assert [v for b in batches for v in b.column(0).to_pylist()] == ORDER_IDS
    reader.close()
    lease.release()
    assert old not in served.native.attached()
    assert not (served.native.native_dir / f"{old}.duckdb").exists()
    assert served.query(f"SELECT id FROM {DATA_CATALOG}.sales.orders ORDER BY id") == [(1,), (2,)]


def test_copies_share_one_budget_least_recently_used_first(tmp_path: Path) -> None:
    for root in (tmp_path / "probe", tmp_path / "budgeted"):
        write_table(root / "data", "crm", "customers", [1, 2, 3])
        write_table(root / "data", "sales", "orders", [4, 5])
    sizing = Served(tmp_path / "probe")
    sizing.start()
    assert sizing.native.wait_idle()
    one_copy = sizing.native.stats()["usage_bytes"] / 2
    sizing.close()

    host = Served(tmp_path / "budgeted", capacity_bytes=int(one_copy * 1.5))
    try:
        host.start()
        assert host.native.wait_idle()
        served = [name for name in ("crm.customers", "sales.orders") if host.native.served_from(name)]
        assert served == ["sales.orders"]  # built second, it evicted the least recently used copy
        assert host.native.stats()["evictions"] == 1
        assert host.native.stats()["usage_bytes"] <= one_copy * 1.5
        assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.crm.customers") == [(3,)]
        assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders") == [(2,)]
    finally:
        host.close()


def test_a_table_larger_than_the_budget_stays_on_parquet(tmp_path: Path) -> None:
    write_table(tmp_path / "data", "crm", "customers", list(range(1000)))
    host = Served(tmp_path, capacity_bytes=1024)
    try:
        host.start()
        assert host.native.wait_idle()
        assert host.native.served_from("crm.customers") is None
        assert host.native.stats()["too_large"] == 1
        assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.crm.customers") == [(1000,)]
        assert not [p for p in host.native.native_dir.iterdir()]
    finally:
        host.close()


def test_stopping_points_every_view_back_at_its_files(served: Served) -> None:
    served.source.close()
    assert served.native.attached() == []
    assert scans(served.plan(f"SELECT * FROM {DATA_CATALOG}.crm.customers")) == ["READ_PARQUET"]
    assert os.listdir(served.native.native_dir) == []


def test_the_plan_check_accepts_a_copy_only_of_a_table_the_plan_lists(served: Served) -> None:
    plan = served.plan(f"SELECT * FROM {DATA_CATALOG}.crm.customers")
    check_bound_plan(plan, {"crm.customers": True})
    for tables in ({"sales.orders": True}, {"crm.customers": False}, {}):
        with pytest.raises(QueryError) as caught:
            check_bound_plan(plan, tables)
        assert caught.value.code == "HD_ERR_PLAN_REJECTED"
    with pytest.raises(QueryError):
        check_bound_plan(plan, {"crm.customers": True}, catalog=True)
    both = served.plan(f"SELECT * FROM {DATA_CATALOG}.crm.customers, {DATA_CATALOG}.sales.orders")
    with pytest.raises(QueryError) as caught:
        check_bound_plan(both, {"crm.customers": True})
    assert "sales.orders" in caught.value.message


def test_clients_cannot_name_a_native_copy(engine_host: EngineHostProcess) -> None:
    with psycopg.connect(engine_host.dsn(sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM crm.customers").fetchone() == (500,)
        for sql in ("SELECT * FROM hd_native_1.crm.customers", "DETACH hd_native_1",
                    "ATTACH '/tmp/x.duckdb' AS hd_native_9 (READ_ONLY)"):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql)
            assert caught.value.sqlstate in ("42P01", "42501", "0A000", "42601"), (sql, caught.value)


def _ids(session: Any, sql: str) -> list[int]:
    stream = session.run(sql)
    found: list[int] = []
    while (batch := stream.next_batch()) is not None:
        found += batch.column(0).to_pylist()
    stream.close()
    return found


def test_a_transaction_keeps_every_copy_current_at_its_begin_until_it_ends(served: Served) -> None:
    """DuckDB binds a view as of the transaction's start: a statement late in a transaction that began before
    a swap binds the old copy, so the copy stays attached until the transaction ends (not one statement)."""
    old = served.native.served_from("crm.customers")
    assert old is not None
    reader = served.database.session()
    snapshot = served.native.hold_snapshot()  # what the pipeline takes before BEGIN (pipeline/transactions.py)
    reader.run("BEGIN TRANSACTION").close()
    with served.native.hold(["sales.orders"]):  # the transaction's first statement reads another table
        assert _ids(reader, f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders") == [len(ORDER_IDS)]

    write_table(served.data_dir, "crm", "customers", [1, 2])
    served.clock.now += 61
    with served.native.hold(["crm.customers"]):  # another session sees the change and triggers the rebuild
        assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.crm.customers") == [(2,)]
    assert served.native.wait_idle()
    assert served.native.served_from("crm.customers") not in (None, old)
    assert old in served.native.attached()  # the open transaction still holds it

    with served.native.hold(["crm.customers"]):
        assert _ids(reader, f"SELECT id FROM {DATA_CATALOG}.crm.customers ORDER BY id") == [1, 2, 3]
    reader.run("COMMIT").close()
    snapshot.release()
    assert old not in served.native.attached()
    assert not (served.native.native_dir / f"{old}.duckdb").exists()
    with served.native.hold(["crm.customers"]):
        assert _ids(reader, f"SELECT id FROM {DATA_CATALOG}.crm.customers ORDER BY id") == [1, 2]
    reader.close()


def test_a_transaction_over_the_wire_reads_one_version_of_a_table_that_changes_during_it(tmp_path: Path) -> None:
    from tests.harness import in_process_host

    write_table(tmp_path / "data", "crm", "accounts", [1, 2, 3])
    with in_process_host(tmp_path) as (host, _, key):
        assert host.engine is not None and host.engine.table_source is not None
        source = host.engine.table_source
        assert isinstance(source, LocalFolderTables) and isinstance(source.native, NativeTables)
        native = source.native
        assert native.wait_idle()
        old = native.served_from("crm.accounts")
        assert old is not None
        assert host.banner is not None
        dsn = f"host=127.0.0.1 port={host.banner.port} dbname=hd user={host.banner.user} password={key} sslmode=disable"
        with psycopg.connect(dsn) as inside, psycopg.connect(dsn, autocommit=True) as other:
            assert inside.execute("SELECT count(*) FROM crm.accounts").fetchone() == (3,)  # psycopg sent BEGIN
            write_table(tmp_path / "data", "crm", "accounts", [1, 2])
            native._clock = lambda: 1e12  # past the freshness bound: the next reader looks at the files
            assert other.execute("SELECT count(*) FROM crm.accounts").fetchone() == (2,)
            assert native.wait_idle() and native.served_from("crm.accounts") not in (None, old)
            assert old in native.attached()
            assert inside.execute("SELECT id FROM crm.accounts ORDER BY id").fetchall() == [(1,), (2,), (3,)]
            inside.commit()
            assert old not in native.attached()
            assert inside.execute("SELECT id FROM crm.accounts ORDER BY id").fetchall() == [(1,), (2,)]
            inside.rollback()
