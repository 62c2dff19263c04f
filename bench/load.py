"""Load benchmark: N clients of a mixed governed workload against the engine host and PostgreSQL, side by side.

Run from the repository root:  .venv/bin/python -m bench.load [--clients 100 200 400] [--seconds 20] [--smoke]

Starts `hd dev --demo --insecure-plaintext` in a temporary directory and, for each level of N clients, runs
for a fixed time N closed-loop clients, each its own asyncpg connection, as the demo people of both
organisations (acme-analyst, acme-admin, acme-agent as a langchain agent, globex-analyst; round robin).
Each client draws from one seeded mix: point lookups on crm.customers (masked columns) and sales.orders,
small aggregates over hr.employees (department row filter, NULL-masked salary) and clinical.encounters
(partial-masked mrn), a join of orders and customers, and inserts into a scratch table (acme-analyst and
acme-admin only; agents may not write). Every statement names its organisation (`org_id = $1`), so the
same text means the same rows on PostgreSQL, where the demo tables are copied into a scratch schema with
no governance and the same clients replay the same sequence.

Per level and target it prints q/s (answered-ok statements over the wall time to the last answer),
p50/p99 latency of ok statements, errors by SQLSTATE, connect time, the engine's peak RSS (VmRSS
sampled every 100 ms; VmHWM for the process's life; both summed over the engine's process and any processes
under it, as its CPU is), CPU used by the engine, by this load generator and by the whole machine, the
event-loop lag of the generator (its own p99 scheduling delay, the part of every latency that is ours), and
the audit check: JSONL records under DIR/audit/queries carrying the level's request_id must equal the
statements the engine answered, or a MISMATCH line says by how much.

PostgreSQL ($HD_TEST_PG_DSN, default 127.0.0.1:5432 database test) has `max_connections` (100 by default)
shared with everyone else on it, so past what it has free the PostgreSQL clients share a pool of
connections, a statement at a time, as pgbouncer in transaction mode would; the line says so. Without a
reachable PostgreSQL the engine half still runs and the ratios are left out, saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import psycopg
import pyarrow.parquet as pq
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from bench.gil_profile import GilProfile, GilSummary, describe, py_spy
from tests.harness import DEFAULT_PG_DSN, EngineHostProcess, start_engine_host

ACME, GLOBEX = "org_acme", "org_globex"
# (demo person, organisation, may write, startup parameters naming an agent)
PEOPLE: tuple[tuple[str, str, bool, dict[str, str]], ...] = (
    ("acme-analyst", ACME, True, {}),
    ("acme-admin", ACME, True, {}),
    ("acme-agent", ACME, False, {"agent_framework": "langchain"}),
    ("globex-analyst", GLOBEX, False, {}),
)
DEMO_TABLES = {"customers": ("crm", "customers"), "orders": ("sales", "orders"),
               "employees": ("hr", "employees"), "encounters": ("clinical", "encounters")}
SCRATCH = "load_scratch"
CONNECT_PHASE_SECONDS = 300  # opening a level's connections takes at most this long

# The mix: (kind, weight, SQL with {table} placeholders). A client that may not write draws a point lookup.
MIX: tuple[tuple[str, int, str], ...] = (
    ("point_customer", 30, "SELECT customer_id, full_name, email, ssn, card_number, phone FROM {customers} "
                           "WHERE org_id = $1 AND customer_id = $2"),
    ("point_order", 20, "SELECT order_id, customer_id, amount, status FROM {orders} "
                        "WHERE org_id = $1 AND order_id = $2"),
    ("agg_employees", 15, "SELECT department, count(*), avg(salary) FROM {employees} "
                          "WHERE org_id = $1 GROUP BY department"),
    ("agg_encounters", 10, "SELECT encounter_type, count(*), min(mrn) FROM {encounters} "
                           "WHERE org_id = $1 AND region = $2 GROUP BY encounter_type"),
    ("join_region", 15, "SELECT c.region, count(*), sum(o.amount) FROM {orders} o JOIN {customers} c "
                        "ON c.customer_id = o.customer_id WHERE o.org_id = $1 AND o.amount > $2 GROUP BY c.region"),
    ("insert_scratch", 10, "INSERT INTO {scratch} (id, org_id, note, at) VALUES ($2, $1, $3, now())"),
)
KINDS = [kind for kind, _, _ in MIX]
WEIGHTS = [weight for _, weight, _ in MIX]


# --- the workload ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoKeys:
    """What statements draw their parameters from, per organisation, read from the demo Parquet files."""

    customers: dict[str, list[int]]
    orders: dict[str, list[int]]
    regions: dict[str, list[str]]


def demo_rows(data_dir: Path) -> dict[str, list[dict[str, object]]]:
    return {name: pq.read_table(data_dir / schema / table / "part-0.parquet").to_pylist()
            for name, (schema, table) in DEMO_TABLES.items()}


def demo_keys(rows: dict[str, list[dict[str, object]]]) -> DemoKeys:
    def by_org(table: str, column: str) -> dict[str, list]:
        out: dict[str, list] = {ACME: [], GLOBEX: []}
        for row in rows[table]:
            out[str(row["org_id"])].append(row[column])
        return out

    regions = {org: sorted(set(values)) for org, values in by_org("encounters", "region").items()}
    return DemoKeys(by_org("customers", "customer_id"), by_org("orders", "order_id"), regions)


def next_statement(rng: random.Random, keys: DemoKeys, org: str, writer: bool, write_id: int) -> tuple[str, tuple]:
    """One statement kind and its parameters; the same seed gives the same sequence on every target."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind == "insert_scratch" and not writer:
        kind = "point_customer"
    params: tuple
    if kind == "point_customer":
        params = (org, rng.choice(keys.customers[org]))
    elif kind == "point_order":
        params = (org, rng.choice(keys.orders[org]))
    elif kind == "agg_encounters":
        params = (org, rng.choice(keys.regions[org]))
    elif kind == "join_region":
        params = (org, Decimal(rng.randrange(0, 2000)))
    elif kind == "insert_scratch":
        params = (org, write_id, f"load row {write_id}")
    else:
        params = (org,)
    return kind, params


# --- targets: how a client gets a connection ---------------------------------------------------------------------


@dataclass
class Target:
    """One side of the comparison: how its clients connect, and what its statements are called there."""

    name: str
    statements: dict[str, str]
    connect: Callable[[int, str], Awaitable[asyncpg.Connection]]  # (client index, request tag)
    pooled: int | None = None  # PostgreSQL: clients share this many connections
    engine: EngineHostProcess | None = None


def statements_for(tables: dict[str, str]) -> dict[str, str]:
    return {kind: text.format(**tables) for kind, _, text in MIX}


def engine_target(host: EngineHostProcess) -> Target:
    async def connect(client: int, tag: str) -> asyncpg.Connection:
        person, _, _, agent = PEOPLE[client % len(PEOPLE)]
        key = (host.state_dir / "demo-keys" / f"{person}.key").read_text().strip()
        settings = {"request_id": tag, **agent}
        if agent:
            settings["agent_id"] = f"load-agent-{client}"
        return await asyncpg.connect(host="127.0.0.1", port=host.port, user=f"usr_demo_{person.replace('-', '_')}",
                                     password=key, database="hd", ssl=False, timeout=60,
                                     server_settings=settings)

    tables = {name: f"{schema}.{table}" for name, (schema, table) in DEMO_TABLES.items()}
    return Target("engine", statements_for({**tables, "scratch": f"main.{SCRATCH}"}), connect, engine=host)


def pg_connect_args(dsn: str) -> dict[str, object]:
    """asyncpg keyword arguments from a libpq DSN (key=value or URI)."""
    parts = conninfo_to_dict(dsn)
    args: dict[str, object] = {"host": parts.get("host", "127.0.0.1"), "port": int(str(parts.get("port", 5432))),
                               "user": parts.get("user"), "database": parts.get("dbname"), "ssl": False}
    if parts.get("password"):
        args["password"] = parts["password"]
    return args


def pg_target(dsn: str, schema: str, pooled: int) -> Target:
    args = pg_connect_args(dsn)

    async def connect(client: int, tag: str) -> asyncpg.Connection:
        return await asyncpg.connect(**args, timeout=30, server_settings={"application_name": tag})

    tables = {name: f"{schema}.{name}" for name in DEMO_TABLES}
    return Target("postgres", statements_for({**tables, "scratch": f"{schema}.{SCRATCH}"}), connect, pooled=pooled)


# --- measuring one level ----------------------------------------------------------------------------------------


@dataclass
class LevelResult:
    target: str
    clients: int
    connections: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # SQLSTATE -> count, of answered statements
    error_latencies: list[float] = field(default_factory=list)  # how long a refusal took to arrive
    lost: Counter = field(default_factory=Counter)  # client-side failures: the statement's fate is unknown
    connect_errors: Counter = field(default_factory=Counter)
    connect_seconds: list[float] = field(default_factory=list)
    rss_peak_kb: int | None = None
    hwm_kb: int | None = None
    engine_cpu: float | None = None  # cores, of the engine's process and every process under it
    engine_processes: int = 1  # most seen at once (RSS and VmHWM are sums over them)
    client_cpu: float = 0.0  # cores
    machine_busy: float = 0.0  # share of all cores
    loadavg: str = ""
    loop_lag_p99_ms: float = 0.0
    audit_records: int | None = None
    gil: GilSummary | str | None = None  # --profile: where the engine held the GIL, or why that is not known

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def answered(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def qps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(exc, asyncpg.PostgresError) and state else None


class ConnectionPool:
    """A statement-at-a-time pool for the PostgreSQL side: no reset between uses (pgbouncer transaction mode)."""

    def __init__(self, connections: list[asyncpg.Connection]) -> None:
        self._idle: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        for conn in connections:
            self._idle.put_nowait(conn)

    @asynccontextmanager
    async def take(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)


async def open_connections(target: Target, opened: list[asyncpg.Connection | None], tag: str, result: LevelResult,
                           parallel: int = 16) -> None:
    """Fill `opened` with connections, `parallel` at a time; a failed one stays None and is counted by SQLSTATE."""
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                opened[i] = await target.connect(i, tag)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                result.connect_errors[_sqlstate(exc) or type(exc).__name__] += 1
                return
            result.connect_seconds.append(time.perf_counter() - start)

    await asyncio.gather(*(one(i) for i in range(len(opened))))


async def close_all(connections: Sequence[asyncpg.Connection | None]) -> None:
    async def one(conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            conn.terminate()

    await asyncio.gather(*(one(c) for c in connections if c is not None))


Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


async def client_loop(index: int, conn_for: Acquire, target: Target, keys: DemoKeys, seed: int, deadline: float,
                      result: LevelResult) -> None:
    """One closed-loop client: the next statement as soon as the last one is answered, until the deadline."""
    _, org, writer, _ = PEOPLE[index % len(PEOPLE)]
    rng = random.Random(seed * 100_003 + index)  # a reproducible workload, not a secret
    writes = 0
    while time.monotonic() < deadline:
        kind, params = next_statement(rng, keys, org, writer, seed * 10**9 + index * 10**6 + writes)
        writes += kind == "insert_scratch"
        start = time.perf_counter()
        try:
            async with conn_for() as conn:
                if kind == "insert_scratch":
                    await conn.execute(target.statements[kind], *params)
                else:
                    await conn.fetch(target.statements[kind], *params)
        except asyncpg.PostgresError as exc:
            result.errors[_sqlstate(exc) or "?????"] += 1
            result.error_latencies.append(time.perf_counter() - start)
            continue
        except (asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            result.lost[type(exc).__name__] += 1
            return  # this client's connection is gone; the level goes on with the others
        result.latencies.append(time.perf_counter() - start)
        result.by_kind[kind] += 1


@asynccontextmanager
async def _own(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    yield conn


def _acquire_for(pool: ConnectionPool | None, opened: list[asyncpg.Connection | None], client: int) -> Acquire | None:
    """How client `client` gets its connection: from the pool, or its own (None: its connect failed)."""
    if pool is not None:
        return pool.take
    own = opened[client]
    return None if own is None else (lambda: _own(own))


async def run_level(target: Target, clients: int, seconds: float, grace: float, keys: DemoKeys, seed: int,
                    tag: str, profiler: str | None = None) -> LevelResult:
    """Connect, run `clients` clients for `seconds`, wait at most `grace` for the last answers, close.

    `profiler`: the py-spy executable, to sample where the engine holds the GIL while the clients run.
    """
    connections = min(clients, target.pooled) if target.pooled else clients
    result = LevelResult(target.name, clients, connections)
    opened: list[asyncpg.Connection | None] = [None] * connections
    try:
        try:
            await asyncio.wait_for(open_connections(target, opened, tag, result), CONNECT_PHASE_SECONDS)
        except TimeoutError:
            result.connect_errors["connect phase timed out"] += opened.count(None)
        live = [c for c in opened if c is not None]
        if not live:
            return result
        pool = ConnectionPool(live) if target.pooled else None
        samplers = Samplers(target.engine.process.pid if target.engine else None)
        samplers.start()
        profile = GilProfile(profiler, target.engine.process.pid, seconds) if profiler and target.engine else None
        start = time.monotonic()
        deadline = start + seconds
        tasks = [asyncio.create_task(client_loop(i, acquire, target, keys, seed, deadline, result))
                 for i in range(clients) if (acquire := _acquire_for(pool, opened, i)) is not None]
        _, pending = await asyncio.wait(tasks, timeout=seconds + grace)
        result.seconds = time.monotonic() - start
        for task in pending:  # still waiting `grace` after the deadline: cut off, fate unknown
            task.cancel()
            result.lost["cut off after grace"] += 1
        await asyncio.gather(*pending, return_exceptions=True)
        await samplers.stop(result)
        if profile is not None:
            result.gil = await asyncio.to_thread(profile.finish)
        return result
    finally:
        await close_all(opened)


# --- what the machine did meanwhile ------------------------------------------------------------------------------


def _proc_status_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc_cpu_seconds(pid: int) -> float:
    """CPU of the process and of its children it has waited for (utime + stime + cutime + cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # it ended meanwhile: its parent's cutime has it once waited for
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (an engine host that runs worker processes is all of them)."""
    tree, index = [pid], 0
    while index < len(tree):
        for children in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            try:
                tree.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
        index += 1
    return tree


def tree_cpu_seconds(pid: int) -> float:
    return sum(_proc_cpu_seconds(p) for p in process_tree(pid))


def tree_status_kb(pid: int, field_name: str) -> int | None:
    """A /proc status field (VmRSS, VmHWM) summed over the process tree; None if the root has none."""
    values = [_proc_status_kb(p, field_name) for p in process_tree(pid)]
    return None if values[0] is None else sum(v or 0 for v in values)


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]  # total, idle + iowait


class Samplers:
    """The engine's RSS every 100 ms, and CPU of the engine, of this process and of the machine, over a level."""

    def __init__(self, engine_pid: int | None) -> None:
        self.pid = engine_pid
        self.rss_peak = 0
        self.processes = 1
        self.lags: list[float] = []
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.wall = time.monotonic()
        self.client_cpu = time.process_time()
        self.engine_cpu = tree_cpu_seconds(self.pid) if self.pid else 0.0
        self.ticks = _machine_ticks()
        self._running = True
        self._tasks = [asyncio.create_task(self._sample_rss()), asyncio.create_task(self._sample_lag())]

    async def _sample_rss(self) -> None:
        while self._running and self.pid:
            self.rss_peak = max(self.rss_peak, tree_status_kb(self.pid, "VmRSS") or 0)
            self.processes = max(self.processes, len(process_tree(self.pid)))
            await asyncio.sleep(0.1)

    async def _sample_lag(self) -> None:
        while self._running:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lags.append(time.perf_counter() - before - 0.01)

    async def stop(self, result: LevelResult) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)
        wall = time.monotonic() - self.wall
        total, idle = _machine_ticks()
        result.client_cpu = (time.process_time() - self.client_cpu) / wall
        result.machine_busy = 1 - (idle - self.ticks[1]) / max(1, total - self.ticks[0])
        result.loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        result.loop_lag_p99_ms = (sorted(self.lags)[int(len(self.lags) * 0.99)] * 1000) if self.lags else 0.0
        if self.pid:
            result.engine_cpu = (tree_cpu_seconds(self.pid) - self.engine_cpu) / wall
            result.rss_peak_kb = self.rss_peak
            result.hwm_kb = tree_status_kb(self.pid, "VmHWM")
            result.engine_processes = self.processes


def count_audit_records(state_dir: Path, tag: str) -> int:
    """JSONL query audit records whose request_id is this level's tag."""
    count = 0
    needle = f'"request_id": "{tag}"'
    for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if tag in line and (needle in line or json.loads(line).get("request_id") == tag):
                    count += 1
    return count


async def settled_audit_count(state_dir: Path, tag: str, expected: int, wait: float = 10.0) -> int:
    """The record count once it reaches `expected` or stops changing (completion records may trail rows)."""
    deadline = time.monotonic() + wait
    last = -1
    while True:
        count = count_audit_records(state_dir, tag)
        if count >= expected or count == last or time.monotonic() > deadline:
            return count
        last = count
        await asyncio.sleep(0.5)


# --- setting up both sides --------------------------------------------------------------------------------------


async def create_engine_scratch(host: EngineHostProcess) -> None:
    """The scratch table, created by Acme's Admin (so owned by org_acme: Acme's analyst may insert too)."""
    conn = await engine_target(host).connect(PEOPLE.index(("acme-admin", ACME, True, {})), "hd-load-setup")
    try:
        await conn.execute(f"CREATE TABLE main.{SCRATCH} (id BIGINT, org_id VARCHAR, note VARCHAR, at TIMESTAMPTZ)")
    finally:
        await conn.close()


_PG_TYPES = {"int64": "bigint", "string": "text", "date32[day]": "date", "timestamp[us, tz=UTC]": "timestamptz",
             "decimal128(12, 2)": "numeric(12,2)"}
_PRIMARY_KEYS = {"customers": "customer_id", "orders": "order_id", "employees": "employee_id",
                 "encounters": "encounter_id"}


def create_pg_schema(dsn: str, schema: str, data_dir: Path) -> None:
    """The demo tables copied into `schema`, with the primary keys a PostgreSQL user would give them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(schema)))
        for name, (db_schema, table) in DEMO_TABLES.items():
            arrow = pq.read_table(data_dir / db_schema / table / "part-0.parquet")
            columns = [pgsql.SQL("{} {}").format(pgsql.Identifier(f.name), pgsql.SQL(_PG_TYPES[str(f.type)]))
                       for f in arrow.schema]
            columns.append(pgsql.SQL("PRIMARY KEY ({})").format(pgsql.Identifier(_PRIMARY_KEYS[name])))
            qualified = pgsql.Identifier(schema, name)
            conn.execute(pgsql.SQL("CREATE TABLE {} ({})").format(qualified, pgsql.SQL(", ").join(columns)))
            with conn.cursor().copy(pgsql.SQL("COPY {} FROM STDIN").format(qualified)) as copy:
                for row in arrow.to_pylist():
                    copy.write_row(list(row.values()))
            conn.execute(pgsql.SQL("ANALYZE {}").format(qualified))
        conn.execute(pgsql.SQL("CREATE TABLE {} (id bigint, org_id text, note text, at timestamptz)")
                     .format(pgsql.Identifier(schema, SCRATCH)))


def drop_pg_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(schema)))


def pg_free_connections(dsn: str, margin: int) -> tuple[int, int]:
    """(max_connections, how many this run may take): what is left for non-superusers, less `margin` for others."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int").fetchone()
    limit, reserved, used = row or (0, 0, 0)
    return limit, max(1, limit - reserved - used - margin)


def reachable_pg(dsn: str) -> str | None:
    """None when PostgreSQL answers at `dsn`, else why not."""
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


# --- reporting ----------------------------------------------------------------------------------------------------


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counter.most_common()) or "none"


def print_result(r: LevelResult) -> None:
    via = f" over {r.connections} pooled connections" if r.connections != r.clients else ""
    connect = (f"connect p50 {statistics.median(r.connect_seconds) * 1000:.0f} ms "
               f"max {max(r.connect_seconds) * 1000:.0f} ms" if r.connect_seconds else "no connection opened")
    print(f"  {r.target:8s} {r.qps:8.1f} q/s  p50 {r.percentile_ms(0.5):8.2f} ms  p99 {r.percentile_ms(0.99):8.2f} ms"
          f"  ok {r.ok}  errors {sum(r.errors.values())}  ({r.clients} clients{via}, {r.seconds:.1f} s)")
    refusals = (f" (answered in p50 {statistics.median(r.error_latencies) * 1000:.0f} ms, "
                f"max {max(r.error_latencies) * 1000:.0f} ms)" if r.error_latencies else "")
    print(f"           errors by SQLSTATE: {_counts(r.errors)}{refusals}; lost (client side): {_counts(r.lost)}; "
          f"connect errors: {_counts(r.connect_errors)}; {connect}")
    processes = f" over {r.engine_processes} processes" if r.engine_processes > 1 else ""
    engine = (f"engine RSS peak {r.rss_peak_kb / 1024:.0f} MB (VmHWM {r.hwm_kb / 1024:.0f} MB){processes}, "
              f"engine CPU {r.engine_cpu:.2f} cores, " if r.rss_peak_kb is not None and r.hwm_kb is not None
              and r.engine_cpu is not None else "")
    cores = os.cpu_count() or 1
    others = r.machine_busy * cores - r.client_cpu - (r.engine_cpu or 0.0)  # PostgreSQL's backends count here
    print(f"           {engine}load generator CPU {r.client_cpu:.2f} cores (loop lag p99 {r.loop_lag_p99_ms:.1f} ms), "
          f"machine busy {r.machine_busy:.0%} of {cores} cores (everything else {others:.2f} cores), "
          f"loadavg {r.loadavg}")
    if isinstance(r.gil, GilSummary):
        print(f"           {describe(r.gil, r.engine_cpu)}")
    elif r.gil is not None:
        print(f"           no GIL profile: {r.gil}")
    if r.client_cpu > 0.85:
        print("           WARNING: the load generator used most of a core; its figures are a floor, not the target's")


def print_audit(r: LevelResult) -> None:
    unknown = sum(r.lost.values())
    records, answered = r.audit_records, r.answered
    if records is None:
        return
    if records == answered and not unknown:
        print(f"  audit: {records} records for {answered} answered statements: equal")
    elif unknown and answered <= records <= answered + unknown:
        print(f"  audit: {records} records for {answered} answered statements and {unknown} of unknown fate: "
              "consistent")
    else:
        print(f"  MISMATCH audit: {records} records for {answered} answered statements"
              f"{f' (+{unknown} of unknown fate)' if unknown else ''}: {records - answered:+d}")


def print_ratios(engine: LevelResult, pg: LevelResult) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    p50 = ratio(engine.percentile_ms(0.5), pg.percentile_ms(0.5))
    p99 = ratio(engine.percentile_ms(0.99), pg.percentile_ms(0.99))
    print(f"  ratio engine/postgres: q/s {ratio(engine.qps, pg.qps)}, p50 {p50}, p99 {p99}")


def print_summary(levels: list[tuple[LevelResult, LevelResult | None]]) -> None:
    print("[summary] clients | engine q/s p50 p99 ms errors RSS-peak MB audit | postgres q/s p50 p99 ms errors"
          " | engine/postgres q/s p50 p99")
    for engine, pg in levels:
        audit = "=" if engine.audit_records == engine.answered else f"MISMATCH {engine.audit_records}"
        line = (f"  {engine.clients:5d} | {engine.qps:7.1f} {engine.percentile_ms(0.5):7.1f} "
                f"{engine.percentile_ms(0.99):7.1f} {sum(engine.errors.values()) + sum(engine.lost.values()):5d} "
                f"{(engine.rss_peak_kb or 0) / 1024:6.0f} {audit}")
        if pg is not None:
            qps_ratio = engine.qps / pg.qps if pg.qps else 0.0
            line += (f" | {pg.qps:7.1f} {pg.percentile_ms(0.5):6.2f} {pg.percentile_ms(0.99):6.2f} "
                     f"{sum(pg.errors.values()) + sum(pg.lost.values()):5d} | {qps_ratio:.3f}x "
                     f"{engine.percentile_ms(0.5) / pg.percentile_ms(0.5):.1f}x "
                     f"{engine.percentile_ms(0.99) / pg.percentile_ms(0.99):.1f}x")
        print(line)


# --- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Options:
    clients: list[int]
    seconds: float
    grace: float
    seed: int
    pg_dsn: str | None  # None: no PostgreSQL half
    pg_margin: int
    host_args: list[str]
    profiler: str | None = None  # --profile: the py-spy executable


async def run_levels(options: Options, host: EngineHostProcess, keys: DemoKeys,
                     pg_schema: str | None) -> list[tuple[LevelResult, LevelResult | None]]:
    levels: list[tuple[LevelResult, LevelResult | None]] = []
    for level, clients in enumerate(options.clients):
        tag = f"hd-load-{os.getpid()}-{level}-{clients}"
        print(f"[load] {clients} clients for {options.seconds:g} s (request_id {tag})", flush=True)
        engine = await run_level(engine_target(host), clients, options.seconds, options.grace, keys,
                                 options.seed, tag, options.profiler)
        engine.audit_records = await settled_audit_count(host.state_dir, tag, engine.answered)
        print_result(engine)
        print_audit(engine)
        pg = None
        if options.pg_dsn is not None and pg_schema is not None:
            limit, free = pg_free_connections(options.pg_dsn, options.pg_margin)
            if free < clients:
                print(f"  (postgres max_connections={limit}: {clients} clients share {free} connections)")
            pg = await run_level(pg_target(options.pg_dsn, pg_schema, free), clients, options.seconds,
                                 options.grace, keys, options.seed, tag)
            print_result(pg)
            print_ratios(engine, pg)
        levels.append((engine, pg))
    return levels


def run(options: Options) -> list[tuple[LevelResult, LevelResult | None]]:
    """Start the engine host and the PostgreSQL scratch schema, run every level, clean both up."""
    with tempfile.TemporaryDirectory(prefix="hd-load-") as state:
        host = start_engine_host(Path(state), "--demo", "--insecure-plaintext", *options.host_args)
        pg_schema = None
        try:
            rss = _proc_status_kb(host.process.pid, "VmRSS") or 0
            print(f"[engine] hd dev --demo --insecure-plaintext {' '.join(options.host_args)} pid "
                  f"{host.process.pid}, RSS at start {rss / 1024:.0f} MB", flush=True)
            rows = demo_rows(host.state_dir / "data")
            asyncio.run(create_engine_scratch(host))
            if options.pg_dsn is not None:
                pg_schema = f"hd_load_{os.getpid()}"
                create_pg_schema(options.pg_dsn, pg_schema, host.state_dir / "data")
            levels = asyncio.run(run_levels(options, host, demo_keys(rows), pg_schema))
        finally:
            code = host.stop()
            if code not in (0, None):
                print(f"[engine] hd dev exited with {code}; last output:\n{''.join(host.output[-20:])}")
            if pg_schema is not None:
                drop_pg_schema(options.pg_dsn or "", pg_schema)
    print_summary(levels)
    return levels


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 200, 400], help="one level per value")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each level runs, per target")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="after a level's time, how long its last statements may take before they are cut off")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg-dsn", default=os.environ.get("HD_TEST_PG_DSN", DEFAULT_PG_DSN),
                        help="PostgreSQL to compare against (default $HD_TEST_PG_DSN or the local test database)")
    parser.add_argument("--no-postgres", action="store_true", help="run the engine half only")
    parser.add_argument("--pg-margin", type=int, default=15,
                        help="PostgreSQL connections left free for others sharing the server")
    parser.add_argument("--host-arg", action="append", default=[], help="an extra `hd dev` argument (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="5 clients, 2 s, one level: checks the bench runs")
    parser.add_argument("--profile", action="store_true",
                        help="sample the engine with py-spy --gil during each level: how much of the time the GIL "
                             "was held, and by which stage")
    args = parser.parse_args(argv)
    profiler = py_spy() if args.profile else None
    if args.profile and profiler is None:
        print("[profile] py-spy not found (.venv/bin/pip install py-spy): no GIL profile")
    if args.smoke:
        args.clients, args.seconds, args.grace = [5], 2.0, 10.0
    pg_dsn = None
    if args.no_postgres:
        print("[postgres] not requested (--no-postgres): engine half only, no ratios")
    elif (problem := reachable_pg(args.pg_dsn)) is not None:
        print(f"[postgres] none reachable at {args.pg_dsn!r} ({problem}); set HD_TEST_PG_DSN. "
              "Engine half only, no ratios")
    else:
        pg_dsn = args.pg_dsn
        print(f"[postgres] comparing against {args.pg_dsn!r}")
    return Options(args.clients, args.seconds, args.grace, args.seed, pg_dsn, args.pg_margin, args.host_arg,
                   profiler)


def main(argv: Sequence[str] | None = None) -> list[tuple[LevelResult, LevelResult | None]]:
    return run(parse_options(argv))


if __name__ == "__main__":
    main()
