"""TPC-H through the engine, side by side with in-process DuckDB (Parquet and native tables) and PostgreSQL.

    .venv/bin/python -m bench.tpch [--scale 1] [--rounds 5] [--lookups 50]

On first use the data is generated with `tpchgen-cli` into ~/.cache/hd-bench/tpch-sf<scale> (reused
later). Four systems run the 22 queries in interleaved rounds, each on the same files:
- "engine": an engine host (`hd dev`, tests.harness.start_engine_host) over TLS as the Owner through
  the full pipeline, the data in its folder as tpch.<table>; timed once its native copies are built;
- "parquet": in-process DuckDB over views on the Parquet files;
- "native": in-process DuckDB over the same data loaded into DuckDB's own format;
- "postgres": PostgreSQL at $HD_TEST_PG_DSN / 127.0.0.1:5432 when reachable (schema tpch_bench with
  primary keys and foreign-key indexes, loaded once and reused when its row counts match).
Every result is compared across the systems (numbers rounded to 9 significant digits, rows sorted so
ties in ORDER BY cannot differ); per-query medians, the p50 over queries, and the geomean ratios
engine/native and postgres/engine are printed, then the point lookup on customer. Next to the engine's
time at the client, "server" is the median of its statements' audit records (`timings_ms.total`: from
the statement's arrival through the pipeline and DuckDB to its audit record), so what the wire, TLS and
the client add shows apart from what the pipeline and DuckDB cost. The load average before and after
the rounds is printed: on a shared machine, ratios from one run side by side are what compare.

The queries come from tests/e2e/tpch_queries.py (PostgreSQL syntax, unqualified table names); this bench
qualifies the table names itself (tpch.<table>, tpch_bench.<table> in PostgreSQL).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlglot
from sqlglot import expressions as exp

from tests.harness import EngineHostProcess, reference_postgres_dsn, start_engine_host

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")
PRIMARY_KEYS = {
    "region": "r_regionkey", "nation": "n_nationkey", "supplier": "s_suppkey", "customer": "c_custkey",
    "part": "p_partkey", "partsupp": "ps_partkey, ps_suppkey", "orders": "o_orderkey",
    "lineitem": "l_orderkey, l_linenumber",
}
FOREIGN_KEYS = {
    "nation": [("n_regionkey", "region")], "supplier": [("s_nationkey", "nation")],
    "customer": [("c_nationkey", "nation")], "partsupp": [("ps_partkey", "part"), ("ps_suppkey", "supplier")],
    "orders": [("o_custkey", "customer")],
    "lineitem": [("l_orderkey", "orders"), ("l_partkey", "part"), ("l_suppkey", "supplier")],
}
POINT_LOOKUP = "SELECT * FROM customer WHERE c_custkey = 42"  # tpch.customer once qualified
SYSTEMS = ("engine", "parquet", "native", "postgres")


def load_queries() -> dict[str, str]:
    """The 22 TPC-H queries in PostgreSQL syntax, from the test suite's one copy."""
    from tests.e2e import tpch_queries

    return {f"q{number}": sql for number, sql in tpch_queries.QUERIES.items()}


def qualify(sql: str, schema: str) -> str:
    """Table references written bare, qualified with `schema` (until the engine honours SET search_path).

    Parsed, not matched as words: TPC-H uses `nation` as a column alias too (Q9).
    """
    tree = sqlglot.parse_one(sql, read="postgres")
    for table in tree.find_all(exp.Table):
        if not table.args.get("db") and table.name.lower() in TABLES:
            table.set("db", exp.to_identifier(schema))
    return tree.sql(dialect="postgres")


# --- data ------------------------------------------------------------------------------------------------

def scale_label(scale: float) -> str:
    return f"{scale:g}".replace(".", "_")


def ensure_data(scale: float) -> Path:
    """The Parquet files of TPC-H at `scale` (one per table), generated on first use."""
    folder = Path.home() / ".cache" / "hd-bench" / f"tpch-sf{scale_label(scale)}"
    if all((folder / f"{t}.parquet").is_file() for t in TABLES):
        return folder
    generator = Path(sys.executable).parent / "tpchgen-cli"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    print(f"generating TPC-H SF{scale:g} into {folder} ...", flush=True)
    subprocess.run([str(generator), "parquet", "-s", f"{scale:g}", f"--output-dir={partial}"], check=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def native_database(data: Path) -> Path:
    """A DuckDB file holding the tables in schema tpch (built once next to the Parquet files)."""
    path = data / "native.duckdb"
    if path.is_file():
        return path
    partial = data / "native.duckdb.partial"
    partial.unlink(missing_ok=True)
    con = duckdb.connect(str(partial))
    con.execute("CREATE SCHEMA tpch")
    for table in TABLES:
        con.execute(f"CREATE TABLE tpch.{table} AS SELECT * FROM read_parquet('{data / table}.parquet')")
    con.close()
    partial.rename(path)
    return path


def engine_state(data: Path, state_dir: Path) -> None:
    """The data as the engine's folder layout: data/tpch/<table>/<table>.parquet (hard links when possible)."""
    for table in TABLES:
        target = state_dir / "data" / "tpch" / table / f"{table}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(data / f"{table}.parquet", target)
        except OSError:
            shutil.copyfile(data / f"{table}.parquet", target)


def wait_for_native_copies(state_dir: Path, timeout: float) -> float:
    """Seconds until the engine served every table from a native copy (its cache folder holds one per table)."""
    native = state_dir / "cache" / "native"
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        done = list(native.glob("hd_native_*.duckdb")) if native.is_dir() else []
        if len(done) >= len(TABLES) and not list(native.glob("*.partial")):
            return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"the engine did not build its native copies within {timeout:.0f} s")


def _pg_type(field: Any) -> str:
    kind = str(field.type)
    if kind.startswith("decimal"):
        return f"numeric({field.type.precision},{field.type.scale})"
    return {"int64": "bigint", "int32": "integer", "date32[day]": "date"}.get(kind, "text")


def load_postgres(dsn: str, data: Path, schema: str) -> None:
    """Load the tables into `schema` with keys and FK indexes, unless the row counts already match."""
    counts = {t: pq.read_metadata(data / f"{t}.parquet").num_rows for t in TABLES}
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            loaded = {t: conn.execute(f"SELECT count(*) FROM {schema}.{t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
        except psycopg.Error:
            loaded = {}
        if loaded == counts:
            return
        print(f"loading PostgreSQL schema {schema} ...", flush=True)
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        for table in TABLES:
            arrow = pq.read_table(data / f"{table}.parquet")
            # The CSV writer has no string_view support; plain strings write the same text.
            arrow = arrow.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_string_view(f.type) else f
                                          for f in arrow.schema]))
            columns = ", ".join(f"{f.name} {_pg_type(f)} NOT NULL" for f in arrow.schema)
            conn.execute(f"CREATE TABLE {schema}.{table} ({columns})")
            with conn.cursor().copy(f"COPY {schema}.{table} FROM STDIN (FORMAT csv)") as copy:
                for batch in arrow.to_batches(max_chunksize=200_000):
                    buffer = io.BytesIO()
                    pacsv.write_csv(batch, buffer, pacsv.WriteOptions(include_header=False))
                    copy.write(buffer.getvalue())
        for table in TABLES:
            conn.execute(f"ALTER TABLE {schema}.{table} ADD PRIMARY KEY ({PRIMARY_KEYS[table]})")
            for column, _ in FOREIGN_KEYS.get(table, []):
                conn.execute(f"CREATE INDEX ON {schema}.{table} ({column})")
        for table in TABLES:
            conn.execute(f"ANALYZE {schema}.{table}")


# --- running ---------------------------------------------------------------------------------------------

Runner = Callable[[str], list[tuple[Any, ...]]]


def normalised(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    def value(v: Any) -> Any:
        if isinstance(v, (float, Decimal)):
            return float(f"{float(v):.9g}")
        if isinstance(v, (datetime.date, datetime.datetime)):
            return v.isoformat()
        if isinstance(v, str):
            return v.rstrip()
        return v

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


def timed(run: Runner, sql: str) -> tuple[float, list[tuple[Any, ...]]]:
    started = time.perf_counter()
    rows = run(sql)
    return (time.perf_counter() - started) * 1000, rows


def _rotated(systems: Sequence[str], by: int) -> list[str]:
    """`systems` starting at position `by` (modulo their number), in the same cyclic order."""
    start = by % len(systems)
    return [*systems[start:], *systems[:start]]


def audit_totals(state_dir: Path) -> list[float]:
    """`timings_ms.total` of every query audit record the host wrote so far, in the order it wrote them."""
    totals = []
    for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            totals.append(float(json.loads(line).get("timings_ms", {}).get("total", math.nan)))
    return totals


def server_medians(order: Sequence[str], totals: Sequence[float]) -> dict[str, float]:
    """Per query, the median audit-record total of its engine statements (`order`: one query per record)."""
    if len(totals) != len(order):
        raise SystemExit(f"expected {len(order)} query audit records from the timed rounds, found {len(totals)}")
    per_query: dict[str, list[float]] = {}
    for name, total in zip(order, totals, strict=True):
        per_query.setdefault(name, []).append(total)
    return {name: statistics.median(values) for name, values in per_query.items()}


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="TPC-H scale factor (0.01 for a smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=50, help="point lookups per system")
    parser.add_argument("--build-timeout", type=float, default=1200.0)
    parser.add_argument("--skip-postgres", action="store_true",
                        help="leave PostgreSQL out (faster while iterating; no postgres/engine ratio)")
    args = parser.parse_args(argv)

    queries = load_queries()
    data = ensure_data(args.scale)
    native_path = native_database(data)
    pg_dsn = None if args.skip_postgres else reference_postgres_dsn()
    pg_schema = "tpch_bench" if args.scale == 1 else f"tpch_bench_sf{scale_label(args.scale)}"
    if pg_dsn is not None:
        load_postgres(pg_dsn, data, pg_schema)

    parquet = duckdb.connect()
    parquet.execute("CREATE SCHEMA tpch")
    for table in TABLES:
        parquet.execute(f"CREATE VIEW tpch.{table} AS SELECT * FROM read_parquet('{data / table}.parquet')")
    native = duckdb.connect(str(native_path), read_only=True)

    with tempfile.TemporaryDirectory(prefix="hd-bench-tpch-") as temp:
        state_dir = Path(temp)
        engine_state(data, state_dir)
        host = start_engine_host(state_dir)
        try:
            built = wait_for_native_copies(state_dir, args.build_timeout)
            print(f"engine: native copies of {len(TABLES)} tables built {built:.1f} s after it was ready",
                  flush=True)
            return run(args, queries, host, parquet, native, pg_dsn, pg_schema)
        finally:
            host.stop()
            parquet.close()
            native.close()


def run(args: argparse.Namespace, queries: dict[str, str], host: EngineHostProcess,
        parquet: duckdb.DuckDBPyConnection, native: duckdb.DuckDBPyConnection, pg_dsn: str | None,
        pg_schema: str) -> int:
    engine = psycopg.connect(host.dsn(), autocommit=True)
    pg = psycopg.connect(pg_dsn, autocommit=True) if pg_dsn is not None else None
    runners: dict[str, Runner] = {
        "engine": lambda sql: engine.execute(sql).fetchall(),
        "parquet": lambda sql: parquet.execute(sql).fetchall(),
        "native": lambda sql: native.execute(sql).fetchall(),
    }
    if pg is not None:
        runners["postgres"] = lambda sql: pg.execute(sql).fetchall()
    systems = [s for s in SYSTEMS if s in runners]
    # Qualified once, outside the timings: sqlglot's parse and generate (~1 ms a query) was timed in every
    # system's runner, a constant that pulled every ratio towards 1.
    schemas = {s: pg_schema if s == "postgres" else "tpch" for s in systems}
    texts = {(name, s): qualify(sql, schemas[s]) for name, sql in queries.items() for s in systems}
    lookup_texts = {s: qualify(POINT_LOOKUP, schemas[s]) for s in systems}
    times: dict[tuple[str, str], list[float]] = {}
    results: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    audited_before = len(audit_totals(host.state_dir))
    engine_order: list[str] = []  # the query of each engine statement, in the order its records are written
    load_before = os.getloadavg()
    for round_number in range(args.rounds):
        for index, name in enumerate(queries):
            # Each system follows each other in turn: a system timed right after PostgreSQL's multi-second
            # scans (its parallel workers exiting, caches cold) would otherwise pay for them in every round.
            for system in _rotated(systems, round_number + index):
                elapsed, rows = timed(runners[system], texts[(name, system)])
                times.setdefault((name, system), []).append(elapsed)
                if system == "engine":
                    engine_order.append(name)
                if round_number == 0:
                    results[(name, system)] = normalised(rows)
    load_after = os.getloadavg()
    unequal = [name for name in queries if any(results[(name, s)] != results[(name, "native")] for s in systems)]
    server = server_medians(engine_order, audit_totals(host.state_dir)[audited_before:])

    print(f"\n[tpch] SF{args.scale:g}, {len(queries)} queries, {args.rounds} interleaved rounds, medians in ms; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("query  " + "".join(f"{s:>11}" for s in systems) + f"{'server':>11}   engine/native  server/native"
          + ("  postgres/engine" if pg else ""))
    medians = {key: statistics.median(values) for key, values in times.items()}
    for name in queries:
        row = "".join(f"{medians[(name, s)]:11.1f}" for s in systems)
        ratio = medians[(name, "engine")] / medians[(name, "native")]
        pg_ratio = f"{medians[(name, 'postgres')] / medians[(name, 'engine')]:17.1f}x" if pg else ""
        print(f"{name:<7}{row}{server[name]:11.1f}{ratio:15.2f}x{server[name] / medians[(name, 'native')]:14.2f}x"
              f"{pg_ratio}")
    p50 = {s: statistics.median(medians[(n, s)] for n in queries) for s in systems}
    print("p50    " + "".join(f"{p50[s]:11.1f}" for s in systems) + f"{statistics.median(server.values()):11.1f}")
    engine_vs_native = geomean([medians[(n, "engine")] / medians[(n, "native")] for n in queries])
    print(f"geomean engine/native: {engine_vs_native:.2f}x (goal <= 1.15x); server/native: "
          f"{geomean([server[n] / medians[(n, 'native')] for n in queries]):.2f}x; "
          f"parquet/native: {geomean([medians[(n, 'parquet')] / medians[(n, 'native')] for n in queries]):.2f}x")
    if pg:
        print(f"postgres/engine: p50 {p50['postgres'] / p50['engine']:.1f}x (goal >= 11.7x), geomean "
              f"{geomean([medians[(n, 'postgres')] / medians[(n, 'engine')] for n in queries]):.1f}x")
    else:
        print("postgres: not reachable (set HD_TEST_PG_DSN), skipped")
    if unequal:
        print(f"results differ from native DuckDB: {', '.join(unequal)}")
    else:
        print(f"all {len(queries)} results equal across {', '.join(systems)}")

    lookups: dict[str, list[float]] = {}
    for lookup in range(args.lookups):
        for system in _rotated(systems, lookup):
            lookups.setdefault(system, []).append(timed(runners[system], lookup_texts[system])[0])
    print("[point lookup] " + qualify(POINT_LOOKUP, "tpch") + ": p50 " +
          ", ".join(f"{s} {statistics.median(v):.2f} ms" for s, v in lookups.items()))
    engine.close()
    if pg is not None:
        pg.close()
    return 1 if unequal else 0


if __name__ == "__main__":
    sys.exit(main())
