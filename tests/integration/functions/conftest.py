"""The control API in-process: every Lambda behind the local dispatcher, on SQLite or on moto's AWS.

`control` runs each test twice: once on the local adapters (SQLite, key file, folders) and once on
the AWS ones (DynamoDB, KMS, S3 with Object Lock) under moto, so a handler cannot depend on one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from engine_host.devmode.control_server import ControlApiDispatcher, HttpReply
from functions.shared.wiring import install_services
from hd_core.bootstrap import bootstrap_local_owner, ensure_environments
from hd_core.catalog_schemas import CatalogRecorder
from hd_core.control_settings import ControlApiSettings
from hd_core.ports import AuditSink
from hd_core.services import ControlServices, assemble_services

AUDIT_BUCKET = "hd-audit-test"
# The tables the organisation's engine serves, as an engine host records them (hd_core.catalog_schemas).
SERVED_TABLES = {
    "main.patients": [("patient_id", "BIGINT"), ("name", "VARCHAR"), ("ssn", "VARCHAR"), ("email", "VARCHAR"),
                      ("phone", "VARCHAR"), ("region", "VARCHAR"), ("diagnosis", "VARCHAR")],
}


@dataclass
class ControlApi:
    """A control API to call, with the Owner of a fresh organisation."""

    services: ControlServices
    dispatcher: ControlApiDispatcher
    audit_sink: AuditSink
    org_id: str
    owner_id: str
    owner_key: str
    env_id: str
    backend: str

    def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        key: str | None = None,
        bearer: str | None = None,
        headers: dict[str, str] | None = None,
        source_ip: str = "127.0.0.1",
        anonymous: bool = False,
    ) -> HttpReply:
        """One request; authenticated with the Owner's key unless `key`, `bearer` or `anonymous` say otherwise."""
        sent = dict(headers or {})
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        elif not anonymous:
            sent["X-API-Key"] = key or self.owner_key
        payload = None if body is None else json.dumps(body).encode()
        if payload is not None:
            sent["Content-Type"] = "application/json"
        return self.dispatcher.invoke(method, url, headers=sent, body=payload, source_ip=source_ip)

    def ok(self, method: str, url: str, body: Any = None, **kwargs: Any) -> Any:
        """The JSON of a call that must succeed."""
        reply = self.call(method, url, body, **kwargs)
        assert reply.status < 300, (reply.status, reply.body)
        return reply.json()


def _local_adapters(tmp_path: Path) -> dict[str, Any]:
    from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
    from hd_core.adapters.local_audit_exports import LocalFolderAuditExports
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
    from hd_core.adapters.local_keys import LocalKeyFile
    from hd_core.adapters.sqlite_store import SqliteControlStore

    return {
        "store": SqliteControlStore(tmp_path / "control.sqlite3"),
        "keys": LocalKeyFile(tmp_path / "keys" / "local-keys.json"),
        "checkpoints": LocalFolderCheckpointStore(tmp_path),
        "query_audit": LocalFolderAuditArchive(tmp_path),
        "sink": LocalFolderAuditSink(tmp_path, host_id="test"),
        "exports": LocalFolderAuditExports(tmp_path),
    }


def _aws_adapters() -> dict[str, Any]:
    from hd_core.adapters.dynamodb_schema import create_table_kwargs
    from hd_core.adapters.dynamodb_store import DynamoDbControlStore
    from hd_core.adapters.kms_keys import KmsKeyProvider
    from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
    from hd_core.adapters.s3_audit_exports import S3AuditExports
    from hd_core.adapters.s3_checkpoints import S3CheckpointStore

    boto3.client("dynamodb").create_table(**create_table_kwargs("hd-control-test"))
    kms = boto3.client("kms")
    jwt_key = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    checkpoint_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    data_key = kms.create_key()["KeyMetadata"]["KeyId"]
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=AUDIT_BUCKET, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=AUDIT_BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    return {
        "store": DynamoDbControlStore("hd-control-test"),
        "keys": KmsKeyProvider(kms, jwt_key_ids=[jwt_key], checkpoint_key_id=checkpoint_key, data_key_id=data_key),
        "checkpoints": S3CheckpointStore(s3, AUDIT_BUCKET),
        "query_audit": S3AuditArchive(s3, AUDIT_BUCKET),
        "sink": S3AuditSink(s3, AUDIT_BUCKET, host_id="test"),
        "exports": S3AuditExports(s3, AUDIT_BUCKET),
    }


@pytest.fixture(params=["sqlite", "aws"])
def control(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlApi]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    if request.param == "aws":
        request.getfixturevalue("aws_credentials")
        with mock_aws():
            yield from _control(request.param, _aws_adapters())
    else:
        yield from _control(request.param, _local_adapters(tmp_path))


def _control(backend: str, adapters: dict[str, Any]) -> Iterator[ControlApi]:
    store = adapters["store"]
    from hd_core.api_keys import ApiKeyHasher

    owner = bootstrap_local_owner(store, ApiKeyHasher(), org_name="Test Org", email="owner@example.com")
    assert owner.api_key_plaintext is not None
    env = ensure_environments(store, owner.org.org_id)[0]
    CatalogRecorder(store).record(SERVED_TABLES)  # what an engine host records: policies are checked against it
    services = assemble_services(
        ControlApiSettings(jwt_issuer="https://hd.test", jwt_audience="hardened-duck", checkpoint_every=5),
        store=store,
        keys=adapters["keys"],
        checkpoints=adapters["checkpoints"],
        query_audit=adapters["query_audit"],
        audit_exports=adapters["exports"],
    )
    install_services(services)
    try:
        yield ControlApi(
            services=services,
            dispatcher=ControlApiDispatcher(),
            audit_sink=adapters["sink"],
            org_id=owner.org.org_id,
            owner_id=owner.user.user_id,
            owner_key=owner.api_key_plaintext,
            env_id=env.env_id,
            backend=backend,
        )
    finally:
        install_services(None)
        close = getattr(adapters["sink"], "close", None)
        if close is not None:
            close()
