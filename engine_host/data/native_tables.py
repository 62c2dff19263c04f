"""Served tables materialised into DuckDB's own format on the cache volume, with Parquet as the fallback.

DuckDB reads its own tables about 2.8x faster than Parquet files (FIELD-NOTES: TPC-H SF1), and a point
lookup costs 0.8 ms instead of 8-11 ms. So every table a source serves is copied, in the background,
into a DuckDB database file of its own under `<cache>/native/`, and the table's view in the data
catalog (`hd_data.<schema>.<table>`, where the governance rewrite points) is switched from
`read_parquet(...)` to that copy. The view keeps its name, columns and marker, so the rewrite, the
table catalog and the PostgreSQL catalog see no difference; the bound-plan check accepts a scan of
`hd_native_<n>.<schema>.<table>` exactly when the governed plan lists `<schema>.<table>` as a
read-only table (engine_host/pipeline/governance/plan_check.py).

Why one database file per table version rather than one cache database:
- a new version is built in a separate DuckDB instance and attached READ_ONLY when complete, so a
  reader never sees a half-built table and no session can write to a cached copy;
- the swap is one `CREATE OR REPLACE VIEW` (atomic in DuckDB's catalog); the old file stays attached
  until the last statement that could have bound it has released its lease, then it is detached and
  deleted;
- eviction frees exactly the bytes the budget counted (DuckDB does not shrink a file when a table
  is dropped from it).

A version is keyed by the source's fingerprint of the table (file names with mtimes and sizes for a
folder, keys with ETags and versions for an object store). `hold` re-checks the fingerprint of a
table whose last check is older than `max_staleness_seconds`; a changed table is switched back to
its Parquet view at once (so a reader is never served data older than that bound) and rebuilt in
the background. Nothing is ever materialised on a statement's path: until a table's copy is ready,
and for a table whose copy would not fit the byte budget, statements read the Parquet view.

Object-store tables (engine_host/data/cached_tables.py) come with `files` and `budget` hooks. Their
files are the cache's local copies of the objects: `files.hold` fetches and pins them while a copy is
built (at the listed ETags, never an older cached version) and while a fallback view may be bound,
and `files.copied` lets the cache evict them first once the copy serves the table. The budget is
the object cache's own (`reserve_bytes`/`release_bytes`): a copy reserves its bytes before it is built
(the source's size, topped up to the built size), the cache evicts unpinned objects to grant it, and
when it cannot, the least recently used copies no statement holds are evicted before the table is
left on Parquet. Such tables are added, changed and dropped by the object listing (`track`,
`forget`), which owns their file lists; `describe` catches replaced objects within the bound.

Lease rule: every change of a table's view (to a copy, or back to Parquet) starts a new epoch. A
statement that took its lease at epoch `h` may bind the view of any epoch from `h` on, so a version
that stopped being current at epoch `s` is retired only when no lease with `h < s` is outstanding.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb

from engine_host.data.stored_masks import CopyLayout, StoredMasks, Target, read_key_material
from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.views import (
    NATIVE_CATALOG_PREFIX,
    create_marked_view,
    qualified,
    quote_identifier,
    rollback,
    sql_string,
)

log = logging.getLogger(__name__)

# A table's identity at the source: equal fingerprints mean equal data.
Fingerprint = Hashable


@dataclass(frozen=True)
class SourceTable:
    """One served table as its source describes it now."""

    schema: str
    table: str
    fingerprint: Fingerprint
    files: tuple[Path, ...]  # local Parquet files to materialise from
    source_bytes: int
    fallback_sql: str  # the view's source while no copy is current: `read_parquet(...)`
    marker: str

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


class Releasable(Protocol):
    def release(self) -> None: ...


class SourceFiles(Protocol):
    """A table's files when they are not simply there: an object store's, through the local cache."""

    def hold(self, source: SourceTable, *, every_file: bool) -> Releasable:
        """Bring the table's files into place until `release`: every one, or the first (what its view binds from)."""
        ...

    def copied(self, source: SourceTable) -> None:
        """The table is served from its copy now: its files may be evicted first."""
        ...


class ByteBudget(Protocol):
    """Where the copies' bytes come from (the object cache's volume, or a budget of their own)."""

    def reserve_bytes(self, size: int) -> bool: ...

    def release_bytes(self, size: int) -> None: ...

    def available_bytes(self) -> int:
        """What `reserve_bytes` could grant now (after any eviction of its own)."""
        ...


class _OwnBudget:
    """`capacity_bytes` for the copies alone (a local folder's tables); used under the NativeTables lock."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0

    def reserve_bytes(self, size: int) -> bool:
        if self._used + size > self._capacity:
            return False
        self._used += size
        return True

    def release_bytes(self, size: int) -> None:
        self._used = max(0, self._used - size)

    def available_bytes(self) -> int:
        return self._capacity - self._used


@dataclass
class _Version:
    catalog: str
    path: Path
    size: int
    fingerprint: Fingerprint
    retired_at_epoch: int | None = None
    layout: CopyLayout | None = None  # the masks it stores (engine_host/data/stored_masks.py)
    fallback_files: Releasable | None = None  # the Parquet view's files, pinned for leases that may bind it


@dataclass
class _Table:
    source: SourceTable
    checked_at: float
    epoch: int = 0
    current: _Version | None = None
    superseded: list[_Version] = field(default_factory=list)
    pins: Counter[int] = field(default_factory=Counter)
    last_used: float = 0.0
    too_large: Fingerprint | None = None
    queued: bool = False
    dropped: bool = False  # gone from its source (`forget`); kept so epochs never restart under old leases


class NativeLease:
    """What one statement holds on native table versions; `release` exactly once when it ends."""

    def __init__(self, owner: NativeTables | None, epochs: dict[str, int],
                 may_read_files: frozenset[str] = frozenset()) -> None:
        self._owner = owner
        self._epochs = epochs
        self._may_read_files = may_read_files
        self._lock = threading.Lock()

    def reads_files(self, name: str) -> bool:
        """Whether the statement may bind `name`'s Parquet view (so it needs the table's files): the table has
        no copy here, its view was Parquet at the pinned epoch, or an older lease is out (a transaction binds
        the view of its BEGIN)."""
        return name not in self._epochs or name in self._may_read_files

    def release(self) -> None:
        with self._lock:
            epochs, self._epochs = self._epochs, {}
        if epochs and self._owner is not None:
            self._owner._unpin(epochs)

    def __enter__(self) -> NativeLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


NO_VERSIONS = NativeLease(None, {})


class NativeTables:
    """Native copies of the served tables: built in the background, swapped in atomically, evicted by LRU."""

    def __init__(self, native_dir: Path, capacity_bytes: int, *, describe: Callable[[str], SourceTable | None],
                 max_staleness_seconds: float = 60.0, build_memory: str = "1GiB",
                 clock: Callable[[], float] = time.monotonic, files: SourceFiles | None = None,
                 budget: ByteBudget | None = None,
                 build_guard: Callable[[SourceTable], Releasable | None] | None = None) -> None:
        """`describe(name)` re-reads one table from its source (None: unchanged as far as it can tell, or
        handled by `track`/`forget`); it is called without the lock held. `budget` defaults to
        `capacity_bytes` of the copies' own; with a shared one, `capacity_bytes` is the most it can grant.
        `build_guard(source)` is held while a copy reads files that are read in place (a local folder's: an
        erasure's swap must not replace them half way through a build)."""
        if capacity_bytes <= 0:
            raise ValueError("need capacity_bytes > 0")
        self._capacity = capacity_bytes
        self._files = files
        self._build_guard = build_guard
        self._budget: ByteBudget = budget if budget is not None else _OwnBudget(capacity_bytes)
        self._describe = describe
        self._staleness = max_staleness_seconds
        self._build_memory = build_memory
        self._clock = clock
        self._lock = threading.RLock()  # guards the tables and the DDL cursor
        self._tables: dict[str, _Table] = {}
        self._usage = 0
        self._serial = itertools.count(1)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Masks computed once per copy (stored_masks.py); the layout of each copy built, until attached.
        self.stored_masks = StoredMasks(on_wanted=self._masks_wanted)
        self._layouts: dict[Path, CopyLayout] = {}
        self._counters = {"builds": 0, "build_failures": 0, "swaps": 0, "fallbacks": 0, "evictions": 0,
                          "retired": 0, "too_large": 0}
        shutil.rmtree(native_dir, ignore_errors=True)  # disposable, like the object cache
        native_dir.mkdir(parents=True, mode=0o700)
        self.native_dir = native_dir.resolve()  # what DuckDB's allowed_directories is compared with

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self, con: duckdb.DuckDBPyConnection, tables: Iterable[SourceTable]) -> None:
        """Track `tables` (whose Parquet views exist) and materialise them in the background."""
        self._con = con
        now = self._clock()
        with self._lock:
            for source in tables:
                self._tables[source.name] = _Table(source=source, checked_at=now)
                self._enqueue(source.name)
        self._thread = threading.Thread(target=self._run, name="hd-native-tables", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop building and point every view back at its Parquet files (a database file keeps no view
        over a copy that the next start would not attach)."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self._con is None:
                return
            for table in self._tables.values():
                table.pins.clear()  # the host has finished every statement before it closes its sources
                if table.current is not None and self._files is not None:
                    self._drop_view(table)  # its files may be gone: the next start lists the store and registers it
                elif table.current is not None:
                    self._swap(table, None)
                self._retire_unreachable(table)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no build is queued or running (tests and benches); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._queue.unfinished_tasks == 0:
                    return True
            time.sleep(0.01)
        return False

    # --- leases ---------------------------------------------------------------------------------------

    def hold(self, names: Iterable[str]) -> NativeLease:
        """Pin the current view epoch of each named table (others are ignored), re-checking stale ones."""
        now = self._clock()
        wanted = sorted(set(names))
        with self._lock:
            stale = [name for name in wanted if (table := self._tables.get(name)) is not None
                     and not table.dropped and now - table.checked_at >= self._staleness]
        for name in stale:
            self._recheck(name, now)
        epochs: dict[str, int] = {}
        may_read_files = set()
        with self._lock:
            for name in wanted:
                table = self._tables.get(name)
                if table is None or table.dropped:
                    continue
                table.pins[table.epoch] += 1
                table.last_used = now
                epochs[name] = table.epoch
                if table.current is None or min(table.pins) < table.epoch:
                    may_read_files.add(name)
        return NativeLease(self, epochs, frozenset(may_read_files)) if epochs else NO_VERSIONS

    def hold_snapshot(self) -> NativeLease:
        """Pin the current view epoch of every table, for an explicit transaction from its BEGIN to its end.

        DuckDB binds a view as of the transaction's start, so a statement late in a transaction that
        began before a swap still reads the copy that was current then: that copy must stay attached
        until the transaction ends, not only while one of its statements runs.
        """
        with self._lock:
            epochs = {name: table.epoch for name, table in self._tables.items()}
            for name, epoch in epochs.items():
                self._tables[name].pins[epoch] += 1
        return NativeLease(self, epochs) if epochs else NO_VERSIONS

    def expire(self, name: str) -> None:
        """Compare the table with its source now (an erasure rewrote it): a changed table falls back to its
        Parquet files before this returns, instead of at its next check within the staleness bound."""
        with self._lock:
            table = self._tables.get(name)
            if table is None or table.dropped:
                return
            table.checked_at = float("-inf")
        self._recheck(name, self._clock())

    def _unpin(self, epochs: dict[str, int]) -> None:
        with self._lock:
            for name, epoch in epochs.items():
                table = self._tables.get(name)
                if table is None:
                    continue
                table.pins[epoch] -= 1
                if not table.pins[epoch]:
                    del table.pins[epoch]
                self._retire_unreachable(table)

    def _recheck(self, name: str, now: float) -> None:
        """Compare the source with what is served; a change falls back to Parquet now and rebuilds later.

        The source is described without the lock (an object store answers over the network), and the
        changed table's files are brought into place before the swap: its Parquet view binds from them.
        """
        with self._lock:
            table = self._tables.get(name)
            if table is None or table.dropped:
                return
            known = table.source.fingerprint
        source = self._describe(name)
        if source is None or source.fingerprint == known:
            with self._lock:
                table.checked_at = max(table.checked_at, now)
            return
        held = self._files.hold(source, every_file=True) if self._files is not None else None
        try:
            with self._lock:
                table.checked_at = max(table.checked_at, now)
                if table.dropped or table.source.fingerprint != known:
                    return  # the listing got there first (`track`)
                log.info("table %s changed at its source; serving its Parquet files until the copy is rebuilt", name)
                table.source = source
                if table.current is not None:
                    self._fall_back(table, held)
                    held = None
                    self._counters["fallbacks"] += 1
                self._enqueue(name)
        finally:
            if held is not None:
                held.release()

    # --- tables the object listing adds, changes and removes ------------------------------------------

    def track(self, source: SourceTable) -> None:
        """Serve `source`, a new table or one whose files changed: from its Parquet view now (created or replaced
        here, under the lock every swap of the view takes), from a copy once one is built. While statements
        hold the table, every file of the new view is fetched first, outside the lock."""
        held: Releasable | None = None
        try:
            while True:
                with self._lock:
                    table = self._tables.get(source.name)
                    if table is None:
                        table = _Table(source=source, checked_at=self._clock())
                        self._tables[source.name] = table
                    elif not table.dropped and table.source == source and table.epoch:
                        return
                    if held is not None or self._files is None or not table.pins:
                        table.source, table.dropped, table.checked_at = source, False, self._clock()
                        self._fall_back(table, held)
                        held = None
                        self._enqueue(source.name)
                        return
                held = self._files.hold(source, every_file=True)
        finally:
            if held is not None:
                held.release()

    def forget(self, name: str) -> None:
        """The table is gone from its source: drop its view now; its copy goes once no statement can bind it."""
        with self._lock:
            table = self._tables.get(name)
            if table is None or table.dropped:
                return
            self._drop_view(table)
            table.dropped = True

    def _drop_view(self, table: _Table) -> None:
        source = table.source
        self.stored_masks.drop(self._cursor(), source.schema, source.table)  # a plan over them: "no such table"
        self._cursor().execute(f"DROP VIEW IF EXISTS {qualified(DATA_CATALOG, source.schema, source.table)}")
        table.epoch += 1
        if table.current is not None:
            table.current.retired_at_epoch = table.epoch
            table.superseded.append(table.current)
            table.current = None
        self._retire_unreachable(table)

    # --- background building --------------------------------------------------------------------------

    def _enqueue(self, name: str) -> None:
        table = self._tables[name]
        if not table.queued:
            table.queued = True
            self._queue.put(name)

    def _masks_wanted(self, name: str) -> None:
        """A plan asked for a mask this table's copy does not store: build one that does."""
        with self._lock:
            if name in self._tables:
                self._enqueue(name)

    def _stores_wanted(self, name: str, version: _Version) -> bool:
        considered = version.layout.considered if version.layout is not None else frozenset()
        return self.stored_masks.wanted(name) <= considered

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                name = self._queue.get(timeout=self._staleness)
            except queue.Empty:
                self._recheck_all()
                continue
            try:
                if name is not None:
                    self._materialise(name)
            except Exception:
                log.exception("materialising %s failed; it stays served from Parquet", name)
                self._counters["build_failures"] += 1
            finally:
                self._queue.task_done()

    def _recheck_all(self) -> None:
        """Keep tables nobody reads fresh too, so a later reader finds a current copy."""
        now = self._clock()
        with self._lock:
            stale = [name for name, table in self._tables.items()
                     if not table.dropped and now - table.checked_at >= self._staleness]
        for name in stale:
            try:
                self._recheck(name, now)
            except Exception:
                log.exception("re-checking %s at its source failed; the next check tries again", name)

    def _materialise(self, name: str) -> None:
        with self._lock:
            table = self._tables.get(name)
            if table is None:
                return
            table.queued = False
            source = table.source
            if table.dropped or (table.current is not None and table.current.fingerprint == source.fingerprint
                                 and self._stores_wanted(name, table.current)):
                return
            if table.too_large == source.fingerprint:
                return
            if source.source_bytes > self._capacity:
                self._refuse_too_large(table, source)
                return
            # The build's own file counts against the budget too: reserve the source's size up front.
            if not self._make_room(source.source_bytes, keep=name):
                log.info("no room for a native copy of %s now; it stays on Parquet", name)
                return
            reserved = source.source_bytes
            serial = next(self._serial)
        catalog = f"{NATIVE_CATALOG_PREFIX}{serial}"
        path = self.native_dir / f"{catalog}.duckdb"
        started = time.monotonic()
        held: Releasable | None = None
        try:
            if self._files is not None:
                held = self._files.hold(source, every_file=True)
            elif self._build_guard is not None:
                held = self._build_guard(source)
            size = self._build(source, path)
            layout = self._layouts.pop(path, None)
            with self._lock:
                if table.source.fingerprint != source.fingerprint or table.dropped or self._stopping.is_set():
                    path.unlink(missing_ok=True)  # changed again while building: the queued rebuild follows
                    return
                if size > self._capacity:
                    path.unlink(missing_ok=True)
                    self._refuse_too_large(table, source)
                    return
                if size > reserved and not self._make_room(size - reserved, keep=name):
                    path.unlink(missing_ok=True)
                    log.info("no room for a native copy of %s (%d bytes) now; it stays on Parquet", name, size)
                    return
                self._budget.release_bytes(max(0, reserved - size))
                reserved = 0  # the version owns its `size` bytes from here
                version = _Version(catalog=catalog, path=path, size=size,
                                   fingerprint=source.fingerprint, layout=layout)
                self._usage += size
                try:
                    self._attach(version)
                    self._swap(table, version)
                except duckdb.Error:
                    self._usage -= size
                    self._budget.release_bytes(size)
                    self._detach(version)
                    raise
                if self._files is not None:
                    self._files.copied(source)
                self._counters["builds"] += 1
        finally:
            if reserved:
                self._budget.release_bytes(reserved)
            if held is not None:
                held.release()
        log.info("table %s now served from a native copy (%d bytes, built in %.1f s)", name, size,
                 time.monotonic() - started)

    def _refuse_too_large(self, table: _Table, source: SourceTable) -> None:
        table.too_large = source.fingerprint
        self._counters["too_large"] += 1
        log.info("table %s is larger than the native cache (%d bytes); it stays on Parquet", source.name,
                 self._capacity)

    def _build(self, source: SourceTable, path: Path) -> int:
        """Copy the table into a new database file, in a DuckDB instance of its own; its size in bytes."""
        partial = path.with_suffix(".partial")  # its stem is the builder's catalog name: never a schema name
        partial.unlink(missing_ok=True)
        files = ", ".join(sql_string(str(f)) for f in source.files)
        target = ".".join(quote_identifier(part) for part in (partial.stem, source.schema, source.table))
        wanted = self.stored_masks.wanted(source.name)
        keys = None
        if wanted:
            with self._lock:  # the engine's cursor is shared with swaps
                keys = read_key_material(self._cursor())
        builder = duckdb.connect(str(partial), config={"memory_limit": self._build_memory,
                                                       "autoinstall_known_extensions": False,
                                                       "autoload_known_extensions": False})
        try:
            builder.execute(f"CREATE SCHEMA {quote_identifier(partial.stem)}.{quote_identifier(source.schema)}")
            if keys is None:
                builder.execute(f"CREATE TABLE {target} AS SELECT * FROM read_parquet([{files}])")
            else:  # masks computed once, with the engine's own macros (stored_masks.py)
                columns = builder.execute(f"DESCRIBE SELECT * FROM read_parquet([{files}])").fetchall()
                counted = builder.execute(f"SELECT count(*) FROM read_parquet([{files}])").fetchone()
                layout = self.stored_masks.layout(source.name, [(str(r[0]), str(r[1])) for r in columns], keys,
                                                  rows=int(counted[0]) if counted else 0,
                                                  room=self._capacity - source.source_bytes)
                self.stored_masks.prepare_builder(builder, keys)
                for statement in self.stored_masks.copy_statements(target, f"read_parquet([{files}])", layout):
                    builder.execute(statement)
                self._layouts[path] = layout
            builder.execute("CHECKPOINT")
        except BaseException:
            builder.close()
            partial.unlink(missing_ok=True)
            self._layouts.pop(path, None)
            raise
        builder.close()
        partial.replace(path)
        os.chmod(path, 0o600)
        return path.stat().st_size

    # --- the view, attach and detach (caller holds the lock) -------------------------------------------

    def _swap(self, table: _Table, version: _Version | None) -> None:
        """Point the table's view at `version` (None: its Parquet files) and start a new epoch."""
        con = self._cursor()
        source = table.source
        target = (f"{quote_identifier(version.catalog)}.{quote_identifier(source.schema)}."
                  f"{quote_identifier(source.table)}" if version is not None else source.fallback_sql)
        if version is not None:  # a copy with stored mask columns: the data view shows the own columns only
            target = StoredMasks.data_view_source(version.catalog, source.schema, source.table,
                                                  version.layout) or target
        # The mask views first (each its own database, so not in the data view's transaction): a statement
        # binding between the two reads the new copy through one and the old through the other, both attached.
        self.stored_masks.repoint(con, source.name, self._mask_target(source, version))
        con.execute("BEGIN TRANSACTION")
        try:
            create_marked_view(con, DATA_CATALOG, source.schema, source.table, target, source.marker)
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            self.stored_masks.repoint(con, source.name, self._mask_target(source, table.current))
            raise
        table.epoch += 1
        if table.current is not None:
            table.current.retired_at_epoch = table.epoch
            table.superseded.append(table.current)
        table.current = version
        if version is not None:
            self._counters["swaps"] += 1
        self._retire_unreachable(table)

    def _fall_back(self, table: _Table, held: Releasable | None = None) -> None:
        """Point the table's view at its Parquet files (caller holds the lock).

        With object-store files the view binds from the table's first file, and a statement holding an
        earlier epoch may bind it from now on: so the files (every one while such a lease is out) stay
        pinned until the copy being replaced retires. `held` is such a pin taken by the caller.
        """
        if held is None and self._files is not None:
            held = self._files.hold(table.source, every_file=bool(table.pins))
        version = table.current
        try:
            self._swap(table, None)
        except BaseException:
            if held is not None:
                held.release()
            raise
        if held is not None:
            if version is not None and version in table.superseded:
                version.fallback_files = held
            else:
                held.release()

    @staticmethod
    def _mask_target(source: SourceTable, version: _Version | None) -> Target:
        return Target(schema=source.schema, table=source.table, fallback_sql=source.fallback_sql,
                      catalog=version.catalog if version is not None else None,
                      layout=version.layout if version is not None else None)

    def _retire_unreachable(self, table: _Table) -> None:
        oldest_pin = min(table.pins) if table.pins else None
        for version in list(table.superseded):
            assert version.retired_at_epoch is not None
            if oldest_pin is None or oldest_pin >= version.retired_at_epoch:
                table.superseded.remove(version)
                self._detach(version)
                self._usage -= version.size
                self._budget.release_bytes(version.size)
                if version.fallback_files is not None:
                    version.fallback_files.release()
                self._counters["retired"] += 1

    def _make_room(self, size: int, keep: str) -> bool:
        """Reserve `size` bytes of the budget, falling back least recently used tables to Parquet until they
        fit; False if they cannot. A copy a statement holds is not evicted: its bytes stay in use until then."""
        if self._budget.reserve_bytes(size):
            return True
        candidates = sorted((t for n, t in self._tables.items() if n != keep and t.current is not None
                             and not t.pins), key=lambda t: t.last_used)
        if size > self._budget.available_bytes() + sum(t.current.size for t in candidates if t.current):
            return False  # held by pinned objects or copies: evicting copies now would not make it fit
        for table in candidates:
            log.info("evicting the native copy of %s to make room", table.source.name)
            self._fall_back(table)
            self._counters["evictions"] += 1
            if self._budget.reserve_bytes(size):
                return True
        return False

    def _attach(self, version: _Version) -> None:
        self._cursor().execute(f"ATTACH {sql_string(str(version.path))} AS {quote_identifier(version.catalog)} "
                               "(READ_ONLY)")

    def _detach(self, version: _Version) -> None:
        try:
            self._cursor().execute(f"DETACH DATABASE IF EXISTS {quote_identifier(version.catalog)}")
        except duckdb.Error as exc:
            log.error("detaching %s failed: %s", version.catalog, exc)
            return
        version.path.unlink(missing_ok=True)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("native tables are not started")
        return self._con

    # --- what tests, metrics and benches read ------------------------------------------------------------

    def served_from(self, name: str) -> str | None:
        """The attached catalog serving `name` now (None: its Parquet files)."""
        with self._lock:
            table = self._tables.get(name)
            return table.current.catalog if table is not None and table.current is not None else None

    def attached(self) -> Sequence[str]:
        """Every attached native catalog, current or awaiting retirement."""
        with self._lock:
            return sorted(v.catalog for t in self._tables.values()
                          for v in ([t.current] if t.current else []) + t.superseded)

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {**self._counters, "usage_bytes": self._usage, "saturation": self._usage / self._capacity}
