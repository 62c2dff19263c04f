"""Cold vs warm queries on a Parquet table served from S3 (moto's HTTP server) through the object cache.

    .venv/bin/python -m bench.cache [--rows 4000000] [--files 8] [--runs 5]

Measured side by side in one run, on the same locked-down DuckDB and the same query:
- "local file": the table's files read straight from a local folder (no object store at all), the floor;
- "cold": an empty cache, so every file is fetched from S3 before the query runs (what the first
  statement after a boot or an eviction pays);
- "warm": the files already cached (revalidation not yet due), so the statement only takes its lease.
Each figure is the median of `--runs` runs. moto's server is on loopback, so "cold" understates what
a real S3 fetch costs; the warm/local ratio is the number the cache is judged by.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from moto.server import ThreadedMotoServer

from engine_host.data.cached_tables import CachedTables
from engine_host.data.object_cache import ObjectCache
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from hd_core.adapters.s3_objects import S3ObjectSource

BUCKET = "hd-bench-tables"
QUERY = "SELECT region, count(*), sum(amount), avg(amount) FROM {table} GROUP BY region ORDER BY region"


def write_table(folder: Path, rows: int, files: int) -> int:
    """`files` Parquet files of `rows` rows in total under folder/sales/orders; returns the bytes written."""
    table_dir = folder / "sales" / "orders"
    table_dir.mkdir(parents=True)
    per_file = rows // files
    total = 0
    for n in range(files):
        ids = pa.array(range(n * per_file, (n + 1) * per_file), pa.int64())
        table = pa.table({
            "order_id": ids,
            "region": pc.cast(pc.bit_wise_and(ids, 7), pa.string()),
            "amount": pc.multiply(pc.cast(pc.bit_wise_and(ids, 1023), pa.float64()), 0.25),
        })
        path = table_dir / f"part-{n}.parquet"
        pq.write_table(table, path)
        total += path.stat().st_size
    return total


def timed(run: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def local_file_ms(folder: Path, runs: int) -> float:
    database = Database(None, allowed_directories=[folder])
    database.open()
    con = database.connection.cursor()
    con.execute(f"CREATE SCHEMA sales; CREATE VIEW sales.orders AS SELECT * FROM "
                f"read_parquet('{folder}/sales/orders/*.parquet')")
    try:
        query = QUERY.format(table="sales.orders")
        con.execute(query).fetchall()  # the page cache holds the files, as it does for the warm case
        return timed(lambda: con.execute(query).fetchall(), runs)
    finally:
        database.close()


class CachedStack:
    """A fresh cache (empty: the cache clears its folder at start), its tables, and a locked-down database."""

    def __init__(self, source: S3ObjectSource, cache_dir: Path) -> None:
        self.cache = ObjectCache(source, cache_dir, 8 << 30)
        self.tables = CachedTables(source, self.cache)
        self.database = Database(None, allowed_directories=[self.cache.objects_dir])
        self.database.open()
        self.con = self.database.connection.cursor()
        self.tables.sync(self.database.connection.cursor())

    def query(self) -> None:
        with self.tables.hold(["sales.orders"]):
            # The cache registers its views in the data catalog, where the governance rewrite points.
            self.con.execute(QUERY.format(table=f"{DATA_CATALOG}.sales.orders")).fetchall()

    def evict_all(self) -> None:
        for path in self.cache.objects_dir.rglob("*.parquet"):
            path.unlink()

    def close(self) -> None:
        self.tables.stop()
        self.database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        s3.create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "local"
            size = write_table(folder, args.rows, args.files)
            for path in sorted(folder.rglob("*.parquet")):
                s3.upload_file(str(path), BUCKET, "tables/" + path.relative_to(folder).as_posix())
            print(f"table: {args.rows:,} rows in {args.files} files, {size / 2**20:.1f} MiB; "
                  f"query: {QUERY.format(table='sales.orders')}")
            local = local_file_ms(folder, args.runs)
            stack = CachedStack(S3ObjectSource(s3, BUCKET, "tables/"), Path(scratch) / "cache")
            try:
                def cold() -> None:
                    stack.evict_all()  # the copies go; the next lease fetches every file again
                    stack.query()

                cold_ms = timed(cold, args.runs)
                stack.query()
                warm_ms = timed(stack.query, args.runs)
                stats = stack.cache.stats()
            finally:
                stack.close()
    finally:
        server.stop()
    print(f"{'local file':12s} {local:9.1f} ms")
    print(f"{'cold (S3)':12s} {cold_ms:9.1f} ms  {cold_ms / local:6.2f}x local")
    print(f"{'warm (cache)':12s} {warm_ms:9.1f} ms  {warm_ms / local:6.2f}x local   cold/warm {cold_ms / warm_ms:.1f}x")
    print(f"cache: {stats['misses']:.0f} misses, {stats['hits']:.0f} hits, "
          f"{stats['bytes_fetched'] / 2**20:.1f} MiB fetched")


if __name__ == "__main__":
    main()
