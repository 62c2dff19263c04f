"""`hd engine serve`'s host (engine_host/runtime/fleet.py) on moto: DynamoDB, KMS and S3, a real TLS socket and psycopg.

The instance identity is given (IMDS is tested with the boot sequence), the cache mount check is
replaced (a test directory is not a LUKS mount), and the heartbeat goes through the in-process
channel, which judges the organisation's status in the same DynamoDB store.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.boot.config import EngineConfig, parse_config
from engine_host.boot.imds import InstanceIdentity
from engine_host.engine.masking import mask_hash
from engine_host.runtime.fleet import AwsClients, CacheNotMounted, FleetEngineHost, HeartbeatNotConfigured
from engine_host.runtime.heartbeat_loop import InProcessHeartbeat, host_report
from engine_host.wire.tls import TlsFilesUnusable
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.s3_audit import S3AuditArchive
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner
from hd_core.control_settings import ControlApiSettings
from hd_core.models import OrgStatus
from hd_core.policies import MaskFunction, MaskRule
from hd_core.query_audit_chain import CHECKPOINT_PREFIX, QUERY_CHECKPOINT_MESSAGE_TYPE
from hd_core.services import assemble_services
from hd_core.signing_keys import rotate_checkpoint_key
from hd_core.tokens import JwtIssuer
from tests.harness import BackgroundLoop

REGION = "us-east-1"
ORG = "org_fleet"
IDENTITY = InstanceIdentity(
    instance_id="i-0123456789abcdef0", account_id="123456789012", region=REGION, availability_zone="us-east-1a",
    instance_type="r6id.large", launch_time=datetime(2026, 11, 23, 8, 0, tzinfo=UTC), vpc_id="vpc-0123456789abcdef0",
    subnet_ids=("subnet-0123456789abcdef0",), security_group_ids=("sg-0123456789abcdef0",),
)


class Account:
    """One customer account on moto, provisioned the way the CDK app does it (issue 6)."""

    def __init__(self, tmp_path: Path) -> None:
        session = boto3.session.Session(region_name=REGION)
        self.clients = AwsClients(s3=session.client("s3"), kms=session.client("kms"),
                                  dynamodb=session.client("dynamodb"))
        self.clients.dynamodb.create_table(**create_table_kwargs("hd-control"))
        kms = self.clients.kms
        signing = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        checkpoint = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        data_key = kms.create_key()["KeyMetadata"]["Arn"]
        s3 = self.clients.s3
        s3.create_bucket(Bucket="hd-data-fleet")
        s3.create_bucket(Bucket="hd-audit-fleet", ObjectLockEnabledForBucket=True)
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": list(range(40)), "region": ["eu", "us"] * 20}), buffer)
        s3.put_object(Bucket="hd-data-fleet", Key="tables/sales/orders/part-0.parquet", Body=buffer.getvalue())
        self.store = DynamoDbControlStore("hd-control", client=self.clients.dynamodb)
        owner = bootstrap_local_owner(self.store, ApiKeyHasher(), org_id=ORG, org_name="Fleet Org")
        assert owner.api_key_plaintext is not None
        self.user, self.key = owner.user.user_id, owner.api_key_plaintext
        self.cache_mount = tmp_path / "cache"
        self.cache_mount.mkdir()
        self.config_document: dict[str, Any] = {
            "org_id": ORG, "account_id": IDENTITY.account_id, "region": REGION, "vpc_id": IDENTITY.vpc_id,
            "security_group_ids": list(IDENTITY.security_group_ids), "kms_key_arn": data_key,
            "cache_mount": str(self.cache_mount), "cache_key_file": str(tmp_path / "cache-key.json"),
            "state_dir": str(tmp_path / "state"), "data_bucket": "hd-data-fleet", "data_prefix": "tables/",
            "audit_bucket": "hd-audit-fleet", "control_table": "hd-control", "signing_key_arn": signing,
            "checkpoint_key_arn": checkpoint, "listen_host": "127.0.0.1",
            "metrics_host": "127.0.0.1", "tls_cert_file": str(tmp_path / "none.crt"),
            "tls_key_file": str(tmp_path / "none.key"), "cache_capacity_bytes": 64 << 20,
            "jwt_issuer": "https://control.example.com", "jwt_audience": "hd-fleet-test",
        }
        self.signing_key = signing

    @property
    def config(self) -> EngineConfig:
        # Ports 0 (any free one) are not valid provisioned values; tests need them to run side by side.
        return parse_config(self.config_document, "test").model_copy(update={"listen_port": 0, "metrics_port": 0})

    def in_process_heartbeat(self) -> InProcessHeartbeat:
        expected = host_report(ORG, instance_id=IDENTITY.instance_id, account_id=IDENTITY.account_id,
                               region=REGION, launch_time=IDENTITY.launch_time)()
        return InProcessHeartbeat(self.store, expected)

    def host(self, **overrides: Any) -> FleetEngineHost:
        options: dict[str, Any] = {"heartbeat": self.in_process_heartbeat(), "cache_mounted": lambda path: True}
        options.update(overrides)
        return FleetEngineHost(self.config, IDENTITY, self.clients, **options)


def _dsn(host: FleetEngineHost, account: Account) -> str:
    assert host.engine is not None and host.engine.server is not None
    return (f"host=127.0.0.1 port={host.engine.server.port} dbname=hd user={account.user} "
            f"password={account.key} sslmode=require connect_timeout=10")


def _get(host: FleetEngineHost, path: str) -> tuple[int, str]:
    assert host.health is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{host.health.port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_fleet_host_serves_bucket_tables_over_tls_and_audits_to_the_audit_bucket(account: Account,
                                                                                  loop: BackgroundLoop) -> None:
    host = account.host()
    loop.run(host.start())
    try:
        with psycopg.connect(_dsn(host, account), autocommit=True) as conn:
            rows = conn.execute("SELECT region, count(*) FROM sales.orders GROUP BY region ORDER BY region").fetchall()
            assert conn.info.pgconn.ssl_in_use
        assert rows == [("eu", 20), ("us", 20)]
        # The cache keeps each version of an object in a file of its own (part-0@<etag>.parquet).
        assert list((account.cache_mount / "tables" / "objects" / "sales" / "orders").glob("part-0@*.parquet"))
        assert _get(host, "/healthz")[0] == 200
        status, body = _get(host, "/readyz")
        assert status == 200, body
        metrics = _get(host, "/metrics")[1]
        assert "hd_statements_total" in metrics and "hd_cache_misses" in metrics
    finally:
        loop.run(host.stop())
    listed = account.clients.s3.list_objects_v2(Bucket="hd-audit-fleet", Prefix="audit/queries/")
    records = [json.loads(line) for item in listed.get("Contents", [])
               for line in account.clients.s3.get_object(Bucket="hd-audit-fleet", Key=item["Key"])["Body"]
               .read().decode().splitlines()]
    assert any(record["tables"] == ["sales.orders"] and record["org_id"] == ORG for record in records)


def test_after_the_grace_period_new_connections_are_refused_with_08004(account: Account, loop: BackgroundLoop) -> None:
    state = Path(account.config_document["state_dir"])
    state.mkdir(parents=True)
    started = datetime.now(UTC) - timedelta(hours=5)
    (state / "heartbeat-gate.json").write_text(json.dumps({"grace_started_at": started.isoformat()}))
    org = account.store.get_org(ORG)
    assert org is not None
    account.store.put_org(replace(org, status=OrgStatus.SUSPENDED))  # the control plane keeps answering "no"
    host = account.host()
    loop.run(host.start())
    try:
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(_dsn(host, account))
        assert "refusing new connections" in str(refused.value)
        assert "HD_ERR_LICENSE_GRACE_EXPIRED" in str(refused.value)
        status, body = _get(host, "/readyz")
        assert status == 503 and "heartbeat" in body
    finally:
        loop.run(host.stop())


def test_a_positive_answer_restores_a_host_whose_grace_had_run_out(account: Account, loop: BackgroundLoop) -> None:
    state = Path(account.config_document["state_dir"])
    state.mkdir(parents=True)
    started = datetime.now(UTC) - timedelta(hours=5)
    (state / "heartbeat-gate.json").write_text(json.dumps({"grace_started_at": started.isoformat()}))
    host = account.host()
    loop.run(host.start())
    try:
        assert host.heartbeat is not None
        host.heartbeat.beat_once()  # the organisation is active: the answer is positive
        with psycopg.connect(_dsn(host, account)) as conn:
            assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (40,)
    finally:
        loop.run(host.stop())


def test_without_the_cache_mount_the_host_refuses_to_start(account: Account, loop: BackgroundLoop) -> None:
    host = account.host(cache_mounted=lambda path: False)
    with pytest.raises(CacheNotMounted, match="hd engine boot"):
        loop.run(host.start())


def test_without_a_control_plane_to_report_to_the_host_refuses_to_start(account: Account, loop: BackgroundLoop) -> None:
    host = account.host(heartbeat=None)
    with pytest.raises(HeartbeatNotConfigured, match="control_api_url"):
        loop.run(host.start())


def test_half_a_provisioned_tls_pair_is_refused_not_replaced(account: Account, loop: BackgroundLoop,
                                                             tmp_path: Path) -> None:
    cert = tmp_path / "none.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\nprovisioned\n-----END CERTIFICATE-----\n")
    host = account.host()
    with pytest.raises(TlsFilesUnusable, match="incomplete; install both files"):
        loop.run(host.start())
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----\nprovisioned")
    assert not (tmp_path / "state" / "tls").exists()  # no self-signed pair was made instead


def test_a_configured_tls_secret_that_boot_did_not_install_is_refused(account: Account, loop: BackgroundLoop,
                                                                     tmp_path: Path) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:{IDENTITY.account_id}:secret:engine-tls-AbCdEf"
    account.config_document["tls_secret_arn"] = arn
    host = account.host()
    with pytest.raises(TlsFilesUnusable, match="run `hd engine boot` again"):
        loop.run(host.start())
    assert not (tmp_path / "state" / "tls").exists()


def test_a_jwt_from_the_control_plane_is_a_password_on_the_fleet_host(account: Account, loop: BackgroundLoop) -> None:
    """The control API (same KMS key, same issuer and audience) issues it; the host verifies it."""
    keys = KmsKeyProvider(account.clients.kms, jwt_key_ids=[account.signing_key],
                          checkpoint_key_id=account.config.checkpoint_key_arn, data_key_id=account.config.kms_key_arn)
    user = account.store.get_user(account.user)
    assert user is not None
    token = JwtIssuer(keys, issuer="https://control.example.com", audience="hd-fleet-test").issue(user, "live")
    host = account.host()
    loop.run(host.start())
    try:
        dsn = _dsn(host, account).replace(f"password={account.key}", f"password={token}")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (40,)
        foreign = JwtIssuer(keys, issuer="https://elsewhere.example.com", audience="hd-fleet-test").issue(user, "live")
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(_dsn(host, account).replace(f"password={account.key}", f"password={foreign}"))
    finally:
        loop.run(host.stop())


def test_the_hash_mask_key_comes_from_kms_and_the_table_holds_it_only_wrapped(account: Account,
                                                                             loop: BackgroundLoop) -> None:
    # A plaintext key an earlier version kept in the table is never used by a deployment.
    planted = base64.b64encode(b"k" * 32).decode()
    account.store.put_setting("mask_hash_key.test", planted)
    account.store.put_policy(MaskRule("mask_region", ORG, "sales.orders", "region", MaskFunction.HASH))
    host = account.host()
    loop.run(host.start())
    try:
        with psycopg.connect(_dsn(host, account), autocommit=True) as conn:
            seen = {row[0] for row in conn.execute("SELECT region FROM sales.orders").fetchall()}
    finally:
        loop.run(host.stop())
    wrapped = account.store.get_setting("mask_hash_key_wrapped.test")
    assert wrapped is not None and b"k" * 32 not in base64.b64decode(wrapped)
    key = account.clients.kms.decrypt(
        CiphertextBlob=base64.b64decode(wrapped),
        EncryptionContext={"purpose": "hd-mask-hash", "env": "test"},
    )["Plaintext"]
    assert seen == {mask_hash(key, "eu"), mask_hash(key, "us")}
    assert mask_hash(b"k" * 32, "eu") not in seen


def test_a_fleet_host_signs_query_checkpoints_with_the_rotated_checkpoint_key_and_says_what_they_are(
    account: Account, loop: BackgroundLoop
) -> None:
    """Issue 20: query checkpoints are signed by the checkpoint key ring's current key, not the configured one."""
    keys = KmsKeyProvider(account.clients.kms, jwt_key_ids=[account.signing_key],
                          checkpoint_key_id=account.config.checkpoint_key_arn, data_key_id=account.config.kms_key_arn)
    control = assemble_services(ControlApiSettings(), store=account.store, keys=keys,
                                checkpoints=S3CheckpointStore(account.clients.s3, "hd-audit-fleet"),
                                query_audit=S3AuditArchive(account.clients.s3, "hd-audit-fleet"))
    rotated = rotate_checkpoint_key(account.store, control.trail, control.checkpoints, keys, datetime.now(UTC),
                                    rotate_every=timedelta(0))
    assert rotated is not None and rotated != account.config.checkpoint_key_arn
    host = account.host()
    loop.run(host.start())
    try:
        with psycopg.connect(_dsn(host, account), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (40,)
    finally:
        loop.run(host.stop())  # signs the chain's final head
    s3 = account.clients.s3
    listed = s3.list_objects_v2(Bucket="hd-audit-fleet", Prefix=CHECKPOINT_PREFIX).get("Contents", [])
    documents = [json.loads(s3.get_object(Bucket="hd-audit-fleet", Key=item["Key"])["Body"].read()) for item in listed]
    assert documents
    assert {(d["key_id"], d["message_type"]) for d in documents} == {(rotated, QUERY_CHECKPOINT_MESSAGE_TYPE)}
