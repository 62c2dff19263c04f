"""Small statements take each governance stage once (issue 17 item 3), and still take every one of them.

A simple query is planned once: its execution keeps the audit and plan its preparation made, unless
the policy or the table catalog changed in between (then it is planned again, under the new policy).
An unnamed statement a driver sends again and again is bound in DuckDB once for its shape, not at
every Parse; a schema change binds it afresh. Over a real socket to the in-process host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from engine_host.engine.duckdb_engine import EngineSession
from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.runtime.local import LocalEngineHost
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.policies import MaskFunction, MaskRule, PolicyKind
from tests.harness import SwitchableAuditSink, in_process_host


class _Host:
    def __init__(self, engine: LocalEngineHost, sink: SwitchableAuditSink, key: str):
        assert engine.server is not None and engine.banner is not None
        self.engine, self.sink, self.key = engine, sink, key
        self.pipeline: StatementPipeline = engine.server.pipeline
        self.port, self.user = engine.server.port, engine.banner.user

    def connect(self, request_id: str) -> psycopg.Connection:
        return psycopg.connect(f"host=127.0.0.1 port={self.port} dbname=hd user={self.user} password={self.key} "
                               f"sslmode=disable connect_timeout=10 options='-c request_id={request_id}'",
                               autocommit=True)

    def records(self, request_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.sink.records if r.get("request_id") == request_id]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Host]:
    with in_process_host(tmp_path_factory.mktemp("hd-small-statements")) as (engine, sink, key):
        yield _Host(engine, sink, key)


def _counting(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[object]:
    """Count the calls of `owner.name` (still calling it) for the rest of the test."""
    calls: list[object] = []
    real: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_simple_query_is_planned_once_and_its_one_record_shows_every_stage(
        host: _Host, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = _counting(monkeypatch, host.pipeline.governor, "plan")
    with host.connect("small-simple") as conn:
        assert conn.execute("SELECT 40 + 2 AS answer", prepare=False).fetchall() == [(42,)]
        assert conn.execute("SELECT 40 + 2 AS answer", prepare=False).fetchall() == [(42,)]
    assert len(plans) == 2  # one per statement, not one at preparation and another at execution
    first, again = host.records("small-simple")
    stages = [v["stage"] for v in first["verdicts"]]
    # The first run's plan-time stages (a new statement) and its admission, in one record.
    assert stages[:4] == ["guard", "guard", "tables", "policy"] and "plan_check" in stages
    assert stages[-4:] == ["rate_limit", "abac", "quota", "concurrency"]
    assert [v["stage"] for v in again["verdicts"]] == ["plan", "rate_limit", "abac", "quota", "concurrency"]
    assert all(v["decision"] == "allow" for r in (first, again) for v in r["verdicts"])
    assert first["rows_returned"] == again["rows_returned"] == 1 and first["query_id"] != again["query_id"]


def test_a_policy_change_between_preparing_and_running_a_simple_query_applies(host: _Host) -> None:
    with host.connect("small-setup") as conn:
        conn.execute("CREATE TABLE main.small_pii (id INTEGER, secret VARCHAR)")
        conn.execute("INSERT INTO main.small_pii VALUES (1, 'hunter2')")
    engine = host.engine
    assert engine.store is not None and engine.banner is not None
    principal = ApiKeyAuthenticator(engine.store, ensure_pepper(engine.store)).authenticate(host.user, host.key)
    session = host.pipeline.open_session(principal, "127.0.0.1", {"request_id": "small-policy"}, 1)
    rule = MaskRule("msk_small_pii_secret", principal.org_id, "main.small_pii", "secret", MaskFunction.FULL)
    try:
        prepared = host.pipeline.prepare(session, "SELECT secret FROM main.small_pii", run_now=True)
        assert prepared.plan is not None and not prepared.plan.masked_columns
        engine.store.put_policy(rule)  # lands between the statement's planning and its execution
        host.pipeline.governor.policies.load()
        outcome = host.pipeline.execute(session, prepared)
        assert outcome.rows is not None
        values = []
        while (batch := outcome.rows.read()) is not None:
            values += batch.column(0).to_pylist()
        assert values == ["***"]
        [record] = host.records("small-policy")
        assert record["masked_columns"] == ["main.small_pii.secret"]
    finally:
        session.close()
        engine.store.delete_policy(PolicyKind.MASK, rule.rule_id)
        host.pipeline.governor.policies.load()
        with host.connect("small-teardown") as conn:
            conn.execute("DROP TABLE main.small_pii")


def test_an_unnamed_statement_is_bound_once_for_its_shape_until_the_schema_changes(
        host: _Host, monkeypatch: pytest.MonkeyPatch) -> None:
    with host.connect("small-shape") as conn:
        conn.execute("CREATE TABLE main.small_shape (id INTEGER, name VARCHAR)")
        try:
            conn.execute("INSERT INTO main.small_shape VALUES (1, 'one'), (2, 'two')")
            describes = _counting(monkeypatch, EngineSession, "describe")
            sql = "SELECT * FROM main.small_shape WHERE id = %s"
            for key, name in ((1, "one"), (2, "two"), (1, "one"), (2, "two")):
                cur = conn.execute(sql, [key], prepare=False)  # Parse/Bind/Describe/Execute/Sync each time
                assert cur.fetchall() == [(key, name)]
            assert len(describes) == 1
            conn.execute("ALTER TABLE main.small_shape ADD COLUMN extra INTEGER DEFAULT 7")
            cur = conn.execute(sql, [1], prepare=False)
            assert [c.name for c in cur.description or []] == ["id", "name", "extra"]
            assert cur.fetchall() == [(1, "one", 7)]
            assert len(describes) == 2
        finally:
            conn.execute("DROP TABLE main.small_shape")
