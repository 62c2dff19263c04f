"""Tables in S3 (moto), served to a locked-down DuckDB through the object cache (engine_host/data/cached_tables.py)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from engine_host.data.cached_tables import CachedTables, TableDataUnavailable, discover_cached_tables
from engine_host.data.object_cache import ObjectCache
from engine_host.engine.duckdb_engine import Database
from engine_host.engine.table_catalog import TableCatalog
from hd_core.adapters.s3_objects import S3ObjectSource
from hd_core.object_source import ObjectInfo

BUCKET = "hd-data-123456789012"
PREFIX = "tables/"


def parquet_bytes(ids: range, label: str = "x") -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": list(ids), "label": [f"{label}{i}" for i in ids]}), buffer)
    return buffer.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


class Served:
    """A locked-down database whose tables come from the bucket, like a fleet host's."""

    def __init__(self, s3: Any, cache_dir: Path, capacity: int = 10 << 20) -> None:
        self.s3 = s3
        self.clock = Clock()
        self.source = S3ObjectSource(s3, BUCKET, PREFIX)
        self.cache = ObjectCache(self.source, cache_dir, capacity, clock=self.clock)
        self.database = Database(None, allowed_directories=[cache_dir / "objects"])
        self.database.open()
        self.catalog = TableCatalog(self.database.connection)
        self.tables = CachedTables(self.source, self.cache, listing_interval_seconds=3600)
        self.catalog.row_estimates = self.tables.estimated_rows
        self.con = self.database.connection.cursor()

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=body)

    def cached(self, key: str) -> Path:
        """Where the cache keeps the object's version now in the bucket (each version has a file of its own)."""
        etag = self.s3.head_object(Bucket=BUCKET, Key=PREFIX + key)["ETag"].strip('"')
        return self.cache.local_path(ObjectCache.version_name(key, etag))

    def sync(self) -> list[str]:
        return [t.name for t in self.tables.sync(self.con, self.catalog.refresh)]

    def query(self, sql: str, tables: list[str]) -> list[tuple[Any, ...]]:
        cursor = self.database.connection.cursor()
        with self.tables.hold(tables):
            return cursor.execute(sql).fetchall()

    def close(self) -> None:
        self.tables.stop()
        self.catalog.close()
        self.database.close()


@pytest.fixture
def served(s3: Any, tmp_path: Path) -> Iterator[Served]:
    host = Served(s3, tmp_path / "cache")
    host.put("sales/orders/part-0.parquet", parquet_bytes(range(0, 10)))
    host.put("sales/orders/part-1.parquet", parquet_bytes(range(10, 25)))
    host.put("crm/customers/all.parquet", parquet_bytes(range(3), "c"))
    yield host
    host.close()


def test_tables_in_the_bucket_appear_to_sql_without_naming_files(served: Served) -> None:
    assert served.sync() == ["crm.customers", "sales.orders"]

    assert served.query("SELECT count(*), max(id) FROM hd_data.sales.orders", ["sales.orders"]) == [(25, 24)]
    info = served.catalog.get("sales.orders")
    assert info is not None and not info.writable
    assert [c for c, _ in info.columns] == ["id", "label"]
    # 10 rows in the first file, scaled by the bytes of both: close to the 25 there are.
    assert 18 <= info.estimated_rows <= 32


def test_registering_a_table_fetches_only_its_first_file(served: Served) -> None:
    served.sync()

    assert served.cache.stats()["misses"] == 2  # one file of each of the two tables
    placeholder = served.cached("sales/orders/part-1.parquet")
    assert placeholder.stat().st_size == 0
    with pytest.raises(duckdb.InvalidInputException, match="too small to be a Parquet file"):
        served.database.connection.cursor().execute("SELECT count(*) FROM hd_data.sales.orders").fetchall()
    assert served.query("SELECT count(*) FROM hd_data.sales.orders", ["sales.orders"]) == [(25,)]
    assert placeholder.stat().st_size > 0


def test_duckdb_reads_only_the_cache_directory(served: Served, tmp_path: Path) -> None:
    served.sync()
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(parquet_bytes(range(1)))

    with pytest.raises(duckdb.PermissionException):
        served.database.connection.cursor().execute(f"SELECT * FROM read_parquet('{outside}')").fetchall()


def test_an_evicted_file_is_fetched_again_when_a_statement_holds_its_table(served: Served) -> None:
    served.sync()
    path = served.cached("sales/orders/part-1.parquet")
    path.unlink()  # as if evicted, or the disk was replaced

    assert served.query("SELECT count(*) FROM hd_data.sales.orders", ["sales.orders"]) == [(25,)]
    assert path.exists()


def test_without_a_lease_a_missing_file_is_an_error_never_a_shorter_table(served: Served) -> None:
    served.sync()
    served.query("SELECT count(*) FROM hd_data.sales.orders", ["sales.orders"])
    served.cached("sales/orders/part-1.parquet").unlink()  # evicted

    with pytest.raises(duckdb.IOException, match="No files found"):
        served.database.connection.cursor().execute("SELECT count(*) FROM hd_data.sales.orders").fetchall()


def test_files_held_by_a_running_statement_are_not_evicted(s3: Any, tmp_path: Path) -> None:
    small = Served(s3, tmp_path / "cache", capacity=6000)
    try:
        for n in range(4):
            small.put(f"s/t{n}/f.parquet", parquet_bytes(range(n * 100, n * 100 + 100)))
        assert small.sync() == ["s.t0", "s.t1", "s.t2", "s.t3"]
        lease = small.tables.hold(["s.t0"])
        for n in (1, 2, 3):
            small.query(f"SELECT count(*) FROM hd_data.s.t{n}", [f"s.t{n}"])
        assert small.cached("s/t0/f.parquet").exists()
        assert small.cache.stats()["evictions"] > 0
        lease.release()
    finally:
        small.close()


def test_a_replaced_object_is_served_new_once_the_staleness_bound_passes(served: Served) -> None:
    served.sync()
    assert served.query("SELECT max(id) FROM hd_data.sales.orders", ["sales.orders"]) == [(24,)]
    served.put("sales/orders/part-1.parquet", parquet_bytes(range(10, 100)))

    assert served.query("SELECT max(id) FROM hd_data.sales.orders", ["sales.orders"]) == [(24,)]  # within the bound
    served.clock.now += 61
    assert served.query("SELECT max(id) FROM hd_data.sales.orders", ["sales.orders"]) == [(99,)]
    assert served.cache.stats()["refetches"] == 1


def test_a_statement_reading_an_old_version_keeps_it_while_a_later_one_reads_the_new_version(
        served: Served) -> None:
    served.sync()
    keys = ["sales/orders/part-0.parquet", "sales/orders/part-1.parquet"]
    old_files = ", ".join(f"'{served.cached(key)}'" for key in keys)
    reading = served.tables.hold(["sales.orders"])  # a statement bound to the table as first listed
    served.put("sales/orders/part-1.parquet", parquet_bytes(range(10, 100)))
    served.clock.now += 61

    assert served.query("SELECT max(id) FROM hd_data.sales.orders", ["sales.orders"]) == [(99,)]
    # The first statement's files were neither replaced nor evicted under it: it still reads one version.
    cursor = served.database.connection.cursor()
    assert cursor.execute(f"SELECT max(id) FROM read_parquet([{old_files}])").fetchall() == [(24,)]
    reading.release()


def test_a_new_file_and_a_new_table_show_after_the_next_listing(served: Served) -> None:
    served.sync()
    served.put("sales/orders/part-2.parquet", parquet_bytes(range(25, 30)))
    served.put("sales/returns/r.parquet", parquet_bytes(range(2)))

    assert served.sync() == ["crm.customers", "sales.orders", "sales.returns"]
    assert served.query("SELECT count(*) FROM hd_data.sales.orders", ["sales.orders"]) == [(30,)]
    assert served.catalog.get("sales.returns") is not None


def test_a_table_removed_from_the_bucket_is_dropped(served: Served) -> None:
    served.sync()
    served.s3.delete_object(Bucket=BUCKET, Key=PREFIX + "crm/customers/all.parquet")

    assert served.sync() == ["sales.orders"]
    assert served.catalog.get("crm.customers") is None


def test_a_table_rewritten_under_new_file_names_is_read_from_its_new_files(served: Served) -> None:
    served.sync()
    cached = served.cached("crm/customers/all.parquet")
    served.s3.delete_object(Bucket=BUCKET, Key=PREFIX + "crm/customers/all.parquet")
    served.put("crm/customers/v2.parquet", parquet_bytes(range(7), "c"))
    cached.unlink()  # not cached any more
    served.clock.now += 61

    assert served.query("SELECT count(*) FROM hd_data.crm.customers", ["crm.customers"]) == [(7,)]


def test_an_unreadable_bucket_fails_the_statement_closed(served: Served) -> None:
    served.sync()
    served.cached("sales/orders/part-0.parquet").unlink()
    for key in ("sales/orders/part-0.parquet", "sales/orders/part-1.parquet", "crm/customers/all.parquet"):
        served.s3.delete_object(Bucket=BUCKET, Key=PREFIX + key)
    served.s3.delete_bucket(Bucket=BUCKET)

    with pytest.raises(TableDataUnavailable):
        served.tables.hold(["sales.orders"])
    # What was registered stays registered: the next listing, not a failed read, decides that.
    assert "sales.orders" in served.tables.names()


def test_concurrent_cold_statements_download_each_file_once(served: Served) -> None:
    served.sync()
    for key in ("sales/orders/part-0.parquet", "sales/orders/part-1.parquet"):
        served.cached(key).unlink()
    before = served.cache.stats()["misses"]
    results: list[list[tuple[Any, ...]]] = []
    threads = [threading.Thread(target=lambda: results.append(
        served.query("SELECT count(*) FROM hd_data.sales.orders", ["sales.orders"]))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [[(25,)]] * 8
    assert served.cache.stats()["misses"] - before == 2


def test_only_schema_table_file_keys_become_tables() -> None:
    def info(key: str) -> ObjectInfo:
        from datetime import UTC, datetime
        return ObjectInfo(key=key, size=1, etag="e", version_id=None, last_modified=datetime.now(UTC))

    found = discover_cached_tables(info(k) for k in [
        "sales/orders/a.parquet", "sales/orders/b.parquet", "sales/orders/readme.txt", "toplevel.parquet",
        "sales/orders/2024/deep.parquet", "Sales/x/a.parquet", "pg_catalog/t/a.parquet", "s/t/.hidden.parquet",
        "s/t/we[ird].parquet",
    ])

    assert [(t.name, t.keys) for t in found] == [
        ("sales.orders", ("sales/orders/a.parquet", "sales/orders/b.parquet")),
    ]
