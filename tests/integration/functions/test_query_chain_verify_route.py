"""verify-chain?trail=queries through the audit route on both backends: a host's whole day deleted is found from
its signed checkpoints and announced once as `audit.chain_broken`; checkpoints follow checkpoint-key rotation
and say they are query checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.shared.wiring import install_services
from functions.shared.wiring import services as installed
from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.audit import format_audit_ts
from hd_core.iam_audit import CHECKPOINT_MESSAGE_TYPE
from hd_core.models import utc_now
from hd_core.query_audit_chain import (
    CHECKPOINT_FOLDER,
    CHECKPOINT_PREFIX,
    QUERY_CHECKPOINT_MESSAGE_TYPE,
    QueryChainCheckpointer,
    QueryChainStores,
    chain_id_for,
)
from hd_core.signing_keys import CheckpointKeyRing, rotate_checkpoint_key
from hd_core.webhook_events import chain_broken_event_id
from tests.integration.functions.conftest import AUDIT_BUCKET, ControlApi
from tests.integration.functions.test_audit_chain_broken_webhook import _subscribe

HOST = "host-a"


@dataclass
class QueryChain:
    """One engine host's query audit chain on the control fixture's backend, wired into the installed services."""

    control: ControlApi
    backend: str
    root: Path
    checkpoints: Any
    sink: Any = None

    def open(self) -> None:
        checkpointer = QueryChainCheckpointer(self.checkpoints, self.control.services.checkpoint_keys)
        if self.backend == "aws":
            self.sink = S3AuditSink(boto3.client("s3"), AUDIT_BUCKET, host_id=HOST, batch_window_seconds=0,
                                    checkpointer=checkpointer)
        else:
            self.sink = LocalFolderAuditSink(self.root, host_id=HOST, checkpointer=checkpointer)

    def write(self, count: int) -> None:
        for n in range(count):
            self.sink.write({"ts": format_audit_ts(utc_now()), "query_id": f"q{n}", "org_id": self.control.org_id,
                             "sql_redacted": "SELECT ?", "rows_returned": n})

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()  # signs the final head
            self.sink = None

    def delete_day(self) -> None:
        """Remove every record of the host's day, as someone with write access to the records would."""
        if self.backend == "aws":
            s3 = boto3.client("s3")
            for entry in s3.list_objects_v2(Bucket=AUDIT_BUCKET, Prefix="audit/queries/")["Contents"]:
                s3.delete_object(Bucket=AUDIT_BUCKET, Key=entry["Key"])
        else:
            for path in (self.root / "audit" / "queries").rglob(f"{HOST}.jsonl"):
                path.unlink()

    def stored_documents(self) -> list[dict[str, Any]]:
        chain_id = chain_id_for(HOST, utc_now().date())
        if self.backend == "aws":
            s3 = boto3.client("s3")
            listed = s3.list_objects_v2(Bucket=AUDIT_BUCKET, Prefix=f"{CHECKPOINT_PREFIX}{chain_id}/")["Contents"]
            return [json.loads(s3.get_object(Bucket=AUDIT_BUCKET, Key=e["Key"])["Body"].read()) for e in listed]
        return [json.loads(path.read_bytes()) for path in self.root.joinpath(*CHECKPOINT_FOLDER, chain_id).iterdir()]


@pytest.fixture
def chain(control: ControlApi, tmp_path: Path) -> Iterator[QueryChain]:
    if control.backend == "aws":
        s3 = boto3.client("s3")
        checkpoints: Any = S3CheckpointStore(s3, AUDIT_BUCKET, prefix=CHECKPOINT_PREFIX,
                                             message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)
        stores = QueryChainStores(S3AuditArchive(s3, AUDIT_BUCKET), checkpoints)
    else:
        checkpoints = LocalFolderCheckpointStore(tmp_path, CHECKPOINT_FOLDER,
                                                 message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)
        stores = QueryChainStores(LocalFolderAuditArchive(tmp_path), checkpoints)
    install_services(replace(control.services, query_chain=stores))
    found = QueryChain(control, control.backend, tmp_path, checkpoints)
    found.open()
    yield found
    found.close()


def _verify(control: ControlApi) -> dict[str, Any]:
    return control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain?trail=queries")


def test_a_hosts_deleted_day_is_reported_from_its_checkpoints_and_announced_once(
    control: ControlApi, chain: QueryChain
) -> None:
    _subscribe(control, "whk_chain", ("audit.chain_broken",))
    chain.write(4)
    chain.close()
    assert _verify(control)["chain_valid"] is True
    assert control.services.store.list_webhook_deliveries("whk_chain") == []
    chain.delete_day()
    for _ in range(3):  # the same break found again is the same event
        report = _verify(control)
        assert report["chain_valid"] is False
    [found] = report["chains"]
    chain_id = chain_id_for(HOST, utc_now().date())
    assert (found["chain_id"], found["host_id"], found["entry_count"]) == (chain_id, HOST, 0)
    assert (found["first_break"]["position"], found["first_break"]["kind"]) == (1, "deleted")
    [delivery] = control.services.store.list_webhook_deliveries("whk_chain")
    assert delivery.event_id == chain_broken_event_id(chain_id, 1)
    assert (delivery.event_type, delivery.org_id) == ("audit.chain_broken", control.org_id)
    data = json.loads(delivery.body)["data"]
    assert (data["trail"], data["chain_id"], data["host_id"], data["position"], data["kind"]) == (
        "queries", chain_id, HOST, 1, "deleted")


def test_checkpoints_follow_a_key_rotation_in_the_middle_of_the_day_and_both_halves_verify(
    control: ControlApi, chain: QueryChain
) -> None:
    services = control.services
    anchor = services.keys.checkpoint_key_id()
    chain.write(3)
    chain.close()
    new_kid = rotate_checkpoint_key(services.store, services.trail, services.checkpoints, services.keys, utc_now(),
                                    rotate_every=timedelta(0))
    assert new_kid is not None and new_kid != anchor
    services.checkpoint_keys.invalidate()  # a host notices within its ring refresh; the test does not wait for it
    chain.open()  # the same host restarted later that day: it continues the chain
    chain.write(3)
    chain.close()
    documents = chain.stored_documents()
    assert {document["key_id"] for document in documents} == {anchor, new_kid}
    assert {document["message_type"] for document in documents} == {QUERY_CHECKPOINT_MESSAGE_TYPE}
    # A verifier that learnt nothing in memory (a new Lambda container) trusts the new key through its introduction.
    install_services(replace(installed(), checkpoint_keys=CheckpointKeyRing(
        services.store, services.checkpoints, services.keys)))
    [report] = _verify(control)["chains"]
    assert report["chain_valid"] is True and report["entry_count"] == 6 and report["checkpoint_size"] == 6


def test_checkpoints_stored_with_the_old_message_type_still_verify(control: ControlApi, chain: QueryChain,
                                                                    tmp_path: Path) -> None:
    if control.backend == "aws":
        old = S3CheckpointStore(boto3.client("s3"), AUDIT_BUCKET, prefix=CHECKPOINT_PREFIX)
    else:
        old = LocalFolderCheckpointStore(tmp_path, CHECKPOINT_FOLDER)  # before: every document said IAM checkpoint
    chain.close()
    chain.checkpoints = old
    chain.open()
    chain.write(2)
    chain.close()
    assert {document["message_type"] for document in chain.stored_documents()} == {CHECKPOINT_MESSAGE_TYPE}
    [report] = _verify(control)["chains"]
    assert report["chain_valid"] is True and report["checkpoint_size"] == 2
