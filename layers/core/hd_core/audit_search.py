"""Audit search: one organisation's query audit records over a date range, filtered, in pages with cursors.

Records come from a `QueryAuditArchive` one day partition at a time (the S3 archive lists a day
partition per call, so a search costs one listing per day it reads). Both sinks file a record
under the UTC day of its `ts`, so reading partitions in date order and sorting each by
(`ts`, `query_id`) yields one global order, and a cursor naming the last record returned lets the
next page resume exactly after it.

Records go out with their error texts redacted again (`for_auditors`): records written before the
engine redacted error details may still quote values, and auditors may not see the data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from hd_core.errors import InvalidRequest
from hd_core.ports import QueryAuditArchive
from hd_core.text_redaction import redact_error_detail, redact_error_message

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
MAX_RANGE_DAYS = 366  # a whole leap year, start and end days included
# Far longer than any cursor we issue; refusing bigger input keeps decoding cheap.
_MAX_CURSOR_CHARS = 1024
_RESTART_HINT = "restart the search without a cursor"

# (ts as an aware UTC datetime, query_id): the order records are returned in.
_Position = tuple[datetime, str]


@dataclass(frozen=True)
class QueryAuditFilter:
    """Which query audit records a search returns; `org_id` is mandatory, the other criteria narrow it."""

    org_id: str
    start: date
    end: date
    user_id: str | None = None
    agent_id: str | None = None
    table: str | None = None  # matches an entry of `tables`; an unqualified name matches any schema
    min_duration_ms: float | None = None  # compared with `timings_ms["total"]`


@dataclass(frozen=True)
class QueryAuditPage:
    """One page of records, oldest first; `next_cursor` is None once the search is exhausted."""

    records: list[dict[str, object]]
    next_cursor: str | None


def search_query_audit(
    archive: QueryAuditArchive, query: QueryAuditFilter, *, limit: int = 100, cursor: str | None = None
) -> QueryAuditPage:
    """Up to `limit` records of `query.org_id` matching `query`, ordered by (ts, query_id), after `cursor`.

    Raises `InvalidRequest` for a limit outside 1..1000, a range that is reversed or longer than
    366 days, or a cursor that is garbled or was issued for a different filter. A page can come
    back short, or even empty, with a cursor; only `next_cursor is None` means there is no more.
    """
    _check_request(query, limit)
    fingerprint = filter_fingerprint(query)
    after = _decode_cursor(cursor, fingerprint) if cursor is not None else None
    first_day = query.start if after is None else max(query.start, after[0].date())
    page: list[tuple[_Position, dict[str, object]]] = []
    for day in _days(first_day, query.end):
        matches = sorted(_matching(archive.records(day), query, after), key=lambda item: item[0])
        room = limit - len(page)
        page.extend(matches[:room])
        if len(matches) > room:
            return _page(page, fingerprint)
        if len(page) == limit and day < query.end:
            # Full exactly at a day's end: later days may hold more, and finding out would mean reading them.
            return _page(page, fingerprint)
    return QueryAuditPage(records=[record for _, record in page], next_cursor=None)


def filter_fingerprint(query: QueryAuditFilter) -> str:
    """A short hash of the filter, carried in cursors so a cursor cannot be replayed against another filter."""
    canonical = json.dumps(
        [query.org_id, query.start.isoformat(), query.end.isoformat(), query.user_id, query.agent_id,
         query.table, query.min_duration_ms],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def records_from_jsonl(data: bytes, *, source: str) -> Iterator[dict[str, object]]:
    """The records in a JSONL file or object; a torn last line is skipped, a damaged line is logged and skipped."""
    lines = data.split(b"\n")
    # Whatever follows the last newline is a line still being appended (or cut by a crash).
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            record = None
        if isinstance(record, dict):
            yield record
        else:
            log.warning("skipping line %d of %s: not a JSON object", number, source)


def _check_request(query: QueryAuditFilter, limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    if not query.org_id:
        raise InvalidRequest("an audit search needs an org_id")
    if query.end < query.start:
        raise InvalidRequest(f"end ({query.end}) is before start ({query.start})")
    if (query.end - query.start).days + 1 > MAX_RANGE_DAYS:
        raise InvalidRequest(f"an audit search covers at most {MAX_RANGE_DAYS} days; split the range")
    if query.table is not None and not query.table.strip():
        raise InvalidRequest("table must not be empty")
    if query.min_duration_ms is not None and not (math.isfinite(query.min_duration_ms) and query.min_duration_ms >= 0):
        raise InvalidRequest("min_duration_ms must be a finite number of milliseconds, zero or more")


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _matching(
    records: Iterator[dict[str, object]], query: QueryAuditFilter, after: _Position | None
) -> Iterator[tuple[_Position, dict[str, object]]]:
    for record in records:
        # Tenant isolation comes first and is an exact comparison: nothing else is looked at for other orgs.
        if record.get("org_id") != query.org_id:
            continue
        position = _position_of(record)
        if position is None:
            log.warning("skipping query audit record without a usable ts and query_id: %r", record.get("query_id"))
            continue
        if after is not None and position <= after:
            continue
        if _matches(record, query):
            yield position, for_auditors(record)


def for_auditors(record: dict[str, object]) -> dict[str, object]:
    """The record with its engine error detail, error message and verdict reasons redacted (a copy)."""
    shown = dict(record)
    detail = record.get("engine_error_detail")
    if isinstance(detail, str):
        shown["engine_error_detail"] = redact_error_detail(detail)
    error = record.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        shown["error"] = {**error, "message": redact_error_message(error["message"])}
    verdicts = record.get("verdicts")
    if isinstance(verdicts, list):
        shown["verdicts"] = [
            {**verdict, "reason": redact_error_message(verdict["reason"])}
            if isinstance(verdict, dict) and isinstance(verdict.get("reason"), str) else verdict
            for verdict in verdicts
        ]
    return shown


def _matches(record: dict[str, object], query: QueryAuditFilter) -> bool:
    if query.user_id is not None and record.get("user_id") != query.user_id:
        return False
    if query.agent_id is not None and record.get("agent_id") != query.agent_id:
        return False
    if query.table is not None and not _touches_table(record.get("tables"), query.table):
        return False
    return query.min_duration_ms is None or _total_ms(record) >= query.min_duration_ms


def _touches_table(tables: object, wanted: str) -> bool:
    if not isinstance(tables, list):
        return False
    wanted = wanted.lower()
    qualified = "." in wanted
    for entry in tables:
        if not isinstance(entry, str):
            continue
        name = entry.lower()
        if name == wanted or (not qualified and name.rsplit(".", 1)[-1] == wanted):
            return True
    return False


def _total_ms(record: dict[str, object]) -> float:
    timings = record.get("timings_ms")
    total = timings.get("total") if isinstance(timings, dict) else None
    if isinstance(total, bool) or not isinstance(total, int | float):
        return -math.inf  # an unknown duration never satisfies a minimum
    return float(total)


def _position_of(record: dict[str, object]) -> _Position | None:
    ts, query_id = record.get("ts"), record.get("query_id")
    if not isinstance(ts, str) or not isinstance(query_id, str):
        return None
    moment = _parse_ts(ts)
    return None if moment is None else (moment, query_id)


def _parse_ts(ts: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.astimezone(UTC)


def _page(page: list[tuple[_Position, dict[str, object]]], fingerprint: str) -> QueryAuditPage:
    last_record = page[-1][1]
    return QueryAuditPage(
        records=[record for _, record in page],
        next_cursor=_encode_cursor(str(last_record["ts"]), str(last_record["query_id"]), fingerprint),
    )


def _encode_cursor(ts: str, query_id: str, fingerprint: str) -> str:
    payload = json.dumps({"ts": ts, "query_id": query_id, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, fingerprint: str) -> _Position:
    position, issued_for = _read_cursor(cursor)
    if issued_for != fingerprint:
        raise InvalidRequest(f"this cursor belongs to a search with a different filter; {_RESTART_HINT}")
    return position


def _read_cursor(cursor: str) -> tuple[_Position, str]:
    garbled = InvalidRequest(f"the cursor is not one this service issued; {_RESTART_HINT}")
    if not cursor or len(cursor) > _MAX_CURSOR_CHARS:
        raise garbled
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise garbled from None
    if not isinstance(payload, dict) or not isinstance(payload.get("f"), str):
        raise garbled
    position = _position_of(payload)
    if position is None:
        raise garbled
    return position, payload["f"]
