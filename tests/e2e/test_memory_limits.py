"""Bounded memory: DuckDB's memory limit, the per-statement result cap and the per-value cap (issue 14 item 6).

A host started with small limits: a statement that needs more memory than DuckDB may use gets
53200 while another session keeps working; a result or a value over its cap is refused with
54000 and no row of it reaches the client; each refusal is audited with its code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.protocols import PROTOCOLS, refused, run
from tests.e2e.test_statement_limits import audit_records
from tests.harness import EngineHostProcess, start_engine_host

HOSTILE = "SELECT list(a.range + b.range) FROM range(20000) a, range(20000) b"


@pytest.fixture(scope="module")
def small_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    host = start_engine_host(tmp_path_factory.mktemp("hd-memory"), "--demo", "--insecure-plaintext",
                             "--memory-limit", "256MiB", "--max-result-size", "16MiB", "--max-value-size", "1MiB")
    yield host
    host.stop()


def _codes(state_dir: Path) -> list[str]:
    return [r["error"]["code"] for r in audit_records(state_dir) if r.get("error")]


def test_a_hostile_statement_gets_53200_while_another_session_goes_on(small_host: EngineHostProcess) -> None:
    answers: list[int] = []
    squeezed: list[str] = []
    stop = threading.Event()

    def other_session() -> None:
        # DuckDB's limit is shared by all sessions: while the hostile statement holds it, a neighbour
        # may itself get 53200 (never anything worse), and its session goes on either way.
        with psycopg.connect(small_host.demo_dsn("acme-analyst"), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    answers.append(conn.execute("SELECT count(*) FROM crm.customers").fetchone()[0])
                except psycopg.errors.OutOfMemory as exc:
                    squeezed.append(exc.diag.message_detail or "")
            for _ in range(3):
                answers.append(conn.execute("SELECT count(*) FROM crm.customers").fetchone()[0])

    neighbour = threading.Thread(target=other_session)
    neighbour.start()
    try:
        with psycopg.connect(small_host.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(HOSTILE).fetchall()
            assert (caught.value.sqlstate, caught.value.diag.message_detail) == ("53200", "HD_ERR_OUT_OF_MEMORY")
            assert "Traceback" not in str(caught.value)
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        stop.set()
        neighbour.join(30)
    assert len(answers) >= 3 and all(a == answers[0] for a in answers)
    assert set(squeezed) <= {"HD_ERR_OUT_OF_MEMORY"}
    assert small_host.process.poll() is None
    assert "HD_ERR_OUT_OF_MEMORY" in _codes(small_host.state_dir)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_result_over_the_cap_is_refused_whole(small_host: EngineHostProcess, protocol: str) -> None:
    with psycopg.connect(small_host.dsn(), autocommit=True) as conn:
        # ~100 MB of rows, over the 16 MiB cap: the client gets the error, never some of the rows.
        error = refused(conn, "SELECT repeat('x', 1000) AS s FROM range(100000)", protocol)
        assert (error.sqlstate, error.diag.message_detail) == ("54000", "HD_ERR_RESULT_TOO_LARGE")
        assert "16 MiB" in (error.diag.message_primary or "")
        assert run(conn, "SELECT count(*) FROM range(1000)", protocol) == [(1000,)]
    assert "HD_ERR_RESULT_TOO_LARGE" in _codes(small_host.state_dir)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_value_over_the_cap_is_refused(small_host: EngineHostProcess, protocol: str) -> None:
    with psycopg.connect(small_host.dsn(), autocommit=True) as conn:
        error = refused(conn, "SELECT repeat('x', 2000000) AS s", protocol)
        assert (error.sqlstate, error.diag.message_detail) == ("54000", "HD_ERR_VALUE_TOO_LARGE")
        assert run(conn, "SELECT length(repeat('x', 2000000))", protocol) == [(2000000,)]
    assert "HD_ERR_VALUE_TOO_LARGE" in _codes(small_host.state_dir)


def test_duckdb_spills_into_the_state_folder_not_the_working_directory(small_host: EngineHostProcess) -> None:
    with psycopg.connect(small_host.dsn(), autocommit=True) as conn:
        # Sorting 8M rows needs more than 256 MiB: it spills and still answers.
        assert conn.execute("SELECT count(*) FROM (SELECT range AS a FROM range(8000000) ORDER BY a DESC)"
                            ).fetchall() == [(8000000,)]
    assert (small_host.state_dir / "duckdb-tmp").is_dir()
