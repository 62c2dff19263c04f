"""Audit routes: query audit search with cursors, the IAM trail, and verify-chain."""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

from functions.shared.wiring import install_services
from hd_core.adapters.dynamodb_schema import PARTITION_KEY, SORT_KEY
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.iam_audit import IamAuditTrail, checkpoint_to_json
from hd_core.models import ChainCheckpoint
from hd_core.ports import CheckpointStore
from tests.integration.functions.conftest import AUDIT_BUCKET, ControlApi

TOP_NAME = "999999999999-9999999999999.json"  # sorts after every checkpoint name the store chooses


def _days() -> str:
    """The start and end days that hold every _record: its records are dated up to ten minutes ago, so a run
    just after midnight UTC spans yesterday and today."""
    now = datetime.now(UTC)
    return f"start={(now - timedelta(minutes=11)).date().isoformat()}&end={now.date().isoformat()}"


def _record(control: ControlApi, n: int, *, user: str, org: str | None = None, table: str = "main.patients") -> None:
    ts = datetime.now(UTC) - timedelta(minutes=10) + timedelta(seconds=n)
    control.audit_sink.write({
        "ts": ts.isoformat().replace("+00:00", "Z"), "query_id": f"q_{n:04d}", "org_id": org or control.org_id,
        "user_id": user, "agent_id": None, "key_env": "live", "sql_redacted": "SELECT ?", "tables": [table],
        "timings_ms": {"total": float(n)}, "rows_returned": 1,
    })


def test_query_audit_search_pages_through_every_match_once(control: ControlApi) -> None:
    for n in range(25):
        _record(control, n, user="usr_a" if n % 2 else "usr_b")
    _record(control, 99, user="usr_a", org="org_other")
    url = f"/v1/environments/{control.env_id}/audit/queries?{_days()}&user_id=usr_a&limit=5"
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
    base = f"/v1/environments/{control.env_id}/audit/queries?{_days()}"
    slow = control.ok("GET", base + "&min_duration_ms=7")
    assert [r["query_id"] for r in slow["records"]] == ["q_0007", "q_0008", "q_0009"]
    visits = control.ok("GET", base + "&table=visits")
    assert len(visits["records"]) == 5


def test_an_event_number_beyond_64_bits_is_refused_not_a_500(control: ControlApi) -> None:
    # Found by the stateful schemathesis run: SQLite cannot bind it, which was an OverflowError (500).
    for after_seq in (10**12, 2**63, 15073642035178985488384):
        reply = control.call("GET", f"/v1/environments/{control.env_id}/audit/admin?after_seq={after_seq}")
        assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION"
    assert control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?after_seq={10**12 - 1}") == []


def test_a_blank_table_filter_or_an_endless_duration_is_refused_by_the_schema(control: ControlApi) -> None:
    base = f"/v1/environments/{control.env_id}/audit/queries?start=2026-01-01&end=2026-01-02"
    for query in ("table=%20%09", "min_duration_ms=1e400"):
        reply = control.call("GET", f"{base}&{query}")
        assert reply.status == 422 and reply.json()["error"]["code"] == "HD_ERR_VALIDATION", query


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


# --- verify-chain against tampering, with the default checkpoint after every event -----------------


class Evidence:
    """The organisation's checkpoint objects and IAM event rows, reached behind the API's back."""

    def __init__(self, control: ControlApi, tmp_path: Path) -> None:
        self._control, self._tmp_path = control, tmp_path
        self._s3 = boto3.client("s3") if control.backend == "aws" else None
        self._prefix = f"audit/iam-checkpoints/{control.org_id}/"

    def checkpoint_store(self) -> CheckpointStore:
        if self._s3 is None:
            return LocalFolderCheckpointStore(self._tmp_path)
        return S3CheckpointStore(self._s3, AUDIT_BUCKET)

    def copy_checkpoint(self, size: int, target: str) -> None:
        (source,) = self.store_checkpoints(size)
        self.plant(target, checkpoint_to_json(source))

    def store_checkpoints(self, size: int) -> list[ChainCheckpoint]:
        return self.checkpoint_store().list_checkpoints(self._control.org_id, size=size)

    def plant(self, name: str, data: bytes) -> None:
        if self._s3 is None:
            (self._tmp_path / self._prefix / name).write_bytes(data)
        else:
            self._s3.put_object(Bucket=AUDIT_BUCKET, Key=self._prefix + name, Body=data)

    def cut_events_after(self, seq: int) -> None:
        if self._s3 is None:
            with sqlite3.connect(self._tmp_path / "control.sqlite3") as db:
                db.execute("DELETE FROM iam_events WHERE chain_id = ? AND seq > ?", (self._control.org_id, seq))
            return
        dynamodb = boto3.client("dynamodb")
        items = dynamodb.query(
            TableName="hd-control-test", KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": PARTITION_KEY},
            ExpressionAttributeValues={":pk": {"S": "CHAIN#" + self._control.org_id}},
        )["Items"]
        for item in items:
            if int(item["seq"]["N"]) > seq:
                dynamodb.delete_item(TableName="hd-control-test",
                                     Key={PARTITION_KEY: item[PARTITION_KEY], SORT_KEY: item[SORT_KEY]})


def _guarded(control: ControlApi, tmp_path: Path) -> Evidence:
    """Serve the API with the product's default trail (a checkpoint after every event) over the same stores."""
    evidence = Evidence(control, tmp_path)
    services = control.services
    install_services(replace(services, trail=IamAuditTrail(services.store, evidence.checkpoint_store(), services.keys)))
    return evidence


def _invite(control: ControlApi, count: int) -> None:
    for n in range(count):
        control.ok("POST", f"/v1/organizations/{control.org_id}/users", {"email": f"u{n}@x.com", "role": "Analyst"})


def test_verify_chain_finds_a_cut_tail_despite_an_old_checkpoint_copied_under_the_newest_name(
    control: ControlApi, tmp_path: Path
) -> None:
    evidence = _guarded(control, tmp_path)
    _invite(control, 4)
    assert control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")["chain_valid"] is True
    evidence.copy_checkpoint(2, TOP_NAME)
    evidence.cut_events_after(2)
    report = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")
    assert (report["chain_valid"], report["entry_count"], report["checkpoint_size"]) == (False, 2, 4)
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (3, "truncated")


def test_verify_chain_finds_the_last_event_cut_off(control: ControlApi, tmp_path: Path) -> None:
    evidence = _guarded(control, tmp_path)
    _invite(control, 3)
    evidence.cut_events_after(2)
    report = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")
    assert report["chain_valid"] is False
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (3, "truncated")


def test_verify_chain_reports_a_planted_checkpoint_that_is_not_signed(control: ControlApi, tmp_path: Path) -> None:
    evidence = _guarded(control, tmp_path)
    _invite(control, 2)
    (genuine,) = evidence.store_checkpoints(2)
    forged = replace(genuine, size=9, signature=base64.b64encode(b"\x30" * 70).decode())
    evidence.plant(TOP_NAME, checkpoint_to_json(forged))
    report = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain")
    assert (report["chain_valid"], report["checkpoint_size"]) == (False, 2)
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (9, "checkpoint_signature_invalid")
