"""Running a statement over either Postgres query protocol with psycopg, for tests that must cover both."""

from __future__ import annotations

import psycopg
import pytest

# "simple": one Query message, parameters interpolated client-side; "extended": Parse/Bind/Execute.
PROTOCOLS = ("simple", "extended")


def cursor(conn: psycopg.Connection, sql: str, protocol: str, params: tuple | None = None) -> psycopg.Cursor:
    """A cursor that has executed `sql` over `protocol`."""
    if protocol == "simple":
        cur: psycopg.Cursor = psycopg.ClientCursor(conn)
        cur.execute(sql, params, prepare=False)
    else:
        cur = conn.cursor()
        cur.execute(sql, params, prepare=True)
    return cur


def run(conn: psycopg.Connection, sql: str, protocol: str, params: tuple | None = None) -> list[tuple]:
    """The rows `sql` returns over `protocol` (none for a statement without a result)."""
    cur = cursor(conn, sql, protocol, params)
    return cur.fetchall() if cur.description else []


def refused(conn: psycopg.Connection, sql: str, protocol: str, params: tuple | None = None) -> psycopg.Error:
    """The error `sql` fails with over `protocol` (the test fails if it does not fail)."""
    with pytest.raises(psycopg.Error) as caught:
        run(conn, sql, protocol, params)
    return caught.value
