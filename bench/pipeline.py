"""Governance pipeline benchmark, in process: what the statement pipeline costs on top of DuckDB itself.

Run from the repository root:  .venv/bin/python -m bench.pipeline [--samples 300] [--rows 1000000]

Builds the real engine host pieces (`LocalEngineHost` with the demo data and policies) in a temporary
directory, then times synchronously, with no wire protocol in the way. Prints, side by side from one run:
  1. per statement, p50 of `StatementPipeline.prepare` + `execute` + draining the rows, as the demo
     analyst (masks + tenant row filter), versus running the same SQL text straight on the session's
     DuckDB connection (drained the same way): (a) uncached, a literal differs every time so the
     rewrite cache misses, and (b) cached, the same text again. `rewritten` is the governed SQL the
     pipeline runs, executed directly: the part of the overhead that is DuckDB evaluating masks/filters.
  2. the bound-plan check alone (bind + walk of DuckDB's logical plan) next to the uncached and the
     cached statement it belongs to: what verifying every new statement's plan costs
  3. draining a --rows table through the pipeline with two masked columns (partial + hash) versus the
     same statement as the Owner (exempt from the masks), best of --runs, interleaved: on a Parquet table
     served from its native copy, which stores both masked columns (engine_host/data/stored_masks.py;
     issue 17's goal: masked within 1.3x of unmasked), and on an engine table with the same rows, where
     the masks are computed per row in the query (the hash by its macro: the path every table took before)
  4. `scrub_pii` throughput on ~N MB of the mixed text bench/redaction.py uses (best of --runs)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from bench.redaction import best_of, mixed_text
from engine_host.devmode.demo_policies import ACME
from engine_host.engine.duckdb_engine import DATA_CATALOG, EngineSession
from engine_host.pipeline.governance.plan_check import statement_shape
from engine_host.pipeline.governor import HostLimits
from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.pipeline.results import RowSource
from engine_host.pipeline.session import Session
from engine_host.runtime.local import LocalConfig, LocalEngineHost
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.models import Role
from hd_core.policies import MaskFunction, MaskRule
from hd_core.text_redaction import scrub_pii

GOVERNED_PERSON = "acme-analyst"
MASKED_TABLE = "main.bench_pii"  # an engine table: its hash is computed in the query
NATIVE_TABLE = "bench.pii"  # a Parquet table served from its native copy, which stores the hash
_PII_ROWS = ("SELECT range AS id, 'user' || range::VARCHAR || '@example.com' AS email, "
             "printf('%03d-%02d-%04d', 900 + range % 100, 1 + range % 49, range % 10000) AS ssn FROM range({rows})")
# Unique literals across the whole run, so no "uncached" statement text was ever planned before.
_FRESH = itertools.count(1_000_000)


@dataclass
class Bench:
    host: LocalEngineHost
    pipeline: StatementPipeline
    analyst: Session
    owner: Session


def drain(rows: RowSource | None) -> int:
    count = 0
    if rows is not None:
        while (batch := rows.read()) is not None:
            count += batch.num_rows
    return count


def through_pipeline(pipeline: StatementPipeline, session: Session, sql: str) -> int:
    prepared = pipeline.prepare(session, sql)
    return drain(pipeline.execute(session, prepared).rows)


def direct(engine: EngineSession, sql: str) -> int:
    return drain(RowSource(engine.run(sql)))


def raw(sql: str) -> str:
    """A client statement as DuckDB alone would run it: table names in the data catalog, no governance."""
    return _TABLE_NAME.sub(rf"{DATA_CATALOG}.\1.", sql)


_TABLE_NAME = re.compile(r"\b(crm|sales|hr|clinical|main|bench)\.(?=[a-z_]+\b)")


# --- setup ------------------------------------------------------------------------------------------------------


def write_native_table(state_dir: Path, rows: int) -> None:
    """The Parquet file of NATIVE_TABLE in the local host's data folder (before it starts, so it is served)."""
    schema, table = NATIVE_TABLE.split(".")
    folder = state_dir / "data" / schema / table
    os.makedirs(folder)
    with duckdb.connect() as con:
        con.execute(f"COPY ({_PII_ROWS.format(rows=rows)}) TO '{folder / 'part-0.parquet'}' (FORMAT parquet)")


async def _start(state_dir: Path) -> LocalEngineHost:
    # The per-key rate limit (500 statements/s by default) would throttle a tight in-process loop.
    config = LocalConfig(state_dir=state_dir, port=0, demo=True, insecure_plaintext=True,
                         limits=HostLimits(statements_per_second=1e9))
    host = LocalEngineHost(config)
    await host.start()
    return host


def _open(host: LocalEngineHost, user_id: str, key_file: Path) -> Session:
    assert host.store is not None and host.server is not None
    principal = ApiKeyAuthenticator(host.store, ensure_pepper(host.store)).authenticate(
        user_id, key_file.read_text().strip())
    return host.server.pipeline.open_session(principal, "127.0.0.1", {}, 1)


def build(host: LocalEngineHost) -> Bench:
    assert host.server is not None and host.banner is not None
    analyst = _open(host, f"usr_demo_{GOVERNED_PERSON.replace('-', '_')}",
                    host.state_dir / "demo-keys" / f"{GOVERNED_PERSON}.key")
    owner = _open(host, host.banner.user, host.banner.key_file)
    return Bench(host, host.server.pipeline, analyst, owner)


# --- 1. per-statement overhead ------------------------------------------------------------------------------------


def _p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _time(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def statement_overhead(bench: Bench, samples: int, warmup: int) -> None:
    pipeline, session = bench.pipeline, bench.analyst
    engine = session.engine  # the same DuckDB connection (with the session's masking key) the pipeline uses
    ids = [r for b in _batches(pipeline, bench.owner, "SELECT customer_id FROM crm.customers "
                               f"WHERE org_id = '{ACME}' ORDER BY customer_id")
           for r in b.column(0).to_pylist()]

    def point(k: int) -> str:  # a real customer while ids last, then a LIMIT keeps the text unique
        return (f"SELECT * FROM crm.customers WHERE customer_id = {ids[k % len(ids)]}"
                + ("" if k < len(ids) else f" LIMIT {k}"))

    point_counter = itertools.count()
    cases: list[tuple[str, Callable[[], str]]] = [
        ("SELECT 1", lambda: f"SELECT {next(_FRESH)}"),
        ("point lookup crm.customers", lambda: point(next(point_counter))),
        ("orders JOIN customers GROUP BY", lambda: (
            "SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue FROM sales.orders o "
            f"JOIN crm.customers c ON c.customer_id = o.customer_id WHERE o.order_id <> {next(_FRESH)} "
            "GROUP BY c.region ORDER BY c.region")),
        # PostgreSQL's numeric division and avg() are rewritten into exact DECIMAL arithmetic (pg_numeric.py).
        ("avg() and numeric division", lambda: (
            "SELECT c.region, avg(o.amount) AS mean, sum(o.amount) / count(*) AS ratio FROM sales.orders o "
            f"JOIN crm.customers c ON c.customer_id = o.customer_id WHERE o.order_id <> {next(_FRESH)} "
            "GROUP BY c.region ORDER BY c.region")),
    ]
    print(f"[statements] as {GOVERNED_PERSON} (masks + tenant row filter), in process, p50 of {samples} "
          f"(+{warmup} warm-up), us; ratio = pipeline / direct")
    print(f"  {'statement':32s} {'direct':>8s} {'rewritten':>10s}   {'uncached':>9s} {'ratio':>7s}   "
          f"{'cached':>8s} {'ratio':>7s}")
    for label, fresh_sql in cases:
        # (a) uncached: a new text each time, run directly and through the pipeline, interleaved.
        raw_a, uncached = [], []
        for i in range(warmup + samples):
            sql = fresh_sql()
            d = _time(direct, engine, raw(sql))
            p = _time(through_pipeline, pipeline, session, sql)
            if i >= warmup:
                raw_a.append(d)
                uncached.append(p)
        # (b) cached: one text over and over; also the governed SQL the pipeline runs, executed directly.
        sql = fresh_sql()
        rewritten_sql = pipeline.prepare(session, sql).engine_sql
        raw_b, rewritten, cached = [], [], []
        for i in range(warmup + samples):
            d = _time(direct, engine, raw(sql))
            r = _time(direct, engine, rewritten_sql)
            p = _time(through_pipeline, pipeline, session, sql)
            if i >= warmup:
                raw_b.append(d)
                rewritten.append(r)
                cached.append(p)
        base_a, base_b = _p50_us(raw_a), _p50_us(raw_b)
        print(f"  {label:32s} {base_b:8.1f} {_p50_us(rewritten):10.1f}   {_p50_us(uncached):9.1f} "
              f"{_p50_us(uncached) / base_a:6.2f}x   {_p50_us(cached):8.1f} {_p50_us(cached) / base_b:6.2f}x")


def plan_check_overhead(bench: Bench, samples: int, warmup: int) -> None:
    """The bound-plan check (bind in DuckDB, walk the binder's plan) next to the statements it guards.

    Its verdict is cached per statement shape (literals blanked), so it is paid once per new shape:
    `check` is that cold cost; `new text` is a statement whose text is new but whose shape is known
    (a point lookup with another key); `cached` repeats one text (rewrite cache hit)."""
    pipeline, session = bench.pipeline, bench.analyst
    cases = [
        ("point lookup crm.customers", lambda: f"SELECT * FROM crm.customers WHERE customer_id = {next(_FRESH)}"),
        ("orders JOIN customers GROUP BY", lambda: (
            "SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue FROM sales.orders o "
            f"JOIN crm.customers c ON c.customer_id = o.customer_id WHERE o.order_id <> {next(_FRESH)} "
            "GROUP BY c.region ORDER BY c.region")),
        ("CTE + window over two tables", lambda: (
            f"WITH big AS (SELECT customer_id, amount FROM sales.orders WHERE amount > {next(_FRESH) % 97}) "
            "SELECT c.full_name, b.amount, rank() OVER (PARTITION BY c.region ORDER BY b.amount DESC) "
            "FROM big b JOIN crm.customers c USING (customer_id) ORDER BY 3 LIMIT 20")),
    ]
    print(f"[plan check] as {GOVERNED_PERSON}, p50 of {samples} (+{warmup} warm-up), us; share = cold check / "
          "a new statement that also pays it")
    print(f"  {'statement':32s} {'check':>8s} {'new text':>9s} {'+check':>9s} {'share':>7s}   {'cached':>8s}")
    for label, fresh_sql in cases:
        checks, known_shape, cached = [], [], []
        repeated = fresh_sql()
        for i in range(warmup + samples):
            sql = fresh_sql()
            u = _time(through_pipeline, pipeline, session, sql)
            plan = pipeline.prepare(session, sql).plan  # cached now: the plan the statement ran with
            assert plan is not None
            c = _time(pipeline.bind_and_check, session, plan, statement_shape(plan.bound_sql)[1])
            h = _time(through_pipeline, pipeline, session, repeated)
            if i >= warmup:
                checks.append(c)
                known_shape.append(u)
                cached.append(h)
        check, whole = _p50_us(checks), _p50_us(known_shape)
        print(f"  {label:32s} {check:8.1f} {whole:9.1f} {whole + check:9.1f} {check / (whole + check):6.1%}   "
              f"{_p50_us(cached):8.1f}")


def _batches(pipeline: StatementPipeline, session: Session, sql: str) -> list:
    rows = pipeline.execute(session, pipeline.prepare(session, sql)).rows
    out = []
    while rows is not None and (batch := rows.read()) is not None:
        out.append(batch)
    return out


# --- 2. masking a large result --------------------------------------------------------------------------------------


def masked_result(bench: Bench, rows: int, runs: int) -> None:
    pipeline, analyst, owner = bench.pipeline, bench.analyst, bench.owner
    host = bench.host.engine
    assert host is not None and host.policies is not None
    native = host.table_source.native  # type: ignore[attr-defined]
    through_pipeline(pipeline, owner, f"CREATE TABLE {MASKED_TABLE} AS {_PII_ROWS.format(rows=rows)}")
    org = analyst.principal.org_id
    for table in (MASKED_TABLE, NATIVE_TABLE):
        for rule in (
            MaskRule(f"msk_{table}_email", org, table, "email", MaskFunction.PARTIAL, 4, exempt_roles=(Role.OWNER,)),
            MaskRule(f"msk_{table}_ssn", org, table, "ssn", MaskFunction.HASH, exempt_roles=(Role.OWNER,)),
        ):
            host.store.put_policy(rule)
    host.policies.load()
    engine_sql, native_sql = f"SELECT * FROM {MASKED_TABLE}", f"SELECT * FROM {NATIVE_TABLE}"
    for sql in (engine_sql, native_sql):
        plan = pipeline.prepare(analyst, sql).plan  # the first masked plan asks for a copy that stores the hash
        assert plan is not None and {c.split(".")[-1] for c in plan.masked_columns} == {"email", "ssn"}, plan
    assert native.wait_idle(600) and native.served_from(NATIVE_TABLE) is not None
    governed = pipeline.prepare(analyst, native_sql).engine_sql
    assert "hd_masks_" in governed and "hd_mask_hash" not in governed, governed  # reads the stored hash
    assert "hd_mask_hash" in pipeline.prepare(analyst, engine_sql).engine_sql  # computes it

    # Same rows, same masks: the stored hash reads exactly what the macro computes.
    ordered = " ORDER BY id"
    stored = pa.Table.from_batches(_batches(pipeline, analyst, native_sql + ordered))
    computed = pa.Table.from_batches(_batches(pipeline, analyst, engine_sql + ordered))
    assert stored.num_rows == rows and stored.equals(computed), "stored and computed masks differ"
    first = stored.slice(0, 1).to_pylist()[0]
    assert first["email"].startswith("*") and len(first["ssn"]) == 64, first
    del stored, computed

    cases = {  # key: (session, sql, runner)
        "direct": (owner, raw(native_sql), lambda session, sql: direct(session.engine, sql)),
        "native unmasked": (owner, native_sql, lambda session, sql: through_pipeline(pipeline, session, sql)),
        "native masked": (analyst, native_sql, lambda session, sql: through_pipeline(pipeline, session, sql)),
        "engine unmasked": (owner, engine_sql, lambda session, sql: through_pipeline(pipeline, session, sql)),
        "engine masked": (analyst, engine_sql, lambda session, sql: through_pipeline(pipeline, session, sql)),
    }
    timings: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):  # interleaved, so drift hits all alike
        for key, (session, sql, runner) in cases.items():
            timings[key].append(_time(runner, session, sql))
    best = {k: min(v) for k, v in timings.items()}
    print(f"[masking] {rows:,} rows (id, email, ssn), SELECT * drained through the pipeline, best of {runs}; "
          "masks: email partial, ssn hash")
    for label, key, ratio in (
        (f"direct DuckDB on {NATIVE_TABLE}'s native copy", "direct", ""),
        (f"{NATIVE_TABLE} (native copy) as Owner: unmasked", "native unmasked",
         f"ratio {best['native unmasked'] / best['direct']:5.2f}x vs direct"),
        (f"{NATIVE_TABLE} (native copy) as {GOVERNED_PERSON}: masks stored", "native masked",
         f"ratio {best['native masked'] / best['native unmasked']:5.2f}x vs unmasked (goal <= 1.3x)"),
        (f"{MASKED_TABLE} (engine table) as Owner: unmasked", "engine unmasked", ""),
        (f"{MASKED_TABLE} (engine table) as {GOVERNED_PERSON}: computed", "engine masked",
         f"ratio {best['engine masked'] / best['engine unmasked']:5.2f}x vs unmasked"),
    ):
        print(f"  {label:58s} {best[key] * 1000:8.1f} ms   {ratio}".rstrip())
    print(f"  masked reads, stored vs computed: {best['native masked'] / best['engine masked']:5.2f}x")
    through_pipeline(pipeline, owner, f"DROP TABLE {MASKED_TABLE}")  # keeps the shutdown checkpoint small


# --- 3. PII redaction -------------------------------------------------------------------------------------------------


def redaction(megabytes: float, runs: int) -> None:
    text = mixed_text(megabytes)
    seconds = best_of(runs, lambda: scrub_pii(text))
    mb = len(text.encode()) / 1_000_000
    print(f"[scrub_pii] {mb:.1f} MB mixed text (bench.redaction), best of {runs}: {seconds * 1000:7.1f} ms  "
          f"{mb / seconds:6.1f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="timed statements per case (p50)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the masked table")
    parser.add_argument("--runs", type=int, default=3, help="best of N for the masking and scrub_pii timings")
    parser.add_argument("--megabytes", type=float, default=4.0, help="text for scrub_pii")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()  # start and stop on one loop; the timing in between is synchronous
    with tempfile.TemporaryDirectory() as state:
        write_native_table(Path(state), args.rows)
        host = loop.run_until_complete(_start(Path(state)))
        bench = None
        try:
            bench = build(host)
            try:
                statement_overhead(bench, args.samples, args.warmup)
                plan_check_overhead(bench, args.samples, args.warmup)
                masked_result(bench, args.rows, args.runs)
            finally:
                bench.analyst.close()
                bench.owner.close()
            redaction(args.megabytes, args.runs)
        finally:
            loop.run_until_complete(host.stop())
            loop.close()


if __name__ == "__main__":
    main()
