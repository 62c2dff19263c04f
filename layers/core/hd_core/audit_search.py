"""Audit search: one organisation's query audit records over a time window, filtered, in pages with cursors.

Records come from a `QueryAuditArchive` one day partition at a time (the S3 archive lists a day
partition per call, so a search costs one listing per day it reads). Both sinks file a record
under the UTC day of its `ts`, so reading partitions in date order and taking each day's smallest
(`ts`, `query_id`) positions yields one global order, and a cursor naming the last record returned
lets the next page resume exactly after it. A day is never held whole: only the page being built
(at most `limit` + 1 records) is kept while a day's records stream past.

The window is half-open, [start, end). A bare date as `start` means that day's first instant; as
`end`, the end of that day (so `start=end=<day>` is the whole day). A cursor carries the window it
was issued for, so a search whose window was defaulted ("the last 24 hours") pages through the same
window rather than one that moves with the clock.

Records go out with their error texts redacted again (`for_auditors`): records written before the
engine redacted error details may still quote values, and auditors may not see the data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from hd_core.errors import InvalidRequest, NotFound
from hd_core.ports import QueryAuditArchive
from hd_core.text_redaction import redact_error_detail, redact_error_message

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
MAX_RANGE_DAYS = 366  # a whole leap year, start and end days included
DEFAULT_WINDOW = timedelta(hours=24)  # a search without start and end: the last day
LOOKUP_LOOKBACK = timedelta(days=7)  # a lookup by reference without start: the last week
# Far longer than any cursor we issue; refusing bigger input keeps decoding cheap.
_MAX_CURSOR_CHARS = 1024
_RESTART_HINT = "restart the search without a cursor"

Outcome = Literal["ok", "denied", "error"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "denied", "error")

# (ts as an aware UTC datetime, query_id): the order records are returned in.
_Position = tuple[datetime, str]


@dataclass(frozen=True)
class QueryAuditFilter:
    """Which query audit records a search returns; `org_id` is mandatory, the other criteria narrow it.

    `start` and `end` take a date (the whole day: `end` inclusive) or an aware datetime (`end` exclusive).
    """

    org_id: str
    start: date | datetime
    end: date | datetime
    key_env: str | None = None  # the key environment (live/test) of the environment searched
    user_id: str | None = None
    agent_id: str | None = None
    table: str | None = None  # matches an entry of `tables`; an unqualified name matches any schema
    min_duration_ms: float | None = None  # compared with `timings_ms["total"]`
    outcome: Outcome | None = None  # ok: no error; denied: a stage refused it; error: it failed otherwise
    sqlstate: str | None = None  # the recorded error's SQLSTATE
    error_code: str | None = None  # the recorded error's HD_ERR_* code

    def window(self) -> tuple[datetime, datetime]:
        """[start, end) as aware UTC datetimes."""
        return _instant(self.start, end=False), _instant(self.end, end=True)


@dataclass(frozen=True)
class QueryAuditPage:
    """One page of records, oldest first; `next_cursor` is None once the search is exhausted."""

    records: list[dict[str, object]]
    next_cursor: str | None


def resolve_window(
    start: date | datetime | None, end: date | datetime | None, *, cursor: str | None, now: datetime
) -> tuple[date | datetime, date | datetime]:
    """The window a request asks for: bounds it leaves out come from its cursor, else the last 24 hours."""
    if cursor is not None and (start is None or end is None):
        cursor_start, cursor_end = _read_cursor(cursor)[2]
        start = cursor_start if start is None else start
        end = cursor_end if end is None else end
    if end is None:
        end = now.astimezone(UTC)
    if start is None:
        start = _shifted(_instant(end, end=True), -DEFAULT_WINDOW)
    return start, end


def search_query_audit(
    archive: QueryAuditArchive, query: QueryAuditFilter, *, limit: int = 100, cursor: str | None = None
) -> QueryAuditPage:
    """Up to `limit` records of `query.org_id` matching `query`, ordered by (ts, query_id), after `cursor`.

    Raises `InvalidRequest` for a limit outside 1..1000, a window that is reversed or longer than
    366 days, or a cursor that is garbled or was issued for a different filter. A page can come
    back short, or even empty, with a cursor; only `next_cursor is None` means there is no more.
    """
    _check_request(query, limit)
    fingerprint = filter_fingerprint(query)
    after = _decode_cursor(cursor, fingerprint) if cursor is not None else None
    start, end = query.window()
    first_day = start.date() if after is None else max(start.date(), after[0].date())
    last_day = _last_day(start, end)
    page: list[tuple[_Position, dict[str, object]]] = []
    for day in _days(first_day, last_day):
        room = limit - len(page)
        # The smallest room+1 positions of the day: one more than fits tells whether the day holds more.
        smallest = heapq.nsmallest(room + 1, _matching(archive.records(day), query, after), key=lambda item: item[0])
        page.extend((position, for_auditors(record)) for position, record in smallest[:room])
        if len(smallest) > room:
            return _page(page, fingerprint, query)
        if len(page) == limit and day < last_day:
            # Full exactly at a day's end: later days may hold more, and finding out would mean reading them.
            return _page(page, fingerprint, query)
    return QueryAuditPage(records=[record for _, record in page], next_cursor=None)


def find_query_records(archive: QueryAuditArchive, query: QueryAuditFilter, query_id: str) -> list[dict[str, object]]:
    """The records of statement `query_id` in `query`'s organisation, environment and window, oldest first.

    Days are read newest first and the search stops a day after the first one holding the id (a
    statement that started before midnight may have a record on each side of it). A statement
    whose result streamed past the audit read-ahead has two records: the stream's and the completion.
    Raises `NotFound` when there is none.
    """
    _check_request(query, 1)
    start, end = query.window()
    found: list[tuple[_Position, dict[str, object]]] = []
    first_day = start.date()
    day = _last_day(start, end)
    stop_after: date | None = None
    while stop_after is None or day >= stop_after:
        hits = [item for item in _matching(archive.records(day), query, None) if item[0][1] == query_id]
        found.extend(hits)
        if hits and stop_after is None:
            stop_after = max(first_day, day - timedelta(days=1)) if day > date.min else day
        if day <= first_day:
            break
        day -= timedelta(days=1)
    if not found:
        raise NotFound(f"no query audit record {query_id} in this environment between "
                       f"{_iso(start)} and {_iso(end)}; pass start to look further back")
    return [for_auditors(record) for _, record in sorted(found, key=lambda item: item[0])]


def lookup_window(
    start: date | datetime | None, end: date | datetime | None, *, now: datetime
) -> tuple[date | datetime, date | datetime]:
    """The window a lookup by reference reads: up to `end` (default now), from `start` (default a week before)."""
    if end is None:
        end = now.astimezone(UTC)
    if start is None:
        start = _shifted(_instant(end, end=True), -LOOKUP_LOOKBACK)
    return start, end


def matching_records(archive: QueryAuditArchive, query: QueryAuditFilter) -> Iterator[dict[str, object]]:
    """Every record matching `query`, redacted for auditors: day by day, each day in storage order.

    Streams: nothing is held beyond the record in hand and what the archive reads at once (one file).
    """
    _check_request(query, 1)
    start, end = query.window()
    for day in _days(start.date(), _last_day(start, end)):
        for _, record in _matching(archive.records(day), query, None):
            yield for_auditors(record)


def filter_fingerprint(query: QueryAuditFilter) -> str:
    """A short hash of the filter, carried in cursors so a cursor cannot be replayed against another filter."""
    start, end = query.window()
    canonical = json.dumps(
        [query.org_id, _iso(start), _iso(end), query.key_env, query.user_id, query.agent_id,
         query.table, query.min_duration_ms, query.outcome, query.sqlstate, query.error_code],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def outcome_of(record: dict[str, object]) -> Outcome:
    """ok (no error), denied (a pipeline stage refused the statement) or error (it failed otherwise)."""
    if not isinstance(record.get("error"), dict):
        return "ok"
    verdicts = record.get("verdicts")
    if isinstance(verdicts, list) and any(isinstance(v, dict) and v.get("decision") == "deny" for v in verdicts):
        return "denied"
    return "error"


def records_from_jsonl(data: bytes, *, source: str) -> Iterator[dict[str, object]]:
    """The records in a JSONL file or object; a torn last line is skipped, a damaged line is logged and skipped."""
    pieces = data.split(b"\n")
    # Whatever follows the last newline is a line still being appended (or cut by a crash): no newline, skipped.
    lines = [piece + b"\n" for piece in pieces[:-1]] + [pieces[-1]]
    return records_from_lines(lines, source=source)


def records_from_lines(lines: Iterable[bytes], *, source: str) -> Iterator[dict[str, object]]:
    """The records in JSONL lines as read (each with its newline); a last line without one is still being written."""
    for number, line in enumerate(lines, start=1):
        if not line.endswith(b"\n"):
            continue  # a line still being appended (or cut by a crash): only ever the last one
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


def _instant(value: date | datetime, *, end: bool) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidRequest("start and end must carry a UTC offset (e.g. 2026-03-01T12:00:00Z) or be dates")
        return _shifted(value, timedelta(0))  # to UTC; an offset can push a time outside the calendar
    moment = datetime.combine(value, time(), UTC)
    return _shifted(moment, timedelta(days=1)) if end else moment


def _shifted(moment: datetime, by: timedelta) -> datetime:
    try:
        return (moment + by).astimezone(UTC)
    except OverflowError:
        raise InvalidRequest("start and end must lie between the years 1 and 9999, with a day to spare") from None


def _last_day(start: datetime, end: datetime) -> date:
    """The UTC day of the last instant before `end` (an end at midnight reads nothing of its own day)."""
    return max(start, _shifted(end, -timedelta(microseconds=1))).date()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_request(query: QueryAuditFilter, limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    if not query.org_id:
        raise InvalidRequest("an audit search needs an org_id")
    start, end = query.window()
    if end <= start:
        raise InvalidRequest(f"end ({query.end.isoformat()}) is before start ({query.start.isoformat()}) "
                             "or equal to it: the window would be empty")
    if (_last_day(start, end) - start.date()).days + 1 > MAX_RANGE_DAYS:
        raise InvalidRequest(f"an audit search covers at most {MAX_RANGE_DAYS} days; split the range")
    if query.table is not None and not query.table.strip():
        raise InvalidRequest("table must not be empty")
    if query.min_duration_ms is not None and not (math.isfinite(query.min_duration_ms) and query.min_duration_ms >= 0):
        raise InvalidRequest("min_duration_ms must be a finite number of milliseconds, zero or more")
    if query.outcome is not None and query.outcome not in OUTCOMES:
        raise InvalidRequest(f"outcome must be one of {', '.join(OUTCOMES)}")


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _matching(
    records: Iterator[dict[str, object]], query: QueryAuditFilter, after: _Position | None
) -> Iterator[tuple[_Position, dict[str, object]]]:
    start, end = query.window()
    for record in records:
        # Tenant isolation comes first and is an exact comparison: nothing else is looked at for other orgs.
        if record.get("org_id") != query.org_id:
            continue
        position = _position_of(record)
        if position is None:
            log.warning("skipping query audit record without a usable ts and query_id: %r", record.get("query_id"))
            continue
        if not start <= position[0] < end or (after is not None and position <= after):
            continue
        if _matches(record, query):
            yield position, record


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
    # The environment is an exact match: a record without one (written before engines recorded it) is in none.
    if query.key_env is not None and record.get("key_env") != query.key_env:
        return False
    if query.user_id is not None and record.get("user_id") != query.user_id:
        return False
    if query.agent_id is not None and record.get("agent_id") != query.agent_id:
        return False
    if query.table is not None and not _touches_table(record.get("tables"), query.table):
        return False
    if query.outcome is not None and outcome_of(record) != query.outcome:
        return False
    if (query.sqlstate is not None or query.error_code is not None) and not _error_matches(record, query):
        return False
    return query.min_duration_ms is None or _total_ms(record) >= query.min_duration_ms


def _error_matches(record: dict[str, object], query: QueryAuditFilter) -> bool:
    error = record.get("error")
    if not isinstance(error, dict):
        return False
    if query.sqlstate is not None and str(error.get("sqlstate", "")).upper() != query.sqlstate.upper():
        return False
    return query.error_code is None or str(error.get("code", "")).upper() == query.error_code.upper()


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
        return None if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # not a time, or one whose UTC instant falls outside the calendar
        return None


def _page(page: list[tuple[_Position, dict[str, object]]], fingerprint: str, query: QueryAuditFilter) -> QueryAuditPage:
    last_record = page[-1][1]
    return QueryAuditPage(
        records=[record for _, record in page],
        next_cursor=_encode_cursor(str(last_record["ts"]), str(last_record["query_id"]), fingerprint, query.window()),
    )


def _encode_cursor(ts: str, query_id: str, fingerprint: str, window: tuple[datetime, datetime]) -> str:
    payload = {"ts": ts, "query_id": query_id, "f": fingerprint, "w": [_iso(window[0]), _iso(window[1])]}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, fingerprint: str) -> _Position:
    position, issued_for, _ = _read_cursor(cursor)
    if issued_for != fingerprint:
        raise InvalidRequest(f"this cursor belongs to a search with a different filter; {_RESTART_HINT}")
    return position


def _read_cursor(cursor: str) -> tuple[_Position, str, tuple[datetime, datetime]]:
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
    window = payload.get("w")
    if position is None or not isinstance(window, list) or len(window) != 2:
        raise garbled
    bounds = [_parse_ts(bound) if isinstance(bound, str) else None for bound in window]
    if bounds[0] is None or bounds[1] is None:
        raise garbled
    return position, payload["f"], (bounds[0], bounds[1])
