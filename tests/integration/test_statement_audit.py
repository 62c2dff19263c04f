"""Every statement leaves exactly one audit record, whatever part of the server answers it (issue 14 item 9).

BEGIN, COMMIT, ROLLBACK, SET, SHOW, RESET, DISCARD, DEALLOCATE, FETCH, MOVE and CLOSE are answered by
the pipeline itself, never by DuckDB; a refused multi-statement string never reaches a stage. Each
still gets its one record (with its error when it failed), in both protocols, over a real socket to
the in-process host.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from engine_host.runtime.local import LocalEngineHost
from tests.e2e.rawpg import RawClient, cstr, message, startup_packet
from tests.harness import SwitchableAuditSink, in_process_host


class _Host:
    def __init__(self, engine: LocalEngineHost, sink: SwitchableAuditSink, key: str):
        assert engine.server is not None and engine.banner is not None
        self.sink, self.key = sink, key
        self.port, self.user = engine.server.port, engine.banner.user

    def raw(self, request_id: str) -> RawClient:
        client = RawClient(self.port, tls=False)
        client.send(startup_packet({"user": self.user, "database": "hd", "request_id": request_id}))
        assert client.read().kind == b"R"  # type: ignore[union-attr]
        client.send(message(b"p", cstr(self.key)))
        assert client.read_until(b"Z")[-1].kind == b"Z"
        return client

    def dsn(self, request_id: str) -> str:
        return (f"host=127.0.0.1 port={self.port} dbname=hd user={self.user} password={self.key} "
                f"sslmode=disable connect_timeout=10 options='-c request_id={request_id}'")

    def records(self, request_id: str) -> list[dict]:
        return [dict(r) for r in self.sink.records if r.get("request_id") == request_id]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Host]:
    with in_process_host(tmp_path_factory.mktemp("hd-statement-audit")) as (engine, sink, key):
        yield _Host(engine, sink, key)


def _code(record: dict) -> str | None:
    return (record.get("error") or {}).get("code")


# (statement, the record's statement_kind, the record's error code or None); run in this order.
SCRIPT = [
    ("BEGIN", "transaction", None),
    ("SET application_name = 'audited'", "setting", None),
    ("SHOW application_name", "setting", None),
    ("SELECT 1 AS one", "select", None),
    ("SAVEPOINT s1", "transaction", None),
    ("RELEASE SAVEPOINT s1", "transaction", None),
    ("COMMIT", "transaction", None),
    ("ROLLBACK", "transaction", None),  # none in progress: a warning, still a statement
    ("RESET application_name", "setting", None),
    ("SET", "setting", "HD_ERR_SYNTAX"),  # refused at preparation
    ("SELECT 1; SELECT 2", None, "HD_ERR_MULTIPLE_STATEMENTS"),  # refused before any stage
    ("BEGIN", "transaction", None),
    ("SELECT CAST('x' AS INTEGER)", "select", None),  # its record carries DuckDB's error (code varies with the engine)
    ("SELECT 2", None, "HD_ERR_TX_ABORTED"),  # refused in the failed transaction
    ("SHOW application_name", "setting", "HD_ERR_TX_ABORTED"),
    ("ROLLBACK", "transaction", None),
    ("BEGIN", "transaction", None),
    ("DECLARE c NO SCROLL CURSOR FOR SELECT range AS i FROM range(10)", "select", None),  # the query's record
    ("FETCH 3 FROM c", "cursor", None),
    ("MOVE 2 IN c", "cursor", None),
    ("CLOSE c", "cursor", None),
    ("FETCH 1 FROM nope", "cursor", "HD_ERR_NO_SUCH_CURSOR"),
    ("ROLLBACK", "transaction", None),
    ("DEALLOCATE ALL", "deallocate", None),
    ("DISCARD ALL", "discard", None),
]


def test_every_statement_of_a_simple_protocol_session_has_one_record(host: _Host) -> None:
    client = host.raw("audit-simple")
    try:
        for sql, _, _ in SCRIPT:
            replies = client.query(sql)
            assert replies and replies[-1].kind == b"Z", (sql, replies)
    finally:
        client.close()
    records = host.records("audit-simple")
    # The DECLARE's record is its query's, written when the cursor closes: compare by position otherwise.
    declared = next(r for r in records if "range" in r["sql_redacted"])
    records.remove(declared)
    assert _code(declared) is None and declared["rows_returned"] == 10  # all read ahead at the first FETCH
    expected = [(kind, code) for sql, kind, code in SCRIPT if not sql.startswith("DECLARE")]
    assert len(records) == len(expected), [r["sql_redacted"] for r in records]
    for record, (sql, (kind, code)) in zip(records, [(s, (k, c)) for s, k, c in SCRIPT
                                                      if not s.startswith("DECLARE")], strict=True):
        if kind is not None:
            assert record["statement_kind"] == kind, (sql, record)
        if sql == "SELECT CAST('x' AS INTEGER)":
            assert _code(record) is not None, record
        else:
            assert _code(record) == code, (sql, record)
    multi = next(r for r in records if _code(r) == "HD_ERR_MULTIPLE_STATEMENTS")
    assert [v["decision"] for v in multi["verdicts"]] == ["deny"] and "2" not in multi["sql_redacted"]


def test_control_statements_over_the_extended_protocol_have_one_record_each(host: _Host) -> None:
    with psycopg.connect(host.dsn("audit-extended"), autocommit=True) as conn:
        conn.execute("SET application_name = 'ext'", prepare=True)
        assert conn.execute("SHOW application_name", prepare=True).fetchone() == ("ext",)
        conn.execute("BEGIN", prepare=True)
        conn.execute("COMMIT", prepare=True)
    kinds = [(r["statement_kind"], _code(r)) for r in host.records("audit-extended")]
    # psycopg's own start-up statements come first, if any; ours are the last four, one record each.
    assert kinds[-4:] == [("setting", None), ("setting", None), ("transaction", None), ("transaction", None)]


def test_a_control_statement_runs_when_its_record_cannot_be_stored(host: _Host) -> None:
    client = host.raw("audit-down")
    try:
        assert client.query("BEGIN")[-1].body == b"T"
        host.sink.failing = True
        try:
            replies = client.query("ROLLBACK")  # leaving a transaction must work with the audit store down
            refused = client.query("SELECT 1")
        finally:
            host.sink.failing = False
        assert [m.kind for m in replies] == [b"C", b"Z"] and replies[-1].body == b"I"
        assert [m.error_fields().get("D") for m in refused if m.kind == b"E"] == ["HD_ERR_AUDIT_UNAVAILABLE"]
    finally:
        client.close()
