"""Timeouts take PostgreSQL's units, show as PostgreSQL shows them, and are enforced (issue 16 item 4).

Every value is SET on the engine host and on the reference PostgreSQL 15; SHOW, current_setting()
and pg_settings must answer the same, and a refused value must be refused with the same message.
"""

from __future__ import annotations

import select

import psycopg
import pytest

TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout")
VALUES = ("'1s'", "'500ms'", "'2min'", "'1h'", "'1d'", "'250us'", "1000", "60000", "0", "'1.5s'", "'90s'",
          "'1.5min'", "' 1 s '", "'600us'", "'3600000'", "'24d'")
REFUSED = ("'1x'", "'1S'", "'abc'", "'25d'", "'-1s'", "-5")


def _shown(dsn: str, name: str, value: str) -> tuple[str, str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET {name} = {value}")
        show = conn.execute(f"SHOW {name}").fetchone()[0]
        current = conn.execute(f"SELECT current_setting('{name}')").fetchone()[0]
        setting = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", [name]).fetchone()[0]
    return show, current, setting


@pytest.mark.parametrize("name", TIMEOUTS)
def test_timeouts_show_as_postgres_shows_them(engine_host, reference_pg, name):
    # A 1 ms statement or idle timeout would end the very queries (or session) that read it back.
    values = [v for v in VALUES if not (name in ("statement_timeout", "idle_session_timeout") and v == "'600us'")]
    ours = [_shown(engine_host.dsn(), name, v) for v in values]
    theirs = [_shown(reference_pg, name, v) for v in values]
    assert ours == theirs


@pytest.mark.parametrize("value", REFUSED)
def test_timeouts_refuse_what_postgres_refuses(engine_host, reference_pg, value):
    errors = []
    for dsn in (engine_host.dsn(), reference_pg):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(f"SET statement_timeout = {value}")
            diag = caught.value.diag
            errors.append((caught.value.sqlstate, diag.message_primary, diag.message_hint))
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"
            if dsn == reference_pg:
                continue
            assert diag.message_detail == "HD_ERR_INVALID_SETTING"
    assert errors[0] == errors[1]


def test_a_startup_option_timeout_takes_units(engine_host, reference_pg):
    shown = []
    for dsn in (engine_host.dsn(), reference_pg):
        with psycopg.connect(dsn, options="-c statement_timeout=5s -c lock_timeout=2min") as conn:
            shown.append(conn.execute("SELECT current_setting('statement_timeout'), "
                                      "current_setting('lock_timeout')").fetchone())
    assert shown[0] == shown[1] == ("5s", "2min")


def test_statement_timeout_in_units_interrupts_a_long_statement(engine_host):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute("SET statement_timeout = '100ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT count(*) FROM crm.customers a, crm.customers b, crm.customers c, crm.customers d "
                         "WHERE a.full_name || b.full_name < c.full_name || d.full_name")
        assert caught.value.diag.message_detail == "HD_ERR_STATEMENT_TIMEOUT"
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def _ended_by_server(dsn: str) -> list[tuple[str | None, str | None, str | None]]:
    """Leave a transaction idle past a 200 ms idle_in_transaction_session_timeout; what the server says.

    The server speaks first (libpq reports an error that arrives while idle as a notice), then closes.
    """
    conn = psycopg.connect(dsn)
    said: list[tuple[str | None, str | None, str | None]] = []
    conn.add_notice_handler(lambda diag: said.append((diag.severity, diag.sqlstate, diag.message_primary)))
    try:
        conn.execute("SET idle_in_transaction_session_timeout = '200ms'")
        conn.commit()
        conn.execute("SELECT 1")  # psycopg opened a transaction: the session is idle in it now
        ready, _, _ = select.select([conn.fileno()], [], [], 10)
        assert ready, "the server did not end the idle transaction within 10 s"
        conn.pgconn.consume_input()
        conn.pgconn.is_busy()  # parses what arrived
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the session is gone
        return said
    finally:
        conn.close()


def test_idle_in_transaction_timeout_ends_the_session_as_postgres_does(engine_host, reference_pg):
    expected = [("FATAL", "25P03", "terminating connection due to idle-in-transaction timeout")]
    assert _ended_by_server(reference_pg) == expected
    assert _ended_by_server(engine_host.dsn()) == expected
