"""The key lifecycle job (issue 19) over a whole year of a key, with a hand-wound clock.

Real parts: the SQLite control store, the IAM trail with its checkpoints, the control API behind the
local dispatcher (its authenticator reads the same clock), Secrets Manager under moto, and webhook
deliveries recorded by `hd_core.webhooks.emit` for a subscribed endpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from engine_host.devmode.control_server import ControlApiDispatcher, LifecycleTimer
from functions.shared.wiring import install_services
from hd_core import key_admin
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner
from hd_core.control_settings import ControlApiSettings
from hd_core.errors import InvalidRequest
from hd_core.key_lifecycle import run_key_lifecycle
from hd_core.models import ALL_SCOPES, ChangeContext, KeyEnv, Principal, Role, User, UserStatus
from hd_core.services import ControlServices, assemble_services
from hd_core.webhook_models import WebhookEndpoint
from tests.clocks import HandWoundClock

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass
class World:
    services: ControlServices
    clock: HandWoundClock
    dispatcher: ControlApiDispatcher
    org_id: str
    owner_key: str
    ctx: ChangeContext
    endpoint_id: str

    def run(self) -> dict[str, Any]:
        return run_key_lifecycle(self.services, self.clock()).as_dict()

    def whoami(self, key: str) -> int:
        return self.dispatcher.invoke("GET", "/v1/auth/whoami", headers={"X-API-Key": key}).status

    def webhook_events(self) -> list[dict[str, Any]]:
        deliveries = self.services.store.list_webhook_deliveries(self.endpoint_id)
        return [json.loads(d.body) for d in sorted(deliveries, key=lambda d: (d.created_at, d.event_id))]

    def iam_events(self) -> list[Any]:
        return self.services.store.list_iam_events(self.org_id)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    clock = HandWoundClock(T0)
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    owner = bootstrap_local_owner(store, ApiKeyHasher(), org_name="Year Org", email="owner@example.com")
    assert owner.api_key_plaintext is not None
    services = assemble_services(
        ControlApiSettings(jwt_issuer="https://hd.test", jwt_audience="hardened-duck", checkpoint_every=5),
        store=store, keys=LocalKeyFile(tmp_path / "keys" / "local-keys.json"),
        checkpoints=LocalFolderCheckpointStore(tmp_path), query_audit=LocalFolderAuditArchive(tmp_path), now=clock,
    )
    endpoint = WebhookEndpoint(
        endpoint_id="whe_year", org_id=owner.org.org_id, url="https://hooks.example.test/hd",
        events=("key.expiring", "key.rotated", "key.expired"), secret_sealed="unused-in-this-test",
        created_at=T0, created_by=owner.user.user_id,
    )
    store.put_webhook_endpoint(endpoint)
    principal = Principal(
        user_id=owner.user.user_id, org_id=owner.org.org_id, role=Role.OWNER, key_id="", env=KeyEnv.LIVE,
        scopes=ALL_SCOPES, department=None, region=None, auth_method="jwt",
    )
    install_services(services)
    try:
        with mock_aws():
            yield World(services, clock, ControlApiDispatcher(), owner.org.org_id, owner.api_key_plaintext,
                        ChangeContext(actor=principal, request_id="req_test"), endpoint.endpoint_id)
    finally:
        install_services(None)


def _service_account(world: World) -> User:
    user = User("usr_robot", world.org_id, "robot@example.com", Role.SERVICE_ACCOUNT, UserStatus.ACTIVE, None, None,
                T0)
    world.services.store.put_user(user)
    return user


def test_a_year_of_a_service_account_key(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = boto3.client("secretsmanager", region_name="us-east-1")

    def read_secret() -> dict[str, Any]:
        # The test's own read of the secret is kept out of the captured lines; the job's writes are not.
        with caplog.at_level(logging.CRITICAL, logger="botocore"):
            return dict(json.loads(secrets.get_secret_value(SecretId=secret_name)["SecretString"]))

    secret_name = f"hd/keys/{world.org_id}/etl"
    secrets.create_secret(Name=secret_name, SecretString="{}")
    robot = _service_account(world)
    plaintext, key = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], name="etl", expires_at=T0 + timedelta(days=200),
        delivery_secret=secret_name, now=world.clock,
    )
    assert key.rotate_every_days == 90  # a ServiceAccount's default policy
    plaintexts = [plaintext]
    assert world.whoami(plaintext) == 200

    # Daily runs up to the day before the rotation: nothing to do.
    for _ in range(89):
        world.clock.advance(days=1)
        assert world.run() == {"expired": [], "rotated": [], "successors": [], "rotation_due": [],
                               "rotation_failed": [], "warnings": [],
                               "signing_keys": {"created": [], "disabled": [], "deleted": [], "failed": [],
                                                "checkpoint_created": []}}

    # Day 90: a successor, its plaintext in the secret; the old key keeps its 72 hours of grace.
    world.clock.advance(days=1)
    first = world.run()
    assert first["rotated"] == [key.key_id] and len(first["successors"]) == 1
    successor_id = first["successors"][0]
    delivered = read_secret()
    assert delivered["key_id"] == successor_id and delivered["previous_key_id"] == key.key_id
    plaintexts.append(delivered["api_key"])
    assert world.whoami(delivered["api_key"]) == 200 and world.whoami(plaintext) == 200
    # Rotated with exactly 72 hours left: the 3-day grace warning goes at once, the 7-day one is skipped.
    assert first["warnings"] == [{"key_id": key.key_id, "reason": "grace_end", "days_before": 3}]
    assert world.run()["warnings"] == [] and world.run()["rotated"] == []  # the same day again: nothing more

    world.clock.advance(days=2)
    assert world.run()["warnings"] == [{"key_id": key.key_id, "reason": "grace_end", "days_before": 1}]
    world.clock.advance(hours=23)
    assert world.whoami(plaintext) == 200  # still inside the grace
    world.clock.advance(hours=1, seconds=1)
    assert world.whoami(plaintext) == 401  # the grace is over: refused even before the job runs
    assert world.run()["expired"] == [key.key_id]
    old = world.services.store.get_api_key(key.key_id)
    assert old is not None and old.revoked_at is not None
    assert world.whoami(delivered["api_key"]) == 200

    # The successor carries the policy and the original expiry (day 200); its own rotation is due on day 183,
    # then warnings 7, 3 and 1 days before day 200, and its expiry.
    warnings: list[tuple[str, str, int]] = []
    expired: list[str] = []
    rotated: list[str] = []
    for _ in range(200 - 93):
        world.clock.advance(days=1)
        report = world.run()
        assert world.run()["warnings"] == []  # idempotent within the day
        warnings += [(w["key_id"], w["reason"], w["days_before"]) for w in report["warnings"]]
        expired += report["expired"]
        rotated += report["rotated"]
        if report["successors"]:
            plaintexts.append(read_secret()["api_key"])
    assert rotated == [successor_id]
    third = world.services.store.get_api_key(successor_id)
    assert third is not None and third.rotated_to is not None
    assert (successor_id, "grace_end", 3) in warnings and (successor_id, "grace_end", 1) in warnings
    assert [(r, d) for k, r, d in warnings if k == third.rotated_to] == [("expiry", 7), ("expiry", 3), ("expiry", 1)]
    assert expired == [successor_id, third.rotated_to]
    assert all(world.whoami(p) == 401 for p in plaintexts)

    # Webhooks: each warning once, every rotation and expiry once; IAM events likewise, no plaintext anywhere.
    events = world.webhook_events()
    kinds = [(e["type"], e["data"]["key_id"], e["data"].get("days_before")) for e in events]
    assert len(kinds) == len(set(kinds))
    assert kinds.count(("key.expired", key.key_id, None)) == 1
    assert [k for k in kinds if k[0] == "key.rotated"] == [("key.rotated", key.key_id, None),
                                                           ("key.rotated", successor_id, None)]
    iam = world.iam_events()
    iam_kinds = [e.event_type for e in iam]
    assert iam_kinds.count("api_key.rotated") == 2 and iam_kinds.count("api_key.expired") == 3
    assert iam_kinds.count("api_key.expiring") == 2 + 2 + 3
    everything = caplog.text + json.dumps(events) + repr(iam)
    for secret in plaintexts:
        assert secret not in everything


def test_a_key_without_a_delivery_target_is_announced_once_and_left_to_its_owner(world: World) -> None:
    robot = _service_account(world)
    plaintext, key = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], rotate_every_days=30, now=world.clock,
    )
    world.clock.advance(days=30)
    assert world.run()["rotation_due"] == [key.key_id]
    world.clock.advance(days=1)
    assert world.run()["rotation_due"] == []
    record = world.services.store.get_api_key(key.key_id)
    assert record is not None and record.rotated_to is None and world.whoami(plaintext) == 200
    [event] = [e for e in world.webhook_events() if e["type"] == "key.rotated"]
    assert event["data"]["rotated"] is False and event["data"]["key_id"] == key.key_id
    assert [e.event_type for e in world.iam_events()].count("api_key.rotation_due") == 1


def test_a_failed_delivery_changes_nothing_and_the_next_run_retries(world: World) -> None:
    robot = _service_account(world)
    secret_name = f"hd/keys/{world.org_id}/missing"
    plaintext, key = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], delivery_secret=secret_name, now=world.clock,
    )
    world.clock.advance(days=90)
    report = world.run()
    assert report["rotation_failed"] == [key.key_id] and report["rotated"] == []
    assert [k.key_id for k in world.services.store.list_api_keys(world.org_id) if k.user_id == robot.user_id] == [
        key.key_id]
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(Name=secret_name, SecretString="{}")
    world.clock.advance(days=1)
    assert world.run()["rotated"] == [key.key_id]
    assert world.whoami(plaintext) == 200


def test_a_keys_policy_other_than_a_service_accounts_is_none_unless_set(world: World) -> None:
    _, owners = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=world.ctx.actor.user_id, env="live", scopes=["read_only"], now=world.clock,
    )
    assert owners.rotate_every_days is None
    robot = _service_account(world)
    _, unscheduled = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], rotate_every_days=None, now=world.clock,
    )
    assert unscheduled.rotate_every_days is None
    for bad in (0, 3651):
        with pytest.raises(InvalidRequest):
            key_admin.set_key_lifecycle(world.services.store, world.services.trail, world.ctx, world.org_id,
                                        owners.key_id, rotate_every_days=bad)
    for target in ("hd/keys/org_other/x", f"hd/keys/{world.org_id}/", "elsewhere",
                   "arn:aws:secretsmanager:us-east-1:123456789012:secret:hd/keys/org_other/x"):
        with pytest.raises(InvalidRequest):
            key_admin.set_key_lifecycle(world.services.store, world.services.trail, world.ctx, world.org_id,
                                        owners.key_id, delivery_secret=target)
    arn = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:hd/keys/{world.org_id}/bi-AbCdEf"
    changed = key_admin.set_key_lifecycle(world.services.store, world.services.trail, world.ctx, world.org_id,
                                          owners.key_id, rotate_every_days=30, delivery_secret=arn)
    assert (changed.rotate_every_days, changed.delivery_secret) == (30, arn)
    assert [e.event_type for e in world.iam_events()].count("api_key.lifecycle_changed") == 1


def test_the_routes_set_a_policy_list_the_status_and_run_on_demand(world: World) -> None:
    base = f"/v1/organizations/{world.org_id}"
    headers = {"X-API-Key": world.owner_key, "Content-Type": "application/json"}

    def call(method: str, path: str, body: Any = None) -> Any:
        reply = world.dispatcher.invoke(method, base + path, headers=headers,
                                        body=None if body is None else json.dumps(body).encode())
        return reply

    created = call("POST", "/api-keys", {"scopes": ["read_only"], "rotate_every_days": 10})
    assert created.status == 201 and created.json()["key"]["rotate_every_days"] == 10
    key_id = created.json()["key"]["key_id"]
    patched = call("PATCH", f"/api-keys/{key_id}", {"rotate_every_days": 5})
    assert patched.status == 200 and patched.json()["rotate_every_days"] == 5
    assert call("PATCH", f"/api-keys/{key_id}", {"colour": "red"}).status == 422
    status = call("GET", "/keys/status")
    assert status.status == 200
    assert [(e["state"], e["key"]["key_id"]) for e in status.json()] == [("rotation_due", key_id)]
    record = world.services.store.get_api_key(key_id)
    assert record is not None  # the route runs at the wall clock's time: as if the key were made 5 days ago
    world.services.store.update_api_key(replace(record, created_at=record.created_at - timedelta(days=5)))
    run = call("POST", "/keys/lifecycle-runs")
    assert run.status == 201 and run.json()["rotation_due"] == [key_id]
    again = call("POST", "/keys/lifecycle-runs")
    assert again.json()["rotation_due"] == []


def test_a_run_on_demand_is_for_owners_and_admins(world: World) -> None:
    robot = _service_account(world)
    plaintext, _ = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], now=world.clock,
    )
    reply = world.dispatcher.invoke("POST", f"/v1/organizations/{world.org_id}/keys/lifecycle-runs",
                                    headers={"X-API-Key": plaintext})
    assert reply.status == 403 and reply.json()["error"]["code"] == "HD_ERR_FORBIDDEN"


def test_the_lambda_runs_on_a_scheduled_event_only(world: World) -> None:
    from functions.key_lifecycle.handler import lambda_handler

    robot = _service_account(world)
    world.clock.at = datetime.now(UTC) - timedelta(days=40)
    _, key = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], rotate_every_days=30, now=world.clock,
    )
    event = {
        "version": "0", "id": "5d8e3a1c-0000-4000-8000-000000000001", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/hd-key-lifecycle"],
        "detail": {},
    }
    result = lambda_handler(event, None)
    assert result["rotation_due"] == [key.key_id]
    assert result["run_id"] == "lifecycle-5d8e3a1c-0000-4000-8000-000000000001"
    assert lambda_handler(event, None)["rotation_due"] == []
    with pytest.raises(InvalidRequest):
        lambda_handler({"source": "aws.s3", "detail-type": "Object Created"}, None)


def test_hd_dev_runs_the_job_at_start_and_then_on_its_interval(world: World) -> None:
    robot = _service_account(world)
    _, key = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], rotate_every_days=1, now=world.clock,
        expires_at=T0 + timedelta(days=30),
    )
    moments = iter([T0 + timedelta(days=1), T0 + timedelta(days=23), T0 + timedelta(days=31)])
    last = T0 + timedelta(days=31)
    timer = LifecycleTimer(world.services, timedelta(milliseconds=50), now=lambda: next(moments, last))
    timer.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while timer.runs < 3 and datetime.now(UTC) < deadline:
            timer._stopped.wait(0.05)
    finally:
        timer.stop()
    assert timer.runs >= 3
    kinds = [e.event_type for e in world.iam_events() if e.target == key.key_id]
    assert kinds == ["api_key.created", "api_key.rotation_due", "api_key.expiring", "api_key.expired"]


def test_stored_keys_from_before_the_policy_are_left_alone(world: World) -> None:
    robot = _service_account(world)
    _, key = key_admin.create_key(
        world.services.store, world.services.trail, world.ctx, world.services.hasher, org_id=world.org_id,
        user_id=robot.user_id, env="live", scopes=["read_only"], now=world.clock,
    )
    # As a key stored before issue 19 reads: no policy, no target, no notices.
    world.services.store.update_api_key(replace(key, rotate_every_days=None))
    world.clock.advance(days=400)
    assert world.run()["rotation_due"] == []
