"""The demo's tables, mirrored from the engine host into a scratch database on the reference PostgreSQL.

The demo data exists only on the engine. The Owner reads each table once (what the Owner may see is what
the matrix's statements see), and the rows go into a database of their own on PostgreSQL with COPY,
under the same schema, table and column names and the column types the engine's catalog lists. The scratch database
carries the engine's session defaults (UTC, ISO dates) so values print alike, and is dropped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.client_matrix.cases import DEMO_SCHEMAS, WRITE_SCHEMA

# The engine announces these in ParameterStatus; PostgreSQL's own defaults differ (Etc/UTC, say). The engine
# has no public schema and resolves unqualified names in main (issue 16 lets it do either: make public exist,
# or say main); the reference gets the same layout, so search_path, current_schema() and \dn are compared on
# whether they tell the truth about it, not on the choice.
SESSION_DEFAULTS = {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "IntervalStyle": "postgres",
                    "search_path": WRITE_SCHEMA}


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
            pg.execute("DROP SCHEMA public")
            for schema in (*DEMO_SCHEMAS, WRITE_SCHEMA):
                pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for table in demo_tables(engine):
                _mirror_table(engine, pg, table)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def demo_tables(engine: psycopg.Connection[Any]) -> list[str]:
    """Every table of the demo's schemas the Owner sees on the engine, as schema.name."""
    # A literal IN list: array parameters are one of the things the matrix tests, not something it leans on.
    query = sql.SQL("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ({}) "
                    "ORDER BY 1, 2").format(sql.SQL(", ").join(map(sql.Literal, DEMO_SCHEMAS)))
    listed = engine.execute(query).fetchall()
    assert listed, "the engine lists no table in the demo's schemas"
    return [f"{schema}.{name}" for schema, name in listed]


def _mirror_table(engine: psycopg.Connection[Any], pg: psycopg.Connection[Any], table: str) -> None:
    schema, name = table.split(".")
    listed = engine.execute("SELECT column_name, data_type, numeric_precision, numeric_scale, udt_name "
                            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                            "ORDER BY ordinal_position", (schema, name)).fetchall()
    readable = [column for column, *_ in listed if _owner_may_read(engine, table, column)]
    source = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, readable)),
                                                 sql.Identifier(schema, name))
    with engine.cursor(binary=True) as cur:
        cur.execute(source)
        rows = cur.fetchall()
    target = sql.Identifier(schema, name)
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(_listed_type(data_type, precision, scale, udt)))
        for column, data_type, precision, scale, udt in listed)
    pg.execute(sql.SQL("CREATE TABLE {} ({})").format(target, definition))
    columns = sql.SQL(", ").join(map(sql.Identifier, readable))
    with pg.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, columns)) as copy:
        for row in rows:
            copy.write_row(row)


def _listed_type(data_type: str, precision: int | None, scale: int | None, udt: str) -> str:
    """A column's type as the engine's catalog lists it (a masked column's values may come back as another type;
    the table's definition is what the mirror copies)."""
    if data_type == "ARRAY":  # information_schema says ARRAY; udt_name is the array type, `_int4` for int4[]
        return f"{udt.removeprefix('_')}[]"
    if data_type == "numeric" and precision is not None:
        return f"numeric({precision},{scale or 0})"
    return data_type


def _owner_may_read(engine: psycopg.Connection[Any], table: str, column: str) -> bool:
    """PHI columns need a grant the Owner does not hold: the mirror keeps them (the catalogs list them) but NULL,
    and no case reads them."""
    try:
        engine.execute(sql.SQL("SELECT {} FROM {} LIMIT 1").format(sql.Identifier(column),
                                                                  sql.Identifier(*table.split("."))))
    except psycopg.errors.InsufficientPrivilege:
        engine.rollback()
        return False
    return True
