"""IamAuditTrail and its canonical forms: hashing, linking, checkpointing and verification, over in-memory fakes."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.errors import AuditWriteFailed, Conflict, InvalidRequest
from hd_core.iam_audit import (
    GENESIS_HASH,
    ChainBreak,
    ChainVerification,
    IamAuditTrail,
    audit_value,
    checkpoint_message,
    event_hash,
    validate_chain_id,
)
from hd_core.iam_events import IamEventType
from hd_core.models import (
    ApiKeyRecord,
    ChainCheckpoint,
    IamEvent,
    KeyEnv,
    RefreshToken,
    Role,
    User,
    UserStatus,
)
from hd_core.ports import ControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CHAIN = "org_acme"


class SteppingClock:
    """A clock that moves one second per reading, or jumps when told."""

    def __init__(self, start: datetime = T0) -> None:
        self.current = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.current += timedelta(seconds=1)
            return self.current

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self.current += delta


class MemoryChainStore:
    """The IAM-chain part of `ControlStore`, in memory (a unit-test fake, never used by the product)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], IamEvent] = {}
        self.appends = 0
        self._lock = threading.Lock()

    def append_iam_event(self, event: IamEvent) -> None:
        with self._lock:
            self.appends += 1
            if (event.chain_id, event.seq) in self.rows:
                raise Conflict(f"position {event.seq} is taken")
            self.rows[(event.chain_id, event.seq)] = event

    def iam_chain_head(self, chain_id: str) -> IamEvent | None:
        with self._lock:
            seqs = [seq for chain, seq in self.rows if chain == chain_id]
            return self.rows[(chain_id, max(seqs))] if seqs else None

    def list_iam_events(self, chain_id: str, after_seq: int = 0, limit: int | None = None) -> list[IamEvent]:
        with self._lock:
            events = sorted((e for (c, s), e in self.rows.items() if c == chain_id and s > after_seq),
                            key=lambda e: e.seq)
        return events if limit is None else events[:limit]


class MemoryCheckpoints:
    """`CheckpointStore` in memory; `failures` makes the next puts fail like an unreachable bucket."""

    def __init__(self) -> None:
        self.stored: list[ChainCheckpoint] = []
        self.failures = 0

    def put_checkpoint(self, checkpoint: ChainCheckpoint) -> None:
        if self.failures:
            self.failures -= 1
            raise AuditWriteFailed("bucket unreachable")
        self.stored.append(checkpoint)

    def list_checkpoints(self, chain_id: str, *, size: int | None = None) -> list[ChainCheckpoint]:
        return [c for c in self.stored if c.chain_id == chain_id and size in (None, c.size)]

    def sizes(self, chain_id: str = CHAIN) -> list[int]:
        return [c.size for c in self.stored if c.chain_id == chain_id]

    def last(self, chain_id: str = CHAIN) -> ChainCheckpoint:
        return [c for c in self.stored if c.chain_id == chain_id][-1]


def _as_store(store: MemoryChainStore) -> ControlStore:
    """The fake implements only the IAM-chain methods, which is all the trail calls."""
    return cast(ControlStore, store)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyFile:
    return LocalKeyFile(tmp_path_factory.mktemp("keys") / "dev-keys.json")


@pytest.fixture
def store() -> MemoryChainStore:
    return MemoryChainStore()


@pytest.fixture
def checkpoints() -> MemoryCheckpoints:
    return MemoryCheckpoints()


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
def trail(store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile,
          clock: SteppingClock) -> IamAuditTrail:
    return IamAuditTrail(_as_store(store), checkpoints, keys, checkpoint_every=5, now=clock)


def _record(trail: IamAuditTrail, n: int = 1, chain: str = CHAIN) -> list[IamEvent]:
    return [
        trail.record(chain, IamEventType.USER_ROLE_CHANGED, actor="usr_owner", target=f"usr_{i}",
                     before={"role": "Analyst"}, after={"role": "Admin"}, request_id=f"req-{i}")
        for i in range(n)
    ]


def _user() -> User:
    return User("usr_1", "org_1", "ada@example.com", Role.ADMIN, UserStatus.ACTIVE, "eng", None, T0,
                name="Ada", password_hash="$argon2id$secret", mfa_secret="JBSWY3DPEHPK3PXP", mfa_enabled=True,
                external_ids=("https://idp#ada",))


# --- canonical forms ---------------------------------------------------------------------------------


def test_genesis_hash_is_sixty_four_zeros() -> None:
    assert GENESIS_HASH == "0" * 64


def test_audit_value_of_a_user_drops_credentials_and_makes_values_json_safe() -> None:
    value = audit_value(_user())
    assert value is not None
    assert "password_hash" not in value and "mfa_secret" not in value
    assert value["role"] == "Admin" and value["status"] == "active"
    assert value["created_at"] == "2026-03-01T12:00:00.000000Z"
    assert value["external_ids"] == ["https://idp#ada"]
    assert value["mfa_enabled"] is True and value["region"] is None
    assert json.loads(json.dumps(value)) == value


def test_audit_value_drops_key_and_token_hashes_even_inside_mappings() -> None:
    key = ApiKeyRecord("key_1", "org_1", "usr_1", KeyEnv.LIVE, "argon-hash", ("query:read",), T0, None, None, "ci")
    token = RefreshToken("rt_1", "fam_1", "usr_1", "org_1", "sha-hash", T0, T0 + timedelta(days=1))
    assert "key_hash" not in (audit_value(key) or {})
    assert "token_hash" not in (audit_value(token) or {})
    nested = audit_value({"user": {"password_hash": "x", "email": "a@b"}, "kind": KeyEnv.TEST})
    assert nested == {"user": {"email": "a@b"}, "kind": "test"}


def test_audit_value_keeps_none_and_refuses_values_that_are_not_entities() -> None:
    assert audit_value(None) is None
    with pytest.raises(TypeError):
        audit_value("a string")
    with pytest.raises(TypeError):
        audit_value({"when": object()})


def test_event_hash_is_sha256_of_canonical_json_without_the_position() -> None:
    before: dict[str, object] = {"role": "Analyst", "name": "Zoë"}
    digest = event_hash(GENESIS_HASH, "iamevt_1", CHAIN, "user.role_changed", "usr_owner", "usr_1",
                        before, None, T0, "req-1")
    expected_text = (
        '{"actor":"usr_owner","after":null,"at":"2026-03-01T12:00:00.000000Z",'
        '"before":{"name":"Zoë","role":"Analyst"},"chain_id":"org_acme","event_id":"iamevt_1",'
        f'"event_type":"user.role_changed","prev_hash":"{GENESIS_HASH}","request_id":"req-1","target":"usr_1"}}'
    )
    assert digest == hashlib.sha256(expected_text.encode("utf-8")).hexdigest()


def test_event_hash_changes_with_every_field() -> None:
    args: list[object] = [GENESIS_HASH, "e", CHAIN, "org.created", "a", "t", {"x": 1}, {"x": 2}, T0, "r"]
    baseline = event_hash(*args)  # type: ignore[arg-type]
    changed = ["1" * 64, "e2", "org_other", "org.suspended", "a2", "t2", {"x": 3}, None, T0 + timedelta(1), "r2"]
    for index, value in enumerate(changed):
        variant = list(args)
        variant[index] = value
        assert event_hash(*variant) != baseline, f"field {index} is not covered by the hash"  # type: ignore[arg-type]


def test_event_hash_does_not_depend_on_key_order_or_time_zone() -> None:
    east = T0.astimezone(datetime.fromisoformat("2026-03-01T14:00:00+02:00").tzinfo)
    one = event_hash(GENESIS_HASH, "e", CHAIN, "org.created", "a", "t", {"a": 1, "b": 2}, None, T0, "r")
    two = event_hash(GENESIS_HASH, "e", CHAIN, "org.created", "a", "t", {"b": 2, "a": 1}, None, east, "r")
    assert one == two


def test_checkpoint_message_is_canonical_json_naming_what_it_signs() -> None:
    message = checkpoint_message(CHAIN, 12, "ab" * 32, T0)
    assert json.loads(message) == {"type": "hd.iam_checkpoint.v1", "chain_id": CHAIN, "size": 12,
                                   "head_hash": "ab" * 32, "time": "2026-03-01T12:00:00.000000Z"}
    assert message == json.dumps(json.loads(message), sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "a.b", "org acme", "x" * 129])
def test_chain_ids_that_could_escape_a_path_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_chain_id(bad)


# --- recording -----------------------------------------------------------------------------------


def test_first_event_links_to_genesis_and_each_next_event_to_its_predecessor(trail: IamAuditTrail) -> None:
    first, second, third = _record(trail, 3)
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert (third.seq, third.prev_hash) == (3, second.hash)
    assert first.event_type == "user.role_changed" and first.chain_id == CHAIN
    assert first.hash == event_hash(GENESIS_HASH, first.event_id, CHAIN, first.event_type, "usr_owner", "usr_0",
                                    {"role": "Analyst"}, {"role": "Admin"}, first.at, "req-0")


def test_record_keeps_credentials_out_of_the_stored_event(trail: IamAuditTrail, store: MemoryChainStore) -> None:
    user = _user()
    trail.record(CHAIN, IamEventType.USER_PASSWORD_SET, actor="usr_1", target="usr_1",
                 before=user, after=replace(user, password_hash="$argon2id$new"), request_id="req")
    stored = store.list_iam_events(CHAIN)[0]
    assert "password_hash" not in json.dumps([stored.before, stored.after])


def test_chains_are_independent(trail: IamAuditTrail) -> None:
    _record(trail, 2, chain="org_a")
    (other,) = _record(trail, 1, chain="org_b")
    assert (other.seq, other.prev_hash) == (1, GENESIS_HASH)


def test_record_retries_at_the_new_head_when_another_writer_took_the_position(
    trail: IamAuditTrail, store: MemoryChainStore
) -> None:
    (first,) = _record(trail, 1)
    competitor = replace(first, seq=2, event_id="iamevt_other", prev_hash=first.hash, hash="c" * 64)
    real_head = store.iam_chain_head
    reads: list[IamEvent | None] = []

    def stale_head_once(chain_id: str) -> IamEvent | None:
        head = real_head(chain_id)
        if not reads:  # the competitor lands between our head read and our append
            store.rows[(CHAIN, 2)] = competitor
        reads.append(head)
        return head

    store.iam_chain_head = stale_head_once  # type: ignore[method-assign]
    (mine,) = _record(trail, 1)
    assert (mine.seq, mine.prev_hash) == (3, competitor.hash)
    assert [e.seq for e in store.list_iam_events(CHAIN)] == [1, 2, 3]


def test_record_gives_up_with_audit_write_failed_after_the_bounded_attempts(
    store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile
) -> None:
    def always_taken(event: IamEvent) -> None:
        store.appends += 1
        raise Conflict("taken")

    store.append_iam_event = always_taken  # type: ignore[method-assign]
    trail = IamAuditTrail(_as_store(store), checkpoints, keys, max_append_attempts=3)
    with pytest.raises(AuditWriteFailed, match="3 times"):
        _record(trail, 1)
    assert store.appends == 3


def test_unknown_event_type_is_refused(trail: IamAuditTrail) -> None:
    with pytest.raises(ValueError):
        trail.record(CHAIN, "user.teleported", actor="a", target="t",  # type: ignore[arg-type]
                     before=None, after=None, request_id="r")


# --- checkpoints ---------------------------------------------------------------------------------


def test_a_checkpoint_is_written_for_a_new_chain_and_then_every_n_events(
    trail: IamAuditTrail, checkpoints: MemoryCheckpoints
) -> None:
    events = _record(trail, 12)
    assert checkpoints.sizes() == [1, 5, 10]
    assert checkpoints.last().head_hash == events[9].hash


def test_by_default_every_event_is_checkpointed(
    store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile, clock: SteppingClock
) -> None:
    events = _record(IamAuditTrail(_as_store(store), checkpoints, keys, now=clock), 4)
    assert checkpoints.sizes() == [1, 2, 3, 4]
    assert [c.head_hash for c in checkpoints.stored] == [e.hash for e in events]


def test_a_checkpoint_is_written_when_the_latest_is_older_than_the_interval(
    store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile, clock: SteppingClock
) -> None:
    trail = IamAuditTrail(_as_store(store), checkpoints, keys, checkpoint_every=100,
                          checkpoint_interval=timedelta(minutes=15), now=clock)
    _record(trail, 3)
    assert checkpoints.sizes() == [1]
    clock.advance(timedelta(minutes=16))
    _record(trail, 2)
    assert checkpoints.sizes() == [1, 4]


def test_a_new_trail_instance_signs_its_first_event_of_a_chain_without_reading_old_checkpoints(
    store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile, clock: SteppingClock
) -> None:
    _record(IamAuditTrail(_as_store(store), checkpoints, keys, checkpoint_every=100, now=clock), 2)
    checkpoints.list_checkpoints = None  # type: ignore[assignment,method-assign]  # reading them would fail
    _record(IamAuditTrail(_as_store(store), checkpoints, keys, checkpoint_every=100, now=clock), 2)
    assert checkpoints.sizes() == [1, 3]


def test_a_failed_checkpoint_keeps_the_event_and_the_next_append_retries(
    trail: IamAuditTrail, store: MemoryChainStore, checkpoints: MemoryCheckpoints,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _record(trail, 4)
    checkpoints.failures = 1
    with caplog.at_level(logging.WARNING, logger="hd_core.iam_audit"):
        (fifth,) = _record(trail, 1)
    assert fifth.seq == 5 and store.iam_chain_head(CHAIN) == fifth
    assert "could not be written" in caplog.text
    assert checkpoints.sizes() == [1]
    _record(trail, 1)
    assert checkpoints.sizes() == [1, 6]


def test_write_checkpoint_signs_the_current_head(
    trail: IamAuditTrail, keys: LocalKeyFile, checkpoints: MemoryCheckpoints
) -> None:
    assert trail.write_checkpoint(CHAIN) is None  # nothing to sign yet
    events = _record(trail, 3)
    checkpoint = trail.write_checkpoint(CHAIN)
    assert checkpoint is not None and checkpoints.last() == checkpoint
    assert (checkpoint.size, checkpoint.head_hash, checkpoint.key_id) == (3, events[-1].hash, keys.checkpoint_key_id())
    message = checkpoint_message(CHAIN, 3, events[-1].hash, checkpoint.time)
    assert keys.verify_checkpoint(checkpoint.key_id, message, base64.b64decode(checkpoint.signature))


# --- reading and verifying -------------------------------------------------------------------------


def test_events_are_read_in_pages(trail: IamAuditTrail) -> None:
    _record(trail, 7)
    assert [e.seq for e in trail.events(CHAIN, limit=3)] == [1, 2, 3]
    assert [e.seq for e in trail.events(CHAIN, after_seq=3, limit=3)] == [4, 5, 6]
    assert [e.seq for e in trail.events(CHAIN, after_seq=6)] == [7]
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_seq": -1}):
        with pytest.raises(InvalidRequest):
            trail.events(CHAIN, **bad)


def test_an_empty_chain_without_checkpoint_is_valid(trail: IamAuditTrail) -> None:
    result = trail.verify_chain(CHAIN)
    assert (result.entry_count, result.chain_valid, result.first_break, result.checkpoint_size) == (0, True, None, None)
    assert result.first_entry_hash is None and result.last_entry_hash is None


def test_an_untouched_chain_longer_than_one_page_is_valid(trail: IamAuditTrail, clock: SteppingClock) -> None:
    events = _record(trail, 1001)
    result = trail.verify_chain(CHAIN)
    assert result.chain_valid and result.first_break is None
    assert (result.entry_count, result.checkpoint_size) == (1001, 1000)
    assert (result.first_entry_hash, result.last_entry_hash) == (events[0].hash, events[-1].hash)
    assert result.verified_at <= clock.current


def test_swapped_events_are_reported_as_reordered(trail: IamAuditTrail, store: MemoryChainStore) -> None:
    _record(trail, 6)
    third, fourth = store.rows[(CHAIN, 3)], store.rows[(CHAIN, 4)]
    store.rows[(CHAIN, 3)], store.rows[(CHAIN, 4)] = replace(fourth, seq=3), replace(third, seq=4)
    expected = ChainBreak(3, "reordered", "event 3 links to an event placed after it")
    assert trail.verify_chain(CHAIN).first_break == expected


def test_a_deleted_event_with_renumbered_successors_is_reported_as_deleted(
    trail: IamAuditTrail, store: MemoryChainStore
) -> None:
    _record(trail, 6)
    del store.rows[(CHAIN, 6)]  # drop the tail too, so only the link can tell
    fifth = store.rows.pop((CHAIN, 5))
    store.rows[(CHAIN, 4)] = replace(fifth, seq=4)
    result = trail.verify_chain(CHAIN)
    assert result.first_break is not None and (result.first_break.position, result.first_break.kind) == (4, "deleted")


def test_an_event_placed_at_an_earlier_position_again_is_reported_as_reordered(
    trail: IamAuditTrail, store: MemoryChainStore
) -> None:
    events = _record(trail, 4)
    store.rows[(CHAIN, 4)] = replace(events[1], seq=4)  # event 2 replayed over event 4
    result = trail.verify_chain(CHAIN)
    assert result.first_break is not None and (result.first_break.position, result.first_break.kind) == (4, "reordered")


def test_a_checkpoint_of_another_chain_does_not_vouch_for_this_one(
    trail: IamAuditTrail, checkpoints: MemoryCheckpoints
) -> None:
    _record(trail, 2, chain="org_a")
    _record(trail, 2, chain="org_b")
    genuine = checkpoints.last("org_a")
    checkpoints.stored.append(replace(genuine, chain_id="org_b", size=2, time=genuine.time + timedelta(hours=1)))
    result = trail.verify_chain("org_b")
    assert result.first_break is not None and result.first_break.kind == "checkpoint_signature_invalid"


@pytest.fixture
def every_event(store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile,
                clock: SteppingClock) -> IamAuditTrail:
    return IamAuditTrail(_as_store(store), checkpoints, keys, now=clock)


def _rehash(store: MemoryChainStore, first_seq: int, after: dict[str, object]) -> None:
    """Edit event `first_seq` and recompute every hash from there on, as a careful forger would."""
    rows = sorted((e for (c, _), e in store.rows.items() if c == CHAIN), key=lambda e: e.seq)
    prev = rows[first_seq - 2].hash if first_seq > 1 else GENESIS_HASH
    for event in rows[first_seq - 1:]:
        edited = replace(event, after=after) if event.seq == first_seq else event
        digest = event_hash(prev, edited.event_id, CHAIN, edited.event_type, edited.actor, edited.target,
                            edited.before, edited.after, edited.at, edited.request_id)
        store.rows[(CHAIN, event.seq)] = replace(edited, prev_hash=prev, hash=digest)
        prev = digest


def test_the_largest_signed_size_counts_whatever_order_the_checkpoints_come_in(
    every_event: IamAuditTrail, store: MemoryChainStore, checkpoints: MemoryCheckpoints
) -> None:
    _record(every_event, 6)
    checkpoints.stored.reverse()
    checkpoints.stored.append(checkpoints.stored[-1])  # a copy of the oldest, listed last
    del store.rows[(CHAIN, 6)], store.rows[(CHAIN, 5)]
    result = every_event.verify_chain(CHAIN)
    assert result.first_break is not None and (result.first_break.position, result.first_break.kind) == (
        5, "truncated")
    assert (result.entry_count, result.checkpoint_size) == (4, 6)


def test_copies_of_genuine_checkpoints_do_not_break_an_untouched_chain(
    every_event: IamAuditTrail, checkpoints: MemoryCheckpoints
) -> None:
    _record(every_event, 4)
    checkpoints.stored += checkpoints.stored[:2]
    result = every_event.verify_chain(CHAIN)
    assert result.chain_valid and result.checkpoint_size == 4


@pytest.mark.parametrize("signature", [base64.b64encode(b"0" * 70).decode(), "not base64!", ""])
def test_a_checkpoint_failing_its_signature_is_a_break_even_below_the_largest_signed_one(
    every_event: IamAuditTrail, checkpoints: MemoryCheckpoints, signature: str
) -> None:
    _record(every_event, 6)
    checkpoints.stored.append(replace(checkpoints.stored[1], signature=signature))
    result = every_event.verify_chain(CHAIN)
    assert result.first_break is not None
    assert (result.first_break.position, result.first_break.kind) == (2, "checkpoint_signature_invalid")
    assert result.checkpoint_size == 6


def test_a_rewrite_is_found_even_after_a_later_event_signed_the_rewritten_head(
    every_event: IamAuditTrail, store: MemoryChainStore
) -> None:
    _record(every_event, 6)
    _rehash(store, 3, {"role": "Owner"})
    _record(every_event, 1)  # the trail itself signs the forged head at 7: the latest checkpoint agrees
    result = every_event.verify_chain(CHAIN)
    assert result.first_break is not None
    assert (result.first_break.position, result.first_break.kind) == (3, "checkpoint_mismatch")


def test_the_schedule_signs_a_head_whose_only_checkpoint_is_forged_or_for_another_head(
    store: MemoryChainStore, checkpoints: MemoryCheckpoints, keys: LocalKeyFile, clock: SteppingClock
) -> None:
    trail = IamAuditTrail(_as_store(store), checkpoints, keys, checkpoint_every=100, now=clock)
    events = _record(trail, 3)
    genuine_first = checkpoints.last()
    checkpoints.stored.append(replace(genuine_first, size=3, head_hash=events[2].hash))  # signature now fails
    written = trail.checkpoint_if_behind(CHAIN)
    assert written is not None and (written.size, written.head_hash) == (3, events[2].hash)
    assert trail.checkpoint_if_behind(CHAIN) is None
    _rehash(store, 3, {"role": "Owner"})
    assert trail.checkpoint_if_behind(CHAIN) is not None  # a checkpoint of the old head does not cover the new


def test_verification_to_dict_has_the_api_shape() -> None:
    verification = ChainVerification(CHAIN, 3, False, "a" * 64, "b" * 64, T0, 2,
                                      ChainBreak(2, "edited", "event 2 no longer matches its hash"))
    assert verification.to_dict() == {
        "entry_count": 3,
        "chain_valid": False,
        "first_entry_hash": "a" * 64,
        "last_entry_hash": "b" * 64,
        "verified_at": "2026-03-01T12:00:00.000000Z",
        "checkpoint_size": 2,
        "first_break": {"position": 2, "kind": "edited", "detail": "event 2 no longer matches its hash"},
    }
    valid = replace(verification, chain_valid=True, first_break=None)
    assert valid.to_dict()["first_break"] is None
    json.dumps(verification.to_dict())

