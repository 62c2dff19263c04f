"""Audit export: one environment's query audit records of a time window, as one JSONL or CSV file for an auditor.

A Lambda answer is at most 6 MB and an API Gateway request 29 s, so the export is not the answer:
the records stream (day by day, one stored file at a time, `audit_search.matching_records`) into a
spooled temporary file (memory up to 8 MiB, then disk), which is stored beside the query audit (the
audit bucket's `audit/exports/` prefix, handed out as a presigned URL that expires; locally a file
in the state directory). Its size is capped (`MAX_EXPORT_RECORDS`, `MAX_EXPORT_BYTES`, a 31-day
window) so one export fits one request; a bigger range is refused with a hint to split it.

Who exported which window of which environment, with which filters, is an `audit.exported` event in
the IAM trail. The URL is handed out only once that event is recorded: if it cannot be, the stored
file is discarded and the request fails (503), so no export leaves without its trace.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Literal, Protocol

from hd_core.audit_search import QueryAuditFilter, matching_records, outcome_of
from hd_core.errors import InvalidRequest
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, new_id
from hd_core.ports import QueryAuditArchive

ExportFormat = Literal["jsonl", "csv"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "csv")
MAX_EXPORT_DAYS = 31
MAX_EXPORT_RECORDS = 250_000
MAX_EXPORT_BYTES = 256 * 1024 * 1024  # well inside a Lambda's default 512 MB of /tmp
EXPORT_URL_TTL = timedelta(minutes=15)
_SPOOL_BYTES = 8 * 1024 * 1024
CONTENT_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
# One row per record; lists are joined with ';', the error split into its parts.
CSV_COLUMNS = (
    "ts", "query_id", "key_env", "user_id", "role", "key_id", "agent_id", "source_ip", "request_id",
    "statement_kind", "tables", "outcome", "sqlstate", "error_code", "error_message", "rows_returned",
    "rows_written", "bytes_returned", "total_ms", "masked_columns", "row_filters_applied", "sql_redacted",
)
# Spreadsheets run a cell starting with one of these as a formula (CSV injection): such cells get a leading '.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ExportTooLarge(InvalidRequest):
    """The window holds more than one export may carry."""

    code = "HD_ERR_EXPORT_TOO_LARGE"


@dataclass(frozen=True)
class ExportLocation:
    """Where a stored export can be fetched: a presigned HTTPS URL (expiring) or a local file URL."""

    url: str
    key: str  # the object key or file path, for the IAM event and clean-up
    expires_at: datetime | None


class AuditExportStore(Protocol):
    """Where exports go: the audit bucket's `audit/exports/` prefix, or `audit/exports/` in the state directory."""

    def put(self, name: str, body: IO[bytes], *, content_type: str) -> ExportLocation:
        """Store `body` (read to its end) as `name` (`<org>/<export id>.<format>`) and say where to fetch it."""
        ...

    def discard(self, location: ExportLocation) -> None:
        """Make a stored export unreachable (its IAM event could not be recorded)."""
        ...


@dataclass(frozen=True)
class AuditExport:
    """A stored export and what it holds."""

    export_id: str
    format: ExportFormat
    start: datetime
    end: datetime
    record_count: int
    size_bytes: int
    location: ExportLocation


def export_query_audit(
    archive: QueryAuditArchive,
    exports: AuditExportStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    *,
    env_id: str,
    query: QueryAuditFilter,
    export_format: str,
) -> AuditExport:
    """Write the records `query` matches to one file, store it, record `audit.exported`, and say where it is."""
    if export_format not in EXPORT_FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}")
    fmt: ExportFormat = "csv" if export_format == "csv" else "jsonl"
    if query.org_id != ctx.actor.org_id:
        raise InvalidRequest("an export covers the caller's own organisation only")
    start, end = query.window()
    if end - start > timedelta(days=MAX_EXPORT_DAYS):
        raise ExportTooLarge(f"an export covers at most {MAX_EXPORT_DAYS} days; export the range in parts")
    export_id = new_id("exp")
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        count = _write(spool, matching_records(archive, query), fmt)
        size = spool.tell()
        spool.seek(0)
        location = exports.put(f"{query.org_id}/{export_id}.{fmt}", spool, content_type=CONTENT_TYPES[fmt])
    event = {
        "export_id": export_id, "env_id": env_id, "format": fmt, "start": _iso(start), "end": _iso(end),
        "filters": _filters_of(query), "record_count": count, "size_bytes": size, "stored_as": location.key,
    }
    try:
        trail.record(query.org_id, IamEventType.AUDIT_EXPORTED, actor=ctx.actor.user_id, target=env_id,
                     before=None, after=event, request_id=ctx.request_id)
    except Exception:
        exports.discard(location)
        raise
    return AuditExport(export_id=export_id, format=fmt, start=start, end=end, record_count=count, size_bytes=size,
                       location=location)


def _write(out: IO[bytes], records: Iterable[dict[str, object]], fmt: ExportFormat) -> int:
    count = 0
    if fmt == "csv":
        out.write(_csv_line(CSV_COLUMNS))
    for record in records:
        count += 1
        if count > MAX_EXPORT_RECORDS:
            raise ExportTooLarge(f"more than {MAX_EXPORT_RECORDS} records match; export a shorter range")
        if fmt == "csv":
            out.write(_csv_line(_csv_row(record)))
        else:
            out.write(json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        if out.tell() > MAX_EXPORT_BYTES:
            raise ExportTooLarge(f"the export would exceed {MAX_EXPORT_BYTES // (1024 * 1024)} MiB; "
                                 "export a shorter range")
    return count


def _csv_row(record: dict[str, object]) -> list[str]:
    raw_error, raw_timings = record.get("error"), record.get("timings_ms")
    error: dict[str, object] = raw_error if isinstance(raw_error, dict) else {}
    timings: dict[str, object] = raw_timings if isinstance(raw_timings, dict) else {}
    values: dict[str, object] = {
        **record,
        "outcome": outcome_of(record),
        "sqlstate": error.get("sqlstate"),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
        "total_ms": timings.get("total"),
    }
    return [_cell(values.get(column)) for column in CSV_COLUMNS]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        text = ";".join(str(item) for item in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_line(cells: Iterable[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(list(cells))
    return buffer.getvalue().encode()


def _filters_of(query: QueryAuditFilter) -> dict[str, object]:
    named = {"key_env": query.key_env, "user_id": query.user_id, "agent_id": query.agent_id, "table": query.table,
             "min_duration_ms": query.min_duration_ms, "outcome": query.outcome, "sqlstate": query.sqlstate,
             "error_code": query.error_code}
    return {name: value for name, value in named.items() if value is not None}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
