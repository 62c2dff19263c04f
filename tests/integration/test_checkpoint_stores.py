"""CheckpointStore contract, run against the local folder and against the S3 Object Lock bucket (moto).

Object names are an index, never evidence: the contract is that whatever sits under a chain's
prefix is returned as what it says, under whatever name, and that anything else is an error.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.errors import AuditWriteFailed, Conflict, HdError, InvalidRequest
from hd_core.iam_audit import checkpoint_to_json
from hd_core.models import ChainCheckpoint
from hd_core.ports import CheckpointStore

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
BUCKET = "hd-audit-123456789012"
CHAIN = "org_acme"


def _checkpoint(size: int = 10, at: datetime = T0, chain_id: str = CHAIN) -> ChainCheckpoint:
    return ChainCheckpoint(chain_id=chain_id, size=size, head_hash=f"{size:064x}", time=at,
                           key_id="local-checkpoint-abc", signature="MEUCIQ==")


def _by_size_then_time(checkpoints: list[ChainCheckpoint]) -> list[ChainCheckpoint]:
    return sorted(checkpoints, key=lambda c: (c.size, c.time))



@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    """A moto S3 client with the audit bucket: Object Lock on, default COMPLIANCE retention."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        client.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        })
        yield client


@pytest.fixture(params=["local_folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "local_folder":
        return LocalFolderCheckpointStore(tmp_path)
    return S3CheckpointStore(request.getfixturevalue("s3"), BUCKET)


@pytest.fixture
def plant(store: CheckpointStore, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str, bytes], None]:
    """Write raw bytes under a name in the chain's folder or prefix, as someone with write access could."""
    if isinstance(store, LocalFolderCheckpointStore):
        def write_file(name: str, data: bytes) -> None:
            folder = tmp_path / "audit" / "iam-checkpoints" / CHAIN
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return write_file
    s3 = request.getfixturevalue("s3")
    return lambda name, data: s3.put_object(Bucket=BUCKET, Key=f"audit/iam-checkpoints/{CHAIN}/{name}", Body=data)


# --- the contract ----------------------------------------------------------------------------------


def test_a_stored_checkpoint_reads_back_exactly(store: CheckpointStore) -> None:
    store.put_checkpoint(_checkpoint())
    assert store.list_checkpoints(CHAIN) == [_checkpoint()]


def test_a_chain_without_checkpoints_lists_none(store: CheckpointStore) -> None:
    assert store.list_checkpoints(CHAIN) == []
    assert store.list_checkpoints(CHAIN, size=1) == []


def test_every_checkpoint_is_listed_whatever_its_size_and_time(store: CheckpointStore) -> None:
    stored = [_checkpoint(size, at) for size, at in
              [(5, T0), (200, T0), (100, T0 + timedelta(hours=3)), (200, T0 + timedelta(minutes=1)), (9, T0)]]
    for checkpoint in stored:
        store.put_checkpoint(checkpoint)
    assert _by_size_then_time(store.list_checkpoints(CHAIN)) == _by_size_then_time(stored)


def test_listing_one_size_finds_that_sizes_checkpoints_only(store: CheckpointStore) -> None:
    for size, at in [(20, T0), (2, T0), (200, T0), (20, T0 + timedelta(seconds=1))]:
        store.put_checkpoint(_checkpoint(size, at))
    assert _by_size_then_time(store.list_checkpoints(CHAIN, size=20)) == [
        _checkpoint(20, T0), _checkpoint(20, T0 + timedelta(seconds=1))]
    assert store.list_checkpoints(CHAIN, size=3) == []


def test_a_checkpoint_is_never_overwritten(store: CheckpointStore) -> None:
    store.put_checkpoint(_checkpoint())
    with pytest.raises(Conflict):
        store.put_checkpoint(replace(_checkpoint(), head_hash="f" * 64, signature="forged"))
    assert store.list_checkpoints(CHAIN) == [_checkpoint()]


def test_chains_do_not_see_each_others_checkpoints(store: CheckpointStore) -> None:
    store.put_checkpoint(_checkpoint(50, chain_id="org_a_b"))
    store.put_checkpoint(_checkpoint(3, chain_id="org_a"))
    assert store.list_checkpoints("org_a") == [_checkpoint(3, chain_id="org_a")]
    assert store.list_checkpoints("org_b") == []


def test_a_copy_under_another_name_is_listed_as_what_it_says(
    store: CheckpointStore, plant: Callable[[str, bytes], None]
) -> None:
    # The rollback attack: an old checkpoint copied under a name that sorts as the newest.
    store.put_checkpoint(_checkpoint(5))
    store.put_checkpoint(_checkpoint(12, T0 + timedelta(minutes=1)))
    plant("999999999999-9999999999999.json", checkpoint_to_json(_checkpoint(5)))
    assert _by_size_then_time(store.list_checkpoints(CHAIN)) == [
        _checkpoint(5), _checkpoint(5), _checkpoint(12, T0 + timedelta(minutes=1))]


def test_an_object_that_is_not_a_checkpoint_is_an_error_not_skipped(
    store: CheckpointStore, plant: Callable[[str, bytes], None]
) -> None:
    store.put_checkpoint(_checkpoint(7))
    plant("notes.txt", b"hello")
    with pytest.raises(HdError, match="unreadable"):
        store.list_checkpoints(CHAIN)


@pytest.mark.parametrize("bad", ["../org_b", "org/acme", "", "org.acme", "org acme"])
def test_chain_ids_are_validated_before_becoming_a_path(store: CheckpointStore, bad: str) -> None:
    with pytest.raises(InvalidRequest):
        store.put_checkpoint(_checkpoint(chain_id=bad))
    with pytest.raises(InvalidRequest):
        store.list_checkpoints(bad)


# --- the local folder ------------------------------------------------------------------------------


def test_local_checkpoints_are_private_files_named_by_size_and_time(tmp_path: Path) -> None:
    LocalFolderCheckpointStore(tmp_path).put_checkpoint(_checkpoint(7))
    folder = tmp_path / "audit" / "iam-checkpoints" / CHAIN
    unix_ms = int(T0.timestamp() * 1000)
    assert [p.name for p in folder.iterdir()] == [f"000000000007-{unix_ms}.json"]
    assert stat.S_IMODE((folder / f"000000000007-{unix_ms}.json").stat().st_mode) == 0o600
    for level in (tmp_path / "audit", tmp_path / "audit" / "iam-checkpoints", folder):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700
    document = json.loads((folder / f"000000000007-{unix_ms}.json").read_text())
    assert document["time"] == "2026-03-01T12:00:00.123456Z" and document["size"] == 7


def test_half_written_temporaries_in_a_local_chain_folder_are_skipped(tmp_path: Path) -> None:
    store = LocalFolderCheckpointStore(tmp_path)
    store.put_checkpoint(_checkpoint(7))
    folder = tmp_path / "audit" / "iam-checkpoints" / CHAIN
    (folder / ".999999999999-1.json.tmp").write_text("half written")
    assert store.list_checkpoints(CHAIN) == [_checkpoint(7)]


def test_an_unreadable_local_checkpoint_is_an_error_not_a_missing_one(tmp_path: Path) -> None:
    store = LocalFolderCheckpointStore(tmp_path)
    store.put_checkpoint(_checkpoint(7))
    (tmp_path / "audit" / "iam-checkpoints" / CHAIN / "000000000008-1.json").write_text("{}")
    with pytest.raises(HdError, match="unreadable"):
        store.list_checkpoints(CHAIN)


def test_a_local_folder_that_cannot_be_written_fails_the_put(tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("a file where the folder should be")
    with pytest.raises(AuditWriteFailed, match="could not be stored"):
        LocalFolderCheckpointStore(tmp_path).put_checkpoint(_checkpoint())


# --- the S3 bucket ---------------------------------------------------------------------------------


def test_s3_checkpoints_are_conditional_puts_that_keep_the_bucket_retention(s3: Any) -> None:
    sent: list[dict[str, Any]] = []
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: sent.append(dict(params)))
    S3CheckpointStore(s3, BUCKET).put_checkpoint(_checkpoint(7))
    unix_ms = int(T0.timestamp() * 1000)
    key = f"audit/iam-checkpoints/{CHAIN}/000000000007-{unix_ms}.json"
    assert sent[0]["Key"] == key and sent[0]["IfNoneMatch"] == "*"
    assert not any(name.startswith("ObjectLock") for name in sent[0])
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"  # from the bucket default, not from us


def test_s3_prefix_is_configurable(s3: Any) -> None:
    store = S3CheckpointStore(s3, BUCKET, prefix="tenant-x/checkpoints/")
    store.put_checkpoint(_checkpoint(3))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"tenant-x/checkpoints/{CHAIN}/000000000003-")
    assert store.list_checkpoints(CHAIN) == [_checkpoint(3)]
    with pytest.raises(ValueError):
        S3CheckpointStore(s3, BUCKET, prefix="no-trailing-slash")


def test_an_unreachable_bucket_fails_the_put_and_the_read(s3: Any) -> None:
    store = S3CheckpointStore(s3, "hd-audit-missing")
    with pytest.raises(AuditWriteFailed, match="NoSuchBucket"):
        store.put_checkpoint(_checkpoint())
    with pytest.raises(HdError, match="cannot be read"):
        store.list_checkpoints(CHAIN)


def test_a_corrupt_s3_checkpoint_is_an_error_not_a_missing_one(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=f"audit/iam-checkpoints/{CHAIN}/000000000001-1.json", Body=b"[1, 2]")
    with pytest.raises(HdError, match="unreadable"):
        S3CheckpointStore(s3, BUCKET).list_checkpoints(CHAIN)


def test_a_delete_marker_does_not_hide_an_s3_checkpoint(s3: Any) -> None:
    # Object Lock keeps versions, but a plain DELETE still succeeds by hiding the object behind a marker.
    store = S3CheckpointStore(s3, BUCKET)
    store.put_checkpoint(_checkpoint(7))
    s3.delete_object(Bucket=BUCKET, Key=f"audit/iam-checkpoints/{CHAIN}/000000000007-{int(T0.timestamp() * 1000)}.json")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    assert store.list_checkpoints(CHAIN) == [_checkpoint(7)]


def test_an_unconditional_overwrite_does_not_hide_an_s3_checkpoint(s3: Any) -> None:
    store = S3CheckpointStore(s3, BUCKET)
    store.put_checkpoint(_checkpoint(12))
    key = f"audit/iam-checkpoints/{CHAIN}/000000000012-{int(T0.timestamp() * 1000)}.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=checkpoint_to_json(_checkpoint(5)))  # a rollback by overwrite
    assert _by_size_then_time(store.list_checkpoints(CHAIN)) == [_checkpoint(5), _checkpoint(12)]
    assert _by_size_then_time(store.list_checkpoints(CHAIN, size=12)) == [_checkpoint(5), _checkpoint(12)]


def test_many_s3_checkpoints_are_all_read(s3: Any) -> None:
    store = S3CheckpointStore(s3, BUCKET)
    stored = [_checkpoint(size) for size in range(1, 41)]
    for checkpoint in stored:
        store.put_checkpoint(checkpoint)
    assert _by_size_then_time(store.list_checkpoints(CHAIN)) == stored
