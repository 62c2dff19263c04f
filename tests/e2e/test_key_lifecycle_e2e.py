"""Scheduled key rotation against a real `hd dev --demo`: the CLI's policy and status, and the wire after the grace.

The lifecycle job runs in this process on the host's own state (its SQLite store, key file and
checkpoint folder), with a clock set in the past so that the grace periods it starts have really
ended, or really not, by the time the engine host (on the wall clock) is asked on the wire.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws

from hd_core import key_admin
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import key_id_of
from hd_core.control_settings import ControlApiSettings
from hd_core.key_lifecycle import run_key_lifecycle
from hd_core.models import ALL_SCOPES, ChangeContext, KeyEnv, Principal, Role
from hd_core.services import ControlServices, assemble_services
from tests.clocks import HandWoundClock
from tests.e2e.test_api_cli import hd, host
from tests.harness import EngineHostProcess

__all__ = ["hd", "host"]  # test_api_cli's host and in-process `hd`, imported so pytest finds them here

ANALYST = "usr_demo_acme_analyst"
ORG = "org_acme"


@pytest.fixture
def host_services(host: EngineHostProcess) -> Iterator[ControlServices]:
    store = SqliteControlStore(host.state_dir / "control.sqlite3")
    try:
        yield assemble_services(
            ControlApiSettings(), store=store, keys=LocalKeyFile(host.state_dir / "keys" / "local-keys.json"),
            checkpoints=LocalFolderCheckpointStore(host.state_dir),
            query_audit=LocalFolderAuditArchive(host.state_dir),
        )
    finally:
        store.close()


def _wire_ok(host: EngineHostProcess, key: str) -> bool:
    try:
        with psycopg.connect(host.dsn(user=ANALYST, password=key, sslmode="disable"), autocommit=True) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_the_cli_sets_a_policy_and_lists_what_is_due(hd: Any) -> None:
    created = hd("keys", "create", "--user", ANALYST, "--env", "test", "--scope", "read_only", "--name", "nightly",
                 "--rotate-every-days", "30", "--json")
    assert created.status == 0, created.err
    key = created.json()["key"]
    assert key["rotate_every_days"] == 30 and key["delivery_secret"] is None
    changed = hd("keys", "policy", key["key_id"], "--rotate-every-days", "5", "--delivery-secret",
                 f"hd/keys/{ORG}/nightly", "--json")
    assert changed.status == 0, changed.err
    assert (changed.json()["rotate_every_days"], changed.json()["delivery_secret"]) == (5, f"hd/keys/{ORG}/nightly")
    status = hd("keys", "status", "--json")
    assert status.status == 0, status.err
    assert ("rotation_due", key["key_id"]) in [(e["state"], e["key"]["key_id"]) for e in status.json()]
    table = hd("keys", "status")
    line = next(line for line in table.out.splitlines() if key["key_id"] in line)
    assert line.startswith("rotation due") and f"to hd/keys/{ORG}/nightly" in line and "4d" in line
    assert table.out.splitlines()[0].split()[:3] == ["STATE", "WHEN", "IN"]
    refused = hd("keys", "policy", key["key_id"], "--delivery-secret", "hd/keys/org_other/x")
    assert refused.status == 1 and "HD_ERR_DELIVERY_SECRET_INVALID" in refused.err and "Traceback" not in refused.err
    nothing = hd("keys", "policy", key["key_id"])
    assert nothing.status == 1 and "name a change" in nothing.err
    cleared = hd("keys", "policy", key["key_id"], "--no-rotation", "--no-delivery", "--json")
    assert (cleared.json()["rotate_every_days"], cleared.json()["delivery_secret"]) == (None, None)


def test_after_its_grace_the_old_key_is_refused_on_the_wire_and_its_successor_is_not(
    host: EngineHostProcess, host_services: ControlServices, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    owner = host_services.store.get_api_key(key_id_of(host.password))
    assert owner is not None
    ctx = ChangeContext(
        actor=Principal(user_id=owner.user_id, org_id=owner.org_id, role=Role.OWNER, key_id="", env=KeyEnv.LIVE,
                        scopes=ALL_SCOPES, department=None, region=None, auth_method="jwt"),
        request_id="req_e2e",
    )
    org_id = owner.org_id
    now = datetime.now(UTC)
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        plaintexts = {}
        for label, age_days in (("ended", 40), ("running", 31)):
            name = f"hd/keys/{org_id}/{label}-{uuid.uuid4().hex[:6]}"
            secrets.create_secret(Name=name, SecretString="{}")
            clock = HandWoundClock(now - timedelta(days=age_days))
            plaintext, key = key_admin.create_key(
                host_services.store, host_services.trail, ctx, host_services.hasher, org_id=org_id, user_id=ANALYST,
                env="test", scopes=["read_only"], rotate_every_days=30, delivery_secret=name, now=clock,
            )
            clock.advance(days=30)
            report = run_key_lifecycle(host_services, clock(), org_ids=[org_id])
            assert key.key_id in report.rotated
            successor = json.loads(secrets.get_secret_value(SecretId=name)["SecretString"])
            plaintexts[label] = (plaintext, successor["api_key"])

    ended_old, ended_new = plaintexts["ended"]
    running_old, running_new = plaintexts["running"]
    # Rotated 10 days ago: the 72-hour grace ended a week ago. Rotated a day ago: two days of grace are left.
    assert not _wire_ok(host, ended_old)
    assert _wire_ok(host, ended_new)
    assert _wire_ok(host, running_old) and _wire_ok(host, running_new)
