"""Query audit on S3 (the Object Lock audit bucket): a group-committing `AuditSink` and a `QueryAuditArchive`.

S3 has no append and a PutObject per statement would cost a round trip each, so the sink gathers
the records that concurrent `write` calls hand it within a short window into one JSONL object per
day partition: `<prefix>YYYY/MM/DD/<host_id>-<unix_ms>-<random>.jsonl`. Each caller still returns
only once the object carrying its record is stored, and gets `AuditWriteFailed` otherwise, so the
statement it audits fails closed.

A host's objects of one day form one hash chain (hd_core/query_audit_chain.py): the one flusher
links each batch's lines after the previous batch's, advancing the head only once the object is
stored, and resumes from the day's last stored object when the process starts again.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.audit_search import records_from_jsonl
from hd_core.errors import AuditWriteFailed, HdError
from hd_core.models import random_base62
from hd_core.query_audit_chain import (
    ChainHead,
    QueryChainCheckpointer,
    StoredChainTail,
    chain_id_for,
    chained_line,
    head_of_line,
    last_line,
)

DEFAULT_PREFIX = "audit/queries/"
_HOST_ID = re.compile(r"[A-Za-z0-9_.-]+")
_OBJECT_RANDOM_CHARS = 10  # with the host and the millisecond, keeps two batches from ever sharing a key
# What listing and reading objects can raise: S3 refusals, transport failures, and a body read cut short.
_S3_READ_ERRORS = (BotoCoreError, ClientError, OSError)
# Where a host's latest object is looked for, before its latest checkpoint's time: a live host signs within a
# minute of storing (the first margin); one that died was signed by the control plane within about 20 minutes of
# its last object (the second); then wider, and at last the host's whole day.
_TAIL_SEARCH_MARGINS = (timedelta(minutes=2), timedelta(minutes=30), timedelta(hours=6))
_LAST_MS = "9" * 13  # the largest 13-digit unix millisecond (the year 2286)


class _PendingRecord:
    """One caller's record on its way into a batch, and the outcome the caller waits for."""

    __slots__ = ("arrived", "day", "done", "error", "record")

    def __init__(self, day: date, record: dict[str, object]) -> None:
        self.day = day
        self.record = record
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.error: str | None = None

    def settle(self, error: str | None) -> None:
        self.error = error
        self.done.set()


class S3AuditSink:
    """`AuditSink` writing group-committed JSONL objects to S3; thread-safe, with one background flusher."""

    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        *,
        host_id: str,
        prefix: str = DEFAULT_PREFIX,
        batch_window_seconds: float = 0.02,
        max_batch_records: int = 500,
        checkpointer: QueryChainCheckpointer | None = None,
    ) -> None:
        if not _HOST_ID.fullmatch(host_id) or host_id in (".", ".."):
            raise ValueError(f"host_id must match [A-Za-z0-9_.-]+, got {host_id!r}")
        _check_prefix(prefix)
        if batch_window_seconds < 0 or max_batch_records < 1:
            raise ValueError("batch_window_seconds must be >= 0 and max_batch_records >= 1")
        self._s3 = s3_client
        self._bucket = bucket
        self._host_id = host_id
        self._prefix = prefix
        self._window = batch_window_seconds
        self._max_records = max_batch_records
        self._checkpointer = checkpointer
        # Touched by the flusher thread only: each day's chain head (None: start a new chain).
        self._heads: dict[date, ChainHead | None] = {}
        self._queue: list[_PendingRecord] = []
        self._closed = False
        self._wakeup = threading.Condition()
        self._flusher = threading.Thread(target=self._flush_until_closed, name=f"s3-audit-{host_id}", daemon=True)
        self._flusher.start()

    def write(self, record: Mapping[str, object]) -> None:
        """Store one record; returns once the object carrying it is in S3, raises `AuditWriteFailed` otherwise."""
        pending = _PendingRecord(_utc_day(record), dict(record))
        with self._wakeup:
            if self._closed:
                raise AuditWriteFailed("query audit sink is closed")
            self._queue.append(pending)
            # The flusher only needs waking to start a window or to cut a full batch short.
            if len(self._queue) == 1 or len(self._queue) >= self._max_records:
                self._wakeup.notify()
        pending.done.wait()
        if pending.error is not None:
            raise AuditWriteFailed(f"query audit record could not be stored: {pending.error}")

    def close(self) -> None:
        """Store what is queued, stop the flusher and sign the chains' final heads; later writes fail."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._flusher.join()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def __enter__(self) -> S3AuditSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _flush_until_closed(self) -> None:
        try:
            while batch := self._next_batch():
                self._store(batch)
        finally:
            # Normally nothing is left here; should the flusher die, waiters must fail rather than hang.
            with self._wakeup:
                self._closed = True
                stranded, self._queue = self._queue, []
            for pending in stranded:
                pending.settle("the audit flusher stopped")

    def _next_batch(self) -> list[_PendingRecord]:
        """Wait for records, then for the window opened by the oldest to pass (or a full batch, or close)."""
        with self._wakeup:
            while not self._queue and not self._closed:
                self._wakeup.wait()
            if self._queue and not self._closed:
                deadline = self._queue[0].arrived + self._window
                while len(self._queue) < self._max_records and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wakeup.wait(remaining)
            batch = self._queue[: self._max_records]
            del self._queue[: self._max_records]
            return batch

    def _store(self, batch: list[_PendingRecord]) -> None:
        by_day: dict[date, list[_PendingRecord]] = {}
        for pending in batch:
            by_day.setdefault(pending.day, []).append(pending)
        try:
            for day, records in by_day.items():
                try:
                    self._put(day, records)
                # Whatever goes wrong (S3 refusal, network, credentials, a bug), these waiters must hear
                # about it rather than hang or be told their record is stored.
                except Exception as exc:  # noqa: BLE001
                    _settle(records, str(exc) or type(exc).__name__)
                else:
                    _settle(records, None)
        finally:
            # Only reached unsettled when something beyond Exception (interpreter exit) stopped the loop.
            _settle([pending for pending in batch if not pending.done.is_set()], "the audit flusher stopped")

    def _put(self, day: date, records: list[_PendingRecord]) -> None:
        head = self._heads[day] if day in self._heads else self._stored_head(day)
        lines = []
        for pending in records:
            line, head = chained_line(pending.record, head, serialize=_json_line)
            lines.append(line + "\n")
        unix_ms = time.time_ns() // 1_000_000
        key = f"{self._prefix}{day:%Y/%m/%d}/{self._host_id}-{unix_ms}-{random_base62(_OBJECT_RANDOM_CHARS)}.jsonl"
        body = "".join(lines).encode()
        # Object Lock buckets refuse uploads without a checksum; naming the algorithm keeps that true
        # even for a client configured with request_checksum_calculation="when_required".
        self._s3.put_object(
            Bucket=self._bucket, Key=key, Body=body, ContentType="application/x-ndjson", ChecksumAlgorithm="CRC32"
        )
        # Only a stored object moves the head: a failed batch's positions are taken by the next one.
        self._heads = {d: h for d, h in self._heads.items() if d >= day - timedelta(days=1)}
        self._heads[day] = head
        if self._checkpointer is not None and head is not None:
            self._checkpointer.advanced(chain_id_for(self._host_id, day), head)

    def _stored_head(self, day: date) -> ChainHead | None:
        """Where this host's chain of `day` ended before this process (its latest object's last line)."""
        paginator = self._s3.get_paginator("list_objects_v2")
        latest: str | None = None
        for page in paginator.paginate(Bucket=self._bucket, Prefix=f"{self._prefix}{day:%Y/%m/%d}/{self._host_id}-"):
            for entry in page.get("Contents", []):
                key = entry["Key"]
                # Keys are `<host>-<unix_ms>-<random>`: the largest millisecond is the latest batch.
                if key.endswith(".jsonl") and (latest is None or _object_ms(key) > _object_ms(latest)):
                    latest = key
        if latest is None:
            return None
        line = last_line(self._s3.get_object(Bucket=self._bucket, Key=latest)["Body"].read())
        return head_of_line(line) if line is not None else None


class S3AuditArchive:
    """`QueryAuditArchive` over the objects `S3AuditSink` writes; each `records` call lists one day partition."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str = DEFAULT_PREFIX, *, page_size: int = 1000) -> None:
        _check_prefix(prefix)
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be between 1 and 1000, got {page_size}")
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix
        self._page_size = page_size

    def records(self, day: date) -> Iterator[dict[str, object]]:
        """Every record in `day`'s partition (ListObjectsV2 paginated, GetObject each); a missing day is empty."""
        for key in self._day_keys(day):
            yield from records_from_jsonl(self._get(key), source=f"s3://{self._bucket}/{key}")

    def chain_segments(self, day: date, host_id: str | None = None) -> Iterator[tuple[str, bytes]]:
        """(host id, the object's bytes) of every object of `day` (or `host_id`'s): a host's objects form its chain."""
        for key in self._day_keys(day, host_id):
            if host_id is None or _object_host(key) == host_id:
                yield _object_host(key), self._get(key)

    def chain_tails(self, day: date, signed_since: Callable[[str], datetime | None] | None = None,
                    ) -> Iterator[StoredChainTail]:
        """Each host's chain head of `day` from its latest object's last line, stored when that object was.

        A busy host stores tens of objects a second, so neither the day nor a host's part of it is listed
        whole: hosts are found one listed key each (skipping past each host's keys), and a host's latest
        object by listing from shortly before `signed_since(host)` (when its latest checkpoint was signed),
        widening only when nothing is found there. One GET per host reads its latest object.
        """
        for host in self._day_hosts(day):
            latest = self._latest_object(day, host, signed_since(host) if signed_since is not None else None)
            if latest is not None:
                key, modified = latest
                line = last_line(self._get(key))
                yield StoredChainTail(host, head_of_line(line) if line is not None else None, modified)

    def _day_hosts(self, day: date) -> Iterator[str]:
        """Every host with an object in `day`'s partition, in key order: one single-key listing per host."""
        partition = f"{self._prefix}{day:%Y/%m/%d}/"
        after = ""
        while True:
            try:
                found = self._s3.list_objects_v2(Bucket=self._bucket, Prefix=partition, MaxKeys=1,
                                                 **({"StartAfter": after} if after else {})).get("Contents", [])
            except _S3_READ_ERRORS as exc:
                raise HdError(f"query audit partition {day} could not be listed: {exc}") from exc
            if not found:
                return
            key = found[0]["Key"]
            if not key.endswith(".jsonl") or _object_ms(key) < 0:
                after = key  # not a batch object: step over it alone
                continue
            host = _object_host(key)
            yield host
            # Past every `<host>-<13-digit unix ms>-<base62>.jsonl` of this host; another host's keys sort after.
            after = f"{partition}{host}-{_LAST_MS}-~"

    def _latest_object(self, day: date, host: str, signed_since: datetime | None) -> tuple[str, datetime] | None:
        """(key, last modified) of `host`'s latest object of `day`, listing as little of its part as will do."""
        host_prefix = f"{self._prefix}{day:%Y/%m/%d}/{host}-"
        bounds = [] if signed_since is None else [signed_since - margin for margin in _TAIL_SEARCH_MARGINS]
        for bound in [*bounds, None]:
            # Keys carry the put time in milliseconds: listing after a time skips every older object.
            after = None if bound is None else f"{host_prefix}{int(bound.timestamp() * 1000):013d}"
            latest: tuple[str, datetime] | None = None
            for key, modified in self._entries(host_prefix, after, f"query audit objects of {host} on {day}"):
                if _object_host(key) == host and (latest is None or _object_ms(key) > _object_ms(latest[0])):
                    latest = (key, modified)
            if latest is not None:
                return latest
        return None

    def _day_keys(self, day: date, host_id: str | None = None) -> Iterator[str]:
        prefix = f"{self._prefix}{day:%Y/%m/%d}/{'' if host_id is None else host_id + '-'}"
        for key, _ in self._entries(prefix, None, f"query audit partition {day}"):
            yield key

    def _entries(self, prefix: str, after: str | None, what: str) -> Iterator[tuple[str, datetime]]:
        """(key, last modified) of every JSONL object under `prefix` (after the key `after`, if given)."""
        paginator = self._s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self._bucket, Prefix=prefix, PaginationConfig={"PageSize": self._page_size},
                                   **({"StartAfter": after} if after else {}))
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    if entry["Key"].endswith(".jsonl"):
                        yield entry["Key"], entry["LastModified"]
        except _S3_READ_ERRORS as exc:
            raise HdError(f"{what} could not be listed: {exc}") from exc

    def _get(self, key: str) -> bytes:
        try:
            body: bytes = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except _S3_READ_ERRORS as exc:
            raise HdError(f"query audit object {key} could not be read: {exc}") from exc
        return body


def _settle(records: list[_PendingRecord], error: str | None) -> None:
    for pending in records:
        pending.settle(error)


def _check_prefix(prefix: str) -> None:
    if prefix and (not prefix.endswith("/") or prefix.startswith("/")):
        raise ValueError(f"prefix must be empty or a relative folder ending in '/', got {prefix!r}")


def _utc_day(record: Mapping[str, object]) -> date:
    ts = record.get("ts")
    if not isinstance(ts, str):
        raise ValueError("audit record has no 'ts' string")
    moment = datetime.fromisoformat(ts)
    if moment.tzinfo is None:
        raise ValueError(f"audit record ts must carry a UTC offset, got {ts!r}")
    return moment.astimezone(UTC).date()


def _json_line(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)


def _object_host(key: str) -> str:
    """The host that wrote an object `<prefix>YYYY/MM/DD/<host>-<unix_ms>-<random>.jsonl`."""
    return key.rsplit("/", 1)[-1].rsplit("-", 2)[0]


def _object_ms(key: str) -> int:
    try:
        return int(key.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return -1
