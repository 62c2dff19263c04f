"""Policy changes reach a running engine host within seconds; writes obey row filters; gates refuse clearly.

A host of its own (policies change here), started with a small concurrency limit so the gate can
be filled on purpose. Policies are changed with the `hd local-policy` command, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.harness import EngineHostProcess, start_engine_host

SLOW_QUERY = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tmp_path_factory.mktemp("hd-policies"), "--demo", "--insecure-plaintext",
                                "--max-concurrent-statements", "2", "--max-queued-statements", "0")
    yield process
    process.stop()


def hd_policy(host: EngineHostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine_host.cli", "local-policy", "--state-dir", str(host.state_dir),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def add_policy(host: EngineHostProcess, document: dict) -> None:
    done = hd_policy(host, "add", "--json", json.dumps(document))
    assert done.returncode == 0, done.stderr


def connect(host: EngineHostProcess, person: str | None = None, **params: str) -> psycopg.Connection:
    return psycopg.connect(host.demo_dsn(person, **params) if person else host.dsn(**params), autocommit=True)


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the policy change did not reach the engine host in time")
        time.sleep(0.2)


def refused_with(conn: psycopg.Connection, sql: str, code: str) -> bool:
    """Whether running `sql` now fails with HD_ERR `code` (for polling until a policy change lands)."""
    try:
        conn.execute(sql)
    except psycopg.Error as exc:
        return exc.diag.message_detail == code
    return False


def test_new_mask_applies_to_open_sessions_within_seconds(host: EngineHostProcess) -> None:
    with connect(host, "acme-analyst") as conn:
        assert conn.execute("SELECT min(status) FROM sales.orders").fetchone()[0] != "***"
        add_policy(host, {"kind": "mask", "rule_id": "msk_status", "org_id": "org_acme", "table": "sales.orders",
                          "column": "status", "function": "full"})
        eventually(lambda: conn.execute("SELECT DISTINCT status FROM sales.orders").fetchall() == [("***",)])
    listed = hd_policy(host, "list", "--kind", "mask", "--org", "org_acme").stdout
    assert "msk_status" in listed


def test_phi_grant_opens_phi_columns(host: EngineHostProcess) -> None:
    with connect(host, "acme-analyst") as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT patient_name FROM clinical.encounters LIMIT 1")
        add_policy(host, {"kind": "phi_grant", "grant_id": "phi_analyst", "org_id": "org_acme",
                          "user_id": "usr_demo_acme_analyst", "reason": "care coordination"})

        def readable() -> bool:
            try:
                return len(conn.execute("SELECT patient_name FROM clinical.encounters LIMIT 1").fetchall()) == 1
            except psycopg.Error:
                return False

        eventually(readable)


def test_invalid_policy_is_refused_with_a_reason(host: EngineHostProcess) -> None:
    done = hd_policy(host, "add", "--json", json.dumps({
        "kind": "mask", "org_id": "org_acme", "table": "crm.customers", "column": "ssn", "function": "hash"}))
    assert done.returncode == 2 and "HD_ERR_POLICY_INVALID" in done.stderr


def test_another_organisations_table_is_blocked(host: EngineHostProcess) -> None:
    with connect(host) as owner:
        owner.execute("CREATE TABLE acme_private (id INTEGER, note VARCHAR)")
        owner.execute("INSERT INTO acme_private VALUES (1, 'acme only')")
    with connect(host, "acme-analyst") as acme:
        assert acme.execute("SELECT note FROM acme_private").fetchall() == [("acme only",)]
    with connect(host, "globex-analyst") as globex:
        with pytest.raises(psycopg.Error) as caught:
            globex.execute("SELECT o.amount FROM sales.orders o JOIN main.acme_private p ON p.id = o.order_id")
        # Exactly what a table that does not exist gets: no oracle for another organisation's names.
        assert (caught.value.sqlstate, caught.value.diag.message_detail) == ("42P01", "HD_ERR_UNKNOWN_TABLE")
        assert str(caught.value).splitlines()[0].endswith('relation "main.acme_private" does not exist')
        globex.execute("SET hd.request_id = 'cross-tenant-1'")
        with pytest.raises(psycopg.Error):
            globex.execute("SELECT note FROM acme_private")
        # The audit record keeps the real reason.
        records = [json.loads(line) for path in (host.state_dir / "audit" / "queries").rglob("*.jsonl")
                   for line in path.read_text().splitlines()]
        record = next(r for r in records if r.get("request_id") == "cross-tenant-1")
        assert record["error"]["code"] == "HD_ERR_CROSS_TENANT"
        assert any(v["decision"] == "deny" and "cross_tenant" in v["reason"] for v in record["verdicts"])
        listed = globex.execute("SELECT table_name FROM information_schema.tables").fetchall()
        assert ("acme_private",) not in listed


@pytest.fixture(scope="module")
def tickets(host: EngineHostProcess) -> str:
    with connect(host) as owner:
        owner.execute("CREATE TABLE tickets (id INTEGER, department VARCHAR, body VARCHAR)")
        owner.execute("INSERT INTO tickets VALUES (1, 'Sales', 's1'), (2, 'Sales', 's2'), (3, 'Legal', 'l1')")
    add_policy(host, {"kind": "row_filter", "rule_id": "rls_tickets", "org_id": "org_acme", "table": "main.tickets",
                      "filter": "department = {department}", "exempt_roles": ["Owner"]})
    with connect(host, "acme-analyst") as conn:
        eventually(lambda: conn.execute("SELECT count(*) FROM tickets").fetchone() == (2,))
    return "main.tickets"


def owner_rows(host: EngineHostProcess) -> list[tuple]:
    with connect(host) as owner:
        return owner.execute("SELECT id, department, body FROM tickets ORDER BY id").fetchall()


def test_insert_outside_the_row_filter_is_rejected(host: EngineHostProcess, tickets: str) -> None:
    with connect(host, "acme-analyst") as conn:
        conn.execute("INSERT INTO tickets VALUES (10, 'Sales', 'ok')")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("INSERT INTO tickets VALUES (11, 'Legal', 'smuggled')")
        assert caught.value.diag.message_detail == "HD_ERR_ROW_FILTER_CHECK"
    assert (11, "Legal", "smuggled") not in owner_rows(host)
    assert (10, "Sales", "ok") in owner_rows(host)


def test_update_and_delete_touch_only_filtered_rows(host: EngineHostProcess, tickets: str) -> None:
    with connect(host, "acme-analyst") as conn:
        assert conn.execute("UPDATE tickets SET body = 'edited' WHERE true").rowcount >= 2
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("UPDATE tickets SET department = 'Legal' WHERE id = 1")
        assert caught.value.diag.message_detail == "HD_ERR_ROW_FILTER_CHECK"
        conn.execute("DELETE FROM tickets WHERE department = 'Legal' OR id = 3")
    after = owner_rows(host)
    assert (3, "Legal", "l1") in after  # not visible to the analyst, so neither edited nor deleted
    assert (1, "Sales", "edited") in after


def test_statement_timeout_cancels_with_57014(host: EngineHostProcess) -> None:
    with connect(host, "acme-analyst") as conn:
        conn.execute("SET statement_timeout = 300")
        started = time.monotonic()
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(SLOW_QUERY)
        assert caught.value.sqlstate == "57014"
        assert time.monotonic() - started < 20
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_full_host_answers_server_busy_instead_of_hanging(host: EngineHostProcess) -> None:
    started = threading.Barrier(3)

    def slow() -> None:
        with connect(host, "acme-analyst") as conn:
            conn.execute("SET statement_timeout = 4000")
            started.wait()
            try:
                conn.execute(SLOW_QUERY)
            except psycopg.Error:
                pass

    workers = [threading.Thread(target=slow) for _ in range(2)]
    for worker in workers:
        worker.start()
    started.wait()
    time.sleep(1.0)
    with connect(host, "acme-analyst") as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT 1")
        assert caught.value.sqlstate == "53300" and caught.value.diag.message_detail == "HD_ERR_SERVER_BUSY"
    for worker in workers:
        worker.join()
    with connect(host, "acme-analyst") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_rate_limit_and_monthly_credit_quota(host: EngineHostProcess) -> None:
    add_policy(host, {"kind": "quota", "quota_id": "quota_org_globex", "org_id": "org_globex",
                      "statements_per_second": 1})
    with connect(host, "globex-analyst") as conn:
        def limited() -> bool:
            try:
                for _ in range(5):
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                return exc.sqlstate == "53400" and exc.diag.message_detail == "HD_ERR_RATE_LIMITED"
            return False

        eventually(limited)
    add_policy(host, {"kind": "quota", "quota_id": "quota_org_globex", "org_id": "org_globex",
                      "monthly_credits": 0.0})
    with connect(host, "globex-analyst") as conn:
        eventually(lambda: refused_with(conn, "SELECT count(*) FROM sales.orders", "HD_ERR_QUOTA_EXCEEDED"))


def remove_policy(host: EngineHostProcess, kind: str, policy_id: str) -> None:
    done = hd_policy(host, "remove", kind, policy_id)
    assert done.returncode == 0, done.stderr


def ssn_sample(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT ssn FROM crm.customers ORDER BY customer_id LIMIT 1").fetchone()[0]


def test_jit_grant_elevates_for_its_window_then_expires_by_itself(host: EngineHostProcess) -> None:
    now = datetime.now(UTC)
    with connect(host, "acme-analyst") as conn:
        assert ssn_sample(conn) == "***"
        add_policy(host, {"kind": "jit_grant", "grant_id": "jit_analyst", "org_id": "org_acme",
                          "user_id": "usr_demo_acme_analyst", "role": "Admin", "reason": "incident 42",
                          "starts_at": (now - timedelta(minutes=1)).isoformat(),
                          "expires_at": (now + timedelta(seconds=6)).isoformat()})
        eventually(lambda: ssn_sample(conn) != "***")  # Admins are exempt from the demo masks
        eventually(lambda: ssn_sample(conn) == "***", seconds=15)  # no policy change: the grant ran out


def test_abac_denies_outside_the_allowed_network(host: EngineHostProcess) -> None:
    add_policy(host, {"kind": "abac", "policy_id": "abac_corp_net", "org_id": "org_acme", "name": "corp network",
                      "effect": "deny", "actions": ["*"], "resources": ["sales.orders"],
                      "conditions": {"not_source_cidrs": ["10.0.0.0/8"]}, "reason": "orders only from the VPN"})
    try:
        with connect(host, "acme-analyst") as conn:
            def denied() -> bool:
                try:
                    conn.execute("SELECT count(*) FROM sales.orders")
                except psycopg.Error as exc:
                    return exc.diag.message_detail == "HD_ERR_ABAC_DENIED" and "orders only from the VPN" in str(exc)
                return False

            eventually(denied)
            assert conn.execute("SELECT count(*) FROM crm.customers").fetchone() == (500,)
    finally:
        remove_policy(host, "abac", "abac_corp_net")


def test_abac_time_window_in_a_timezone(host: EngineHostProcess) -> None:
    local = datetime.now(ZoneInfo("Asia/Singapore"))
    start, end = (local - timedelta(hours=1)).strftime("%H:%M"), (local + timedelta(hours=1)).strftime("%H:%M")
    add_policy(host, {"kind": "abac", "policy_id": "abac_maintenance", "org_id": "org_acme", "name": "maintenance",
                      "effect": "deny", "actions": ["select"], "resources": ["hr.*"],
                      "conditions": {"time_window": {"start": start, "end": end, "timezone": "Asia/Singapore"}}})
    try:
        with connect(host, "acme-analyst") as conn:
            eventually(lambda: refused_with(conn, "SELECT count(*) FROM hr.employees", "HD_ERR_ABAC_DENIED"))
    finally:
        remove_policy(host, "abac", "abac_maintenance")
