"""The user tables of the served database as the governance stages see them: names, columns, sizes.

Statements name tables many ways (`ORDERS`, `main.orders`, `hd.main.orders`); `resolve` turns any
spelling into the canonical `schema.table`, or None when no such table exists. The tables live in
DuckDB's data catalog (`hd_data`), whose name is not one clients may use: the only catalog name a
client may write is the database name it connected to (`hd`). The listing comes
from DuckDB's own catalog, is cached, and is refreshed after DDL and whenever `refresh()` is
called; `version` changes with every refresh that found a difference, so caches keyed on it stay
correct.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import duckdb

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.views import PARQUET_VIEW_MARKERS, quote_identifier

# A table's row estimate by canonical name, or None when the catalog should count the rows itself.
RowEstimates = Callable[[str], int | None]

# Schemas that hold machinery, never user tables.
_INTERNAL_SCHEMAS = ("hd_pg", "pg_catalog", "information_schema")


@dataclass(frozen=True)
class TableInfo:
    """One user table (or Parquet-backed view): its columns in order and an estimated row count."""

    name: str
    columns: tuple[tuple[str, str], ...]
    estimated_rows: int
    writable: bool


class TableCatalog:
    """A cached listing of the user tables of one DuckDB database."""

    def __init__(self, con: duckdb.DuckDBPyConnection, database_aliases: Sequence[str] = ("hd",),
                 data_catalog: str = DATA_CATALOG):
        self._cursor = con.cursor()
        self.data_catalog = data_catalog
        # Row estimates of tables whose files are not all local (cached tables); consulted before counting.
        self.row_estimates: RowEstimates | None = None
        self._lock = threading.Lock()
        self._aliases = {a.lower() for a in database_aliases}
        self._tables: dict[str, TableInfo] = {}
        self._schemas: frozenset[str] = frozenset()
        self._default_schema = "main"
        self.version = 0
        # Called with the table names after every refresh that changed them (the host records owners).
        self.on_change: list[Callable[[list[str]], None]] = []
        self.refresh()

    def refresh(self) -> None:
        """Re-read the catalog (after DDL, or when Parquet tables were registered)."""
        with self._lock:
            tables = read_tables(self._cursor, self._tables, self.row_estimates, self.data_catalog)
            schemas = read_schemas(self._cursor, self.data_catalog)
            changed = tables != self._tables
            # A new empty schema changes where an unqualified CREATE TABLE goes (search_path): plans keyed
            # on the version must see it.
            if changed or schemas != self._schemas:
                self._tables, self._schemas = tables, schemas
                self.version += 1
        if changed:
            names = self.names()
            for listener in self.on_change:
                listener(names)

    def resolve(self, catalog: str | None, schema: str | None, table: str,
                overlay: Mapping[str, TableInfo] | None = None) -> str | None:
        """The canonical `schema.table` a (lower-cased) reference names, or None if there is none.

        `overlay` is a session's own view of the tables while its transaction has uncommitted DDL.
        """
        if catalog is not None and catalog not in self._aliases:
            return None
        name = f"{schema or self._default_schema}.{table}"
        return name if name in (overlay if overlay is not None else self._tables) else None

    def get(self, name: str, overlay: Mapping[str, TableInfo] | None = None) -> TableInfo | None:
        return (overlay if overlay is not None else self._tables).get(name)

    def session_view(self, con: duckdb.DuckDBPyConnection) -> dict[str, TableInfo]:
        """The tables as one connection sees them (its own uncommitted DDL included)."""
        return read_tables(con, self._tables, self.row_estimates, self.data_catalog)

    def names(self) -> list[str]:
        return sorted(self._tables)

    def schemas(self) -> frozenset[str]:
        """The schemas that hold user tables, empty ones included (what search_path can name)."""
        return self._schemas

    def close(self) -> None:
        with self._lock:
            self._cursor.close()


def read_tables(con: duckdb.DuckDBPyConnection, previous: Mapping[str, TableInfo],
                estimates: RowEstimates | None = None, database: str = DATA_CATALOG) -> dict[str, TableInfo]:
    """The user tables of catalog `database` as `con` sees them.

    A Parquet view's row count comes from `estimates` when it has one, else from `previous`, else
    from counting (which reads every file's metadata).
    """
    columns: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, data_type in con.execute(
        "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = $1 AND NOT internal AND schema_name NOT IN $2 "
        "ORDER BY schema_name, table_name, column_index", [database, list(_INTERNAL_SCHEMAS)],
    ).fetchall():
        columns.setdefault(f"{schema}.{table}".lower(), []).append((column.lower(), data_type))
    sizes = {
        f"{schema}.{table}".lower(): int(size or 0)
        for schema, table, size in con.execute(
            "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() WHERE database_name = $1",
            [database],
        ).fetchall()
    }
    views = {
        f"{schema}.{view}".lower(): comment in PARQUET_VIEW_MARKERS
        for schema, view, comment in con.execute(
            "SELECT schema_name, view_name, comment FROM duckdb_views() "
            "WHERE database_name = $1 AND NOT internal AND schema_name NOT IN $2",
            [database, list(_INTERNAL_SCHEMAS)],
        ).fetchall()
    }
    tables = {}
    for name, cols in columns.items():
        if name in views:
            known = previous.get(name)
            estimate = estimates(name) if estimates is not None else None
            if estimate is not None:
                rows = estimate
            else:
                rows = known.estimated_rows if known is not None else (
                    _count_rows(con, database, name) if views[name] else 0)
            tables[name] = TableInfo(name, tuple(cols), rows, writable=False)
        else:
            tables[name] = TableInfo(name, tuple(cols), sizes.get(name, 0), writable=True)
    return tables


def read_schemas(con: duckdb.DuckDBPyConnection, database: str = DATA_CATALOG) -> frozenset[str]:
    """The user schemas of catalog `database` (lower-cased)."""
    return frozenset(
        schema.lower() for (schema,) in con.execute(
            "SELECT schema_name FROM duckdb_schemas() WHERE database_name = $1 AND schema_name NOT IN $2",
            [database, list(_INTERNAL_SCHEMAS)]).fetchall())


def _count_rows(con: duckdb.DuckDBPyConnection, database: str, name: str) -> int:
    """Rows of a Parquet-backed table, from the files' metadata (cheap: no data is read)."""
    schema, table = name.split(".", 1)
    qualified = ".".join(quote_identifier(part) for part in (database, schema, table))
    try:
        row = con.execute(f"SELECT count(*) FROM {qualified}").fetchone()
    except duckdb.Error:
        return 0
    return int(row[0]) if row else 0
