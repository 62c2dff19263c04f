"""Parquet tables under the data directory, made visible to SQL as DuckDB views.

Layout: ``<data_dir>/<schema>/<table>/*.parquet`` becomes the view ``<schema>.<table>`` over
``read_parquet('<resolved data_dir>/<schema>/<table>/*.parquet')``. Each view carries a marker
comment so a re-scan can tell the views it owns from anything else in the catalog: it replaces its
own views, drops those whose directory has gone, and never touches other objects.

What we found running this against the engine's lockdown on DuckDB 2.0
(``SET allowed_directories = [data_dir]``, ``enable_external_access = false``, no extension
autoload/autoinstall, ``lock_configuration = true``; tests/integration/test_parquet_tables.py
checks each point):

- Views are bound when queried, against the permissions in force *then*. Views registered before
  the lockdown keep working afterwards, from any cursor, as long as ``allowed_directories`` covers
  the data directory; a view over a path outside it fails with a PermissionException once external
  access is off, even if it was created before. So registration order does not weaken the lockdown,
  and a catalog restored from an old file cannot read outside the allowlist.
- Registering *after* the lockdown also works: ``CREATE OR REPLACE VIEW`` is DDL, not
  configuration, so ``lock_configuration`` does not stop it, and DuckDB checks the glob at creation
  (a view over ``/etc/...`` is refused right away). A re-scan on a locked database therefore picks
  up new schemas and tables.
- The glob is expanded on every query, so a new file in an existing table directory is visible
  without a re-scan, and a changed file schema is picked up too (``SELECT *`` views re-bind).
- ``read_parquet('/etc/passwd')``, ``..`` traversal out of the data directory, and symlinks under
  it that resolve outside it are all refused: DuckDB resolves symlinks before checking the
  allowlist. One escaping symlink makes the whole table's glob fail, so `discover_parquet_tables`
  skips such a table with a warning rather than register a view that can only error.
- DuckDB adds its own ``temp_directory`` to ``allowed_directories`` by itself (``<db>.tmp/`` for a
  file database, ``./.tmp/`` in memory), and spilling still works under the lockdown; the temp
  directory need not be listed.
- A file-backed database keeps the views (and their marker comments) across a restart; they work
  again once the same lockdown is applied, and re-registering is harmless. ``CREATE OR REPLACE``
  drops a view's comment, which is why the marker is re-applied on every registration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from engine_host.engine.views import (
    VIEW_MARKER,
    create_marked_view,
    current_catalog,
    existing_objects,
    qualified,
    rollback,
    sql_string,
)

log = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
PARQUET_GLOB = "*.parquet"

# DuckDB refuses to create objects in the first two; `temp` and `system` are catalog names that make
# `temp.x` / `system.x` ambiguous for every client that would query them.
RESERVED_SCHEMAS = frozenset({"information_schema", "pg_catalog", "temp", "system"})

# The data directory ends up inside a glob pattern; these would change what the pattern matches.
GLOB_METACHARACTERS = frozenset("*?[]{}")


@dataclass(frozen=True)
class ParquetTable:
    """A Parquet-backed table: its SQL name and the directory holding its files."""

    schema: str
    table: str
    path: Path
    file_count: int

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


def register_parquet_tables(con: duckdb.DuckDBPyConnection, data_dir: Path,
                            catalog: str | None = None) -> list[ParquetTable]:
    """Create or refresh one view per Parquet table under `data_dir`; return the tables now registered.

    The views go into `catalog` (the engine passes its data catalog; default: the current database).
    Idempotent, and safe to call again after the lockdown to pick up new tables. Views this module
    registered earlier whose directory no longer holds Parquet files are dropped. All changes are
    made in one transaction, so other sessions see the old catalog or the new one.
    """
    root = data_dir.resolve(strict=True)
    if GLOB_METACHARACTERS & set(str(root)):
        bad = "".join(sorted(GLOB_METACHARACTERS))
        raise ValueError(f"data directory {root} contains a glob metacharacter (one of {bad})")
    found = discover_parquet_tables(root)

    catalog = catalog or current_catalog(con)
    con.execute("BEGIN TRANSACTION")
    try:
        existing = existing_objects(con, catalog, VIEW_MARKER)
        registered = []
        for ref in found:
            if ref.schema == catalog:
                log.warning("skipping %s: schema name equals the database name %r", ref.path, catalog)
                continue
            kind = existing.get((ref.schema, ref.table))
            if kind is not None and kind != "ours":
                log.warning("skipping %s: %s.%s already exists as a %s", ref.path, ref.schema, ref.table, kind)
                continue
            create_marked_view(con, catalog, ref.schema, ref.table, parquet_view_source(ref), VIEW_MARKER)
            registered.append(ref)
        current = {(ref.schema, ref.table) for ref in registered}
        for (schema, table), kind in existing.items():
            if kind == "ours" and (schema, table) not in current:
                log.info("dropping view %s.%s: no longer a usable Parquet table under %s", schema, table, root)
                con.execute(f"DROP VIEW IF EXISTS {qualified(catalog, schema, table)}")
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    log.info("registered %d Parquet table(s) from %s", len(registered), root)
    return registered


def parquet_view_source(ref: ParquetTable) -> str:
    """What the table's view selects from: every Parquet file of its directory, expanded on each query."""
    return f"read_parquet({sql_string(f'{ref.path}/{PARQUET_GLOB}')})"


def rediscover_parquet_table(data_dir: Path, schema: str, table: str) -> ParquetTable | None:
    """One table as `discover_parquet_tables` would find it now (None: gone or no longer usable)."""
    root = data_dir.resolve(strict=True)
    table_dir = root / schema / table
    if not table_dir.is_dir():
        return None
    return _table_ref(root, schema, table_dir)


def discover_parquet_tables(data_dir: Path) -> list[ParquetTable]:
    """The `<schema>/<table>/*.parquet` tables under `data_dir`, sorted; bad entries are skipped with a warning."""
    root = data_dir.resolve(strict=True)
    tables = []
    for schema_dir in _subdirectories(root, level="schema"):
        schema = schema_dir.name
        if schema in RESERVED_SCHEMAS:
            log.warning("skipping %s: %r is a reserved schema name", schema_dir, schema)
            continue
        for table_dir in _subdirectories(schema_dir, level="table"):
            ref = _table_ref(root, schema, table_dir)
            if ref is not None:
                tables.append(ref)
    return tables


def _subdirectories(parent: Path, *, level: str) -> list[Path]:
    """Child directories with valid identifier names; hidden entries are ignored, anything else warned about."""
    children = []
    for child in sorted(parent.iterdir()):
        if child.name.startswith("."):
            continue  # .DS_Store, .git, writers' temporary files
        if not child.is_dir():
            log.warning("skipping %s: expected a %s directory (layout is <schema>/<table>/*.parquet)", child, level)
        elif not IDENTIFIER.fullmatch(child.name):
            log.warning("skipping %s: %s name must match %s", child, level, IDENTIFIER.pattern)
        else:
            children.append(child)
    return children


def _table_ref(root: Path, schema: str, table_dir: Path) -> ParquetTable | None:
    if not _resolves_inside(table_dir, root):
        log.warning("skipping %s: it resolves outside the data directory %s", table_dir, root)
        return None
    entries = sorted(table_dir.glob(PARQUET_GLOB))
    for entry in entries:
        # The view's glob matches exactly these entries; one that the locked-down engine cannot read
        # would make every query on the table fail, so refuse the table up front and say why.
        if not _resolves_inside(entry, root):
            log.warning("skipping table %s.%s: %s resolves outside the data directory", schema, table_dir.name, entry)
            return None
        if not entry.is_file():
            log.warning("skipping table %s.%s: %s is not a regular file", schema, table_dir.name, entry)
            return None
    if not entries:
        log.warning("skipping %s: no %s files", table_dir, PARQUET_GLOB)
        return None
    return ParquetTable(schema=schema, table=table_dir.name, path=table_dir, file_count=len(entries))


def _resolves_inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)
