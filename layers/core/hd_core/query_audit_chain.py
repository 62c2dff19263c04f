"""The hash chain over query audit records: one chain per engine host and UTC day, with signed checkpoints.

Each stored record line carries `chain_seq` (its 1-based position), `prev_hash` (the previous
line's `hash`, `GENESIS_HASH` for the first) and `hash`: SHA-256 hex of the line as serialized
without its `hash` (the sorted, compact JSON of the record and the two chain fields). The hash is
appended as the line's last member, so the verifier hashes the stored bytes themselves and never
depends on re-serialising JSON. Hashing costs one SHA-256 over a few hundred bytes per statement.

Signing is not per record: a `QueryChainCheckpointer` signs a chain's head in the background once
`every_records` records or `every_seconds` seconds have passed since its last checkpoint, when a
host starts a new chain (the day rolled over: the old day's final head is signed), and at close.
Records after the latest checkpoint can be cut off without trace until the next one is signed;
that window (at most `every_records` records or `every_seconds` seconds) is the price of keeping
a KMS round trip off every statement.

A host that dies without stopping (kill -9, a lost instance) leaves its tail unsigned, and no later
record of its own will ever sign it. `sign_owed_query_checkpoints` closes that: the control plane's
scheduled job (and `hd dev` at start) finds each host chain of the last days whose stored head is
past its latest signed checkpoint and that nothing was written to for a settle period, verifies the
chain up to that head, and signs the head itself. Its checkpoint names the signer
(`signed_by: "control_plane"`, covered by the signature); the verifier trusts both kinds. A chain
that does not verify is left unsigned: a checkpoint must never vouch for a broken chain.

A checkpoint signature covers `QUERY_CHECKPOINT_MESSAGE_TYPE`, so it can never pass for an IAM
checkpoint (or the reverse), and checkpoints live under their own prefix of the audit bucket. Hosts
sign with the checkpoint key ring's current key (hd_core/signing_keys.py), so a rotation in the
middle of a day leaves checkpoints of both keys, each verified with the key it names.

Verification reads the records and, separately, which chains have checkpoints: a (host, day) whose
records are all gone still has its signed checkpoints, and is reported as deleted. Records a host
wrote before it chained (an upgrade in the middle of a day) carry no chain fields at all; those
before a chain's first record are counted as `unchained`, any after it is a break.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal, Protocol

from hd_core.audit import to_json_line
from hd_core.errors import InvalidRequest, NotFound
from hd_core.iam_audit import GENESIS_HASH, ChainBreak, ChainVerification, canonical_json, format_audit_time
from hd_core.models import ChainCheckpoint, utc_now
from hd_core.ports import CheckpointStore

log = logging.getLogger(__name__)

OwedOutcome = Literal["signed", "broken", "failed"]

QUERY_CHECKPOINT_MESSAGE_TYPE = "hd.query_checkpoint.v1"
CHAIN_FIELDS = ("chain_seq", "prev_hash", "hash")
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_CHECKPOINT_SECONDS = 60.0
# Where query chain checkpoints live: a prefix of their own in the audit bucket (and the local audit folder).
CHECKPOINT_PREFIX = "audit/query-checkpoints/"
CHECKPOINT_FOLDER = ("audit", "query-checkpoints")
# Every record of every day is read and re-hashed; the same bound as an audit search (a whole leap year).
MAX_VERIFY_DAYS = 366

# `,"hash":"<64 hex>"}`: the fixed-length end of every chained line.
_HASH_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"}$')
_HASH_SUFFIX_LENGTH = len(b',"hash":""}') + 64
_UNSAFE_CHAIN_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# How many times a checkpoint is signed again when the ring's current key changed while signing it.
_SIGN_ATTEMPTS = 3
# `signed_by` of a checkpoint the control plane signed for a host's chain; absent: the host signed its own.
CONTROL_PLANE_SIGNER = "control_plane"
_SIGNERS = (None, CONTROL_PLANE_SIGNER)
# A chain nothing was written to for this long belongs to a host that stopped: a live one signs its own head
# within DEFAULT_CHECKPOINT_SECONDS of its last record.
OWED_SETTLE = timedelta(minutes=5)
# The days whose chains the owed-checkpoint job looks at: today and the two before, so a chain cut at midnight
# is still found when the job missed its runs for up to two days.
OWED_LOOKBACK_DAYS = 2


def chain_id_for(host_id: str, day: date) -> str:
    """The chain id of one host's records of one UTC day: `q_YYYYMMDD_<host>` (other characters become `_`)."""
    return f"{day_chain_prefix(day)}{_UNSAFE_CHAIN_CHARS.sub('_', host_id)}"[:128]


def day_chain_prefix(day: date) -> str:
    """What every chain id of `day` starts with."""
    return f"q_{day:%Y%m%d}_"


@dataclass(frozen=True)
class ChainHead:
    """The last record of a chain: its position and hash (what the next record links to)."""

    seq: int
    hash: str


def chained_line(record: Mapping[str, object], head: ChainHead | None, *,
                 serialize: Callable[[dict[str, object]], str] = to_json_line) -> tuple[str, ChainHead]:
    """The stored line of `record` appended after `head` (None: the chain's first), and the new head.

    `serialize` must give one compact JSON object on one line; the hash covers exactly its output.
    """
    if any(name in record for name in CHAIN_FIELDS):
        raise ValueError("a query audit record must not carry chain fields before it is chained")
    seq = 1 if head is None else head.seq + 1
    body = serialize({**record, "chain_seq": seq, "prev_hash": GENESIS_HASH if head is None else head.hash})
    if not body.endswith("}") or "\n" in body:
        raise ValueError("a serialized query audit record must be one JSON object on one line")
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f'{body[:-1]},"hash":"{digest}"}}', ChainHead(seq, digest)


def head_of_line(line: bytes) -> ChainHead | None:
    """The chain position and hash a stored line claims (None if it carries none): for resuming a chain."""
    found = _HASH_SUFFIX.search(line.rstrip(b"\n"))
    if found is None:
        return None
    try:
        seq = json.loads(line).get("chain_seq")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return ChainHead(seq, found.group(1).decode()) if isinstance(seq, int) and seq > 0 else None


def last_line(data: bytes) -> bytes | None:
    """The last complete line of a JSONL file or object (None if it has none)."""
    end = data.rfind(b"\n")
    if end < 0:
        return None
    start = data.rfind(b"\n", 0, end) + 1
    return data[start:end]


def checkpoint_message(chain_id: str, size: int, head_hash: str, time: datetime, signed_by: str | None = None) -> bytes:
    """The canonical bytes a query chain checkpoint signature covers (`signed_by` only when not the host itself)."""
    statement: dict[str, object] = {"type": QUERY_CHECKPOINT_MESSAGE_TYPE, "chain_id": chain_id, "size": size,
                                    "head_hash": head_hash, "time": format_audit_time(time)}
    if signed_by is not None:
        statement["signed_by"] = signed_by
    return canonical_json(statement).encode()


# --- signing checkpoints off the statement path ----------------------------------------------------


class CheckpointSigner(Protocol):
    """What the checkpointer needs of the keys: the key that signs now, and a signature by it.

    Hosts pass the checkpoint key ring (hd_core/signing_keys.CheckpointKeyRing): after a rotation the
    ring's current key signs, and the verifier trusts it through its signed introduction.
    """

    def checkpoint_key_id(self) -> str:
        """The id of the key `sign_checkpoint` signs with now."""
        ...

    def sign_checkpoint(self, message: bytes) -> bytes:
        """A signature of `message` by the current checkpoint key."""
        ...


class QueryChainCheckpointer:
    """Signs chain heads into the checkpoint store from a background thread; sinks report heads with `advanced`.

    `advanced` only records the head and, when a checkpoint is due, wakes the thread: no statement
    waits for KMS or S3. A failed checkpoint is logged and retried on the next round.
    """

    def __init__(self, checkpoints: CheckpointStore, keys: CheckpointSigner, *,
                 every_records: int = DEFAULT_CHECKPOINT_RECORDS, every_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
                 now: Callable[[], datetime] = utc_now) -> None:
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("every_records must be at least 1 and every_seconds positive")
        self._checkpoints = checkpoints
        self._keys = keys
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._now = now
        self._wakeup = threading.Condition()
        self._heads: dict[str, ChainHead] = {}
        self._signed: dict[str, int] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="query-chain-checkpoints", daemon=True)
        self._thread.start()

    def advanced(self, chain_id: str, head: ChainHead) -> None:
        """Note a chain's new head (called by the sink after the record is stored)."""
        with self._wakeup:
            new_chain = chain_id not in self._heads
            self._heads[chain_id] = head
            # A new chain means the day rolled over (or the host started): sign what the others reached now.
            if new_chain or head.seq - self._signed.get(chain_id, 0) >= self._every_records:
                self._wakeup.notify()

    def flush(self) -> int:
        """Sign every head not yet covered by a checkpoint now; returns how many were signed."""
        return sum(self._sign(chain_id, head) for chain_id, head in self._unsigned())

    def close(self) -> None:
        """Stop the thread and sign the final heads (the host is stopping)."""
        with self._wakeup:
            if self._closed:
                return
            self._closed = True
            self._wakeup.notify()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                if self._closed:
                    return
                self._wakeup.wait(self._every_seconds)
                if self._closed:
                    return
            self.flush()

    def _unsigned(self) -> list[tuple[str, ChainHead]]:
        with self._wakeup:
            return [(chain_id, head) for chain_id, head in self._heads.items()
                    if head.seq > self._signed.get(chain_id, 0)]

    def _sign(self, chain_id: str, head: ChainHead) -> bool:
        try:
            at = self._now()
            key_id, signature = self._signed_by_one_key(checkpoint_message(chain_id, head.seq, head.hash, at))
            self._checkpoints.put_checkpoint(ChainCheckpoint(
                chain_id=chain_id, size=head.seq, head_hash=head.hash, time=at,
                key_id=key_id, signature=base64.b64encode(signature).decode("ascii")))
        # KMS, S3 or disk trouble must never reach a statement; the head stays owed and is retried.
        except Exception:
            log.warning("query audit checkpoint of %s at %d could not be written; retrying later", chain_id, head.seq,
                        exc_info=True)
            return False
        with self._wakeup:
            self._signed[chain_id] = max(head.seq, self._signed.get(chain_id, 0))
            # Days older than yesterday get no more records: forget them once signed.
            stale = [c for c, h in self._heads.items() if c != chain_id and self._signed.get(c, 0) >= h.seq]
            for old in stale[: max(0, len(stale) - 4)]:
                self._heads.pop(old, None)
                self._signed.pop(old, None)
        return True

    def _signed_by_one_key(self, message: bytes) -> tuple[str, bytes]:
        return _signed_by_one_key(self._keys, message)


def _signed_by_one_key(keys: CheckpointSigner, message: bytes) -> tuple[str, bytes]:
    """(key id, signature) where that key made the signature: a rotation landing between asking which key
    signs and signing would otherwise name one key on another's signature (a checkpoint that looks forged)."""
    for _ in range(_SIGN_ATTEMPTS):
        key_id = keys.checkpoint_key_id()
        signature = keys.sign_checkpoint(message)
        if keys.checkpoint_key_id() == key_id:
            return key_id, signature
    raise RuntimeError("the current checkpoint key kept changing while a query checkpoint was signed")


# --- verification ----------------------------------------------------------------------------------


class CheckpointVerifier(Protocol):
    """What verification needs of the keys: whether a trusted checkpoint key signed a message.

    The control plane passes its checkpoint key ring, which trusts the configured key (the one
    engine hosts sign with) and every key rotation introduced since.
    """

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        """Whether `signature` over `message` is valid for the trusted key `key_id`."""
        ...


@dataclass(frozen=True)
class StoredChainTail:
    """Where one host's stored chain of a day ends: what its last stored line claims, and when it was stored."""

    host_id: str
    head: ChainHead | None  # None: the last line carries no chain fields (written before the host chained)
    stored_at: datetime


class QueryChainSource(Protocol):
    """Stored query audit records as written: each file or object of a day with the host that wrote it."""

    def chain_segments(self, day: date, host_id: str | None = None) -> Iterator[tuple[str, bytes]]:
        """(host id, raw JSONL bytes) of every file or object in `day`'s partition (with `host_id`: that host's)."""
        ...

    def chain_tails(self, day: date, signed_since: Callable[[str], datetime | None] | None = None,
                    ) -> Iterator[StoredChainTail]:
        """Each host's tail of `day`, read from its last file or object only, not the whole day.

        `signed_since(host)`: when the host's latest checkpoint of the day was signed (None: never), a hint
        for where its last object is to be found; a wrong hint costs listing time, never a wrong answer.
        """
        ...


class QueryCheckpointIndex(CheckpointStore, Protocol):
    """The query checkpoint store, which can also say which chains have checkpoints at all."""

    def chain_ids(self, prefix: str) -> list[str]:
        """The ids of every chain with at least one stored checkpoint whose id starts with `prefix`."""
        ...

    def latest_filed(self, chain_id: str) -> datetime | None:
        """The latest signing time the chain's checkpoints are filed under, by name only (an index, not evidence)."""
        ...


@dataclass(frozen=True)
class QueryChainStores:
    """Where the query audit chain is read back from: the records and their checkpoints."""

    records: QueryChainSource
    checkpoints: QueryCheckpointIndex


@dataclass(frozen=True)
class QueryChainReport:
    """The verification of one host's chain of one day."""

    host_id: str
    day: date
    verification: ChainVerification
    unchained_count: int = 0  # records stored before the chain's first, written before the host chained

    def to_dict(self) -> dict[str, object]:
        """The JSON shape the audit API returns."""
        return {"chain_id": self.verification.chain_id, "host_id": self.host_id, "day": self.day.isoformat(),
                **self.verification.to_dict(), "unchained_count": self.unchained_count}


def verify_query_chains(source: QueryChainSource, checkpoints: QueryCheckpointIndex, keys: CheckpointVerifier,
                        days: Iterable[date], *, now: Callable[[], datetime] = utc_now) -> list[QueryChainReport]:
    """Verify every host's chain of each day; a chain's first break is its earliest position that fails.

    A chain with signed checkpoints but no stored record at all (the host's whole day deleted) is
    reported too, under the host id its chain id carries.
    """
    reports = []
    for day in days:
        segments: dict[str, list[list[bytes]]] = {}
        for host_id, data in source.chain_segments(day):
            lines = _split_lines(data)
            if lines:
                segments.setdefault(host_id, []).append(lines)
        day_reports = []
        for host_id in sorted(segments):
            chain_id = chain_id_for(host_id, day)
            verification, unchained = _verify_lines(chain_id, _in_chain_order(segments[host_id]), checkpoints, keys,
                                                    now())
            day_reports.append(QueryChainReport(host_id, day, verification, unchained))
        seen = {report.verification.chain_id for report in day_reports}
        prefix = day_chain_prefix(day)
        for chain_id in checkpoints.chain_ids(prefix):
            if chain_id not in seen:
                verification, _ = _verify_lines(chain_id, [], checkpoints, keys, now())
                day_reports.append(QueryChainReport(chain_id[len(prefix):], day, verification))
        reports.extend(sorted(day_reports, key=lambda report: report.host_id))
    return reports


def _in_chain_order(segments: list[list[bytes]]) -> list[bytes]:
    """One host's lines of a day: S3 holds a chain in several objects, put in order by their first line's position."""
    ordered = sorted(segments, key=lambda lines: _claimed_seq(lines[0]))
    return [line for segment in ordered for line in segment]


def _split_lines(data: bytes) -> list[bytes]:
    """The complete, non-blank lines of a file or object (a line still being written has no newline yet)."""
    return [line for line in data.split(b"\n")[:-1] if line.strip()]


def _claimed_seq(line: bytes) -> int:
    head = head_of_line(line)
    return head.seq if head is not None else 0


@dataclass(frozen=True)
class _Line:
    seq: int | None  # None: the line is not a chained record (edited beyond parsing, or never chained)
    prev_hash: str | None
    hash: str | None
    hash_ok: bool
    unchained: bool = False  # a JSON object with no chain field at all: written before its host chained
    ts: str | None = None


def _parse_line(line: bytes) -> _Line:
    found = _HASH_SUFFIX.search(line)
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return _Line(None, None, None, False)
    if not isinstance(document, dict):
        return _Line(None, None, None, False)
    ts = document.get("ts") if isinstance(document.get("ts"), str) else None
    if not any(name in document for name in CHAIN_FIELDS):
        return _Line(None, None, None, False, unchained=True, ts=ts)
    seq, prev = document.get("chain_seq"), document.get("prev_hash")
    if found is None or not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
        return _Line(seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                     prev if isinstance(prev, str) else None, None, False, ts=ts)
    claimed = found.group(1).decode()
    body = line[: -_HASH_SUFFIX_LENGTH] + b"}"
    return _Line(seq, prev, claimed, hashlib.sha256(body).hexdigest() == claimed, ts=ts)


def _verify_lines(chain_id: str, raw: list[bytes], checkpoints: CheckpointStore, keys: CheckpointVerifier,
                  verified_at: datetime) -> tuple[ChainVerification, int]:
    """The chain's verification and how many unchained records precede it."""
    signed, forged = _sorted_checkpoints(chain_id, checkpoints, keys)
    parsed = [_parse_line(line) for line in raw]
    leading = next((index for index, line in enumerate(parsed) if not line.unchained), len(parsed))
    before, lines = parsed[:leading], parsed[leading:]
    present = {line.seq for line in lines if line.seq is not None}
    first_break: ChainBreak | None = _late_unchained(before, lines)
    expected, previous_hash = 1, GENESIS_HASH
    hashes: dict[int, str] = {}
    for line in lines:
        if first_break is None:
            first_break = _line_break(line, expected, previous_hash, present)
        if line.seq is not None and line.hash is not None:
            hashes.setdefault(line.seq, line.hash)
            expected, previous_hash = max(expected, line.seq + 1), line.hash
        else:
            expected += 1
    count = len(lines)
    if first_break is None and forged:
        worst = min(forged, key=lambda c: (c.size, c.time))
        first_break = ChainBreak(worst.size, "checkpoint_signature_invalid",
                                 f"a stored checkpoint claiming size {worst.size} is not signed by checkpoint key "
                                 f"{worst.key_id!r} for this chain ({len(forged)} such checkpoint(s) in all)")
    if first_break is None:
        first_break = _checkpoint_break(signed, hashes, count)
    return ChainVerification(
        chain_id=chain_id, entry_count=count, chain_valid=first_break is None,
        first_entry_hash=next((line.hash for line in lines if line.hash), None),
        last_entry_hash=next((line.hash for line in reversed(lines) if line.hash), None),
        verified_at=verified_at, checkpoint_size=max((c.size for c in signed), default=None),
        first_break=first_break,
    ), len(before)


def _late_unchained(before: list[_Line], lines: list[_Line]) -> ChainBreak | None:
    """A break if a record stored before the chain is dated after the chain's first record.

    Unchained records are only believed to predate chaining: one that claims a later time than
    position 1 was written (or inserted) after the host chained, where nothing unchained belongs.
    """
    first_ts = lines[0].ts if lines else None
    if first_ts is None:
        return None
    late = [line for line in before if line.ts is None or line.ts > first_ts]
    if not late:
        return None
    return ChainBreak(1, "inserted", f"{len(late)} unchained record(s) stored before the chain are not dated "
                                     f"before its first record ({first_ts}): records after chaining must be chained")


def _line_break(line: _Line, expected: int, previous_hash: str, present: set[int]) -> ChainBreak | None:
    if line.unchained:
        return ChainBreak(expected, "inserted", f"an unchained record is stored at position {expected}, after the "
                                                "chain began: records after chaining must be chained")
    if line.seq is None or line.hash is None:
        return ChainBreak(expected, "edited", f"the record at position {expected} carries no valid chain fields")
    if line.seq > expected:
        kind = "reordered" if expected in present else "deleted"
        detail = (f"record {expected} is stored after record {line.seq}" if kind == "reordered"
                  else f"positions {expected}..{line.seq - 1} are missing")
        return ChainBreak(expected, kind, detail)
    if line.seq < expected:
        return ChainBreak(line.seq, "reordered", f"position {line.seq} appears again after position {expected - 1}")
    if not line.hash_ok:
        return ChainBreak(line.seq, "edited", f"record {line.seq} no longer matches its hash")
    if line.prev_hash != previous_hash:
        return ChainBreak(line.seq, "edited", f"record {line.seq} does not link to record {line.seq - 1}")
    return None


def _checkpoint_break(signed: list[ChainCheckpoint], hashes: Mapping[int, str], count: int) -> ChainBreak | None:
    breaks = [ChainBreak(c.size, "checkpoint_mismatch",
                         f"record {c.size} hashes to {hashes[c.size]} but a signed checkpoint says {c.head_hash}: "
                         "the chain was rewritten")
              for c in signed if c.size in hashes and hashes[c.size] != c.head_hash]
    largest = max((c.size for c in signed), default=0)
    if count == 0 and largest:
        breaks.append(ChainBreak(1, "deleted", f"no record of this chain is stored but a signed checkpoint covers "
                                              f"{largest}: the host's records of the day were deleted"))
    elif count < largest:
        breaks.append(ChainBreak(count + 1, "truncated",
                                 f"the chain has {count} records but a signed checkpoint covers {largest}"))
    return min(breaks, key=lambda found: found.position, default=None)


def _sorted_checkpoints(chain_id: str, checkpoints: CheckpointStore,
                        keys: CheckpointVerifier) -> tuple[list[ChainCheckpoint], list[ChainCheckpoint]]:
    signed: list[ChainCheckpoint] = []
    forged: list[ChainCheckpoint] = []
    for checkpoint in checkpoints.list_checkpoints(chain_id):
        (signed if _is_signed(chain_id, checkpoint, keys) else forged).append(checkpoint)
    return signed, forged


def _is_signed(chain_id: str, checkpoint: ChainCheckpoint, keys: CheckpointVerifier) -> bool:
    # An unknown signer is refused: only the host itself (no `signed_by`) and the control plane sign query chains.
    if checkpoint.chain_id != chain_id or checkpoint.signed_by not in _SIGNERS:
        return False
    message = checkpoint_message(chain_id, checkpoint.size, checkpoint.head_hash, checkpoint.time,
                                 checkpoint.signed_by)
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(signature) and keys.verify_checkpoint(checkpoint.key_id, message, signature)


@dataclass(frozen=True)
class QueryTrailVerification:
    """Every host chain of a range of days: valid only if each one is."""

    start: date
    end: date
    chains: tuple[QueryChainReport, ...]

    @property
    def chain_valid(self) -> bool:
        return all(report.verification.chain_valid for report in self.chains)

    def to_dict(self) -> dict[str, object]:
        """The JSON shape the audit API returns."""
        return {"trail": "queries", "start": self.start.isoformat(), "end": self.end.isoformat(),
                "chain_valid": self.chain_valid, "chains": [report.to_dict() for report in self.chains]}


def verify_query_trail(stores: QueryChainStores | None, keys: CheckpointVerifier, *,
                       start: date | None = None, end: date | None = None,
                       now: Callable[[], datetime] = utc_now) -> QueryTrailVerification:
    """Verify the query audit chains of `start`..`end` (UTC days, default today); raises `InvalidRequest`."""
    if stores is None:
        raise NotFound("this control plane keeps no query audit chain; verify trail=iam instead")
    today = now().astimezone(UTC).date()
    first, last = start or end or today, end or start or today
    if last < first:
        raise InvalidRequest(f"end ({last}) is before start ({first})")
    if (last - first).days + 1 > MAX_VERIFY_DAYS:
        raise InvalidRequest(f"a query chain verification covers at most {MAX_VERIFY_DAYS} days; split the range")
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    reports = verify_query_chains(stores.records, stores.checkpoints, keys, days, now=now)
    return QueryTrailVerification(first, last, tuple(reports))


# --- checkpoints owed by hosts that stopped without signing their tail -----------------------------


class CheckpointKeys(CheckpointSigner, CheckpointVerifier, Protocol):
    """Keys that both sign and verify query checkpoints: the control plane's checkpoint key ring."""


@dataclass(frozen=True)
class OwedCheckpoint:
    """What `sign_owed_query_checkpoints` did with one host chain whose stored head no checkpoint covered."""

    chain_id: str
    host_id: str
    day: date
    size: int  # the head signed, or how many records the chain held when it was found broken or not signed
    outcome: OwedOutcome  # signed; broken: it does not verify, so it was left unsigned; failed: not signed, retried
    detail: str = ""


def sign_owed_query_checkpoints(stores: QueryChainStores, keys: CheckpointKeys, *, settle: timedelta = OWED_SETTLE,
                                days: Iterable[date] | None = None,
                                now: Callable[[], datetime] | None = None) -> list[OwedCheckpoint]:
    """Sign the stored head of every host chain of `days` (default today and the `OWED_LOOKBACK_DAYS` before)
    that no signed checkpoint covers and that was not written to for `settle`: what a host that crashed owes.

    Only a chain's last file or object is read to find what is owed; an owed chain is read whole and verified
    first, and one that does not verify is reported `broken`, never signed. A chain that could not be read or
    signed is reported `failed` (the next run retries it); the others are still done.
    """
    if settle < timedelta(0):
        raise ValueError("settle must not be negative")
    now = now or utc_now  # looked up per call: the clock is this module's, which a test may move
    at = now()
    today = at.astimezone(UTC).date()
    chosen = list(days) if days is not None else [today - timedelta(days=back)
                                                   for back in range(OWED_LOOKBACK_DAYS, -1, -1)]
    done = []
    for day in chosen:
        def signed_since(host_id: str, day: date = day) -> datetime | None:
            return stores.checkpoints.latest_filed(chain_id_for(host_id, day))

        for tail in stores.records.chain_tails(day, signed_since):
            if tail.head is None or at - tail.stored_at < settle:
                continue  # a chain from before chaining, or a host that may still sign its own head
            outcome = _sign_owed_head(stores, keys, tail.host_id, tail.head, day, now)
            if outcome is not None:
                done.append(outcome)
    return done


def _sign_owed_head(stores: QueryChainStores, keys: CheckpointKeys, host_id: str, stored: ChainHead, day: date,
                    now: Callable[[], datetime]) -> OwedCheckpoint | None:
    """Verify `host_id`'s chain of `day` and sign its head, unless a trusted checkpoint covers `stored` already."""
    chain_id = chain_id_for(host_id, day)
    size = stored.seq
    try:
        if _head_is_signed(chain_id, stored, stores.checkpoints, keys):
            return None
        segments = [lines for _, data in stores.records.chain_segments(day, host_id)
                    if (lines := _split_lines(data))]
        verification, _ = _verify_lines(chain_id, _in_chain_order(segments), stores.checkpoints, keys, now())
        size = verification.entry_count
        found = verification.first_break
        if found is not None or verification.last_entry_hash is None:
            detail = (f"{found.kind} at position {found.position}: {found.detail}" if found is not None
                      else "no chained record")
            log.warning("query audit chain %s is owed a checkpoint but does not verify (%s); left unsigned",
                        chain_id, detail)
            return OwedCheckpoint(chain_id, host_id, day, size, "broken", detail)
        head = ChainHead(size, verification.last_entry_hash)
        if head != stored and _head_is_signed(chain_id, head, stores.checkpoints, keys):
            return None  # the host came back and signed its own head meanwhile
        signed_at = now()
        key_id, signature = _signed_by_one_key(
            keys, checkpoint_message(chain_id, head.seq, head.hash, signed_at, CONTROL_PLANE_SIGNER))
        stores.checkpoints.put_checkpoint(ChainCheckpoint(
            chain_id=chain_id, size=head.seq, head_hash=head.hash, time=signed_at, key_id=key_id,
            signature=base64.b64encode(signature).decode("ascii"), signed_by=CONTROL_PLANE_SIGNER))
    # Storage, KMS or a checkpoint that cannot be read: this chain stays owed and the next run retries it;
    # the other chains must not wait for it.
    except Exception as exc:
        log.warning("the checkpoint owed by query audit chain %s could not be signed", chain_id, exc_info=True)
        return OwedCheckpoint(chain_id, host_id, day, size, "failed", str(exc) or type(exc).__name__)
    log.info("signed the head (%d) of query audit chain %s, which its host left unsigned", head.seq, chain_id)
    return OwedCheckpoint(chain_id, host_id, day, head.seq, "signed")


def _head_is_signed(chain_id: str, head: ChainHead, checkpoints: CheckpointStore, keys: CheckpointVerifier) -> bool:
    """Whether a trusted signature covers exactly `head`: only the checkpoints filed under its size are read."""
    return any(checkpoint.head_hash == head.hash and _is_signed(chain_id, checkpoint, keys)
               for checkpoint in checkpoints.list_checkpoints(chain_id, size=head.seq))
