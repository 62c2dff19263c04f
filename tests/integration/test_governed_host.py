"""The governed engine host in-process: the startup gate and the fail-closed audit path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine_host.runtime.local import LocalConfig, LocalEngineHost
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.policies import RowFilter
from tests.harness import BackgroundLoop, SwitchableAuditSink


@pytest.fixture
def loop() -> Iterator[BackgroundLoop]:
    runner = BackgroundLoop()
    yield runner
    runner.close()


def _dsn(host: LocalEngineHost, state_dir: Path) -> str:
    assert host.server is not None and host.banner is not None
    key = (state_dir / "owner.key").read_text().strip()
    return (f"host=127.0.0.1 port={host.server.port} dbname=hd user={host.banner.user} password={key} "
            "sslmode=disable connect_timeout=10")


def test_connections_get_57p03_until_the_policy_snapshot_is_loaded(tmp_path: Path, loop: BackgroundLoop,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = SqliteControlStore.policy_snapshot

    def slow_snapshot(self: SqliteControlStore):  # type: ignore[no-untyped-def]
        release.wait(30)
        return original(self)

    monkeypatch.setattr(SqliteControlStore, "policy_snapshot", slow_snapshot)
    host = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True))
    starting = asyncio.run_coroutine_threadsafe(host.start(), loop.loop)
    for _ in range(300):
        if host.server is not None and host.server.port:
            break
        threading.Event().wait(0.05)
    assert host.server is not None
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(f"host=127.0.0.1 port={host.server.port} dbname=hd user=x password=y sslmode=disable")
    assert "starting up" in str(caught.value)
    release.set()
    starting.result(60)
    try:
        with psycopg.connect(_dsn(host, tmp_path)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        loop.run(host.stop())


def test_statement_fails_with_no_rows_and_no_write_when_audit_cannot_be_stored(tmp_path: Path,
                                                                               loop: BackgroundLoop) -> None:
    sink = SwitchableAuditSink()
    host = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True), audit_sink=sink)
    loop.run(host.start())
    try:
        with psycopg.connect(_dsn(host, tmp_path), autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id INTEGER)")
            conn.execute("INSERT INTO notes VALUES (1)")
            assert len(sink.records) >= 2
            sink.failing = True
            cur = conn.cursor()
            with pytest.raises(psycopg.Error) as caught:
                cur.execute("SELECT id FROM notes")
            assert caught.value.diag.message_detail == "HD_ERR_AUDIT_UNAVAILABLE"
            with pytest.raises(psycopg.Error):
                conn.execute("INSERT INTO notes VALUES (2)")
            sink.failing = False
            assert conn.execute("SELECT id FROM notes").fetchall() == [(1,)]  # the unaudited insert was undone
    finally:
        loop.run(host.stop())


def test_a_stored_row_filter_that_todays_rules_refuse_closes_the_table(tmp_path: Path, loop: BackgroundLoop) -> None:
    """Fail closed: a filter written before the function allow list (or straight into the store) is not skipped."""
    host = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True))
    loop.run(host.start())
    try:
        with psycopg.connect(_dsn(host, tmp_path), autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id INTEGER, owner VARCHAR)")
            conn.execute("INSERT INTO notes VALUES (1, 'a')")
            assert host.store is not None and host.engine is not None and host.engine.policies is not None
            assert host.banner is not None
            user = host.store.get_user(host.banner.user)
            assert user is not None
            host.store.put_policy(RowFilter("rls_stale", user.org_id, "main.notes",
                                            "owner = current_setting('application_name')"))
            host.engine.policies.load()
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("SELECT id FROM notes")
            assert (caught.value.sqlstate, caught.value.diag.message_detail) == ("55000", "HD_ERR_ROW_FILTER_INVALID")
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    finally:
        loop.run(host.stop())
