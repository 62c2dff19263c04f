"""Audit routes: query audit search with cursors, the IAM trail, and verify-chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.functions.conftest import ControlApi


def _record(control: ControlApi, n: int, *, user: str, org: str | None = None, table: str = "main.patients") -> None:
    ts = datetime.now(UTC) - timedelta(minutes=10) + timedelta(seconds=n)
    control.audit_sink.write({
        "ts": ts.isoformat().replace("+00:00", "Z"), "query_id": f"q_{n:04d}", "org_id": org or control.org_id,
        "user_id": user, "agent_id": None, "sql_redacted": "SELECT ?", "tables": [table],
        "timings_ms": {"total": float(n)}, "rows_returned": 1,
    })


def test_query_audit_search_pages_through_every_match_once(control: ControlApi) -> None:
    for n in range(25):
        _record(control, n, user="usr_a" if n % 2 else "usr_b")
    _record(control, 99, user="usr_a", org="org_other")
    today = datetime.now(UTC).date().isoformat()
    url = f"/v1/environments/{control.env_id}/audit/queries?start={today}&end={today}&user_id=usr_a&limit=5"
    seen: list[str] = []
    cursor = None
    while True:
        page = control.ok("GET", url + (f"&cursor={cursor}" if cursor else ""))
        seen += [record["query_id"] for record in page["records"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"q_{n:04d}" for n in range(25) if n % 2]


def test_min_duration_and_table_filters(control: ControlApi) -> None:
    for n in range(10):
        _record(control, n, user="usr_a", table="main.visits" if n < 5 else "main.patients")
    today = datetime.now(UTC).date().isoformat()
    base = f"/v1/environments/{control.env_id}/audit/queries?start={today}&end={today}"
    slow = control.ok("GET", base + "&min_duration_ms=7")
    assert [r["query_id"] for r in slow["records"]] == ["q_0007", "q_0008", "q_0009"]
    visits = control.ok("GET", base + "&table=visits")
    assert len(visits["records"]) == 5


def test_every_admin_change_is_in_the_iam_trail_and_the_chain_verifies(control: ControlApi) -> None:
    org = f"/v1/organizations/{control.org_id}"
    user = control.ok("POST", f"{org}/users", {"email": "a@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{org}/api-keys", {"scopes": ["read_only"]})
    control.ok("DELETE", f"{org}/api-keys/{key['key']['key_id']}")
    control.ok("PUT", f"{org}/users/{user['user_id']}/role", {"role": "Developer"})
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    kinds = [event["event_type"] for event in events]
    assert kinds == ["user.invited", "api_key.created", "api_key.revoked", "user.role_changed"]
    role_change = events[-1]
    assert role_change["before"]["role"] == "Analyst" and role_change["after"]["role"] == "Developer"
    assert role_change["actor"] == control.owner_id and role_change["request_id"]
    report = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")
    assert report["chain_valid"] is True and report["entry_count"] == 4
    assert report["first_entry_hash"] == events[0]["hash"] and report["last_entry_hash"] == events[-1]["hash"]


def test_an_analyst_cannot_read_the_audit_trail(control: ControlApi) -> None:
    org = f"/v1/organizations/{control.org_id}"
    user = control.ok("POST", f"{org}/users", {"email": "a@x.com", "role": "Analyst"})
    key = control.ok("POST", f"{org}/api-keys", {"user_id": user["user_id"], "scopes": ["read_only"]})
    reply = control.call("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain", key=key["api_key"])
    assert reply.status == 403


def test_the_checkpoint_schedule_signs_a_chain_that_grew_and_only_then(control: ControlApi) -> None:
    from functions.audit.handler import lambda_handler

    schedule = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    org = f"/v1/organizations/{control.org_id}"
    control.ok("POST", f"{org}/users", {"email": "a@x.com", "role": "Analyst"})  # event 1: checkpointed at once
    control.ok("POST", f"{org}/users", {"email": "b@x.com", "role": "Analyst"})  # event 2: not yet
    assert lambda_handler(schedule, None) == {"checkpoints_written": 1}
    assert lambda_handler(schedule, None) == {"checkpoints_written": 0}
    report = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")
    assert report["checkpoint_size"] == 2 and report["chain_valid"] is True
