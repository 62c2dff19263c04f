"""The hash-chained IAM audit trail: every administrative change, linked so that tampering shows.

Each event's `hash` is SHA-256 over the canonical JSON of its content and the previous event's
hash (the first event links to `GENESIS_HASH`). Editing an event breaks its own hash; deleting or
swapping events breaks a link. Rewriting every hash after an edit makes the chain consistent
again, and cutting events off the tail leaves no broken link at all, which is why the head is
signed into a checkpoint kept outside the control store (the Object Lock audit bucket) after
every event by default: an event is only safe from silent removal or rewriting once a signature
covers it, and admin changes are rare enough that one signature each costs little.

Verification trusts a checkpoint's signed content only, never its object name: someone who can
write to the bucket but cannot sign can copy an old checkpoint under any name, or add garbage,
so the chain is held against every stored checkpoint. Any checkpoint that fails its signature
is reported (it is evidence of tampering, not noise), every signed one must agree with the
chain, and the largest signed size says how long the chain must at least be.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import random
import re
import threading
import time as time_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import TypeVar

from hd_core.errors import AuditWriteFailed, Conflict, HdError, InvalidRequest
from hd_core.iam_events import IamEventType
from hd_core.models import ChainCheckpoint, IamEvent, new_id, utc_now
from hd_core.ports import CheckpointKeys, CheckpointStore, IamChainStore

log = logging.getLogger(__name__)

# The `prev_hash` of every chain's first event: a fixed, documented value, so a verifier needs nothing else.
GENESIS_HASH = "0" * 64

# Credentials and their hashes never enter the trail: it is readable by auditors and kept for years.
SECRET_FIELDS = frozenset({"key_hash", "password_hash", "mfa_secret", "token_hash"})

# Checkpoint signatures cover this label too, so a checkpoint signature can never pass for another message.
CHECKPOINT_MESSAGE_TYPE = "hd.iam_checkpoint.v1"

_CHAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
_CHAIN_ID_MAX_LENGTH = 128
_VERIFY_PAGE_SIZE = 500
_MAX_EVENTS_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_T = TypeVar("_T")


def validate_chain_id(chain_id: str) -> str:
    """`chain_id` itself if it is safe to use as a path segment or object key part; raises `InvalidRequest`."""
    if not isinstance(chain_id, str) or len(chain_id) > _CHAIN_ID_MAX_LENGTH or not _CHAIN_ID.fullmatch(chain_id):
        raise InvalidRequest(
            f"chain id must be 1-{_CHAIN_ID_MAX_LENGTH} characters of [A-Za-z0-9_-], got {chain_id!r}"
        )
    return chain_id


def canonical_json(value: object) -> str:
    """The one JSON spelling hashed and signed here: sorted keys, no spaces, UTF-8 text, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_audit_time(value: datetime) -> str:
    """ISO-8601 UTC with microseconds and a `Z`; naive datetimes are refused (their zone is a guess)."""
    if value.tzinfo is None:
        raise ValueError("IAM audit timestamps must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_audit_time(text: str) -> datetime:
    """The inverse of `format_audit_time`."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"IAM audit timestamp has no zone: {text!r}")
    return value.astimezone(UTC)


def audit_value(obj: object) -> dict[str, object] | None:
    """A before/after value as a JSON-safe dict without secret fields; None stays None."""
    if obj is None:
        return None
    if not (_is_dataclass_instance(obj) or isinstance(obj, Mapping)):
        raise TypeError(f"an IAM audit value must be a dataclass instance, a mapping or None, not {type(obj).__name__}")
    value = _json_safe(obj)
    assert isinstance(value, dict)
    return value


def _is_dataclass_instance(obj: object) -> bool:
    return is_dataclass(obj) and not isinstance(obj, type)


def _json_safe(value: object) -> object:
    """Recursively turn entities into JSON values; secret fields are dropped at every depth."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Enum):  # before str: a StrEnum is a str, but its value is what we record
        return _json_safe(value.value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("IAM audit values must be finite numbers")
        return value
    if isinstance(value, datetime):
        return format_audit_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if _is_dataclass_instance(value):
        return _json_safe({f.name: getattr(value, f.name) for f in fields(value)})  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items() if str(k) not in SECRET_FIELDS}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_safe(item) for item in value), key=canonical_json)
    raise TypeError(f"cannot record a {type(value).__name__} in the IAM audit trail")


def event_hash(
    prev_hash: str,
    event_id: str,
    chain_id: str,
    event_type: str,
    actor: str,
    target: str,
    before: dict[str, object] | None,
    after: dict[str, object] | None,
    at: datetime,
    request_id: str,
    # The position (`seq`) is deliberately absent: order is carried by `prev_hash`, so a swap breaks links.
) -> str:
    """SHA-256 hex of the canonical JSON of one event's content and its predecessor's hash."""
    content = {
        "prev_hash": prev_hash,
        "event_id": event_id,
        "chain_id": chain_id,
        "event_type": str(event_type),
        "actor": actor,
        "target": target,
        "before": before,
        "after": after,
        "at": format_audit_time(at),
        "request_id": request_id,
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def checkpoint_message(chain_id: str, size: int, head_hash: str, time: datetime) -> bytes:
    """The canonical bytes a checkpoint signature covers."""
    statement = {
        "type": CHECKPOINT_MESSAGE_TYPE,
        "chain_id": chain_id,
        "size": size,
        "head_hash": head_hash,
        "time": format_audit_time(time),
    }
    return canonical_json(statement).encode()


# --- checkpoint documents (shared by the checkpoint store adapters) ---------------------------------


def checkpoint_object_name(checkpoint: ChainCheckpoint) -> str:
    """`<size:012d>-<unix_ms>.json`: an index for finding a size's checkpoints, never evidence of what they say."""
    unix_ms = (checkpoint.time - _EPOCH) // timedelta(milliseconds=1)
    return f"{checkpoint_name_prefix(checkpoint.size)}{unix_ms}.json"


def checkpoint_name_time(name: str) -> datetime | None:
    """When a checkpoint named by `checkpoint_object_name` says it was signed (None for another name): an index
    for narrowing a listing, never evidence."""
    size, _, rest = name.partition("-")
    unix_ms = rest.removesuffix(".json")
    if not (size.isdigit() and unix_ms.isdigit() and rest.endswith(".json")):
        return None
    return _EPOCH + timedelta(milliseconds=int(unix_ms))


def checkpoint_name_prefix(size: int) -> str:
    """The start of the object names of the checkpoints filed under `size`."""
    if not 1 <= size < 10**12:
        raise ValueError(f"a checkpoint size must be between 1 and 10**12 - 1, got {size}")
    return f"{size:012d}-"


def checkpoint_to_json(checkpoint: ChainCheckpoint, message_type: str = CHECKPOINT_MESSAGE_TYPE) -> bytes:
    """The stored form of a checkpoint; `message_type` names what its signature covers (IAM unless told)."""
    document = {
        "chain_id": checkpoint.chain_id,
        "size": checkpoint.size,
        "head_hash": checkpoint.head_hash,
        "time": format_audit_time(checkpoint.time),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
        "message_type": message_type,
    }
    if checkpoint.signed_by is not None:
        document["signed_by"] = checkpoint.signed_by
    return (canonical_json(document) + "\n").encode()


def checkpoint_from_json(data: bytes, where: str) -> ChainCheckpoint:
    """Parse a stored checkpoint; raises `HdError` naming `where` if it is not one."""
    try:
        document = json.loads(data)
        return ChainCheckpoint(
            chain_id=_typed(document["chain_id"], str),
            size=_typed(document["size"], int),
            head_hash=_typed(document["head_hash"], str),
            time=parse_audit_time(_typed(document["time"], str)),
            key_id=_typed(document["key_id"], str),
            signature=_typed(document["signature"], str),
            signed_by=None if document.get("signed_by") is None else _typed(document["signed_by"], str),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise HdError(f"IAM checkpoint {where} is unreadable ({exc}); the audit evidence needs inspection") from exc


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


# --- verification results -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    """Where and how a chain stops being trustworthy.

    `kind` is one of "edited", "deleted", "reordered", "truncated", "checkpoint_mismatch",
    "checkpoint_signature_invalid", and for the query audit chain "inserted" (a record without chain
    fields where only chained ones belong); `position` is the 1-based seq where it shows (for a forged
    checkpoint, the size it claims).
    """

    position: int
    kind: str
    detail: str

    def to_dict(self) -> dict[str, object]:
        """The JSON shape the audit API returns."""
        return {"position": self.position, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class ChainVerification:
    """The outcome of re-reading and re-hashing a whole chain against every stored checkpoint.

    `checkpoint_size` is the largest size a validly signed checkpoint covers (None without one).
    """

    chain_id: str
    entry_count: int
    chain_valid: bool
    first_entry_hash: str | None
    last_entry_hash: str | None
    verified_at: datetime
    checkpoint_size: int | None
    first_break: ChainBreak | None

    def to_dict(self) -> dict[str, object]:
        """The JSON shape the audit API returns."""
        return {
            "entry_count": self.entry_count,
            "chain_valid": self.chain_valid,
            "first_entry_hash": self.first_entry_hash,
            "last_entry_hash": self.last_entry_hash,
            "verified_at": format_audit_time(self.verified_at),
            "checkpoint_size": self.checkpoint_size,
            "first_break": None if self.first_break is None else self.first_break.to_dict(),
        }


@dataclass
class _ChainWalk:
    """What verification has learnt so far while reading a chain in position order."""

    checkpointed: frozenset[int]  # the sizes signed checkpoints cover
    entry_count: int = 0
    first_hash: str | None = None
    last_hash: str | None = None
    hashes_at_checkpoints: dict[int, str] = field(default_factory=dict)
    first_break: ChainBreak | None = None
    # (position, hash) of a link to a hash not seen yet: "deleted", unless a later event carries that hash.
    pending_link: tuple[int, str] | None = None
    expected_seq: int = 1
    previous_hash: str = GENESIS_HASH
    seen_hashes: set[str] = field(default_factory=set)


# --- the trail ----------------------------------------------------------------------------------


class IamAuditTrail:
    """Records IAM events into per-organisation hash chains, checkpoints them and verifies them.

    `checkpoint_every` defaults to 1, a checkpoint after every event: events after the latest
    checkpoint can be cut off the tail without any trace, so a larger value (or a time interval)
    only trades that exposure for fewer signatures, and admin events are too rare for it to pay.
    """

    def __init__(
        self,
        store: IamChainStore,
        checkpoints: CheckpointStore,
        keys: CheckpointKeys,
        *,
        checkpoint_every: int = 1,
        checkpoint_interval: timedelta = timedelta(minutes=15),
        now: Callable[[], datetime] = utc_now,
        max_append_attempts: int = 20,
    ) -> None:
        if checkpoint_every < 1 or max_append_attempts < 1:
            raise ValueError("checkpoint_every and max_append_attempts must be at least 1")
        self._store = store
        self._checkpoints = checkpoints
        self._keys = keys
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._now = now
        self._max_append_attempts = max_append_attempts
        self._lock = threading.Lock()
        # Per chain: when the latest known checkpoint was signed (saves a store read per event).
        self._checkpointed_at: dict[str, datetime] = {}
        # Chains whose due checkpoint could not be written: the next append tries again.
        self._checkpoint_owed: set[str] = set()

    def record(
        self,
        chain_id: str,
        event_type: IamEventType,
        *,
        actor: str,
        target: str,
        before: object | None,
        after: object | None,
        request_id: str,
    ) -> IamEvent:
        """Append one event at the head of the chain; raises `AuditWriteFailed` if it cannot take a position."""
        validate_chain_id(chain_id)
        kind = IamEventType(event_type)
        before_value, after_value = audit_value(before), audit_value(after)
        event_id = new_id("iamevt")
        for attempt in range(self._max_append_attempts):
            head = self._store.iam_chain_head(chain_id)
            seq = 1 if head is None else head.seq + 1
            prev_hash = GENESIS_HASH if head is None else head.hash
            at = self._now()
            digest = event_hash(
                prev_hash, event_id, chain_id, kind.value, actor, target, before_value, after_value, at, request_id
            )
            event = IamEvent(
                chain_id, seq, event_id, kind.value, actor, target, before_value, after_value, at, request_id,
                prev_hash, digest,
            )
            try:
                self._store.append_iam_event(event)
            except Conflict:
                _back_off(attempt)
                continue
            self._checkpoint_if_due(event)
            return event
        raise AuditWriteFailed(
            f"IAM event {kind.value} could not be appended to chain {chain_id}: other writers took the next "
            f"position {self._max_append_attempts} times in a row; retry the request"
        )

    def write_checkpoint(self, chain_id: str) -> ChainCheckpoint | None:
        """Sign the chain's current head now and store the checkpoint; None for an empty chain."""
        validate_chain_id(chain_id)
        head = self._store.iam_chain_head(chain_id)
        if head is None:
            return None
        at = self._now()
        signature = self._keys.sign_checkpoint(checkpoint_message(chain_id, head.seq, head.hash, at))
        checkpoint = ChainCheckpoint(
            chain_id=chain_id,
            size=head.seq,
            head_hash=head.hash,
            time=at,
            key_id=self._keys.checkpoint_key_id(),
            signature=base64.b64encode(signature).decode("ascii"),
        )
        self._checkpoints.put_checkpoint(checkpoint)
        with self._lock:
            self._checkpointed_at[chain_id] = max(at, self._checkpointed_at.get(chain_id, at))
            self._checkpoint_owed.discard(chain_id)
        return checkpoint

    def checkpoint_if_behind(self, chain_id: str) -> ChainCheckpoint | None:
        """Sign the head unless a validly signed checkpoint already covers it (the scheduled "every M minutes").

        Every event is normally signed as it is recorded; this catches the heads whose checkpoint
        could not be written then (an unreachable bucket or key), bounding their exposure to the
        schedule's period. Only the head's own checkpoints are read, so the schedule stays cheap.
        """
        validate_chain_id(chain_id)
        head = self._store.iam_chain_head(chain_id)
        if head is None or self._head_is_signed(chain_id, head):
            return None
        return self.write_checkpoint(chain_id)

    def events(self, chain_id: str, *, after_seq: int = 0, limit: int = 100) -> list[IamEvent]:
        """One page of the chain in position order, starting after `after_seq`."""
        validate_chain_id(chain_id)
        if not 1 <= limit <= _MAX_EVENTS_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {_MAX_EVENTS_PAGE}, got {limit}")
        if after_seq < 0:
            raise InvalidRequest(f"after_seq must not be negative, got {after_seq}")
        return self._store.list_iam_events(chain_id, after_seq, limit)

    def verify_chain(self, chain_id: str) -> ChainVerification:
        """Re-read and re-hash the whole chain, then hold it against every stored checkpoint; reports the first break.

        Breaks in the chain itself come first, then checkpoints that fail their signature, then
        the earliest place where the chain disagrees with a signed checkpoint (or is shorter).
        """
        validate_chain_id(chain_id)
        # Checkpoints are read first: events appended meanwhile only make the chain longer than they say.
        signed, forged = self._sort_checkpoints(chain_id)
        walk = _ChainWalk(checkpointed=frozenset(checkpoint.size for checkpoint in signed))
        after_seq = 0
        while True:
            page = self._store.list_iam_events(chain_id, after_seq, _VERIFY_PAGE_SIZE)
            for event in page:
                _walk_event(walk, chain_id, event)
            if len(page) < _VERIFY_PAGE_SIZE:
                break
            after_seq = page[-1].seq
        _settle_pending_link(walk)
        if walk.first_break is None:
            walk.first_break = _forgery_break(forged) or _checkpoint_disagreement(signed, walk)
        return ChainVerification(
            chain_id=chain_id,
            entry_count=walk.entry_count,
            chain_valid=walk.first_break is None,
            first_entry_hash=walk.first_hash,
            last_entry_hash=walk.last_hash,
            verified_at=self._now(),
            checkpoint_size=max((checkpoint.size for checkpoint in signed), default=None),
            first_break=walk.first_break,
        )

    # --- internals ------------------------------------------------------------------------------

    def _checkpoint_if_due(self, event: IamEvent) -> None:
        """Checkpoint after an append when due; a failure is logged and owed, never undoes the event."""
        if not self._checkpoint_due(event):
            return
        try:
            self.write_checkpoint(event.chain_id)
        # Any failure (KMS, S3, disk) must not fail the change that was already recorded.
        except Exception:
            with self._lock:
                self._checkpoint_owed.add(event.chain_id)
            log.warning(
                "IAM checkpoint for chain %s at position %d could not be written; the next event retries",
                event.chain_id, event.seq, exc_info=True,
            )

    def _checkpoint_due(self, event: IamEvent) -> bool:
        if event.seq % self._checkpoint_every == 0:
            return True
        with self._lock:
            if event.chain_id in self._checkpoint_owed:
                return True
            last = self._checkpointed_at.get(event.chain_id)
        # A process that has not signed this chain yet signs at once: cheaper than reading every
        # stored checkpoint to learn when the last one was made, and a new chain is never unsigned.
        return last is None or self._now() - last >= self._checkpoint_interval

    def _sort_checkpoints(self, chain_id: str) -> tuple[list[ChainCheckpoint], list[ChainCheckpoint]]:
        """Every stored checkpoint of the chain, as (validly signed, not validly signed)."""
        signed: list[ChainCheckpoint] = []
        forged: list[ChainCheckpoint] = []
        for checkpoint in self._checkpoints.list_checkpoints(chain_id):
            (signed if self._is_signed(chain_id, checkpoint) else forged).append(checkpoint)
        return signed, forged

    def _head_is_signed(self, chain_id: str, head: IamEvent) -> bool:
        """Whether a validly signed checkpoint vouches for exactly this head (its name only helps find it)."""
        return any(
            checkpoint.size == head.seq and checkpoint.head_hash == head.hash and self._is_signed(chain_id, checkpoint)
            for checkpoint in self._checkpoints.list_checkpoints(chain_id, size=head.seq)
        )

    def _is_signed(self, chain_id: str, checkpoint: ChainCheckpoint) -> bool:
        """Whether the checkpoint key signed this checkpoint's content for this chain (a copy from another fails)."""
        message = checkpoint_message(chain_id, checkpoint.size, checkpoint.head_hash, checkpoint.time)
        try:
            signature = base64.b64decode(checkpoint.signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        return bool(signature) and self._keys.verify_checkpoint(checkpoint.key_id, message, signature)


def _forgery_break(forged: list[ChainCheckpoint]) -> ChainBreak | None:
    """A stored checkpoint that fails its signature: someone wrote evidence they could not sign."""
    if not forged:
        return None
    checkpoint = min(forged, key=lambda c: (c.size, c.time))
    return ChainBreak(
        checkpoint.size, "checkpoint_signature_invalid",
        f"a stored checkpoint claiming size {checkpoint.size} is not signed by checkpoint key {checkpoint.key_id!r} "
        f"for this chain ({len(forged)} such checkpoint(s) in all)",
    )


def _checkpoint_disagreement(signed: list[ChainCheckpoint], walk: _ChainWalk) -> ChainBreak | None:
    """The earliest place where the (link-consistent) chain disagrees with a signed checkpoint, if any."""
    breaks = [found for checkpoint in signed if (found := _mismatch(checkpoint, walk)) is not None]
    largest = max((checkpoint.size for checkpoint in signed), default=0)
    if walk.entry_count < largest:
        breaks.append(ChainBreak(
            walk.entry_count + 1, "truncated",
            f"the chain has {walk.entry_count} events but a signed checkpoint covers {largest}",
        ))
    return min(breaks, key=lambda found: found.position, default=None)


def _mismatch(checkpoint: ChainCheckpoint, walk: _ChainWalk) -> ChainBreak | None:
    """The break if the event at the checkpoint's size hashes to something else than it signed."""
    actual = walk.hashes_at_checkpoints.get(checkpoint.size)
    if actual is None or actual == checkpoint.head_hash:
        return None  # None: beyond the chain's end, which the truncation check reports
    return ChainBreak(
        checkpoint.size, "checkpoint_mismatch",
        f"event {checkpoint.size} hashes to {actual} but a signed checkpoint says {checkpoint.head_hash}: "
        "the chain was rewritten",
    )


def _walk_event(walk: _ChainWalk, chain_id: str, event: IamEvent) -> None:
    """Take in one event (in position order); record the first break it reveals."""
    walk.entry_count += 1
    if walk.first_hash is None:
        walk.first_hash = event.hash
    walk.last_hash = event.hash
    if event.seq in walk.checkpointed:
        walk.hashes_at_checkpoints[event.seq] = event.hash
    if walk.first_break is None:
        if walk.pending_link is None:
            walk.first_break, walk.pending_link = _link_break(walk, chain_id, event)
        elif event.hash == walk.pending_link[1]:
            # The predecessor that seemed gone was only moved further down the chain.
            position = walk.pending_link[0]
            walk.first_break = ChainBreak(position, "reordered", f"event {position} links to an event placed after it")
    walk.seen_hashes.add(event.hash)
    walk.previous_hash = event.hash
    walk.expected_seq = max(walk.expected_seq, event.seq + 1)


def _link_break(walk: _ChainWalk, chain_id: str, event: IamEvent) -> tuple[ChainBreak | None, tuple[int, str] | None]:
    """The break at `event`, or the unknown hash it links to (undecided until the chain is read on)."""
    if event.seq > walk.expected_seq:
        missing = walk.expected_seq
        return ChainBreak(missing, "deleted", f"positions {missing}..{event.seq - 1} are missing"), None
    if event.seq < walk.expected_seq:
        detail = f"position {event.seq} appears again after position {walk.expected_seq - 1}"
        return ChainBreak(event.seq, "reordered", detail), None
    recomputed = event_hash(
        event.prev_hash, event.event_id, chain_id, event.event_type, event.actor, event.target,
        event.before, event.after, event.at, event.request_id,
    )
    if recomputed != event.hash:
        return ChainBreak(event.seq, "edited", f"event {event.seq} ({event.event_id}) no longer matches its hash"), None
    if event.prev_hash == walk.previous_hash:
        return None, None
    if event.prev_hash in walk.seen_hashes:
        return ChainBreak(event.seq, "reordered", f"event {event.seq} links to an earlier event"), None
    return None, (event.seq, event.prev_hash)


def _settle_pending_link(walk: _ChainWalk) -> None:
    """A link to a hash that no event carries means its predecessor was deleted."""
    if walk.first_break is None and walk.pending_link is not None:
        position = walk.pending_link[0]
        walk.first_break = ChainBreak(position, "deleted", f"the event before position {position} is missing")


def _back_off(attempt: int) -> None:
    """Sleep a little, with jitter, before retrying a lost race; the first retry is immediate."""
    if attempt == 0:
        return
    # Jitter only spreads competing writers apart; it needs no cryptographic randomness.
    time_module.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # noqa: S311
