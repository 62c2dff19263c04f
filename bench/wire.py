"""Wire-protocol benchmark: the engine host over TLS versus in-process DuckDB, measured side by side.

Run from the repository root:  .venv/bin/python -m bench.wire [--rows 1000000] [--clients 100] [--only small]
                                   [--baseline REV]  (small statements of REV's code interleaved with this tree's)

Prints:
  1. fetching N rows through psycopg over TLS vs DuckDB `fetchall()` in process (target <= 1.3x)
  2. p50/p95 latency of 1,000 small statements: `SELECT 1` simple and prepared (target p50 <= 0.8 ms), and a
     masked, tenant-filtered point lookup on a natively cached table as the demo analyst (target p50 <= 2 ms),
     each next to in-process DuckDB running the same SQL on a native table
  3. C concurrent clients x 100 queries: errors, throughput, p99
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb
import psycopg

from engine_host.data.parquet_tables import register_parquet_tables
from tests.harness import EngineHostProcess, start_engine_host

BIG_QUERY = "SELECT range AS i, range*2 AS j, 'x'||range::VARCHAR AS s FROM range({rows})"


def _timings(fn, count: int, warmup: int = 0, interval: float = 0.0) -> list[float]:
    """Run `fn` `warmup` + `count` times; the durations of the last `count`. `interval`: start at most
    one call per that many seconds (paced calls stay under a rate limit; only the call is timed)."""
    timings = []
    for i in range(warmup + count):
        start = time.perf_counter()
        fn()
        end = time.perf_counter()
        if i >= warmup:
            timings.append(end - start)
        if interval and end - start < interval:
            time.sleep(interval - (end - start))
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


LOOKUP_SQL = "SELECT * FROM crm.customers WHERE customer_id = %s"
NATIVE_WAIT_SECONDS = 120
# Each credential may run 500 statements per second (HostLimits.statements_per_second), a governance
# stage every statement passes: the small-statement loops are paced under it rather than exempted.
SMALL_PACE_SECONDS = 1 / 400


def _served_natively(conn: psycopg.Connection, table: str) -> bool:
    """Whether the engine reads `table` from its native DuckDB copy (no Parquet scan in the plan)."""
    plan = "\n".join(str(row[-1]) for row in conn.execute(f"EXPLAIN SELECT * FROM {table}").fetchall())
    return "READ_PARQUET" not in plan and "PARQUET_SCAN" not in plan


def _wait_native(conn: psycopg.Connection, table: str) -> bool:
    deadline = time.monotonic() + NATIVE_WAIT_SECONDS
    while not _served_natively(conn, table):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _native_copy(data_dir: Path) -> duckdb.DuckDBPyConnection:
    """In-process DuckDB with the demo tables as native tables (what the engine's cache serves)."""
    con = duckdb.connect()
    register_parquet_tables(con, data_dir)
    for schema, table in con.execute("SELECT schema_name, view_name FROM duckdb_views() "
                                     "WHERE NOT internal AND schema_name <> 'main'").fetchall():
        con.execute(f'CREATE TABLE "{schema}"."{table}__n" AS SELECT * FROM "{schema}"."{table}"')
        con.execute(f'DROP VIEW "{schema}"."{table}"')
        con.execute(f'ALTER TABLE "{schema}"."{table}__n" RENAME TO "{table}"')
    return con


def small_queries(hosts: list[tuple[str, EngineHostProcess]], count: int, rounds: int = 5) -> None:
    """p50/p95 of small statements over TLS through the full pipeline, next to in-process DuckDB.

    `SELECT 1` as the Owner, simple (Query) and prepared (named statement: Bind/Execute/Sync); a point
    lookup on crm.customers (tenant filter + four masks, served from the native cache) as the demo
    analyst, unnamed (Parse/Bind/Describe/Execute/Sync each time) and prepared. `prepare=False` keeps
    psycopg from preparing a statement by itself after its fifth run (its prepare_threshold).
    In process: the same client SQL on a native copy of the table, same parameter.

    With more than one host (`--baseline`), each case runs on every host in `rounds` interleaved
    rounds, so the machine's load falls on all of them alike.
    """
    first = hosts[0][1]
    local = _native_copy(first.state_dir / "data")
    for name, host in hosts:
        with psycopg.connect(host.dsn(), autocommit=True) as owner:
            native = _wait_native(owner, "crm.customers")
        with psycopg.connect(host.demo_dsn("acme-analyst"), autocommit=True) as analyst:
            key = analyst.execute("SELECT customer_id FROM crm.customers ORDER BY customer_id LIMIT 1").fetchone()[0]
            masked = analyst.execute(LOOKUP_SQL, [key]).fetchone()
        print(f"[small] {name}: crm.customers served "
              f"{'natively' if native else 'FROM PARQUET (native copy not ready)'}; analyst row masked: {masked}")
    cases = (
        ("SELECT 1 simple", None, "SELECT 1", None, False),
        ("SELECT 1 prepared", None, "SELECT 1", None, True),
        ("masked lookup unnamed", "acme-analyst", LOOKUP_SQL, [key], False),
        ("masked lookup prepared", "acme-analyst", LOOKUP_SQL, [key], True),
    )
    per_round = max(1, count // rounds)
    for label, person, sql, params, prepare in cases:
        wire: dict[str, list[float]] = {name: [] for name, _ in hosts}
        conns = {name: psycopg.connect(host.demo_dsn(person) if person else host.dsn(), autocommit=True)
                 for name, host in hosts}
        try:
            for round_ in range(rounds):
                for name, _ in hosts:
                    def over_wire(conn=conns[name], sql=sql, params=params, prepare=prepare) -> None:
                        conn.execute(sql, params, prepare=prepare).fetchall()

                    wire[name] += _timings(over_wire, per_round, warmup=50 if round_ == 0 else 5,
                                           interval=SMALL_PACE_SECONDS)
        finally:
            for conn in conns.values():
                conn.close()
        local_sql = sql.replace("%s", "$1")
        in_process = _timings(lambda s=local_sql, p=params: local.execute(s, p).fetchall(), count, warmup=50,
                              interval=SMALL_PACE_SECONDS)  # paced alike: idle gaps cool caches on both sides
        l50, l95 = _p50_p95(in_process)
        for name, _ in hosts:
            w50, w95 = _p50_p95(wire[name])
            versus = ""
            if len(hosts) > 1 and name != hosts[0][0]:
                versus = f"  {name}/{hosts[0][0]} {w50 / _p50_p95(wire[hosts[0][0]])[0]:5.2f}x"
            print(f"[small] {label:24s} {name:8s} n={len(wire[name])}  over TLS p50 {w50:6.3f} ms p95 {w95:6.3f} ms"
                  f"  | in-process DuckDB p50 {l50:6.3f} ms p95 {l95:6.3f} ms  ratio {w50 / l50:5.2f}x{versus}")


def _p50_p95(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000


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


@contextmanager
def _baseline_host(revision: str, state: Path) -> Iterator[EngineHostProcess]:
    """An engine host running the code of `revision` (a `git archive` of it, with its own hd_core)."""
    tree = state / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    here = os.getcwd()
    os.chdir(tree)  # `python -m engine_host.cli` imports the package from the working directory
    try:
        host = start_engine_host(state / "host", "--demo", env={"PYTHONPATH": str(tree / "layers" / "core")})
    finally:
        os.chdir(here)
    try:
        yield host
    finally:
        host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=100)
    parser.add_argument("--only", choices=("bulk", "small", "concurrent"), action="append",
                        help="run only these sections (repeatable); default: all")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the small statements on a host built from git revision REV, interleaved "
                             "with this tree's (before/after from one run)")
    args = parser.parse_args()
    sections = set(args.only or ("bulk", "small", "concurrent"))
    with tempfile.TemporaryDirectory() as state, ExitStack() as stack:
        host = start_engine_host(Path(state) / "host", "--demo")
        stack.callback(host.stop)
        dsn = host.dsn()
        if "bulk" in sections:
            bulk_fetch(dsn, args.rows, args.runs)
        if "small" in sections:
            hosts = [("this", host)]
            if args.baseline:
                (Path(state) / "baseline").mkdir()
                hosts.insert(0, ("baseline", stack.enter_context(_baseline_host(args.baseline,
                                                                                 Path(state) / "baseline"))))
            small_queries(hosts, args.small)
        if "concurrent" in sections:
            concurrent_clients(dsn, args.clients, args.per_client)


if __name__ == "__main__":
    main()
