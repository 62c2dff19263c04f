"""Tables whose Parquet files live in an object store (S3), served to DuckDB from the local cache.

Layout in the source: `<schema>/<table>/<file>.parquet` becomes the view `<schema>.<table>` over
`read_parquet([<cache copy of each file>, ...])`. The list is explicit, not a glob, so a copy that is
missing when a statement binds or runs is an error, never a silently shorter table.

Life of a statement over such a table (engine_host/pipeline/pipeline.py calls `hold`):
- `hold(tables)` pins every file of the tables it reads, at the version listed: a file not in the
  cache is fetched (in parallel, one download per object version however many statements want it),
  the listing is taken again first when it is older than the cache's staleness bound (60 s by
  default), and none is evicted until the statement finishes and the lease is released.
- A file deleted or replaced at the source makes the lease re-list the source and try again, so a
  table that was rewritten (new file names, or new bytes) is served from its new files.

New, changed and removed tables appear through `sync`, which re-lists the source: at start, then every
`listing_interval_seconds` from a background thread. Registering a table fetches only its first
file; the others are fetched by the first statement that reads the table (see `_register`).

So the bounds a reader can rely on are: a replaced object is never served more than the cache's
staleness bound after the change, and a new or removed file or table shows within one listing
interval.

A statement reads a table as one listing saw it, never some objects older than others: each object is
fetched at exactly the ETag listed (If-Match; `ObjectCache.acquire(exact=True)`) into a file of that
version's own (`part-0@<etag>.parquet`, never replaced while a statement may read it), and one that no longer
matches re-lists the source and tries again. Freshness comes from the listing: without native copies,
a statement that finds the last listing older than the staleness bound re-lists first. A table an
erasure is rewriting (hd_core/table_swaps.py) is listed first, then its swap manifest is read: a key still
at its old ETag is read from its stand-in, so the table is all old or all new. A manifest that cannot be
read fails the table's statements closed (SQLSTATE 58030, HD_ERR_SWAP_MANIFEST_INVALID).

Native copies (`use_native`, engine_host/data/native_tables.py): each table is also copied into
DuckDB's own format in the background, from the cache's copies of its objects, and its view is
switched to the copy. The table's fingerprint is its object keys with their ETags (and version ids
where the source gives them), so:
- the view is created, replaced and dropped by `NativeTables` (`track`/`forget`), which the listing
  drives; `describe` re-lists one table's prefix when a statement finds its last look older than the
  cache's staleness bound: a replaced object falls the table back to its Parquet view at once (its
  objects fetched at their new ETags first) and rebuilds it; added or vanished files re-list the
  source there and then, so a table whose objects are gone is dropped before the statement binds;
- `hold` pins both what a statement may bind: the native epoch (NativeTables.hold) and, when the
  statement may bind the Parquet view, the cached files; the one lease releases both, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import cast

import duckdb
import pyarrow.parquet as pq

from engine_host.data.native_tables import NO_VERSIONS, NativeLease, NativeTables, SourceTable
from engine_host.data.object_cache import ObjectCache
from engine_host.data.parquet_tables import GLOB_METACHARACTERS, IDENTIFIER, RESERVED_SCHEMAS
from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.views import (
    CACHED_VIEW_MARKER,
    create_marked_view,
    existing_objects,
    qualified,
    rollback,
    sql_string,
)
from hd_core.errors import HdError
from hd_core.object_source import ObjectChanged, ObjectInfo, ObjectMissing, ObjectSource
from hd_core.table_swaps import SwapManifest, SwapManifestInvalid, read_manifest, resolve

log = logging.getLogger(__name__)

_NO_TIME = datetime.fromtimestamp(0, UTC)

PARQUET_SUFFIX = ".parquet"
# A statement whose objects changed under it (an erasure's swap) re-lists and tries this many times in all.
_HOLD_ATTEMPTS = 3


class TableDataUnavailable(HdError):
    """The files of a table could not be brought into the cache, so the statement cannot read it."""

    code = "HD_ERR_TABLE_DATA_UNAVAILABLE"


@dataclass(frozen=True)
class CachedTable:
    """One table of the source: its SQL name and the object keys of its files (sorted), with their sizes."""

    schema: str
    table: str
    keys: tuple[str, ...]
    sizes: tuple[int, ...] = field(default=(), compare=False)
    # What the listing said each object is: a replaced object (same key) makes a changed table.
    etags: tuple[str, ...] = ()
    versions: tuple[str | None, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


class DataLease:
    """Pins on the cached files (and native copies) of the tables one statement reads; `release` exactly once
    when it ends: a second call releases nothing."""

    def __init__(self, cache: ObjectCache | None, keys: tuple[str, ...], native: NativeLease = NO_VERSIONS) -> None:
        self._cache = cache
        self._keys = keys
        self._native = native
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            keys, self._keys = self._keys, ()
            native, self._native = self._native, NO_VERSIONS
        try:
            for key in keys:
                self._cache.release(key)  # type: ignore[union-attr]
        finally:
            native.release()

    def joined(self, native: NativeLease) -> DataLease:
        """A lease holding these pins and `native`, released together (this one is left holding nothing)."""
        with self._lock:
            keys, self._keys = self._keys, ()
        return DataLease(self._cache, keys, native)

    def __enter__(self) -> DataLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


NO_DATA = DataLease(None, ())


class CachedTables:
    """The source's tables, registered as views over cache files, and the leases statements take on them."""

    def __init__(self, source: ObjectSource, cache: ObjectCache, *, fetch_threads: int = 8,
                 listing_interval_seconds: float = 60.0) -> None:
        cache_root = str(cache.objects_dir)
        if GLOB_METACHARACTERS & set(cache_root):
            # DuckDB glob-expands every entry of a read_parquet list, even an explicit file name.
            raise ValueError(f"cache directory {cache_root} contains a glob metacharacter")
        self._source = source
        self._cache = cache
        self._interval = listing_interval_seconds
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="hd-fetch")
        self._lock = threading.Lock()  # guards _tables; sync runs one at a time under _sync_lock
        self._sync_lock = threading.Lock()
        self._tables: dict[str, CachedTable] = {}
        self._estimates: dict[str, int] = {}
        # Per table: everything listed under its prefix (swap files too) and the table as read through its
        # swap manifest then; an unchanged listing needs no new read of the manifest.
        self._resolved: dict[str, tuple[tuple[tuple[str, str], ...], CachedTable]] = {}
        self._refused: dict[str, SwapManifestInvalid] = {}
        self._listed_at = float("-inf")
        self._con: duckdb.DuckDBPyConnection | None = None
        self._on_change: Callable[[], None] = lambda: None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.native: NativeTables | None = None

    def use_native(self, native: NativeTables) -> None:
        """Serve every table from a native copy too (`native` creates, swaps and drops the views from now on)."""
        self.native = native

    # --- catalog ----------------------------------------------------------------------------------

    def sync(self, con: duckdb.DuckDBPyConnection, on_change: Callable[[], None] = lambda: None) -> list[CachedTable]:
        """Re-list the source and bring the views in line: register new or changed tables, drop vanished ones.

        A new or changed table is registered from its first file alone (fetched and pinned; DuckDB
        binds the view from it), the others get placeholders until a statement needs them, and
        `on_change` runs while the first file is pinned. Its row estimate is the first file's rows
        scaled by the table's bytes. Raises the source's error when it cannot be listed.
        """
        with self._sync_lock:
            self._con, self._on_change = con, on_change
            listed_at = self._cache.clock()
            found = self._read_tables(self._source.list())
            catalog = DATA_CATALOG
            existing = existing_objects(con, catalog, CACHED_VIEW_MARKER)
            with self._lock:
                current = dict(self._tables)
            registered: dict[str, CachedTable] = {}
            for table in found:
                kind = existing.get((table.schema, table.table))
                if table.schema == catalog or (kind is not None and kind != "ours"):
                    log.warning("skipping cached table %s: the name is taken by a %s", table.name, kind or "catalog")
                    continue
                if current.get(table.name) == table and kind == "ours":
                    registered[table.name] = table
                    continue
                try:
                    self._register(con, catalog, table, on_change)
                except (HdError, duckdb.Error) as exc:
                    log.error("cannot register cached table %s: %s", table.name, exc)
                    if kind == "ours" and table.name in current:  # keep serving what a statement can check
                        registered[table.name] = current[table.name]
                    continue
                registered[table.name] = table
            vanished = [(schema, name) for (schema, name), kind in existing.items()
                        if kind == "ours" and f"{schema}.{name}" not in registered]
            for schema, name in vanished:
                log.info("dropping cached table %s.%s: it is no longer in the source", schema, name)
                if self.native is not None:
                    self.native.forget(f"{schema}.{name}")
                else:
                    con.execute(f"DROP VIEW IF EXISTS {qualified(catalog, schema, name)}")
            with self._lock:
                self._tables = registered
                self._estimates = {name: rows for name, rows in self._estimates.items() if name in registered}
                self._listed_at = listed_at
                self._resolved = {name: seen for name, seen in self._resolved.items() if name in registered}
            if vanished:
                on_change()
            return sorted(registered.values(), key=lambda t: t.name)

    def _read_tables(self, listed: list[ObjectInfo]) -> list[CachedTable]:
        """The tables of a listing as statements must read them: each through its swap manifest, read after the
        listing (hd_core/table_swaps.py). A table whose manifest is invalid is refused (kept as registered, so
        its statements say why); one whose manifest cannot be fetched now keeps its registration, if any."""
        under: dict[str, list[tuple[str, str]]] = {}
        for info in listed:
            parts = info.key.split("/", 2)
            if len(parts) == 3:
                under.setdefault(f"{parts[0]}.{parts[1]}", []).append((info.key, info.etag))
        tables = []
        for table in discover_cached_tables(listed):
            seen = tuple(under.get(table.name, ()))
            with self._lock:
                known = self._resolved.get(table.name)
                registered = self._tables.get(table.name)
                refused = table.name in self._refused
            if known is not None and known[0] == seen and not refused:
                tables.append(known[1])
                continue
            try:
                manifest = read_manifest(self._source, f"{table.schema}/{table.table}/")
            except SwapManifestInvalid as exc:
                log.error("not serving %s: %s", table.name, exc)
                with self._lock:
                    self._refused[table.name] = exc
                if registered is not None:
                    tables.append(registered)
                continue
            except HdError as exc:
                log.error("cannot read the swap manifest of %s now: %s", table.name, exc)
                if registered is not None:
                    tables.append(registered)
                continue
            read = _through_swap(table, manifest)
            with self._lock:
                self._refused.pop(table.name, None)
                self._resolved[table.name] = (seen, read)
            tables.append(read)
        return tables

    def _register(self, con: duckdb.DuckDBPyConnection, catalog: str, table: CachedTable,
                  on_change: Callable[[], None]) -> None:
        """Create the table's view having fetched only its first file (what DuckDB binds the view from)."""
        names = _version_names(table)
        with self._lease(table.keys[:1], table.etags[:1], exact=True):
            for name in names[1:]:
                self._cache.reserve(name)
            self._estimates[table.name] = self._estimate_rows(table)
            if self.native is not None:
                self.native.track(self.source_table(table))
            else:
                con.execute("BEGIN TRANSACTION")
                try:
                    create_marked_view(con, catalog, table.schema, table.table, self._view_source(table),
                                       CACHED_VIEW_MARKER)
                    con.execute("COMMIT")
                except BaseException:
                    rollback(con)
                    raise
            on_change()
        log.info("registered cached table %s (%d file(s))", table.name, len(table.keys))

    def _view_source(self, table: CachedTable) -> str:
        files = ", ".join(sql_string(str(self._cache.local_path(name))) for name in _version_names(table))
        return f"read_parquet([{files}])"

    def source_table(self, table: CachedTable) -> SourceTable:
        """The table for native copying: the cache's copies of its objects, keyed by key, ETag, version and size."""
        versions = table.versions or (None,) * len(table.keys)
        return SourceTable(schema=table.schema, table=table.table,
                           fingerprint=tuple(zip(table.keys, table.etags, versions, table.sizes, strict=True)),
                           files=tuple(self._cache.local_path(name) for name in _version_names(table)),
                           source_bytes=sum(table.sizes), fallback_sql=self._view_source(table),
                           marker=CACHED_VIEW_MARKER)

    def describe(self, name: str) -> SourceTable | None:
        """The table as its prefix in the source lists now, for NativeTables' freshness check.

        Files added or removed (or the whole table gone) re-list the source here, which re-registers or
        drops the table through `track`/`forget`: then None, nothing left to compare. None too when the
        source cannot be listed: the copy keeps serving until the next check, as the cache does for a
        file it cannot revalidate.
        """
        schema, table_name = name.split(".", 1)
        try:
            found = [t for t in self._read_tables(self._source.list(f"{schema}/{table_name}/")) if t.name == name]
        except HdError as exc:
            log.error("cannot list the files of %s to check them: %s", name, exc)
            return None
        with self._lock:
            registered = self._tables.get(name)
            if name in self._refused:
                return None  # its statements are refused (`hold`) until its manifest reads again
        if registered is None or not found or found[0].keys != registered.keys:
            log.info("the files of %s changed at the source; re-listing", name)
            self._resync()
            return None
        return self.source_table(found[0])

    # --- the files of a table being copied, or whose Parquet view may be bound (NativeTables' SourceFiles) --

    def hold_files(self, source: SourceTable, *, every_file: bool) -> DataLease:
        """Fetch and pin the table's objects at (at least) the ETags it was described with; without
        `every_file`, only the first (what the view binds from) and placeholders for the others."""
        entries = _objects_of(source)
        if not every_file:
            for key, etag, *_ in entries[1:]:
                self._cache.reserve(ObjectCache.version_name(key, etag))
            entries = entries[:1]
        return self._lease(tuple(key for key, *_ in entries), tuple(etag for _, etag, *_ in entries), exact=True)

    def invalidate(self, names: Iterable[str]) -> None:
        """The named tables were rewritten at the source (an erasure): re-list it now (statements read each
        object at the ETag listed) and have their native copies compared with the source now."""
        wanted = sorted(set(names))
        self._resync()  # statements read objects at the ETags listed: a new listing is what they need
        with self._lock:
            listed = {name: self._tables.get(name) for name in wanted}
        for name, table in listed.items():
            # Old versions of the table's objects may hold the erased rows: off the volume now, not when evicted.
            schema, _, bare = name.partition(".")
            self._cache.retire(f"{schema}/{bare}/", _version_names(table) if table is not None else ())
        if self.native is not None:
            for name in wanted:
                self.native.expire(name)

    def copied(self, source: SourceTable) -> None:
        """The table is served from its copy: its objects go first when the cache needs room."""
        self._cache.demote(ObjectCache.version_name(key, etag) for key, etag, *_ in _objects_of(source))

    def _estimate_rows(self, table: CachedTable) -> int:
        """Rows of the first file scaled by the table's bytes: an estimate that needs no other file."""
        rows = pq.read_metadata(self._cache.local_path(_version_names(table)[0])).num_rows
        first_size = table.sizes[0]
        return round(rows * sum(table.sizes) / first_size) if first_size else rows

    def estimated_rows(self, name: str) -> int | None:
        """The row estimate made when the table was registered (None: not a cached table)."""
        with self._lock:
            return self._estimates.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tables)

    # --- leases -----------------------------------------------------------------------------------

    def hold(self, names: Iterable[str]) -> DataLease:
        """Pin what the named tables' statement may read (others are ignored); raises `TableDataUnavailable`.

        With native copies: the native epoch of each table, and the cached files of those whose Parquet
        view the statement may bind (`NativeLease.reads_files`); one `release` frees both.
        """
        wanted = set(names)
        if self.native is None and self._cache.clock() - self._listed_at >= self._cache.max_staleness_seconds:
            self._resync()  # the listing is what keeps exact reads fresh (native copies re-check on their own)
        for attempt in range(1, _HOLD_ATTEMPTS + 1):
            with self._lock:
                refused = [self._refused[name] for name in sorted(wanted) if name in self._refused]
            if refused:
                raise refused[0]
            try:
                return self._hold_once(wanted)
            except (ObjectChanged, ObjectMissing) as exc:
                if attempt == _HOLD_ATTEMPTS:
                    raise TableDataUnavailable(f"the files of {', '.join(sorted(wanted))} kept changing in the "
                                               "object store while being read; retry the statement") from exc
                log.info("an object of %s changed or went while being read (%s); re-listing", ", ".join(
                    sorted(wanted)), exc)
                self._resync()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _hold_once(self, wanted: set[str]) -> DataLease:
        native = self.native.hold(wanted) if self.native is not None else NO_VERSIONS
        try:
            files = self._hold_files_of({name for name in wanted if native.reads_files(name)})
        except BaseException:
            native.release()
            raise
        return files.joined(native)

    def hold_snapshot(self) -> DataLease:
        """What an explicit transaction holds from BEGIN to its end: the native copies current then. Each of
        its statements pins the files it may read with `hold` (an older lease out makes that every file).
        Without copies, nothing: a view over cache files changes only when the listing does, and a
        transaction still binding an older listing whose files left the cache fails on the missing file."""
        return DataLease(None, (), self.native.hold_snapshot()) if self.native is not None else NO_DATA

    def _hold_files_of(self, wanted: set[str]) -> DataLease:
        """Pin every object of these tables at the ETag their listing gave (`ObjectChanged`/`ObjectMissing`:
        the source moved on, re-list)."""
        with self._lock:
            tables = [t for name in sorted(wanted) if (t := self._tables.get(name))]
        return self._lease(tuple(key for t in tables for key in t.keys), tuple(e for t in tables for e in t.etags),
                           exact=True)

    def _lease(self, keys: tuple[str, ...], etags: tuple[str | None, ...] = (), *, exact: bool = False) -> DataLease:
        if not keys:
            return DataLease(None, ())
        futures = [self._pool.submit(self._cache.acquire, key, etag=etag, exact=exact and etag is not None)
                   for key, etag in zip(keys, etags or (None,) * len(keys), strict=True)]
        names = [ObjectCache.version_name(key, etag) if exact and etag is not None else key
                 for key, etag in zip(keys, etags or (None,) * len(keys), strict=True)]
        acquired: list[str] = []
        failure: Exception | None = None
        for name, future in zip(names, futures, strict=True):
            try:
                future.result()
                acquired.append(name)
            except Exception as exc:  # noqa: BLE001 - re-raised below, once every pin taken is released
                failure = failure or exc
        lease = DataLease(self._cache, tuple(acquired))
        if failure is None:
            return lease
        lease.release()
        if isinstance(failure, ObjectMissing | ObjectChanged):
            raise failure
        if isinstance(failure, HdError):
            raise TableDataUnavailable(f"table data could not be fetched from the object store: {failure}") from failure
        raise failure

    # --- background re-listing --------------------------------------------------------------------

    def start(self) -> None:
        """Re-list the source every listing interval until `stop` (after a first `sync`)."""
        self._thread = threading.Thread(target=self._run, name="hd-table-listing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._resync()

    def _resync(self) -> None:
        if self._con is None:
            return
        try:
            self.sync(self._con, self._on_change)
        except (HdError, duckdb.Error) as exc:  # keep serving what is registered; the next tick retries
            log.error("re-listing the table source failed: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _version_names(table: CachedTable) -> tuple[str, ...]:
    """The cache's names of the table's objects at the ETags listed (`ObjectCache.version_name`)."""
    return tuple(ObjectCache.version_name(key, etag) for key, etag in zip(table.keys, table.etags, strict=True))


def _objects_of(source: SourceTable) -> tuple[tuple[str, str, str | None, int], ...]:
    """(key, ETag, version id, size) of each object of a table `CachedTables.source_table` described."""
    return cast(tuple[tuple[str, str, str | None, int], ...], source.fingerprint)


def _through_swap(table: CachedTable, manifest: SwapManifest | None) -> CachedTable:
    """`table` as listed, each key an erasure is swapping and still at its old ETag read from its stand-in."""
    if manifest is None:
        return table
    versions = table.versions or (None,) * len(table.keys)
    listed = [ObjectInfo(key=key, size=size, etag=etag, version_id=version, last_modified=_NO_TIME)
              for key, size, etag, version in zip(table.keys, table.sizes, table.etags, versions, strict=True)]
    read = resolve(listed, manifest)
    return CachedTable(table.schema, table.table, tuple(i.key for i in read), tuple(i.size for i in read),
                       tuple(i.etag for i in read), tuple(i.version_id for i in read))


def discover_cached_tables(objects: Iterable[ObjectInfo]) -> list[CachedTable]:
    """Group listed objects (`ObjectInfo`) into `<schema>/<table>/<file>.parquet` tables; others are skipped."""
    files: dict[tuple[str, str], list[tuple[str, int, str, str | None]]] = {}
    for info in objects:
        key = info.key
        parts = PurePosixPath(key).parts
        if not key.endswith(PARQUET_SUFFIX) or any(part.startswith(".") for part in parts):
            continue
        if len(parts) != 3:
            log.warning("skipping object %s: table files are <schema>/<table>/<file>.parquet", key)
            continue
        schema, table, name = parts
        if not (IDENTIFIER.fullmatch(schema) and IDENTIFIER.fullmatch(table)) or schema in RESERVED_SCHEMAS:
            log.warning("skipping object %s: schema and table must match %s and not be reserved", key,
                        IDENTIFIER.pattern)
            continue
        if GLOB_METACHARACTERS & set(name):
            log.warning("skipping object %s: glob characters in a file name", key)
            continue
        files.setdefault((schema, table), []).append((key, info.size, info.etag, info.version_id))
    tables = []
    for (schema, table), entries in sorted(files.items()):
        entries.sort(key=lambda entry: entry[0])
        tables.append(CachedTable(schema, table, tuple(e[0] for e in entries), tuple(e[1] for e in entries),
                                  tuple(e[2] for e in entries), tuple(e[3] for e in entries)))
    return tables

