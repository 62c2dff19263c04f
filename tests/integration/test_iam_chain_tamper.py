"""Tampering with a stored IAM chain is found by `verify_chain`: one test per kind of break, SQLite and DynamoDB.

Each test writes a real chain through `IamAuditTrail` (with its default, a checkpoint after every
event) into a real control store (the SQLite file, or DynamoDB under moto), with checkpoints
signed by a local key file into a local folder, then tampers with the stored rows directly, as
someone with database access would. The last part attacks the checkpoints themselves, in the
local folder and in the S3 Object Lock bucket under moto: someone who can write (or, locally,
rename and delete) checkpoint objects but cannot sign.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.dynamodb_schema import PARTITION_KEY, SORT_KEY, create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import Conflict, HdError
from hd_core.iam_audit import GENESIS_HASH, IamAuditTrail, checkpoint_message, checkpoint_to_json, event_hash
from hd_core.iam_events import IamEventType
from hd_core.models import ChainCheckpoint, IamEvent
from hd_core.ports import CheckpointStore, ControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CHAIN = "org_acme"
EVENTS = 12
TABLE = "hd-control"
BUCKET = "hd-audit-123456789012"


class SteppingClock:
    """Moves one second per reading, so every event and checkpoint has its own time."""

    def __init__(self) -> None:
        self.current = T0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.current += timedelta(seconds=1)
            return self.current


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyFile:
    return LocalKeyFile(tmp_path_factory.mktemp("keys") / "dev-keys.json")


@pytest.fixture
def checkpoints(tmp_path: Path) -> LocalFolderCheckpointStore:
    return LocalFolderCheckpointStore(tmp_path / "state")


def _trail(store: ControlStore, checkpoints: CheckpointStore, keys: LocalKeyFile) -> IamAuditTrail:
    return IamAuditTrail(store, checkpoints, keys, now=SteppingClock())


def _record_chain(trail: IamAuditTrail, count: int = EVENTS, chain_id: str = CHAIN) -> list[IamEvent]:
    return [
        trail.record(chain_id, IamEventType.USER_ROLE_CHANGED, actor="usr_owner", target=f"usr_{n}",
                     before={"role": "Analyst", "n": n}, after={"role": "Admin", "n": n}, request_id=f"req-{n}")
        for n in range(1, count + 1)
    ]


def _break(trail: IamAuditTrail) -> tuple[int, str] | None:
    result = trail.verify_chain(CHAIN)
    assert result.chain_valid == (result.first_break is None)
    return None if result.first_break is None else (result.first_break.position, result.first_break.kind)


def _rehash_from(events: list[IamEvent]) -> list[IamEvent]:
    """What a careful forger does after an edit: recompute every hash and link so the chain is consistent again."""
    rewritten: list[IamEvent] = []
    prev = GENESIS_HASH
    for event in events:
        digest = event_hash(prev, event.event_id, event.chain_id, event.event_type, event.actor, event.target,
                            event.before, event.after, event.at, event.request_id)
        rewritten.append(replace(event, prev_hash=prev, hash=digest))
        prev = digest
    return rewritten


def _forged_checkpoint(forger: LocalKeyFile, head: IamEvent, key_id: str | None = None) -> ChainCheckpoint:
    at = head.at + timedelta(hours=1)
    signature = forger.sign_checkpoint(checkpoint_message(CHAIN, head.seq, head.hash, at))
    return ChainCheckpoint(CHAIN, head.seq, head.hash, at, key_id or forger.checkpoint_key_id(),
                           base64.b64encode(signature).decode())


# --- SQLite ----------------------------------------------------------------------------------------


class SqliteTamperer:
    """Direct writes to the `iam_events` table, on its own connection to the store's file."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)

    def set_after(self, seq: int, after: dict[str, object]) -> None:
        self._db.execute("UPDATE iam_events SET after = ? WHERE chain_id = ? AND seq = ?",
                         (json.dumps(after), CHAIN, seq))

    def delete(self, condition: str, *params: object) -> None:
        self._db.execute(f"DELETE FROM iam_events WHERE chain_id = ? AND {condition}", (CHAIN, *params))

    def renumber_after(self, seq: int) -> None:
        """Close the gap left by deleting `seq`, one row at a time so the primary key never collides."""
        rows = self._db.execute("SELECT seq FROM iam_events WHERE chain_id = ? AND seq > ? ORDER BY seq",
                                (CHAIN, seq)).fetchall()
        for (old,) in rows:
            self._db.execute("UPDATE iam_events SET seq = ? WHERE chain_id = ? AND seq = ?", (old - 1, CHAIN, old))

    def swap(self, first: int, second: int) -> None:
        self._db.execute("BEGIN")
        for old, new in ((first, -1), (second, first), (-1, second)):
            self._db.execute("UPDATE iam_events SET seq = ? WHERE chain_id = ? AND seq = ?", (new, CHAIN, old))
        self._db.execute("COMMIT")

    def rewrite_links(self, events: list[IamEvent]) -> None:
        for event in events:
            self._db.execute("UPDATE iam_events SET after = ?, prev_hash = ?, hash = ? WHERE chain_id = ? AND seq = ?",
                             (json.dumps(event.after), event.prev_hash, event.hash, CHAIN, event.seq))


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "control.sqlite3"


@pytest.fixture
def sqlite_store(sqlite_path: Path) -> Iterator[SqliteControlStore]:
    with SqliteControlStore(sqlite_path) as store:
        yield store


@pytest.fixture
def trail(
    sqlite_store: SqliteControlStore, checkpoints: LocalFolderCheckpointStore, keys: LocalKeyFile
) -> IamAuditTrail:
    return _trail(sqlite_store, checkpoints, keys)


@pytest.fixture
def tamper(sqlite_path: Path) -> SqliteTamperer:
    return SqliteTamperer(sqlite_path)


def test_an_untouched_chain_verifies(trail: IamAuditTrail) -> None:
    events = _record_chain(trail)
    result = trail.verify_chain(CHAIN)
    assert result.chain_valid and result.first_break is None
    assert (result.entry_count, result.checkpoint_size) == (EVENTS, EVENTS)
    assert (result.first_entry_hash, result.last_entry_hash) == (events[0].hash, events[-1].hash)
    assert result.to_dict()["first_break"] is None


def test_every_event_is_checkpointed(
    trail: IamAuditTrail, checkpoints: LocalFolderCheckpointStore, tmp_path: Path
) -> None:
    events = _record_chain(trail)
    folder = tmp_path / "state" / "audit" / "iam-checkpoints" / CHAIN
    assert sorted(int(p.name.split("-")[0]) for p in folder.iterdir()) == list(range(1, EVENTS + 1))
    assert {(c.size, c.head_hash) for c in checkpoints.list_checkpoints(CHAIN)} == {(e.seq, e.hash) for e in events}


def test_an_edited_event_is_reported_as_edited(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail)
    tamper.set_after(4, {"role": "Owner", "n": 4})
    assert _break(trail) == (4, "edited")


def test_a_deleted_event_is_reported_as_deleted(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail)
    tamper.delete("seq = ?", 6)
    assert _break(trail) == (6, "deleted")


def test_a_deleted_event_is_found_even_when_the_positions_are_renumbered(
    trail: IamAuditTrail, tamper: SqliteTamperer
) -> None:
    _record_chain(trail)
    tamper.delete("seq = ?", 6)
    tamper.renumber_after(6)
    assert _break(trail) == (6, "deleted")


def test_swapped_events_are_reported_as_reordered(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail)
    tamper.swap(3, 4)
    assert _break(trail) == (3, "reordered")


def test_a_cut_tail_is_reported_as_truncated(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail)
    tamper.delete("seq > ?", 7)  # the remaining links are all fine
    result = trail.verify_chain(CHAIN)
    assert result.first_break is not None
    assert (result.first_break.position, result.first_break.kind) == (8, "truncated")
    assert (result.entry_count, result.checkpoint_size) == (7, EVENTS)


def test_cutting_only_the_last_event_is_reported_as_truncated(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail)
    tamper.delete("seq = ?", EVENTS)
    assert _break(trail) == (EVENTS, "truncated")


def test_a_fully_recomputed_chain_is_reported_as_a_checkpoint_mismatch(
    trail: IamAuditTrail, sqlite_store: SqliteControlStore, tamper: SqliteTamperer
) -> None:
    _record_chain(trail)
    events = sqlite_store.list_iam_events(CHAIN)
    events[3] = replace(events[3], after={"role": "Owner", "n": 4})
    tamper.rewrite_links(_rehash_from(events))
    assert _break(trail) == (4, "checkpoint_mismatch")


@pytest.mark.parametrize("claimed_key", ["forger's own key id", "our key id"])
def test_a_recomputed_chain_with_a_forged_checkpoint_is_reported_as_an_invalid_signature(
    trail: IamAuditTrail, sqlite_store: SqliteControlStore, tamper: SqliteTamperer,
    checkpoints: LocalFolderCheckpointStore, keys: LocalKeyFile, tmp_path: Path, claimed_key: str,
) -> None:
    _record_chain(trail)
    events = sqlite_store.list_iam_events(CHAIN)
    events[3] = replace(events[3], after={"role": "Owner", "n": 4})
    forged_chain = _rehash_from(events)
    tamper.rewrite_links(forged_chain)
    forger = LocalKeyFile(tmp_path / "forger-keys.json")
    key_id = keys.checkpoint_key_id() if claimed_key == "our key id" else None
    checkpoints.put_checkpoint(_forged_checkpoint(forger, forged_chain[-1], key_id))
    assert _break(trail) == (EVENTS, "checkpoint_signature_invalid")


def test_an_emptied_chain_is_reported_as_truncated(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail, 3)
    tamper.delete("seq >= ?", 1)
    assert _break(trail) == (1, "truncated")


def test_the_first_break_is_reported_when_there_are_several(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail)
    tamper.set_after(9, {"role": "Owner"})
    tamper.delete("seq = ?", 5)
    assert _break(trail) == (5, "deleted")


class RendezvousStore(SqliteControlStore):
    """A SQLite store whose writers all read the chain head together once, so their first appends must collide."""

    def __init__(self, path: Path, rendezvous: threading.Barrier) -> None:
        super().__init__(path)
        self._rendezvous = rendezvous
        self._arrived = threading.local()
        self.conflicts = 0

    def iam_chain_head(self, chain_id: str) -> IamEvent | None:
        head = super().iam_chain_head(chain_id)
        if not getattr(self._arrived, "done", False):
            self._arrived.done = True
            self._rendezvous.wait(timeout=10)
        return head

    def append_iam_event(self, event: IamEvent) -> None:
        try:
            super().append_iam_event(event)
        except Conflict:
            self.conflicts += 1
            raise


@pytest.mark.parametrize("connections", ["one shared store", "a store per writer"])
def test_two_writers_racing_on_one_chain_never_fork_it(
    sqlite_path: Path, checkpoints: LocalFolderCheckpointStore, keys: LocalKeyFile, connections: str
) -> None:
    rendezvous = threading.Barrier(2)
    shared = RendezvousStore(sqlite_path, rendezvous)
    second = shared if connections == "one shared store" else RendezvousStore(sqlite_path, rendezvous)
    stores = [shared, second]
    clock = SteppingClock()
    trails = [IamAuditTrail(store, checkpoints, keys, checkpoint_every=10, now=clock) for store in stores]
    errors: list[BaseException] = []

    def write_fifty(trail: IamAuditTrail) -> None:
        try:
            _record_chain(trail, 50)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write_fifty, args=(trail,)) for trail in trails]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer_store in set(stores):
        writer_store.close()
    assert errors == []
    assert sum(writer_store.conflicts for writer_store in set(stores)) >= 1  # the retry path really ran
    with SqliteControlStore(sqlite_path) as reader:
        events = reader.list_iam_events(CHAIN)
        assert [e.seq for e in events] == list(range(1, 101))
        assert len({e.event_id for e in events}) == 100
        result = _trail(reader, checkpoints, keys).verify_chain(CHAIN)
    assert result.chain_valid and result.entry_count == 100 and result.checkpoint_size == 100


def test_the_first_break_is_part_of_the_api_shape(trail: IamAuditTrail, tamper: SqliteTamperer) -> None:
    _record_chain(trail, 3)
    tamper.set_after(2, {"role": "Owner"})
    body = trail.verify_chain(CHAIN).to_dict()
    assert body["chain_valid"] is False and body["entry_count"] == 3
    first_break = body["first_break"]
    assert isinstance(first_break, dict) and (first_break["position"], first_break["kind"]) == (2, "edited")


# --- DynamoDB --------------------------------------------------------------------------------------


class DynamoTamperer:
    """Direct writes to the control table's IAM event items, through the low-level client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _item_key(self, seq: int) -> dict[str, Any]:
        items = self._client.query(
            TableName=TABLE, KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": PARTITION_KEY}, ExpressionAttributeValues={":pk": {"S": "CHAIN#" + CHAIN}},
        )["Items"]
        item = next(i for i in items if int(i["seq"]["N"]) == seq)
        return {PARTITION_KEY: item[PARTITION_KEY], SORT_KEY: item[SORT_KEY]}

    def set_after(self, seq: int, after: dict[str, object]) -> None:
        self._client.update_item(TableName=TABLE, Key=self._item_key(seq), UpdateExpression="SET #after = :after",
                                 ExpressionAttributeNames={"#after": "after"},
                                 ExpressionAttributeValues={":after": {"S": json.dumps(after)}})

    def delete(self, seq: int) -> None:
        self._client.delete_item(TableName=TABLE, Key=self._item_key(seq))


@pytest.fixture
def dynamo(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**create_table_kwargs(TABLE))
        yield client


@pytest.fixture
def dynamo_trail(dynamo: Any, checkpoints: LocalFolderCheckpointStore, keys: LocalKeyFile) -> IamAuditTrail:
    return _trail(DynamoDbControlStore(TABLE, client=dynamo), checkpoints, keys)


def test_an_untouched_dynamodb_chain_verifies(dynamo_trail: IamAuditTrail) -> None:
    _record_chain(dynamo_trail)
    result = dynamo_trail.verify_chain(CHAIN)
    assert result.chain_valid and (result.entry_count, result.checkpoint_size) == (EVENTS, EVENTS)


def test_an_edited_dynamodb_event_is_reported_as_edited(dynamo_trail: IamAuditTrail, dynamo: Any) -> None:
    _record_chain(dynamo_trail)
    DynamoTamperer(dynamo).set_after(4, {"role": "Owner", "n": 4})
    assert _break(dynamo_trail) == (4, "edited")


def test_a_deleted_dynamodb_event_is_reported_as_deleted(dynamo_trail: IamAuditTrail, dynamo: Any) -> None:
    _record_chain(dynamo_trail)
    DynamoTamperer(dynamo).delete(6)
    assert _break(dynamo_trail) == (6, "deleted")


def test_a_cut_dynamodb_tail_is_reported_as_truncated(dynamo_trail: IamAuditTrail, dynamo: Any) -> None:
    _record_chain(dynamo_trail)
    for seq in range(EVENTS, 7, -1):
        DynamoTamperer(dynamo).delete(seq)
    assert _break(dynamo_trail) == (8, "truncated")


class StaleHeadDynamoStore(DynamoDbControlStore):
    """Reports an old head once, as a writer that lost a race would have seen it."""

    stale_head: IamEvent | None = None

    def iam_chain_head(self, chain_id: str) -> IamEvent | None:
        if self.stale_head is not None:
            head, self.stale_head = self.stale_head, None
            return head
        return super().iam_chain_head(chain_id)


def test_a_dynamodb_writer_that_read_a_stale_head_retries_at_the_real_one(
    dynamo: Any, checkpoints: LocalFolderCheckpointStore, keys: LocalKeyFile
) -> None:
    # A deterministic race: moto's conditional writes are not atomic across threads, real DynamoDB's are.
    store = StaleHeadDynamoStore(TABLE, client=dynamo)
    trail = _trail(store, checkpoints, keys)
    events = _record_chain(trail, 3)
    store.stale_head = events[1]  # position 3 looks free, but the conditional put finds it taken
    (late,) = _record_chain(trail, 1)
    assert (late.seq, late.prev_hash) == (4, events[2].hash)
    result = trail.verify_chain(CHAIN)
    assert result.chain_valid and result.entry_count == 4


# --- attacks on the checkpoints: the local folder and the S3 Object Lock bucket --------------------
#
# Someone who can write checkpoint objects but cannot sign. Locally they can also rename and delete
# files; in S3 a DELETE only adds a delete marker and an unconditional PUT only a newer version, and
# the store reads every version. (Locally, deleting the newest events *and* their checkpoint files
# leaves no trace: the folder is for development, the Object Lock bucket is the evidence in AWS.)

TOP_NAME = "999999999999-9999999999999.json"  # sorts after every name the store itself would choose


class CheckpointVault:
    """A chain's checkpoint objects, handled by name behind the store's back."""

    def __init__(self, store: CheckpointStore, read: Callable[[str], bytes], write: Callable[[str, bytes], None],
                 delete: Callable[[str], None], names: Callable[[], list[str]]) -> None:
        self.store, self.read, self.write, self.delete, self.names = store, read, write, delete, names

    def name_of_size(self, size: int) -> str:
        (name,) = [name for name in self.names() if name.startswith(f"{size:012d}-")]
        return name

    def copy(self, source: str, target: str) -> None:
        self.write(target, self.read(source))

    def rename(self, source: str, target: str) -> None:
        self.copy(source, target)
        self.delete(source)


def _audit_bucket() -> Any:
    """The audit bucket as the storage construct makes it: Object Lock (so versioned) with default retention."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
    })
    return s3


def _s3_vault(s3: Any) -> CheckpointVault:
    prefix = f"audit/iam-checkpoints/{CHAIN}/"
    return CheckpointVault(
        S3CheckpointStore(s3, BUCKET),
        read=lambda name: s3.get_object(Bucket=BUCKET, Key=prefix + name)["Body"].read(),
        write=lambda name, data: s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=data),
        delete=lambda name: s3.delete_object(Bucket=BUCKET, Key=prefix + name),
        names=lambda: [o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get(
            "Contents", [])],
    )


def _local_vault(root: Path) -> CheckpointVault:
    folder = root / "audit" / "iam-checkpoints" / CHAIN
    return CheckpointVault(
        LocalFolderCheckpointStore(root),
        read=lambda name: (folder / name).read_bytes(),
        write=lambda name, data: (folder / name).write_bytes(data),
        delete=lambda name: (folder / name).unlink(),
        names=lambda: sorted(os.listdir(folder)),
    )


@pytest.fixture(params=["local_folder", "s3"])
def vault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CheckpointVault]:
    if request.param == "local_folder":
        yield _local_vault(tmp_path / "state")
        return
    request.getfixturevalue("aws_credentials")
    with mock_aws():
        yield _s3_vault(_audit_bucket())


@pytest.fixture
def guarded(sqlite_store: SqliteControlStore, vault: CheckpointVault, keys: LocalKeyFile) -> IamAuditTrail:
    return _trail(sqlite_store, vault.store, keys)


def test_an_old_checkpoint_copied_under_the_newest_name_does_not_hide_a_cut_tail(
    guarded: IamAuditTrail, vault: CheckpointVault, tamper: SqliteTamperer
) -> None:
    _record_chain(guarded)
    vault.copy(vault.name_of_size(5), TOP_NAME)
    tamper.delete("seq > ?", 5)
    result = guarded.verify_chain(CHAIN)
    assert result.first_break is not None and (result.first_break.position, result.first_break.kind) == (
        6, "truncated")
    assert result.checkpoint_size == EVENTS


def test_an_old_checkpoint_copied_under_the_newest_name_does_not_hide_a_rewrite(
    guarded: IamAuditTrail, vault: CheckpointVault, sqlite_store: SqliteControlStore, tamper: SqliteTamperer
) -> None:
    _record_chain(guarded)
    vault.copy(vault.name_of_size(3), TOP_NAME)
    events = sqlite_store.list_iam_events(CHAIN)
    events[7] = replace(events[7], after={"role": "Owner", "n": 8})
    tamper.rewrite_links(_rehash_from(events))
    assert _break(guarded) == (8, "checkpoint_mismatch")


def test_an_edited_event_is_reported_whatever_the_checkpoints_are_called(
    guarded: IamAuditTrail, vault: CheckpointVault, tamper: SqliteTamperer
) -> None:
    _record_chain(guarded)
    vault.copy(vault.name_of_size(1), TOP_NAME)
    tamper.set_after(EVENTS, {"role": "Owner", "n": EVENTS})
    assert _break(guarded) == (EVENTS, "edited")


def test_renamed_and_reordered_checkpoints_vouch_for_what_they_signed_and_nothing_else(
    guarded: IamAuditTrail, vault: CheckpointVault, tamper: SqliteTamperer
) -> None:
    _record_chain(guarded)
    for size in range(1, EVENTS + 1):  # reverse the order their names sort in: size n is now filed as 13 - n
        vault.rename(vault.name_of_size(size), f"swap-{size}.json")
    for size in range(1, EVENTS + 1):
        vault.rename(f"swap-{size}.json", f"{EVENTS + 1 - size:012d}-{size}.json")
    result = guarded.verify_chain(CHAIN)
    assert result.chain_valid and result.checkpoint_size == EVENTS
    tamper.delete("seq = ?", EVENTS)
    assert _break(guarded) == (EVENTS, "truncated")


@pytest.mark.parametrize("signer", ["a forger's key", "no key at all"])
def test_a_forged_checkpoint_planted_under_a_low_name_is_reported(
    guarded: IamAuditTrail, vault: CheckpointVault, sqlite_store: SqliteControlStore, tmp_path: Path, signer: str
) -> None:
    _record_chain(guarded)
    head = sqlite_store.list_iam_events(CHAIN)[-1]
    forged = _forged_checkpoint(LocalKeyFile(tmp_path / "forger-keys.json"), head)
    if signer == "no key at all":
        forged = replace(forged, signature=base64.b64encode(b"\x30" * 70).decode())
    vault.write("000000000001-0.json", checkpoint_to_json(replace(forged, size=EVENTS + 5)))
    result = guarded.verify_chain(CHAIN)
    assert result.first_break is not None
    assert (result.first_break.position, result.first_break.kind) == (EVENTS + 5, "checkpoint_signature_invalid")
    assert result.checkpoint_size == EVENTS  # the forged size is never believed


def test_a_planted_object_that_is_not_a_checkpoint_fails_verification(
    guarded: IamAuditTrail, vault: CheckpointVault
) -> None:
    _record_chain(guarded, 2)
    vault.write(TOP_NAME, b'{"size": 999999}')
    with pytest.raises(HdError, match="unreadable"):
        guarded.verify_chain(CHAIN)


def test_delete_markers_over_the_newest_s3_checkpoints_do_not_hide_a_cut_tail(
    aws_credentials: None, sqlite_store: SqliteControlStore, keys: LocalKeyFile, tamper: SqliteTamperer
) -> None:
    with mock_aws():
        vault = _s3_vault(_audit_bucket())
        trail = _trail(sqlite_store, vault.store, keys)
        _record_chain(trail)
        for size in (EVENTS - 1, EVENTS):
            vault.delete(vault.name_of_size(size))
        tamper.delete("seq > ?", EVENTS - 2)
        assert _break(trail) == (EVENTS - 1, "truncated")


def test_a_cut_dynamodb_tail_is_found_despite_a_rollback_copy_in_the_s3_bucket(dynamo: Any, keys: LocalKeyFile) -> None:
    vault = _s3_vault(_audit_bucket())  # inside the `dynamo` fixture's mock_aws
    trail = _trail(DynamoDbControlStore(TABLE, client=dynamo), vault.store, keys)
    _record_chain(trail)
    vault.copy(vault.name_of_size(EVENTS - 1), TOP_NAME)
    DynamoTamperer(dynamo).delete(EVENTS)
    assert _break(trail) == (EVENTS, "truncated")
