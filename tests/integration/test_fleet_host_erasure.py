"""A real fleet host (`hd engine serve`'s FleetEngineHost on moto) does its part of a GDPR forget request that
waits for the hosts' writable tables: at start, before it serves, it deletes the subject's rows from its own
engine.duckdb with the sealed id opened through KMS, audits the delete to the audit bucket, and acks."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import psycopg

from hd_core import erasure, erasure_fleet
from hd_core.adapters.erasure_objects import S3TableObjects
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.erasure_models import AckStatus, ForgetStatus
from hd_core.iam_audit import IamAuditTrail
from hd_core.models import ChangeContext, KeyEnv, Principal, Role, utc_now
from hd_core.policies import TableBinding
from tests.harness import BackgroundLoop
from tests.integration.test_fleet_host import IDENTITY, ORG, Account, _dsn

SUBJECT = "cust-00042"


def test_a_starting_fleet_host_erases_its_writable_table_before_it_serves(account: Account, loop: BackgroundLoop,
                                                                           tmp_path: Path) -> None:
    # The host's engine.duckdb as an earlier run left it: a writable table holding the subject's rows.
    with duckdb.connect(str(account.cache_mount / "engine.duckdb")) as con:
        con.execute("CREATE TABLE contacts (customer_id VARCHAR, n INTEGER)")
        con.execute("INSERT INTO contacts VALUES ($1, 1), ($1, 2), ('cust-7', 3)", [SUBJECT])
    store = account.store
    store.put_policy(TableBinding("tbl_contacts", "main.contacts", org_id=ORG, subject_column="customer_id"))
    config = account.config
    keys = KmsKeyProvider(account.clients.kms, jwt_key_ids=[config.signing_key_arn],
                          checkpoint_key_id=config.checkpoint_key_arn, data_key_id=config.kms_key_arn)
    svc = erasure.ErasureServices(
        store=store, trail=IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path / "checkpoints"), keys),
        keys=keys, objects=S3TableObjects(account.clients.s3, "hd-data-fleet", "tables/"), writable_on_hosts=True)
    principal = Principal(user_id=account.user, org_id=ORG, role=Role.OWNER, key_id="hd_test_x", env=KeyEnv.TEST,
                          scopes=("forget:manage",), department=None, region=None)
    request = erasure.submit(svc, ChangeContext(actor=principal, request_id="req_test"), ORG, SUBJECT, "")
    waiting = erasure.run(svc, request.request_id)
    assert waiting.status is ForgetStatus.WAITING_FOR_HOSTS and set(waiting.host_tables) == {"main.contacts"}
    erasure_fleet.record_heartbeat(store, org_id=ORG, host_id=IDENTITY.instance_id, at=utc_now(),
                                   heartbeat_seconds=900)
    assert erasure_fleet.settle_all(svc) == []  # the host is live and has not acked

    restarted = account.host()
    loop.run(restarted.start())  # the erasure is done before start returns: before the snapshot opens the gate
    try:
        (ack,) = store.list_forget_host_acks(request.request_id)
        assert (ack.host_id, ack.status, ack.rows_removed) == (IDENTITY.instance_id, AckStatus.DONE, 2)
        with psycopg.connect(_dsn(restarted, account), autocommit=True) as conn:
            assert conn.execute("SELECT n FROM contacts ORDER BY n").fetchall() == [(3,)]
    finally:
        loop.run(restarted.stop())
    (done,) = erasure_fleet.settle_all(svc)

    assert done.status is ForgetStatus.COMPLETED and done.subject_sealed is None
    assert done.table_results["main.contacts"] == {"storage": "writable", "rows_removed": 2, "objects_rewritten": 0,
                                                   "hosts": {IDENTITY.instance_id: 2}}
    listed = account.clients.s3.list_objects_v2(Bucket="hd-audit-fleet", Prefix="audit/queries/")
    text = "".join(account.clients.s3.get_object(Bucket="hd-audit-fleet", Key=item["Key"])["Body"].read().decode()
                   for item in listed.get("Contents", []))
    deletes = [record for line in text.splitlines() if (record := json.loads(line)).get("forget_request_id")]
    assert [(r["subject_hmac"], r["rows_written"]) for r in deletes] == [(done.subject_hmac, 2)]
    assert SUBJECT not in text
