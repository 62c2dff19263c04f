"""The query audit chain: records written by the real sinks, signed checkpoints, and tampering found by position."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.audit import format_audit_ts
from hd_core.models import ChainCheckpoint
from hd_core.query_audit_chain import (
    CHECKPOINT_FOLDER,
    CHECKPOINT_PREFIX,
    QueryChainCheckpointer,
    chain_id_for,
    verify_query_chains,
)

DAY = date(2026, 3, 1)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BUCKET = "hd-audit-chain"


def _record(n: int, at: datetime = T0) -> dict[str, object]:
    return {"ts": format_audit_ts(at + timedelta(milliseconds=n)), "query_id": f"q{n:04}", "org_id": "org_a",
            "sql_redacted": "SELECT ?", "rows_returned": n}


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyFile:
    return LocalKeyFile(tmp_path / "keys" / "local-keys.json")


def _local(tmp_path: Path, keys: LocalKeyFile, count: int, *, every: int = 1000) -> tuple[Path, Any]:
    checkpoints = LocalFolderCheckpointStore(tmp_path, CHECKPOINT_FOLDER)
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a",
                                checkpointer=QueryChainCheckpointer(checkpoints, keys, every_records=every))
    for n in range(count):
        sink.write(_record(n))
    sink.close()  # signs the final head
    return tmp_path / "audit" / "queries" / "2026" / "03" / "01" / "host-a.jsonl", checkpoints


def _verify(tmp_path: Path, keys: LocalKeyFile, checkpoints: Any) -> dict[str, Any]:
    (report,) = verify_query_chains(LocalFolderAuditArchive(tmp_path), checkpoints, keys, [DAY])
    return report.to_dict()


def _rewrite(path: Path, edit: Any) -> None:
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in edit(lines)))


def test_an_untouched_chain_verifies_and_its_head_is_signed_at_close(tmp_path: Path, keys: LocalKeyFile) -> None:
    _, checkpoints = _local(tmp_path, keys, 5)
    report = _verify(tmp_path, keys, checkpoints)
    assert report["chain_valid"] is True and report["first_break"] is None
    assert report["entry_count"] == 5 and report["checkpoint_size"] == 5
    assert report["chain_id"] == chain_id_for("host-a", DAY) and report["host_id"] == "host-a"


def test_an_edited_record_is_found_at_its_position(tmp_path: Path, keys: LocalKeyFile) -> None:
    path, checkpoints = _local(tmp_path, keys, 6)
    _rewrite(path, lambda lines: [line.replace(b'"rows_returned":3', b'"rows_returned":0') for line in lines])
    assert _verify(tmp_path, keys, checkpoints)["first_break"]["position"] == 4
    assert _verify(tmp_path, keys, checkpoints)["first_break"]["kind"] == "edited"


def test_a_deleted_record_is_found_at_its_position(tmp_path: Path, keys: LocalKeyFile) -> None:
    path, checkpoints = _local(tmp_path, keys, 6)
    _rewrite(path, lambda lines: lines[:2] + lines[3:])
    report = _verify(tmp_path, keys, checkpoints)
    assert report["chain_valid"] is False
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (3, "deleted")


def test_a_reordered_pair_is_found_at_the_first_displaced_position(tmp_path: Path, keys: LocalKeyFile) -> None:
    path, checkpoints = _local(tmp_path, keys, 6)
    _rewrite(path, lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]])
    report = _verify(tmp_path, keys, checkpoints)
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (4, "reordered")


def test_a_truncated_day_is_found_against_the_signed_checkpoint(tmp_path: Path, keys: LocalKeyFile) -> None:
    path, checkpoints = _local(tmp_path, keys, 6)
    _rewrite(path, lambda lines: lines[:4])  # every remaining link is intact: only the checkpoint knows
    report = _verify(tmp_path, keys, checkpoints)
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (5, "truncated")


def test_a_rehashed_rewrite_is_found_by_the_checkpoint(tmp_path: Path, keys: LocalKeyFile) -> None:
    path, checkpoints = _local(tmp_path, keys, 3)
    path.unlink()
    # Someone rewrites the day from scratch through a sink of their own: a consistent chain, but not the signed one.
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as forger:
        for n in range(3):
            forger.write(_record(n + 100))
    report = _verify(tmp_path, keys, checkpoints)
    # The first signed head the forgery contradicts: the close's at 3, or one the background signed earlier.
    earliest = min(checkpoint.size for checkpoint in checkpoints.list_checkpoints(chain_id_for("host-a", DAY)))
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (earliest, "checkpoint_mismatch")


def test_a_checkpoint_nobody_signed_is_reported(tmp_path: Path, keys: LocalKeyFile) -> None:
    _, checkpoints = _local(tmp_path, keys, 2)
    checkpoints.put_checkpoint(ChainCheckpoint(chain_id_for("host-a", DAY), 9, "0" * 64, T0, keys.checkpoint_key_id(),
                                               "bm90IGEgc2lnbmF0dXJl"))
    report = _verify(tmp_path, keys, checkpoints)
    assert report["first_break"]["kind"] == "checkpoint_signature_invalid"


def test_a_reopened_day_file_continues_its_chain(tmp_path: Path, keys: LocalKeyFile) -> None:
    _, checkpoints = _local(tmp_path, keys, 3)
    _local(tmp_path, keys, 2)  # a restarted host with the same id appends to the same day's chain
    report = _verify(tmp_path, keys, checkpoints)
    assert report["chain_valid"] is True and report["entry_count"] == 5 and report["checkpoint_size"] == 5


def test_checkpoints_come_every_n_records_not_per_record(tmp_path: Path, keys: LocalKeyFile) -> None:
    checkpoints = LocalFolderCheckpointStore(tmp_path, CHECKPOINT_FOLDER)
    checkpointer = QueryChainCheckpointer(checkpoints, keys, every_records=50, every_seconds=3600)
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a", checkpointer=checkpointer)
    for n in range(120):
        sink.write(_record(n))
    checkpointer.flush()
    sizes = sorted(c.size for c in checkpoints.list_checkpoints(chain_id_for("host-a", DAY)))
    sink.close()
    # The first record starts a chain (signed at once); then only every 50 records, or at the flush.
    assert len(sizes) <= 5 and sizes[-1] == 120


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_a_chain_spread_over_s3_objects_verifies_and_resumes_after_a_restart(s3: Any, keys: LocalKeyFile) -> None:
    checkpoints = S3CheckpointStore(s3, BUCKET, prefix=CHECKPOINT_PREFIX)
    for start in (0, 3):  # two processes of the same host, one after the other
        sink = S3AuditSink(s3, BUCKET, host_id="i-0abc", batch_window_seconds=0,
                           checkpointer=QueryChainCheckpointer(checkpoints, keys))
        for n in range(start, start + 3):
            sink.write(_record(n))
        sink.close()
    (report,) = verify_query_chains(S3AuditArchive(s3, BUCKET), checkpoints, keys, [DAY])
    assert report.verification.chain_valid and report.verification.entry_count == 6
    assert report.verification.checkpoint_size == 6 and report.host_id == "i-0abc"


def test_a_deleted_s3_object_is_found(s3: Any, keys: LocalKeyFile) -> None:
    checkpoints = S3CheckpointStore(s3, BUCKET, prefix=CHECKPOINT_PREFIX)
    sink = S3AuditSink(s3, BUCKET, host_id="i-0abc", batch_window_seconds=0,
                       checkpointer=QueryChainCheckpointer(checkpoints, keys))
    for n in range(4):
        sink.write(_record(n))
    sink.close()
    keys_by_time = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="audit/queries/")["Contents"])
    assert len(keys_by_time) == 4
    s3.delete_object(Bucket=BUCKET, Key=keys_by_time[1])
    (report,) = verify_query_chains(S3AuditArchive(s3, BUCKET), checkpoints, keys, [DAY])
    assert report.verification.first_break is not None
    assert (report.verification.first_break.position, report.verification.first_break.kind) == (2, "deleted")


def _unchained(n: int, at: datetime = T0) -> bytes:
    """A record as a host wrote it before it chained its query audit: no chain fields at all."""
    return json.dumps(_record(n, at), separators=(",", ":"), sort_keys=True).encode() + b"\n"


def test_records_from_before_the_upgrade_are_counted_as_unchained_not_broken(
    tmp_path: Path, keys: LocalKeyFile
) -> None:
    day_file = tmp_path / "audit" / "queries" / "2026" / "03" / "01" / "host-a.jsonl"
    day_file.parent.mkdir(parents=True)
    day_file.write_bytes(_unchained(0, T0 - timedelta(hours=2)) + _unchained(1, T0 - timedelta(hours=1)))
    _, checkpoints = _local(tmp_path, keys, 3)  # the upgraded host appends to the same day file
    (report,) = verify_query_chains(LocalFolderAuditArchive(tmp_path), checkpoints, keys, [DAY])
    assert report.verification.chain_valid, report.verification.first_break
    assert (report.verification.entry_count, report.unchained_count, report.verification.checkpoint_size) == (3, 2, 3)
    assert report.to_dict()["unchained_count"] == 2


def test_an_unchained_record_after_chained_ones_is_a_break(tmp_path: Path, keys: LocalKeyFile) -> None:
    path, checkpoints = _local(tmp_path, keys, 3)
    with path.open("ab") as day_file:
        day_file.write(_unchained(9, T0 + timedelta(minutes=5)))
    report = _verify(tmp_path, keys, checkpoints)
    assert report["chain_valid"] is False and report["unchained_count"] == 0
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (4, "inserted")


def test_an_unchained_record_put_before_the_chain_but_dated_after_it_is_a_break(
    tmp_path: Path, keys: LocalKeyFile
) -> None:
    path, checkpoints = _local(tmp_path, keys, 3)
    path.write_bytes(_unchained(9, T0 + timedelta(minutes=5)) + path.read_bytes())
    report = _verify(tmp_path, keys, checkpoints)
    assert (report["first_break"]["position"], report["first_break"]["kind"]) == (1, "inserted")


def test_a_hosts_whole_day_deleted_from_s3_is_found_from_its_checkpoints(s3: Any, keys: LocalKeyFile) -> None:
    checkpoints = S3CheckpointStore(s3, BUCKET, prefix=CHECKPOINT_PREFIX)
    for host in ("i-0abc", "i-0def"):
        sink = S3AuditSink(s3, BUCKET, host_id=host, batch_window_seconds=0,
                           checkpointer=QueryChainCheckpointer(checkpoints, keys))
        for n in range(3):
            sink.write(_record(n))
        sink.close()
    for entry in s3.list_objects_v2(Bucket=BUCKET, Prefix="audit/queries/")["Contents"]:
        if "/i-0def-" in entry["Key"]:
            s3.delete_object(Bucket=BUCKET, Key=entry["Key"])
    intact, deleted = verify_query_chains(S3AuditArchive(s3, BUCKET), checkpoints, keys, [DAY])
    assert (intact.host_id, intact.verification.chain_valid) == ("i-0abc", True)
    assert (deleted.host_id, deleted.verification.entry_count, deleted.verification.checkpoint_size) == ("i-0def", 0, 3)
    assert deleted.verification.first_break is not None
    assert (deleted.verification.first_break.position, deleted.verification.first_break.kind) == (1, "deleted")


def test_a_day_of_unchained_s3_objects_before_the_chain_verifies(s3: Any, keys: LocalKeyFile) -> None:
    s3.put_object(Bucket=BUCKET, Key="audit/queries/2026/03/01/i-0abc-1772330000000-old.jsonl",
                  Body=_unchained(0, T0 - timedelta(hours=1)))
    checkpoints = S3CheckpointStore(s3, BUCKET, prefix=CHECKPOINT_PREFIX)
    sink = S3AuditSink(s3, BUCKET, host_id="i-0abc", batch_window_seconds=0,
                       checkpointer=QueryChainCheckpointer(checkpoints, keys))
    for n in range(2):
        sink.write(_record(n))
    sink.close()
    (report,) = verify_query_chains(S3AuditArchive(s3, BUCKET), checkpoints, keys, [DAY])
    assert report.verification.chain_valid, report.verification.first_break
    assert (report.verification.entry_count, report.unchained_count) == (2, 1)
