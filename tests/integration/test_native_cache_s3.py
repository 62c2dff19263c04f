"""Native copies of tables served from S3 (moto): built from the object cache's copies, one byte budget with it.

engine_host/data/native_tables.py copies each table `CachedTables` serves into DuckDB's own format in the
background; a replaced object falls the table back to its Parquet view within the cache's freshness bound
and rebuilds it, a table whose objects vanish is dropped, the copies and the cached objects share the
cache's capacity, and a statement's one lease pins both the copy it may bind and the files its Parquet
view needs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.data.cached_tables import CachedTables
from engine_host.data.native_tables import NativeTables
from engine_host.data.object_cache import ObjectCache
from engine_host.data.table_sources import ObjectStoreTables
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from engine_host.engine.table_catalog import TableCatalog
from hd_core.adapters.s3_objects import S3ObjectSource
from tests.integration.test_cached_tables import BUCKET, PREFIX, Clock, parquet_bytes, s3

__all__ = ["s3"]  # the moto bucket fixture, imported so pytest finds it in this module

ORDER_IDS = range(150_000)  # more than one streamed batch


class NativeServed:
    """A locked-down database whose bucket tables are served through the cache and its native copies."""

    def __init__(self, s3: Any, cache_dir: Path, capacity: int = 256 << 20) -> None:
        self.s3 = s3
        self.clock = Clock()
        self.source = S3ObjectSource(s3, BUCKET, PREFIX)
        self.cache = ObjectCache(self.source, cache_dir, capacity, clock=self.clock)
        self.tables = CachedTables(self.source, self.cache, listing_interval_seconds=3600)
        self.served = ObjectStoreTables(self.tables, self.cache)
        assert self.served.native is not None
        self.native: NativeTables = self.served.native
        self.database = Database(None, allowed_directories=self.served.allowed_directories)
        self.database.open(setup=[self.served.register])
        self.catalog = TableCatalog(self.database.connection)

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=body)

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=BUCKET, Key=PREFIX + key)

    def start(self) -> None:
        self.served.attach(self.database.connection, self.catalog)
        assert self.native.wait_idle()

    def query(self, sql: str, tables: list[str]) -> list[tuple[Any, ...]]:
        cursor = self.database.connection.cursor()
        with self.tables.hold(tables):
            return cursor.execute(sql).fetchall()

    def scans(self, sql: str, tables: list[str]) -> list[str]:
        with self.tables.hold(tables):
            rows = self.database.connection.cursor().execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
        plan = json.loads(dict(rows)["logical_plan"])
        found, stack = [], list(plan if isinstance(plan, list) else [plan])
        while stack:
            node = stack.pop()
            if node.get("name") in ("SEQ_SCAN", "READ_PARQUET", "PARQUET_SCAN"):
                found.append(node.get("extra_info", {}).get("Table") or node["name"])
            stack.extend(node.get("children") or [])
        return found

    def object_pins(self) -> int:
        return sum(entry.pins for entry in self.cache._entries.values())

    def native_pins(self) -> int:
        return sum(sum(table.pins.values()) for table in self.native._tables.values())

    def close(self) -> None:
        self.served.close()
        self.catalog.close()
        self.database.close()


def orders_bytes(ids: range, label: str = "o") -> bytes:
    return parquet_bytes(ids, label)


@pytest.fixture
def served(s3: Any, tmp_path: Path) -> Iterator[NativeServed]:
    host = NativeServed(s3, tmp_path / "cache")
    host.put("sales/orders/part-0.parquet", orders_bytes(range(0, 100_000)))
    host.put("sales/orders/part-1.parquet", orders_bytes(range(100_000, 150_000)))
    host.put("crm/customers/all.parquet", parquet_bytes(range(3), "c"))
    host.start()
    yield host
    host.close()


ORDERS_SQL = f"SELECT id, label FROM {DATA_CATALOG}.sales.orders ORDER BY id"


def test_a_bucket_table_is_served_from_its_native_copy_with_the_parquet_results(served: NativeServed) -> None:
    catalog = served.native.served_from("sales.orders")
    assert catalog is not None and catalog.startswith("hd_native_")
    assert served.scans(ORDERS_SQL, ["sales.orders"]) == [f"{catalog}.sales.orders"]
    native_rows = served.query(ORDERS_SQL, ["sales.orders"])

    # The same rows as DuckDB reading the objects themselves (what the Parquet view serves).
    parquet = duckdb.connect()
    expected = parquet.execute("SELECT id, label FROM read_parquet([?, ?]) ORDER BY id", [
        str(served.cache.acquire("sales/orders/part-0.parquet")),
        str(served.cache.acquire("sales/orders/part-1.parquet"))]).fetchall()
    assert native_rows == expected and len(expected) == len(ORDER_IDS)
    assert served.query(f"SELECT count(*), sum(id) FROM {DATA_CATALOG}.crm.customers", ["crm.customers"]) == [(3, 3)]
    # The view keeps the cached table's columns, marker and row estimate: the catalog sees the same table.
    info = served.catalog.get("sales.orders")
    assert info is not None and not info.writable and [c for c, _ in info.columns] == ["id", "label"]
    # The copies take their bytes from the cache's budget.
    stats = served.cache.stats()
    assert stats["reserved_bytes"] == served.native.stats()["usage_bytes"] > 0
    assert stats["usage_bytes"] == stats["object_bytes"] + stats["reserved_bytes"]


def test_a_statement_on_a_copy_pins_no_objects_and_releases_once(served: NativeServed) -> None:
    lease = served.tables.hold(["sales.orders", "crm.customers"])
    assert served.object_pins() == 0  # the copies serve the read: no object is pinned or fetched
    assert served.native_pins() == 2
    lease.release()
    lease.release()  # a second release frees nothing more
    assert (served.object_pins(), served.native_pins()) == (0, 0)


def test_a_replaced_object_is_served_new_within_the_bound_and_the_copy_rebuilt(served: NativeServed) -> None:
    old = served.native.served_from("sales.orders")
    served.put("sales/orders/part-1.parquet", orders_bytes(range(100_000, 100_010), "new"))

    count = f"SELECT count(*), max(label) FROM {DATA_CATALOG}.sales.orders"
    served.clock.now += 59  # within the cache's bound: the copy may still serve the old data
    assert served.query(count, ["sales.orders"]) == [(150_000, "o99999")]
    served.clock.now += 1  # the bound: the statement looks at the source and reads the new objects
    assert served.query(count, ["sales.orders"]) == [(100_010, "o99999")]
    assert served.query(f"SELECT max(label) FROM {DATA_CATALOG}.sales.orders WHERE id >= 100000",
                        ["sales.orders"]) == [("new100009",)]
    assert served.native.stats()["fallbacks"] == 1
    assert served.native.wait_idle()
    new = served.native.served_from("sales.orders")
    assert new is not None and new != old and old not in served.native.attached()
    assert served.query(count, ["sales.orders"]) == [(100_010, "o99999")]
    assert served.scans(count, ["sales.orders"]) == [f"{new}.sales.orders"]
    assert (served.object_pins(), served.native_pins()) == (0, 0)


def test_an_object_deleted_at_the_source_drops_it_and_a_table_whose_objects_vanish_is_dropped(
        served: NativeServed) -> None:
    customers = served.native.served_from("crm.customers")
    assert customers is not None
    served.delete("sales/orders/part-1.parquet")
    served.delete("crm/customers/all.parquet")
    served.clock.now += 60

    assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders", ["sales.orders"]) == [(100_000,)]
    with pytest.raises(duckdb.CatalogException):
        served.query(f"SELECT count(*) FROM {DATA_CATALOG}.crm.customers", ["crm.customers"])
    assert served.tables.names() == ["sales.orders"]
    assert served.catalog.get("crm.customers") is None
    assert customers not in served.native.attached()
    assert not (served.native.native_dir / f"{customers}.duckdb").exists()
    assert served.native.wait_idle()
    assert served.native.served_from("sales.orders") is not None
    assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders", ["sales.orders"]) == [(100_000,)]


def test_a_statement_holding_its_lease_across_a_swap_reads_its_version(served: NativeServed) -> None:
    old = served.native.served_from("sales.orders")
    assert old is not None
    reader = served.database.session()
    lease = served.tables.hold(["sales.orders"])
    stream = reader.run(f"SELECT id FROM {DATA_CATALOG}.sales.orders ORDER BY id")
    first = stream.next_batch()
    assert first is not None and first.num_rows < len(ORDER_IDS)

    served.put("sales/orders/part-1.parquet", orders_bytes(range(100_000, 100_002)))
    served.clock.now += 60
    assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders", ["sales.orders"]) == [(100_002,)]
    assert served.native.wait_idle()
    new = served.native.served_from("sales.orders")
    assert new is not None and new != old
    assert old in served.native.attached()  # the reader's lease keeps the old copy attached
    # ... and the Parquet view's files, which a statement holding the old epoch might still bind.
    assert served.object_pins() == 2

    batches = [first]
    while (batch := stream.next_batch()) is not None:
        batches.append(batch)
    assert [v for b in batches for v in b.column(0).to_pylist()] == list(ORDER_IDS)
    reader.close()
    lease.release()
    assert old not in served.native.attached()
    assert not (served.native.native_dir / f"{old}.duckdb").exists()
    assert (served.object_pins(), served.native_pins()) == (0, 0)


def test_a_file_added_by_the_listing_while_a_statement_holds_the_copy(served: NativeServed) -> None:
    old = served.native.served_from("sales.orders")
    lease = served.tables.hold(["sales.orders"])
    served.put("sales/orders/part-2.parquet", orders_bytes(range(150_000, 150_005)))
    served.tables.sync(served.database.connection.cursor(), served.catalog.refresh)  # the next listing

    assert served.native.wait_idle() and served.native.served_from("sales.orders") not in (None, old)
    # The holder may still bind the Parquet view that replaced its copy: all three files stay pinned for it.
    assert served.object_pins() == 3 and old in served.native.attached()
    assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.sales.orders", ["sales.orders"]) == [(150_005,)]
    lease.release()
    assert old not in served.native.attached()
    assert (served.object_pins(), served.native_pins()) == (0, 0)


def test_a_transaction_begun_on_parquet_pins_the_files_its_statements_bind(served: NativeServed) -> None:
    go = threading.Event()
    build = served.native._build

    def held_build(source: Any, path: Path) -> int:
        assert go.wait(30)
        return build(source, path)

    served.native._build = held_build  # type: ignore[method-assign]
    try:
        served.put("crm/customers/all.parquet", parquet_bytes(range(5), "c"))
        served.clock.now += 60
        assert served.query(f"SELECT count(*) FROM {DATA_CATALOG}.crm.customers", ["crm.customers"]) == [(5,)]
        assert served.native.served_from("crm.customers") is None  # on Parquet until the copy is rebuilt
        snapshot = served.tables.hold_snapshot()  # a transaction's BEGIN
    finally:
        go.set()
    assert served.native.wait_idle() and served.native.served_from("crm.customers") is not None
    # The copy is current now, but a transaction that began on the Parquet view still binds that view:
    # a statement's lease pins its files while such a lease is out.
    with served.tables.hold(["crm.customers"]):
        assert served.object_pins() == 1
    snapshot.release()
    with served.tables.hold(["crm.customers"]):
        assert served.object_pins() == 0
    assert (served.object_pins(), served.native_pins()) == (0, 0)


def _table_bytes(rows: int, seed: int) -> bytes:
    import io
    buffer = io.BytesIO()
    ids = list(range(seed * rows, (seed + 1) * rows))
    pq.write_table(pa.table({"id": ids, "label": [f"label-{i:012d}" for i in ids]}), buffer)
    return buffer.getvalue()


def _copy_size(s3: Any, tmp_path: Path, body: bytes) -> int:
    probe = NativeServed(s3, tmp_path / "probe")
    probe.put("probe/t/f.parquet", body)
    try:
        probe.start()
        return int(probe.native.stats()["usage_bytes"])
    finally:
        probe.close()
        probe.delete("probe/t/f.parquet")


def test_a_copy_larger_than_the_budget_leaves_the_table_on_parquet(s3: Any, tmp_path: Path) -> None:
    body = _table_bytes(50_000, 0)
    host = NativeServed(s3, tmp_path / "cache", capacity=len(body) + len(body) // 10)  # high water < the table
    host.put("big/t/f.parquet", body)
    try:
        host.start()
        assert host.native.served_from("big.t") is None
        assert host.native.stats()["too_large"] == 1
        assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.big.t", ["big.t"]) == [(50_000,)]
        assert host.cache.stats()["reserved_bytes"] == 0
        assert list(host.native.native_dir.iterdir()) == []
    finally:
        host.close()


def test_copies_and_objects_share_the_cache_least_recently_used_copy_first(s3: Any, tmp_path: Path) -> None:
    bodies = [_table_bytes(20_000, n) for n in range(2)]
    copy = _copy_size(s3, tmp_path, bodies[0])
    objects = max(len(body) for body in bodies)
    # Room under the high-water mark for one copy and the objects of a table being copied, not two copies.
    capacity = int((copy * 1.5 + objects * 2) / 0.8)
    host = NativeServed(s3, tmp_path / "cache", capacity=capacity)
    host.put("s/t0/f.parquet", bodies[0])
    try:
        host.start()
        assert host.native.served_from("s.t0") is not None
        host.put("s/t1/f.parquet", bodies[1])
        host.tables.sync(host.database.connection.cursor(), host.catalog.refresh)  # the next listing
        assert host.native.wait_idle()

        assert [name for name in ("s.t0", "s.t1") if host.native.served_from(name)] == ["s.t1"]
        assert host.native.stats()["evictions"] == 1
        stats = host.cache.stats()
        assert stats["usage_bytes"] <= capacity * 0.8
        assert stats["reserved_bytes"] == host.native.stats()["usage_bytes"]
        # Both still answer: t0 from its Parquet view (its objects fetched again), t1 from its copy.
        assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.s.t0", ["s.t0"]) == [(20_000,)]
        assert host.query(f"SELECT count(*) FROM {DATA_CATALOG}.s.t1", ["s.t1"]) == [(20_000,)]
        assert host.cache.stats()["usage_bytes"] <= capacity
        assert (host.object_pins(), host.native_pins()) == (0, 0)
    finally:
        host.close()
