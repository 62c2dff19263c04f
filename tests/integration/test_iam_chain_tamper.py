"""Tampering with a stored IAM chain is found by `verify_chain`: one test per kind of break, SQLite and DynamoDB.

Each test writes a real chain through `IamAuditTrail` into a real control store (the SQLite file,
or DynamoDB under moto), with checkpoints signed by a local key file into a local folder, then
tampers with the stored rows directly, as someone with database access would.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterator
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
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import Conflict
from hd_core.iam_audit import GENESIS_HASH, IamAuditTrail, checkpoint_message, event_hash
from hd_core.iam_events import IamEventType
from hd_core.models import ChainCheckpoint, IamEvent
from hd_core.ports import ControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CHAIN = "org_acme"
EVENTS = 12
CHECKPOINT_EVERY = 5  # with 12 events: checkpoints at sizes 1 (new chain), 5 and 10
TABLE = "hd-control"


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


def _trail(store: ControlStore, checkpoints: LocalFolderCheckpointStore, keys: LocalKeyFile) -> IamAuditTrail:
    return IamAuditTrail(store, checkpoints, keys, checkpoint_every=CHECKPOINT_EVERY, now=SteppingClock())


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
    assert (result.entry_count, result.checkpoint_size) == (EVENTS, 10)
    assert (result.first_entry_hash, result.last_entry_hash) == (events[0].hash, events[-1].hash)
    assert result.to_dict()["first_break"] is None


def test_checkpoints_are_written_for_a_new_chain_and_every_n_events(
    trail: IamAuditTrail, checkpoints: LocalFolderCheckpointStore, tmp_path: Path
) -> None:
    events = _record_chain(trail)
    folder = tmp_path / "state" / "audit" / "iam-checkpoints" / CHAIN
    assert sorted(int(p.name.split("-")[0]) for p in folder.iterdir()) == [1, 5, 10]
    latest = checkpoints.latest_checkpoint(CHAIN)
    assert latest is not None and latest.head_hash == events[9].hash


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
    tamper.delete("seq > ?", 7)  # below the checkpoint at 10: the remaining links are all fine
    result = trail.verify_chain(CHAIN)
    assert result.first_break is not None
    assert (result.first_break.position, result.first_break.kind) == (8, "truncated")
    assert (result.entry_count, result.checkpoint_size) == (7, 10)


def test_a_fully_recomputed_chain_is_reported_as_a_checkpoint_mismatch(
    trail: IamAuditTrail, sqlite_store: SqliteControlStore, tamper: SqliteTamperer
) -> None:
    _record_chain(trail)
    events = sqlite_store.list_iam_events(CHAIN)
    events[3] = replace(events[3], after={"role": "Owner", "n": 4})
    tamper.rewrite_links(_rehash_from(events))
    assert _break(trail) == (10, "checkpoint_mismatch")


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
    assert result.chain_valid and (result.entry_count, result.checkpoint_size) == (EVENTS, 10)


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
