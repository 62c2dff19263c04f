"""The audit function's 15-minute schedule signs the query chain head a host that stopped left unsigned (once the
chain has settled), on both backends; verify-chain?trail=queries then finds the tail cut off as `truncated`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

import hd_core.query_audit_chain as query_audit_chain
from functions.shared.wiring import install_services
from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.audit import format_audit_ts
from hd_core.errors import AuditWriteFailed, KeyUnavailable
from hd_core.models import utc_now
from hd_core.query_audit_chain import (
    CHECKPOINT_FOLDER,
    CHECKPOINT_PREFIX,
    QUERY_CHECKPOINT_MESSAGE_TYPE,
    QueryChainCheckpointer,
    QueryChainStores,
    chain_id_for,
)
from tests.integration.functions.conftest import AUDIT_BUCKET, ControlApi

HOST = "i-0dead"
SCHEDULE = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}


@pytest.fixture
def stores(control: ControlApi, tmp_path: Path) -> QueryChainStores:
    if control.backend == "aws":
        s3 = boto3.client("s3")
        found = QueryChainStores(S3AuditArchive(s3, AUDIT_BUCKET), S3CheckpointStore(
            s3, AUDIT_BUCKET, prefix=CHECKPOINT_PREFIX, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE))
    else:
        found = QueryChainStores(LocalFolderAuditArchive(tmp_path), LocalFolderCheckpointStore(
            tmp_path, CHECKPOINT_FOLDER, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE))
    install_services(replace(control.services, query_chain=found))
    return found


@pytest.fixture
def stopped_host(control: ControlApi, stores: QueryChainStores, tmp_path: Path) -> Iterator[Any]:
    """A host that stored 4 records, signed only the first (a new chain is signed at once), then stopped dead."""
    checkpointer = QueryChainCheckpointer(stores.checkpoints, control.services.checkpoint_keys, every_seconds=3600)
    if control.backend == "aws":
        sink: Any = S3AuditSink(boto3.client("s3"), AUDIT_BUCKET, host_id=HOST, batch_window_seconds=0,
                                checkpointer=checkpointer)
    else:
        sink = LocalFolderAuditSink(tmp_path, host_id=HOST, checkpointer=checkpointer)
    chain_id = chain_id_for(HOST, utc_now().date())
    for n in range(4):
        sink.write({"ts": format_audit_ts(utc_now()), "query_id": f"q{n}", "org_id": control.org_id,
                    "sql_redacted": "SELECT ?", "rows_returned": n})
        deadline = time.monotonic() + 10
        while n == 0 and not stores.checkpoints.list_checkpoints(chain_id):
            assert time.monotonic() < deadline, "the new chain's head was not signed"
            time.sleep(0.01)
    yield sink
    sink.close()  # after the test: its threads stop (a dead host's would have died with it)


def _verify(control: ControlApi) -> dict[str, Any]:
    [chain] = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin/verify-chain?trail=queries")["chains"]
    return chain  # type: ignore[no-any-return]


def _cut_last_record(control: ControlApi, tmp_path: Path) -> None:
    if control.backend == "aws":
        s3 = boto3.client("s3")
        keys = [e["Key"] for e in s3.list_objects_v2(Bucket=AUDIT_BUCKET, Prefix="audit/queries/")["Contents"]
                if f"/{HOST}-" in e["Key"]]
        s3.delete_object(Bucket=AUDIT_BUCKET, Key=max(keys, key=lambda key: int(key.rsplit("-", 2)[-2])))
    else:
        [path] = (tmp_path / "audit" / "queries").rglob(f"{HOST}.jsonl")
        path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().split(b"\n")[:-2]))


def test_the_schedule_signs_a_stopped_hosts_owed_head_once_it_settled_and_a_cut_tail_is_then_found(
    control: ControlApi, stopped_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.audit.handler import lambda_handler

    assert _verify(control)["checkpoint_size"] == 1
    # Just written: the host may be alive and sign its own head within a minute, so the schedule leaves it.
    assert lambda_handler(SCHEDULE, None) == {"checkpoints_written": 0}
    assert _verify(control)["checkpoint_size"] == 1
    monkeypatch.setattr(query_audit_chain, "utc_now", lambda: utc_now() + timedelta(minutes=10))
    assert lambda_handler(SCHEDULE, None) == {"checkpoints_written": 1}
    assert lambda_handler(SCHEDULE, None) == {"checkpoints_written": 0}
    signed = _verify(control)
    assert signed["chain_valid"] is True and (signed["entry_count"], signed["checkpoint_size"]) == (4, 4)
    _cut_last_record(control, tmp_path)
    cut = _verify(control)
    assert cut["chain_valid"] is False and cut["entry_count"] == 3
    assert (cut["first_break"]["position"], cut["first_break"]["kind"]) == (4, "truncated")


class _CheckpointKeyDown:
    """The control plane's checkpoint keys with signing refused (KMS unavailable); verification still works."""

    def __init__(self, keys: Any) -> None:
        self._keys = keys

    def checkpoint_key_id(self) -> str:
        return self._keys.checkpoint_key_id()  # type: ignore[no-any-return]

    def sign_checkpoint(self, message: bytes) -> bytes:
        raise KeyUnavailable("the checkpoint key is unavailable")

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        return self._keys.verify_checkpoint(key_id, message, signature)  # type: ignore[no-any-return]


@pytest.mark.parametrize("control", ["sqlite"], indirect=True)  # the failure path is the handler's, not a backend's
def test_a_scheduled_run_that_could_not_sign_an_owed_head_fails_so_it_is_retried(
    control: ControlApi, stores: QueryChainStores, stopped_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.audit.handler import lambda_handler

    install_services(replace(control.services, query_chain=stores,
                             checkpoint_keys=_CheckpointKeyDown(control.services.checkpoint_keys)))
    monkeypatch.setattr(query_audit_chain, "utc_now", lambda: utc_now() + timedelta(minutes=10))
    with pytest.raises(AuditWriteFailed, match=chain_id_for(HOST, utc_now().date())):
        lambda_handler(SCHEDULE, None)
    assert _verify(control)["checkpoint_size"] == 1
