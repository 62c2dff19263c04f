"""Shadow mode on TPC-H: the 22 queries replayed on PostgreSQL and on the engine, the parity report and the speedup.

    .venv/bin/python -m bench.shadow [--scale 1] [--rounds 3] [--timeout 120] [--smoke]

What a customer does before cutting over (issue 18), timed: TPC-H at `--scale` (generated with
`tpchgen-cli` into ~/.cache/hd-bench/tpch-sf<scale> on first use, reused later; bench/tpch.py's
functions) sits in the data folder of an `hd dev --insecure-plaintext` host as tpch.<table> and in
PostgreSQL ($HD_TEST_PG_DSN / 127.0.0.1:5432, schema tpch_bench, loaded once and reused when its row
counts match). The replay reads PostgreSQL as a customer would let it: as `hd_bench_shadow_reader`, a
login role that is no superuser, may create nothing, is read-only by default and may only SELECT the
bench's schema (created by the bench when absent, its grants and a fresh password set on every run;
the bench checks it cannot write before replaying). Once the host has built its native copies, the 22
queries (tests/e2e/tpch_queries.py, unqualified names) are uploaded `--rounds` times over as one SQL
file with `hd shadow upload`, and
`hd shadow replay --wait` replays them (progress bar on stderr) with the comparison DSN in a 0600
temporary file (never on a command line, never printed), search_path tpch on the engine and
tpch_bench on PostgreSQL, one batch at a time: each statement runs on PostgreSQL inside BEGIN READ
ONLY, then on the engine over the Postgres wire as the replay's ServiceAccount (row filters, masks,
plan check and audit all apply), so the two sides are timed side by side, statement by statement,
round after round. The timings are the replay's own (execute plus reading every row, per side).

Printed: the report's verdict counts, each side's p50/p95/p99 and total, the report's speedup at p50
(PostgreSQL p50 over engine p50, over every replayed statement), the per-query medians over the
rounds, and the goal line (>= 11.7x at p50 with all 22 queries matching in every round) and whether
it was met. Exit status 1 when a statement did not match (mismatch or error), else 0.

Without a reachable PostgreSQL there is nothing to compare: the bench says why, times the engine
half (the same statements over the wire as the Owner, same rounds) and exits 0 without ratios.
The machine may be shared with other work: the ratios are measured side by side in one run, and the
load average before and after is printed next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from bench import tpch
from hd_core.shadow.report import LatencySummary
from tests.harness import EngineHostProcess, reference_postgres_dsn, start_engine_host

GOAL_SPEEDUP_P50 = 11.7  # the figure the seeds quote
READER_ROLE = "hd_bench_shadow_reader"  # the comparison database's read-only role the replay connects as
ENGINE_SCHEMA = "tpch"
MATCHING = ("exact", "semantic")


@dataclass(frozen=True)
class Planned:
    """One statement of the uploaded file: which round and query it is, and the line its code starts on."""

    round: int
    query: str
    line: int


def pg_schema(scale: float) -> str:
    """The PostgreSQL schema bench/tpch.py loads the data into (shared, so SF1 is loaded once for both)."""
    return "tpch_bench" if scale == 1 else f"tpch_bench_sf{tpch.scale_label(scale)}"


def reader_dsn(admin_dsn: str, schema: str) -> str:
    """The DSN of `READER_ROLE` on `admin_dsn`'s database, reading `schema` only (the role made or reset here).

    Made with the bench's own connection (which may create roles); the replay never sees that one. The
    role is verified before use: no superuser, no writes (SystemExit otherwise).
    """
    password = secrets.token_urlsafe(24)
    role = pgsql.Identifier(READER_ROLE)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_ROLE,)).fetchone()
        if exists is None:
            conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute(pgsql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                               "PASSWORD {}").format(role, pgsql.Literal(password)))
        conn.execute(pgsql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
        database = pgsql.Identifier(str(conn.info.dbname))
        conn.execute(pgsql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
        conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(pgsql.Identifier(schema), role))
        conn.execute(pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(pgsql.Identifier(schema), role))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, user=READER_ROLE, password=password,
                                         options=f"-c search_path={schema}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if superuser is None or superuser[0]:
            raise SystemExit(f"{READER_ROLE} is a superuser: the replay must not read PostgreSQL as one")
        try:
            conn.execute(pgsql.SQL("CREATE TEMPORARY TABLE hd_bench_write_probe (x int)"))
        except psycopg.errors.ReadOnlySqlTransaction:
            pass
        else:
            raise SystemExit(f"{READER_ROLE} could write: the replay must read PostgreSQL read-only")
    return dsn


def upload_text(queries: dict[str, str], rounds: int) -> tuple[str, list[Planned]]:
    """The queries `rounds` times over as one SQL file, each behind a comment naming it; and where each starts."""
    parts: list[str] = []
    planned: list[Planned] = []
    line = 1
    for number in range(1, rounds + 1):
        for name, sql in queries.items():
            body = sql.strip()
            parts.append(f"-- round {number}, TPC-H {name}\n{body};\n")
            planned.append(Planned(number, name, line + 1))
            line += 2 + body.count("\n")
    return "".join(parts), planned


def hd_shadow(host: EngineHostProcess, *args: str) -> Any:
    """`hd shadow ARGS --json` against the host's control API (key in the environment); its JSON answer.

    The CLI's stderr (the replay's progress bar) passes through to ours.
    """
    env = {**os.environ, "HD_API_URL": host.api_url, "HD_API_KEY": host.password}
    done = subprocess.run([sys.executable, "-m", "engine_host.cli", "--log-level", "ERROR", "shadow", *args, "--json"],
                          env=env, stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"hd shadow {args[0]} exited with {done.returncode}: {done.stdout.strip()[-2000:]}")
    return json.loads(done.stdout)


def replay(host: EngineHostProcess, text: str, comparison_dsn: str, timeout: float) -> dict[str, Any]:
    """Upload the file and replay it against `comparison_dsn`, one batch at a time; the report."""
    with tempfile.TemporaryDirectory(prefix="hd-bench-shadow-") as temp:
        queries = Path(temp) / "tpch.sql"
        queries.write_text(text, encoding="utf-8")
        uploaded = hd_shadow(host, "upload", str(queries), "--format", "sql")
        if uploaded["rejected"]:
            raise SystemExit(f"the upload rejected statements: {uploaded['rejected']}")
        print(f"[upload] query set {uploaded['query_set_id']}: {uploaded['statement_count']} statements, none "
              "rejected", flush=True)
        descriptor, name = tempfile.mkstemp(prefix="dsn-", dir=temp)  # mode 0600
        with os.fdopen(descriptor, "w", encoding="utf-8") as dsn_file:
            dsn_file.write(comparison_dsn)
        started = time.monotonic()
        report: dict[str, Any] = hd_shadow(
            host, "replay", uploaded["query_set_id"], "--comparison-dsn-file", name, "--search-path", ENGINE_SCHEMA,
            "--concurrency", "1", "--timeout", f"{timeout:g}", "--wait")
    print(f"[replay] {report['query_count']} statements replayed in {time.monotonic() - started:.1f} s", flush=True)
    return report


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def latency_line(name: str, side: dict[str, Any]) -> str:
    return (f"  {name:<10}{side['count']:>6}{ms(side['p50_ms']):>10}{ms(side['p95_ms']):>10}"
            f"{ms(side['p99_ms']):>10}{ms(side['total_ms']):>12}")


def print_report(report: dict[str, Any], planned: list[Planned], rounds: int) -> bool:
    """The report's figures, the per-query medians and the goal line; True when every statement matched."""
    by_line = {p.line: p for p in planned}
    statements = report["statements"]
    unplaced = [s["line"] for s in statements if s["line"] not in by_line]
    if unplaced or len(statements) != len(planned):
        raise SystemExit(f"the report's statements do not match the upload (lines {unplaced}, "
                         f"{len(statements)} of {len(planned)})")
    bad = [s for s in statements if s["verdict"] not in MATCHING]
    counts = ", ".join(f"{verdict} {report[verdict]}" for verdict in ("exact", "semantic", "mismatch", "error"))
    print(f"[verdicts] {counts}: " + ("all match" if not bad else f"{len(bad)} of {len(statements)} do NOT match"))
    for s in bad:
        where = by_line[s["line"]]
        detail = "; ".join(s.get("notes") or ()) or "; ".join(
            f"{e['side']}: {e['sqlstate']} {e['message']}" for e in s.get("errors") or ())
        print(f"  round {where.round} {where.query}: {s['verdict']} ({detail})")
    print(f"[latency] ms per statement over {report['query_count']} statements (execute + read every row)")
    print(f"  {'side':<10}{'count':>6}{'p50':>10}{'p95':>10}{'p99':>10}{'total':>12}")
    print(latency_line("postgres", report["reference"]))
    print(latency_line("engine", report["engine"]))
    speedup = report["speedup_p50"]
    shown = "n/a" if speedup is None else f"{speedup:.2f}x"
    print(f"[speedup] engine vs PostgreSQL at p50: {shown} "
          f"(total time {report['reference']['total_ms'] / max(report['engine']['total_ms'], 1e-9):.2f}x)")

    per_query: dict[str, list[tuple[float, float]]] = {}
    for s in statements:
        if s["reference_ms"] is not None and s["engine_ms"] is not None:
            per_query.setdefault(by_line[s["line"]].query, []).append((s["reference_ms"], s["engine_ms"]))
    print(f"[per query] medians over {rounds} round(s), ms")
    print(f"  {'query':<7}{'postgres':>11}{'engine':>11}{'speedup':>10}")
    for name in dict.fromkeys(p.query for p in planned):
        if name not in per_query:
            print(f"  {name:<7}{'n/a':>11}{'n/a':>11}")
            continue
        pg = statistics.median(t[0] for t in per_query[name])
        engine = statistics.median(t[1] for t in per_query[name])
        print(f"  {name:<7}{pg:11.1f}{engine:11.1f}{pg / engine:9.1f}x")

    queries = len({p.query for p in planned})
    fast = speedup is not None and speedup >= GOAL_SPEEDUP_P50
    met = fast and not bad
    why = [] if fast else [f"speedup {shown}"]
    if bad:
        why.append(f"{len(bad)} statements not matching")
    print(f"[goal] >= {GOAL_SPEEDUP_P50}x at p50 with all {queries} queries matching in every round: "
          + ("met" if met else f"NOT met ({', '.join(why)})"))
    return not bad


def engine_half(host: EngineHostProcess, queries: dict[str, str], rounds: int) -> None:
    """Without PostgreSQL: the same statements over the wire as the Owner, timed (no ratios, nothing compared)."""
    times: list[float] = []
    with psycopg.connect(host.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute(f"SET search_path = {ENGINE_SCHEMA}")
        for _ in range(rounds):
            for sql in queries.values():
                started = time.perf_counter()
                conn.execute(sql).fetchall()
                times.append((time.perf_counter() - started) * 1000)
    summary = LatencySummary.of(times)
    print(f"[latency] engine only, ms per statement over {summary.count} statements (execute + read every row)")
    print(f"  engine    p50 {ms(summary.p50)}  p95 {ms(summary.p95)}  p99 {ms(summary.p99)}  total {ms(summary.total)}")
    print("[goal] not checked: no PostgreSQL to compare with")


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="times the 22 queries are replayed (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per statement and side (default 120)")
    parser.add_argument("--build-timeout", type=float, default=1200.0,
                        help="seconds the engine may take to build its native copies")
    parser.add_argument("--smoke", action="store_true", help="SF0.01, one round: checks the bench runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scale, args.rounds = 0.01, 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    queries = tpch.load_queries()
    data = tpch.ensure_data(args.scale)
    pg_dsn = reference_postgres_dsn()
    schema = pg_schema(args.scale)
    if pg_dsn is None:
        print("[postgres] none reachable ($HD_TEST_PG_DSN or 127.0.0.1:5432): the engine half only, no ratios")
    else:
        tpch.load_postgres(pg_dsn, data, schema)
    cores = os.cpu_count() or 1
    print(f"[shadow] SF{args.scale:g}, {len(queries)} queries x {args.rounds} round(s) = "
          f"{len(queries) * args.rounds} statements; {cores} cores, loadavg {loadavg()} (a shared machine: "
          "compare the two sides, not runs)", flush=True)

    with tempfile.TemporaryDirectory(prefix="hd-bench-shadow-") as temp:
        state_dir = Path(temp)
        tpch.engine_state(data, state_dir)
        host = start_engine_host(state_dir, "--insecure-plaintext")
        try:
            built = tpch.wait_for_native_copies(state_dir, args.build_timeout)
            print(f"[engine] hd dev --insecure-plaintext: native copies of {len(tpch.TABLES)} tables built "
                  f"{built:.1f} s after it was ready", flush=True)
            if pg_dsn is None:
                engine_half(host, queries, args.rounds)
                return 0
            text, planned = upload_text(queries, args.rounds)
            comparison = reader_dsn(pg_dsn, schema)
            print(f"[postgres] replayed as {READER_ROLE}: read-only, no superuser, SELECT on {schema} only",
                  flush=True)
            report = replay(host, text, comparison, args.timeout)
            matched = print_report(report, planned, args.rounds)
            print(f"[machine] loadavg after the replay {loadavg()}")
            return 0 if matched else 1
        finally:
            host.stop()


if __name__ == "__main__":
    sys.exit(main())
