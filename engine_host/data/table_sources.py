"""Where the served tables come from: a local folder read in place, or an object store through the cache.

The engine host (engine_host/runtime/host.py) is handed one `TableSource` and asks it, in order, which
directories DuckDB may read, to register views before the lockdown, and to attach once the catalog is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import duckdb

from engine_host.data.cached_tables import CachedTables
from engine_host.data.object_cache import ObjectCache
from engine_host.data.parquet_tables import register_parquet_tables
from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.table_catalog import TableCatalog
from engine_host.pipeline.pipeline import TableData

log = logging.getLogger(__name__)


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

    def close(self) -> None: ...


class LocalFolderTables:
    """`<data_dir>/<schema>/<table>/*.parquet`, read in place (local mode)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def allowed_directories(self) -> list[Path]:
        return [self.data_dir]

    @property
    def table_data(self) -> TableData | None:
        return None

    @property
    def cache_stats(self) -> Callable[[], Mapping[str, float]] | None:
        return None

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        register_parquet_tables(con, self.data_dir, DATA_CATALOG)  # logs what it registered

    def attach(self, con: duckdb.DuckDBPyConnection, catalog: TableCatalog) -> None:
        return None

    def close(self) -> None:
        return None


class ObjectStoreTables:
    """Tables in an object store, read through the local cache; DuckDB sees only the cache's copies."""

    def __init__(self, tables: CachedTables, cache: ObjectCache) -> None:
        self.tables = tables
        self.cache = cache

    @property
    def allowed_directories(self) -> list[Path]:
        return [self.cache.objects_dir]

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
        registered = self.tables.sync(con.cursor(), catalog.refresh)
        log.info("serving %d table(s) from the object store", len(registered))
        self.tables.start()

    def close(self) -> None:
        self.tables.stop()
