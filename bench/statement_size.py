"""Statement size benchmark: how each stage outside DuckDB grows with the statement, next to PostgreSQL.

Run from the repository root:  .venv/bin/python -m bench.statement_size [--max-tokens 1000000] [--pg DSN]

Builds the real engine host pieces (`LocalEngineHost`, demo data and policies) in a temporary
directory, like bench/pipeline.py, and runs statements of growing size through the full pipeline
(prepare + execute + drain + audit record) as the demo analyst (masks and a tenant row filter apply).
For each size it prints the seconds spent per stage (parse+guard, table extract + policy + rewrite
+ transpile, bound-plan check, DuckDB execute, audit redaction + write), the total, and the total of
the same statement on PostgreSQL (HD_TEST_PG_DSN or the local default), or says PostgreSQL was not
reachable. `x/prev` is total growth over the previous size: for linear stages ~ the size ratio.

Shapes: `in` (an IN list of short literals: 2 tokens per value), `params` (an IN list of $n bind
parameters), `string` (one long string literal: counted in 4-character chunks). A statement over
the 1 MiB limit is refused (54001) before any parser runs; its row shows how long the refusal took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.pipeline import _start, build, drain
from engine_host.pipeline import governor as governor_module
from engine_host.pipeline import pipeline as pipeline_module
from engine_host.pipeline.errors import QueryError
from tests.harness import DEFAULT_PG_DSN, reference_postgres_dsn

STAGES = {
    "guard": (governor_module, "_parse"),
    "rewrite": (governor_module, "apply_policies"),
    "transpile": (governor_module, "transpile"),
    "columns": (governor_module, "referenced_columns"),
    "plan_check": (pipeline_module.StatementPipeline, "bind_and_check"),
    "audit": (governor_module.AuditWriter, "write"),
}


class StageClock:
    """Wraps the stage functions so each call adds its wall time to `seconds[stage]`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        for stage, (owner, name) in STAGES.items():
            setattr(owner, name, self._timed(stage, getattr(owner, name)))

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
        return run


def statement(shape: str, tokens: int) -> tuple[str, list[int] | None]:
    """(SQL, parameters) of about `tokens` tokens for the engine (`$n` placeholders when parameters)."""
    if shape == "in":
        values = max(1, tokens // 2)
        return ("SELECT count(*) FROM crm.customers WHERE customer_id IN ("
                + ",".join(str(i % 10) for i in range(values)) + ")", None)
    if shape == "params":
        values = min(65_535, max(1, tokens // 2))
        return ("SELECT count(*) FROM crm.customers WHERE customer_id IN ("
                + ",".join(f"${i + 1}" for i in range(values)) + ")", list(range(values)))
    if shape == "string":
        return "SELECT length('" + "abc " * tokens + "') AS n", None
    raise ValueError(shape)


def engine_seconds(bench: Any, clock: StageClock, sql: str, params: list[int] | None) -> tuple[float, str]:
    clock.seconds.clear()
    pipeline, session = bench.pipeline, bench.analyst
    started = time.perf_counter()
    try:
        if params is None:
            drain(pipeline.execute(session, pipeline.prepare(session, sql)).rows)
        else:
            prepared = pipeline.prepare(session, sql, [20] * len(params))
            drain(pipeline.execute(session, prepared, [str(p).encode() for p in params], [0]).rows)
        outcome = "ok"
    except QueryError as exc:
        outcome = exc.sqlstate
    return time.perf_counter() - started, outcome


def postgres_seconds(dsn: str | None, sql: str, params: list[int] | None) -> str:
    if dsn is None:
        return "n/a"
    pg_sql = sql.replace("crm.customers", "(SELECT generate_series(1, 1000) AS customer_id) AS customers")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            if params is None:
                conn.execute(pg_sql).fetchall()
            else:
                conn.execute(re.sub(r"\$\d+", "%s", pg_sql), params, prepare=True).fetchall()
            return f"{time.perf_counter() - started:8.3f}"
    except psycopg.Error as exc:
        return exc.sqlstate or "error"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=1_000_000)
    parser.add_argument("--shapes", default="in,params,string")
    parser.add_argument("--pg", default=None, help="PostgreSQL DSN (default $HD_TEST_PG_DSN or the local default)")
    args = parser.parse_args()
    if args.pg:
        os.environ["HD_TEST_PG_DSN"] = args.pg
    dsn = reference_postgres_dsn()
    print("PostgreSQL:", "reachable, timed side by side" if dsn else
          f"NOT reachable (set HD_TEST_PG_DSN; tried {os.environ.get('HD_TEST_PG_DSN', DEFAULT_PG_DSN)!r}): "
          "the pg column says n/a")
    clock = StageClock()
    with tempfile.TemporaryDirectory() as state:
        host = asyncio.run(_start(Path(state)))
        try:
            bench = build(host)
            engine_seconds(bench, clock, "SELECT 1", None)  # warm-up
            sizes = [s for s in (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000) if s <= args.max_tokens]
            header = f"{'shape':7s} {'tokens':>9s} {'chars':>9s} " + " ".join(f"{s:>10s}" for s in STAGES) + \
                f" {'total':>8s} {'x/prev':>7s} {'result':>6s} {'pg':>8s}"
            print("seconds per stage, one run each, through prepare + execute + drain + audit record")
            print(header)
            for shape in args.shapes.split(","):
                previous = None
                for tokens in sizes:
                    sql, params = statement(shape, tokens)
                    total, outcome = engine_seconds(bench, clock, sql, params)
                    growth = f"{total / previous:6.1f}x" if previous else "      -"
                    previous = total
                    print(f"{shape:7s} {tokens:9,d} {len(sql):9,d} "
                          + " ".join(f"{clock.seconds.get(s, 0.0):10.3f}" for s in STAGES)
                          + f" {total:8.3f} {growth:>7s} {outcome:>6s} {postgres_seconds(dsn, sql, params):>8s}",
                          flush=True)
        finally:
            asyncio.run(host.stop())


if __name__ == "__main__":
    main()
