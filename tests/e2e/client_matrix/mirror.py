"""The demo's tables, mirrored from the engine host into a scratch database on the reference PostgreSQL.

The demo data exists only on the engine. The Owner reads each table once (what the Owner may see is what
the matrix's statements see), and the rows go into a database of their own on PostgreSQL with COPY,
under the same schema and table names and the column types the engine describes. The scratch database
carries the engine's session defaults (UTC, ISO dates) so values print alike, and is dropped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.client_matrix.cases import DEMO_SCHEMAS, DEMO_TABLES, WRITE_SCHEMA

# The engine announces these in ParameterStatus; PostgreSQL's own defaults differ (Etc/UTC, say).
SESSION_DEFAULTS = {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "IntervalStyle": "postgres"}


def _column_type(column: Any) -> str:
    """The column's type as PostgreSQL spells it, with numeric's precision and scale."""
    info = psycopg.adapters.types.get(column.type_code)
    assert info is not None, f"the engine described {column.name} with an OID psycopg does not know"
    if info.name == "numeric" and column.precision is not None:
        return f"numeric({column.precision},{column.scale or 0})"
    return info.name


@contextmanager
def scratch_database(admin_dsn: str, engine_dsn: str) -> Iterator[str]:
    """A fresh database holding the demo's tables as the engine's Owner sees them; yields its DSN."""
    name = f"hd_client_matrix_{os.getpid()}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        for setting, value in SESSION_DEFAULTS.items():
            admin.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    try:
        with psycopg.connect(engine_dsn) as engine, psycopg.connect(dsn, autocommit=True) as pg:
            for schema in (*DEMO_SCHEMAS, WRITE_SCHEMA):
                pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for table in DEMO_TABLES:
                _mirror_table(engine, pg, table)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _mirror_table(engine: psycopg.Connection[Any], pg: psycopg.Connection[Any], table: str) -> None:
    columns = _readable_columns(engine, table)
    source = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)),
                                                 sql.Identifier(*table.split(".")))
    with engine.cursor(binary=True) as cur:
        cur.execute(source)
        assert cur.description is not None
        described = cur.description
        rows = cur.fetchall()
    assert rows, f"the Owner reads no rows from {table} on the engine; the mirror would be empty"
    target = sql.Identifier(*table.split("."))
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(_column_type(c))) for c in described)
    pg.execute(sql.SQL("CREATE TABLE {} ({})").format(target, definition))
    with pg.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN").format(target)) as copy:
        for row in rows:
            copy.write_row(row)


def _readable_columns(engine: psycopg.Connection[Any], table: str) -> list[str]:
    """The table's columns the Owner may read: PHI columns need a grant the Owner does not hold, so no case reads
    them and the mirror leaves them out."""
    schema, name = table.split(".")
    listed = engine.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                            "AND table_name = %s ORDER BY ordinal_position", (schema, name)).fetchall()
    readable = []
    for (column,) in listed:
        try:
            engine.execute(sql.SQL("SELECT {} FROM {} LIMIT 1").format(sql.Identifier(column),
                                                                      sql.Identifier(schema, name)))
        except psycopg.errors.InsufficientPrivilege:
            engine.rollback()
            continue
        readable.append(column)
    assert readable, f"the Owner may read no column of {table}"
    return readable
