"""Wire-protocol benchmark: the engine host over TLS versus in-process DuckDB, measured side by side.

Run from the repository root:  .venv/bin/python -m bench.wire [--rows 1000000] [--clients 100]

Prints:
  1. fetching N rows through psycopg over TLS vs DuckDB `fetchall()` in process (target <= 1.3x)
  2. p50/p99 latency of 1,000 small queries (`SELECT 1`, a point lookup on a demo table; target p50 < 1 ms)
  3. C concurrent clients x 100 queries: errors, throughput, p99
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import duckdb
import psycopg

from engine_host.data.parquet_tables import register_parquet_tables
from tests.harness import start_engine_host

BIG_QUERY = "SELECT range AS i, range*2 AS j, 'x'||range::VARCHAR AS s FROM range({rows})"


def _timings(fn, count: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return timings


def _best_of(runs: int, fn) -> float:
    return min(_timings(fn, runs))


def bulk_fetch(dsn: str, rows: int, runs: int) -> None:
    sql = BIG_QUERY.format(rows=rows)
    con = duckdb.connect()
    warnings.simplefilter("ignore")

    def in_process() -> None:
        assert len(con.sql(sql).fetchall()) == rows

    def over_wire(binary: bool) -> None:
        with psycopg.connect(dsn) as conn, conn.cursor(binary=binary) as cur:
            cur.execute(sql)
            assert len(cur.fetchall()) == rows

    local = _best_of(runs, in_process)
    text = _best_of(runs, lambda: over_wire(False))
    binary = _best_of(runs, lambda: over_wire(True))
    print(f"[bulk] {rows:,} rows, best of {runs}")
    print(f"  in-process DuckDB fetchall     {local * 1000:8.1f} ms")
    print(f"  psycopg over TLS, text         {text * 1000:8.1f} ms   ratio {text / local:5.2f}x")
    print(f"  psycopg over TLS, binary       {binary * 1000:8.1f} ms   ratio {binary / local:5.2f}x")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


def _latencies(run, count: int) -> tuple[float, float]:
    return _percentiles(_timings(run, count, warmup=50))


def small_queries(dsn: str, data_dir: Path, count: int) -> None:
    local = duckdb.connect()
    register_parquet_tables(local, data_dir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        key = conn.execute("SELECT customer_id FROM crm.customers LIMIT 1").fetchone()[0]
        for label, sql, params in (
            ("SELECT 1", "SELECT 1", None),
            ("point lookup on crm.customers", "SELECT * FROM crm.customers WHERE customer_id = %s", [key]),
        ):
            wire_p50, wire_p99 = _latencies(lambda sql=sql, params=params: conn.execute(sql, params).fetchall(), count)
            local_sql = sql.replace("%s", "$1")
            local_p50, local_p99 = _latencies(lambda s=local_sql, p=params: local.execute(s, p).fetchall(), count)
            print(f"[small] {label:30s} n={count}  over TLS p50 {wire_p50:6.3f} ms p99 {wire_p99:6.3f} ms"
                  f"  | in-process DuckDB p50 {local_p50:6.3f} ms p99 {local_p99:6.3f} ms")


def concurrent_clients(dsn: str, clients: int, per_client: int) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(i: int) -> None:
        mine = []
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                barrier.wait(60)
                for j in range(per_client):
                    start = time.perf_counter()
                    conn.execute("SELECT %s::INTEGER + 1", [i * per_client + j]).fetchone()
                    mine.append(time.perf_counter() - start)
        except Exception as exc:
            with lock:
                errors.append(repr(exc))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    p50, p99 = _percentiles(latencies) if latencies else (float("nan"), float("nan"))
    print(f"[concurrent] {clients} clients x {per_client} queries: {len(latencies)} ok, {len(errors)} errors, "
          f"{len(latencies) / elapsed:,.0f} q/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    for err in errors[:5]:
        print("  error:", err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        host = start_engine_host(Path(state), "--demo")
        try:
            dsn = host.dsn()
            bulk_fetch(dsn, args.rows, args.runs)
            small_queries(dsn, host.state_dir / "data", args.small)
            concurrent_clients(dsn, args.clients, args.per_client)
        finally:
            host.stop()


if __name__ == "__main__":
    main()
