"""The same tables on the engine and on the reference PostgreSQL, for tests that compare the two."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from tests.harness import EngineHostProcess

PgConnection = psycopg.Connection[Any]


def create_schema_tables(dsn: str, schema: str, ddl: Sequence[str], drops: Sequence[str], *,
                         fresh_schema: bool) -> None:
    """Create `schema` and run `ddl` in it; on PostgreSQL (`fresh_schema`) the schema is dropped first,
    on the engine (which allows DROP TABLE, not DROP SCHEMA) the tables `drops` names, in that order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if fresh_schema:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        else:
            for table in drops:
                conn.execute(f"DROP TABLE IF EXISTS {schema}.{table}")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for statement in ddl:
            conn.execute(statement)


@contextmanager
def engine_table(host: EngineHostProcess, table: str, columns: str, rows: str) -> Iterator[PgConnection]:
    """An Owner's autocommit connection to the engine holding `table` (dropped at the end)."""
    with psycopg.connect(host.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} ({columns})")
        conn.execute(f"INSERT INTO {table} VALUES {rows}")
        yield conn
        conn.execute(f"DROP TABLE {table}")


@contextmanager
def postgres_table(dsn: str, table: str, columns: str, rows: str) -> Iterator[PgConnection]:
    """An autocommit connection to PostgreSQL (UTC, as the engine) holding `table` as a temporary table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(f"CREATE TEMPORARY TABLE {table} ({columns})")
        conn.execute(f"INSERT INTO {table} VALUES {rows}")
        yield conn
