"""Where the served tables come from: a local folder read in place, or an object store through the cache.

The engine host (engine_host/runtime/host.py) is handed one `TableSource` and asks it, in order, which
directories DuckDB may read, to register views before the lockdown, and to attach once the catalog is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import duckdb

from engine_host.data.cached_tables import CachedTables, DataLease
from engine_host.data.native_tables import NO_VERSIONS, NativeLease, NativeTables, SourceTable
from engine_host.data.object_cache import ObjectCache
from engine_host.data.parquet_tables import (
    IDENTIFIER,
    PARQUET_GLOB,
    ParquetTable,
    parquet_view_source,
    rediscover_parquet_table,
    register_parquet_tables,
)
from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.table_catalog import TableCatalog
from engine_host.engine.views import VIEW_MARKER
from engine_host.pipeline.pipeline import TableData
from hd_core.table_swaps import TableFolderLock

log = logging.getLogger(__name__)

# How long a statement waits for an erasure replacing a folder table's files (milliseconds, normally).
FOLDER_LOCK_TIMEOUT_SECONDS = 30.0


class TableSource(Protocol):
    """Where the served tables come from."""

    @property
    def allowed_directories(self) -> list[Path]:
        """The only directories DuckDB may read (its `allowed_directories`)."""
        ...

    @property
    def table_data(self) -> TableData | None:
        """What statements must hold while they read (None: files are always in place)."""
        ...

    @property
    def cache_stats(self) -> Callable[[], Mapping[str, float]] | None:
        """The cache's counters for metrics (None: no cache)."""
        ...

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Set-up step run before the lockdown."""
        ...

    def attach(self, con: duckdb.DuckDBPyConnection, catalog: TableCatalog) -> None:
        """Run once the database is locked down and its catalog is read."""
        ...

    def invalidate(self, names: list[str]) -> None:
        """These tables' files were rewritten (GDPR erasure): stop serving any copy older than them, now."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NativeCache:
    """Where native copies of the served tables go (a folder of the cache volume) and how many bytes they may use."""

    cache_dir: Path
    capacity_bytes: int
    # How old a table's last look at its files may be when a statement reads it (a stat of each file).
    max_staleness_seconds: float = 1.0

    @property
    def native_dir(self) -> Path:
        return self.cache_dir / "native"


class LocalFolderTables:
    """`<data_dir>/<schema>/<table>/*.parquet`, read in place (local mode), copied into DuckDB's format when
    `native` says where: Parquet views until each copy is ready (engine_host/data/native_tables.py)."""

    def __init__(self, data_dir: Path, native: NativeCache | None = None) -> None:
        self.data_dir = data_dir
        self.native: NativeTables | None = None
        self._registered: list[ParquetTable] = []
        if native is not None:
            self.native = NativeTables(native.native_dir, native.capacity_bytes, describe=self._describe,
                                       max_staleness_seconds=native.max_staleness_seconds,
                                       build_guard=lambda source: self._folder_lock(source.name))
        self._reads = _FolderReads(self)

    @property
    def allowed_directories(self) -> list[Path]:
        return [self.data_dir] + ([self.native.native_dir] if self.native is not None else [])

    @property
    def table_data(self) -> TableData | None:
        return self._reads

    def _folder_lock(self, name: str) -> TableFolderLock | None:
        """The shared lock on a table's folder (None: not a folder table here): held while its files are read."""
        schema, _, table = name.partition(".")
        if not (IDENTIFIER.fullmatch(schema) and IDENTIFIER.fullmatch(table)):
            return None
        try:
            return TableFolderLock(self.data_dir / schema / table, exclusive=False,
                                   timeout_seconds=FOLDER_LOCK_TIMEOUT_SECONDS)
        except OSError:  # no such folder (a writable table), or not one this host can open: nothing to hold
            return None

    @property
    def cache_stats(self) -> Callable[[], Mapping[str, float]] | None:
        return self.native.stats if self.native is not None else None

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        self._registered = register_parquet_tables(con, self.data_dir, DATA_CATALOG)  # logs what it registered

    def attach(self, con: duckdb.DuckDBPyConnection, catalog: TableCatalog) -> None:
        if self.native is not None:
            self.native.start(con.cursor(), [local_source_table(ref) for ref in self._registered])

    def invalidate(self, names: list[str]) -> None:
        if self.native is not None:
            for name in names:
                self.native.expire(name)

    def _describe(self, name: str) -> SourceTable | None:
        schema, table = name.split(".", 1)
        try:
            ref = rediscover_parquet_table(self.data_dir, schema, table)
            return local_source_table(ref) if ref is not None else None
        except OSError as exc:  # a file removed between listing and stat: look again at the next check
            log.info("cannot read the files of %s now: %s", name, exc)
            return None

    def close(self) -> None:
        if self.native is not None:
            self.native.stop()


class _FolderLease:
    """What a statement over folder tables holds: the folders' shared locks and the native copies' epochs."""

    def __init__(self, locks: list[TableFolderLock], native: NativeLease) -> None:
        self._locks = locks
        self._native = native

    def release(self) -> None:
        locks, self._locks = self._locks, []
        try:
            for lock in locks:
                lock.release()
        finally:
            self._native.release()

    def __enter__(self) -> _FolderLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class _FolderReads:
    """`TableData` of a local folder: DuckDB reads the files in place, where no If-Match tells a reader that a
    file changed under it, so each statement holds its tables' folders shared until it ends and an erasure's
    swap replaces their files holding them exclusively (hd_core/table_swaps.py): a statement sees a table all
    old or all new. It also pins the native copies' epochs when there are copies."""

    def __init__(self, tables: LocalFolderTables) -> None:
        self._tables = tables

    def hold(self, names: Iterable[str]) -> _FolderLease:
        wanted = sorted(set(names))  # one order for every statement
        locks: list[TableFolderLock] = []
        try:
            for name in wanted:
                lock = self._tables._folder_lock(name)
                if lock is not None:
                    locks.append(lock)
            native = self._tables.native.hold(wanted) if self._tables.native is not None else NO_VERSIONS
        except BaseException:
            for lock in locks:
                lock.release()
            raise
        return _FolderLease(locks, native)

    def hold_snapshot(self) -> _FolderLease:
        native = self._tables.native
        return _FolderLease([], native.hold_snapshot() if native is not None else NO_VERSIONS)


def local_source_table(ref: ParquetTable) -> SourceTable:
    """A folder table for native copying: its files, keyed by name, size and modification time."""
    files = sorted(ref.path.glob(PARQUET_GLOB))
    stats = [(f.name, st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]]
    return SourceTable(schema=ref.schema, table=ref.table, fingerprint=tuple(stats), files=tuple(files),
                       source_bytes=sum(size for _, size, _ in stats), fallback_sql=parquet_view_source(ref),
                       marker=VIEW_MARKER)


class ObjectStoreTables:
    """Tables in an object store, read through the local cache; DuckDB sees only the cache's copies.

    With `native` (the default) every table is also copied into DuckDB's format under `<cache>/native/`,
    in the same byte budget as the cached objects (engine_host/data/object_cache.py states the rule):
    Parquet views until each copy is ready, and for tables the budget cannot hold.
    """

    def __init__(self, tables: CachedTables, cache: ObjectCache, *, native: bool = True) -> None:
        self.tables = tables
        self.cache = cache
        self.native: NativeTables | None = None
        if native:
            self.native = NativeTables(cache.cache_dir / "native", cache.reservable_bytes, describe=tables.describe,
                                       max_staleness_seconds=cache.max_staleness_seconds, clock=cache.clock,
                                       files=_CachedFiles(tables), budget=cache)
            tables.use_native(self.native)

    @property
    def allowed_directories(self) -> list[Path]:
        return [self.cache.objects_dir] + ([self.native.native_dir] if self.native is not None else [])

    @property
    def table_data(self) -> TableData | None:
        return self.tables

    @property
    def cache_stats(self) -> Callable[[], Mapping[str, float]] | None:
        return self.cache.stats

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        return None  # views over cache files are created after the lockdown, which DDL is allowed to do

    def attach(self, con: duckdb.DuckDBPyConnection, catalog: TableCatalog) -> None:
        catalog.row_estimates = self.tables.estimated_rows  # counting would need every file in the cache
        if self.native is not None:
            self.native.start(con.cursor(), [])  # the listing hands it each table (`track`)
        registered = self.tables.sync(con.cursor(), catalog.refresh)
        log.info("serving %d table(s) from the object store", len(registered))
        self.tables.start()

    def invalidate(self, names: list[str]) -> None:
        self.tables.invalidate(names)

    def close(self) -> None:
        if self.native is not None:
            self.native.stop()  # before the listing's fetch threads go: it may still pin files
        self.tables.stop()


class _CachedFiles:
    """NativeTables' view of an object-store table's files: the cache's copies, pinned through CachedTables."""

    def __init__(self, tables: CachedTables) -> None:
        self._tables = tables

    def hold(self, source: SourceTable, *, every_file: bool) -> DataLease:
        return self._tables.hold_files(source, every_file=every_file)

    def copied(self, source: SourceTable) -> None:
        self._tables.copied(source)
