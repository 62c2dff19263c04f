"""The query audit record: one JSONL line per statement, written through an `AuditSink` (fail closed).

The raw statement text never enters a record: `QueryAuditRecord.begin` takes it and keeps only
`redact_sql(...)`. Pipeline stages then add verdicts, timings, masked columns and the outcome.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Literal

from hd_core.models import new_id, utc_now
from hd_core.text_redaction import scrub_pii

Decision = Literal["allow", "deny"]


def audit_partition(ts: datetime) -> str:
    """The folder of the record written at `ts`: `audit/queries/YYYY/MM/DD/` of its UTC date."""
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    day = ts.astimezone(UTC)
    return f"audit/queries/{day:%Y/%m/%d}/"


def format_audit_ts(ts: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. `2026-03-01T12:00:00.123Z`."""
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PolicyVerdict:
    """What one pipeline stage decided about the statement, and why."""

    stage: str
    decision: Decision
    reason: str


@dataclass(frozen=True)
class StatementError:
    """Why a statement failed, as recorded for auditors (the client only gets a generic message)."""

    sqlstate: str
    code: str
    message: str


@dataclass(kw_only=True)
class QueryAuditRecord:
    """The audit record of one statement; build it with `begin`, never from raw SQL directly."""

    ts: str
    query_id: str
    org_id: str
    user_id: str
    key_id: str | None
    role: str | None
    source_ip: str | None
    # The key environment (live/test) of the credential: which environment's audit search finds the record.
    key_env: str | None = None
    agent_id: str | None = None
    agent_framework: str | None = None
    request_id: str | None = None
    priority: str | None = None
    dialect: str = "postgres"
    sql_redacted: str
    statement_kind: str | None = None
    tables: list[str] = field(default_factory=list)
    rows_returned: int = 0
    bytes_returned: int = 0
    # Rows an INSERT, UPDATE, DELETE, MERGE or COPY FROM stored, changed or removed (its command tag's count).
    rows_written: int = 0
    masked_columns: list[str] = field(default_factory=list)
    # HIPAA accounting (hd_core/phi_disclosures.py): PHI-tagged columns read unmasked by a statement that
    # returned rows, and the grants and patients (as HMACs) of that disclosure; [] and None otherwise.
    phi_columns_returned: list[str] = field(default_factory=list)
    phi_disclosure: dict[str, object] | None = None
    row_filters_applied: list[str] = field(default_factory=list)
    verdicts: list[PolicyVerdict] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    credits: float = 0.0
    error: StatementError | None = None
    engine_error_detail: str | None = None

    @classmethod
    def begin(
        cls,
        *,
        sql: str,
        org_id: str,
        user_id: str,
        key_id: str | None,
        role: str | None,
        source_ip: str | None,
        key_env: str | None = None,
        dialect: str = "postgres",
        statement_kind: str | None = None,
        agent_id: str | None = None,
        agent_framework: str | None = None,
        request_id: str | None = None,
        priority: str | None = None,
        query_id: str | None = None,
        at: datetime | None = None,
    ) -> QueryAuditRecord:
        """A record for a statement starting now (or `at`); `sql` is redacted here and the raw text dropped."""
        # Imported here: redaction parses with sqlglot, which the control-plane Lambdas that only write or
        # verify audit records (through query_audit_chain) do not carry in their layer.
        from hd_core.redaction import redact_sql

        return cls(
            ts=format_audit_ts(at or utc_now()),
            query_id=query_id or new_id("qry"),
            org_id=org_id,
            user_id=user_id,
            key_id=key_id,
            role=role,
            source_ip=source_ip,
            key_env=key_env,
            agent_id=agent_id,
            agent_framework=agent_framework,
            request_id=request_id,
            priority=priority,
            dialect=dialect,
            sql_redacted=redact_sql(sql, dialect),
            statement_kind=statement_kind,
        )

    def add_verdict(self, stage: str, decision: Decision, reason: str) -> None:
        """Note one stage's allow/deny decision."""
        if decision not in ("allow", "deny"):
            raise ValueError(f"decision must be 'allow' or 'deny', got {decision!r}")
        self.verdicts.append(PolicyVerdict(stage, decision, reason))

    def add_timing(self, stage: str, elapsed_ms: float) -> None:
        """Add time spent in a stage (summed if the stage runs more than once)."""
        self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + elapsed_ms

    def fail(self, *, sqlstate: str, code: str, message: str, engine_error_detail: str | None = None) -> None:
        """Record the failure with the engine's full text, PII-scrubbed (engine errors quote literals)."""
        self.error = StatementError(sqlstate, code, scrub_pii(message))
        self.engine_error_detail = scrub_pii(engine_error_detail) if engine_error_detail is not None else None

    def to_dict(self) -> dict[str, object]:
        """The record as JSON-ready values; a non-finite number becomes null."""
        # Built field by field: dataclasses.asdict deep-copies recursively and cost more than the
        # rest of the audit path together (this runs once per statement).
        values: dict[str, object] = {name: getattr(self, name) for name in _RECORD_FIELDS}
        values["verdicts"] = [{"stage": v.stage, "decision": v.decision, "reason": v.reason} for v in self.verdicts]
        values["tables"] = list(self.tables)
        values["masked_columns"] = list(self.masked_columns)
        values["phi_columns_returned"] = list(self.phi_columns_returned)
        values["phi_disclosure"] = None if self.phi_disclosure is None else dict(self.phi_disclosure)
        values["row_filters_applied"] = list(self.row_filters_applied)
        values["timings_ms"] = dict(self.timings_ms)
        error = self.error
        values["error"] = None if error is None else {"sqlstate": error.sqlstate, "code": error.code,
                                                      "message": error.message}
        values["credits"] = _finite(self.credits)
        values["timings_ms"] = {stage: _finite(ms) for stage, ms in self.timings_ms.items()}
        return values

    def to_json_line(self) -> str:
        """One JSON line (sorted keys, no trailing newline) as the sinks store it."""
        return to_json_line(self.to_dict())


def to_json_line(record: object) -> str:
    """Compact, key-sorted JSON of a record; refuses NaN/Infinity rather than writing invalid JSON."""
    return json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":"), ensure_ascii=True)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


_RECORD_FIELDS = tuple(f.name for f in fields(QueryAuditRecord))
