"""DuckDB views this host owns: the markers that tell them from anything else, and quoting for their DDL.

The table sources in engine_host/data/ create the views (`create_marked_view`); the table catalog and
the PostgreSQL catalog read the markers to know which views are read-only, Parquet-backed tables.
"""

from __future__ import annotations

import logging

import duckdb

log = logging.getLogger(__name__)

# Comment placed on every view this module creates; re-scans only ever replace or drop views with it.
VIEW_MARKER = "hardened-duck:parquet-table"
# The same for tables served from an object store through the cache (engine_host/data/cached_tables.py).
CACHED_VIEW_MARKER = "hardened-duck:cached-table"
# Every marker of a read-only, Parquet-backed view.
PARQUET_VIEW_MARKERS = frozenset({VIEW_MARKER, CACHED_VIEW_MARKER})
# Attached, read-only database files holding native copies of those tables (engine_host/data/native_tables.py)
# are named this prefix and a serial number; each holds one table under its own `<schema>.<table>`. Clients
# cannot write the name: the guard refuses every `hd_` name.
NATIVE_CATALOG_PREFIX = "hd_native_"


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as exc:  # the error that made us roll back is the one worth reporting
        log.debug("rollback after failed registration failed too: %s", exc)


def current_catalog(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def existing_objects(con: duckdb.DuckDBPyConnection, catalog: str, marker: str) -> dict[tuple[str, str], str]:
    """(schema, name) -> "ours" for views carrying `marker`, else the object's kind."""
    rows = con.execute(
        """
        SELECT schema_name, view_name, CASE WHEN comment = $2 THEN 'ours' ELSE 'view' END
        FROM duckdb_views() WHERE database_name = $1 AND NOT internal
        UNION ALL
        SELECT schema_name, table_name, 'table' FROM duckdb_tables() WHERE database_name = $1
        """,
        [catalog, marker],
    ).fetchall()
    return {(schema, name): kind for schema, name, kind in rows}


def create_marked_view(con: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str, source_sql: str,
                       marker: str) -> None:
    """`CREATE OR REPLACE VIEW catalog.schema.table AS SELECT * FROM <source_sql>`, commented with `marker`."""
    view = qualified(catalog, schema, table)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(catalog)}.{quote_identifier(schema)}")
    con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {source_sql}")
    con.execute(f"COMMENT ON VIEW {view} IS {sql_string(marker)}")


def qualified(catalog: str, schema: str, name: str) -> str:
    return f"{quote_identifier(catalog)}.{quote_identifier(schema)}.{quote_identifier(name)}"


def quote_identifier(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def sql_string(value: str) -> str:
    # Standard SQL literal: DuckDB does not treat backslashes specially outside E'' strings.
    return "'" + value.replace("'", "''") + "'"
