"""Audit Lambda: query audit search, lookup by reference and export; the IAM audit trail and its hash chain."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field, WithJsonSchema

from functions.shared.http import authorize_environment, build_app, documented
from functions.shared.lambda_entry import lambda_entry, scheduled_entry
from functions.shared.request_fields import PathId
from functions.shared.wiring import services
from hd_core import webhook_events
from hd_core.audit_export import export_query_audit
from hd_core.audit_search import (
    QueryAuditFilter,
    find_query_records,
    lookup_window,
    resolve_window,
    search_query_audit,
)
from hd_core.client_values import ID_PATTERN, NON_BLANK_PATTERN
from hd_core.errors import AuditWriteFailed, InvalidRequest
from hd_core.models import ApiScope, ChangeContext, Environment, IamEvent, utc_now
from hd_core.phi_disclosures import MAX_PATIENT_KEY_LENGTH, lookup_phi_disclosures
from hd_core.query_audit_chain import sign_owed_query_checkpoints, verify_query_trail
from hd_core.services import write_due_checkpoints as checkpoint_grown_chains

SERVICE = "hd-audit"

router = Router()
_AUDIT = ApiScope.AUDIT_READ.value
# The largest event number any store holds (DynamoDB keys carry 12 digits; SQLite's INTEGER more).
MAX_SEQ = 10**12 - 1
# A week, in milliseconds: no statement runs longer (and 1e400 would read as infinity).
MAX_DURATION_MS = 7 * 24 * 3600 * 1000


# A date (YYYY-MM-DD: the whole day) or an RFC 3339 time with an offset, parsed by `_bound`: pydantic's own
# date|datetime union would read 2026-03-01T00:00:00Z as a date (a whole day) and accept times without an offset.
_BOUND_HELP = "YYYY-MM-DD (a whole day; as end, inclusive) or an RFC 3339 time with an offset (as end, exclusive)"
_BOUND_SCHEMA = {"anyOf": [{"type": "string", "format": "date", "maxLength": 10},
                           {"type": "string", "format": "date-time", "maxLength": 64}],
                 "description": _BOUND_HELP}
Bound = Annotated[str | None, Query(max_length=64, description=_BOUND_HELP), WithJsonSchema(_BOUND_SCHEMA)]


class QueryAuditPageOut(BaseModel):
    records: list[dict[str, Any]]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")
    start: datetime = Field(description="The window searched starts here (inclusive)")
    end: datetime = Field(description="and ends here (exclusive)")


class QueryRecordsOut(BaseModel):
    query_id: str
    records: list[dict[str, Any]] = Field(description="Oldest first: a streamed result has a stream and a "
                                          "completion record")


class AuditExportOut(BaseModel):
    export_id: str
    format: Literal["jsonl", "csv"]
    start: datetime
    end: datetime
    record_count: int
    size_bytes: int
    url: str = Field(description="Where to fetch the file: a presigned HTTPS URL in AWS, a file:// URL in hd dev")
    expires_at: datetime | None = Field(description="When a presigned URL stops working; null for a local file")


class IamEventOut(BaseModel):
    seq: int
    event_id: str
    event_type: str
    actor: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: datetime
    request_id: str
    prev_hash: str
    hash: str


class ChainBreakOut(BaseModel):
    position: int
    kind: str
    detail: str


class ChainVerificationOut(BaseModel):
    entry_count: int
    chain_valid: bool
    first_entry_hash: str | None
    last_entry_hash: str | None
    verified_at: datetime
    checkpoint_size: int | None
    first_break: ChainBreakOut | None


class QueryChainVerificationOut(ChainVerificationOut):
    chain_id: str
    host_id: str
    day: date
    unchained_count: int = Field(description="Records stored before the chain's first record without chain fields "
                                             "(written before the host chained them): counted, not verified")


class QueryTrailVerificationOut(BaseModel):
    trail: Literal["queries"]
    start: date
    end: date
    chain_valid: bool = Field(description="True only if every host chain of every day verifies")
    chains: list[QueryChainVerificationOut]


class PhiDisclosureOut(BaseModel):
    query_id: str
    ts: str
    user_id: str
    role: str | None
    key_id: str | None
    agent_id: str | None
    source_ip: str | None
    phi_grant_ids: list[str] = Field(description="The PHI grants active for the user when it ran")
    jit_grant_ids: list[str] = Field(description="The JIT elevations active for the user when it ran")
    phi_columns: list[str]
    rows_returned: int
    match: Literal["recorded", "possible"] = Field(
        description="recorded: the result carried this patient's key; possible: it returned PHI of a table with a "
                    "patient key without recording which patients (too many, or the key was not in the result)")
    reason: str


class PhiDisclosuresOut(BaseModel):
    start: date
    end: date
    disclosures: list[PhiDisclosureOut] = Field(description="Oldest first")


def event_out(event: IamEvent) -> IamEventOut:
    return IamEventOut(
        seq=event.seq,
        event_id=event.event_id,
        event_type=event.event_type,
        actor=event.actor,
        target=event.target,
        before=event.before,
        after=event.after,
        at=event.at,
        request_id=event.request_id,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def _auditor_of(env_id: str) -> ChangeContext:
    return authorize_environment(router, env_id, scope=_AUDIT)[1]


def _audited_environment(env_id: str) -> tuple[Environment, ChangeContext]:
    return authorize_environment(router, env_id, scope=_AUDIT)


def _bound(text: str | None) -> date | datetime | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{text!r} is not a date or a time: use {_BOUND_HELP}") from None


Outcome = Literal["ok", "denied", "error"]
UserFilter = Annotated[str | None, Query(pattern=ID_PATTERN)]
AgentFilter = Annotated[str | None, Query(max_length=128)]
TableFilter = Annotated[str | None, Query(max_length=256, pattern=NON_BLANK_PATTERN)]
DurationFilter = Annotated[float | None, Query(ge=0, le=MAX_DURATION_MS)]
OutcomeFilter = Annotated[Outcome | None, Query(description="ok, denied (a policy stage refused it) or error")]
SqlstateFilter = Annotated[str | None, Query(pattern=r"^[0-9A-Za-z]{5}$", description="the error's SQLSTATE")]
CodeFilter = Annotated[str | None, Query(pattern=r"^HD_ERR_[A-Z0-9_]{1,64}$", description="the error's HD_ERR_ code")]


@router.get("/v1/environments/<env_id>/audit/queries", responses=documented(200, QueryAuditPageOut, "A page"))
def search_queries(
    env_id: PathId,
    start: Bound = None,
    end: Bound = None,
    user_id: UserFilter = None,
    agent_id: AgentFilter = None,
    table: TableFilter = None,
    min_duration_ms: DurationFilter = None,
    outcome: OutcomeFilter = None,
    sqlstate: SqlstateFilter = None,
    code: CodeFilter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> QueryAuditPageOut:
    env, ctx = _audited_environment(env_id)
    first, last = resolve_window(_bound(start), _bound(end), cursor=cursor, now=utc_now())
    query = QueryAuditFilter(
        org_id=ctx.actor.org_id, start=first, end=last, key_env=env.key_env.value, user_id=user_id,
        agent_id=agent_id, table=table, min_duration_ms=min_duration_ms, outcome=outcome, sqlstate=sqlstate,
        error_code=code,
    )
    page = search_query_audit(services().query_audit, query, limit=limit, cursor=cursor)
    window_start, window_end = query.window()
    return QueryAuditPageOut(records=page.records, next_cursor=page.next_cursor, start=window_start, end=window_end)


@router.get(
    "/v1/environments/<env_id>/audit/queries/export",
    responses=documented(200, AuditExportOut, "The stored export and where to fetch it"),
)
def export_queries(
    env_id: PathId,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
    start: Bound = None,
    end: Bound = None,
    user_id: UserFilter = None,
    agent_id: AgentFilter = None,
    table: TableFilter = None,
    min_duration_ms: DurationFilter = None,
    outcome: OutcomeFilter = None,
    sqlstate: SqlstateFilter = None,
    code: CodeFilter = None,
) -> AuditExportOut:
    env, ctx = _audited_environment(env_id)
    exports = services().audit_exports
    if exports is None:
        raise AuditWriteFailed("this control API has no place to store audit exports")
    first, last = resolve_window(_bound(start), _bound(end), cursor=None, now=utc_now())
    query = QueryAuditFilter(
        org_id=ctx.actor.org_id, start=first, end=last, key_env=env.key_env.value, user_id=user_id,
        agent_id=agent_id, table=table, min_duration_ms=min_duration_ms, outcome=outcome, sqlstate=sqlstate,
        error_code=code,
    )
    export = export_query_audit(services().query_audit, exports, services().trail, ctx, env_id=env.env_id,
                                query=query, export_format=format)
    return AuditExportOut(
        export_id=export.export_id, format=export.format, start=export.start, end=export.end,
        record_count=export.record_count, size_bytes=export.size_bytes, url=export.location.url,
        expires_at=export.location.expires_at,
    )


@router.get(
    "/v1/environments/<env_id>/audit/queries/<query_id>",
    responses=documented(200, QueryRecordsOut, "The statement's records"),
)
def get_query_record(env_id: PathId, query_id: PathId, start: Bound = None, end: Bound = None) -> QueryRecordsOut:
    env, ctx = _audited_environment(env_id)
    first, last = lookup_window(_bound(start), _bound(end), now=utc_now())
    query = QueryAuditFilter(org_id=ctx.actor.org_id, start=first, end=last, key_env=env.key_env.value)
    return QueryRecordsOut(query_id=query_id, records=find_query_records(services().query_audit, query, query_id))


@router.get("/v1/environments/<env_id>/audit/admin", responses=documented(200, list[IamEventOut], "IAM events"))
def list_iam_events(
    env_id: PathId,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[IamEventOut]:
    ctx = _auditor_of(env_id)
    return [event_out(event) for event in services().trail.events(ctx.actor.org_id, after_seq=after_seq, limit=limit)]


@router.get(
    "/v1/environments/<env_id>/audit/admin/verify-chain",
    responses=documented(200, ChainVerificationOut | QueryTrailVerificationOut,
                         "The verification report: the IAM chain's, or each host chain's of the query audit"),
)
def verify_chain(
    env_id: PathId,
    trail: Annotated[Literal["iam", "queries"], Query(description="iam: the organisation's IAM chain; queries: "
                                                               "every engine host's daily query audit chain")] = "iam",
    start: Annotated[date | None, Query(description="queries only: first UTC day (default today)")] = None,
    end: Annotated[date | None, Query(description="queries only: last UTC day, inclusive (at most 366 days)")] = None,
) -> ChainVerificationOut | QueryTrailVerificationOut:
    ctx = _auditor_of(env_id)
    if trail == "queries":
        report = verify_query_trail(services().query_chain, services().checkpoint_keys, start=start, end=end)
        for chain in report.chains:
            webhook_events.query_chain_broken(services().store, ctx.actor.org_id, chain)
        return QueryTrailVerificationOut.model_validate(report.to_dict())
    verification = services().trail.verify_chain(ctx.actor.org_id)
    webhook_events.chain_broken(services().store, verification)
    return ChainVerificationOut.model_validate(verification.to_dict())


@router.get(
    "/v1/environments/<env_id>/audit/phi-disclosures",
    responses=documented(200, PhiDisclosuresOut, "Who saw this patient's PHI, when, under which grant"),
)
def phi_disclosures(
    env_id: PathId,
    patient_key: Annotated[str, Query(min_length=1, max_length=MAX_PATIENT_KEY_LENGTH,
                                      description="The value of the table's declared patient-key column")],
    start: Annotated[date, Query()],
    end: Annotated[date, Query(description="inclusive")],
) -> PhiDisclosuresOut:
    ctx = _auditor_of(env_id)
    found = lookup_phi_disclosures(services().query_audit, services().store, services().keys,
                                   org_id=ctx.actor.org_id, patient_key=patient_key, start=start, end=end)
    return PhiDisclosuresOut(start=start, end=end,
                             disclosures=[PhiDisclosureOut.model_validate(d.to_dict()) for d in found])


app = build_app(router, service=SERVICE)
_api_handler = lambda_entry(app, SERVICE)


def write_due_checkpoints() -> int:
    """Checkpoint every organisation's IAM chain that grew since its last checkpoint, and sign the query audit
    chain heads hosts that stopped without signing left owed; returns how many checkpoints were written.

    Raises `AuditWriteFailed` when an owed head could not be signed (after doing the others): the run is
    retried and counted as failed, rather than reporting success over an audit tail left unsigned.
    """
    control = services()
    written = checkpoint_grown_chains(control)
    if control.query_chain is None:
        return written
    owed = sign_owed_query_checkpoints(control.query_chain, control.checkpoint_keys)
    failed = [item.chain_id for item in owed if item.outcome == "failed"]
    if failed:
        raise AuditWriteFailed(f"the checkpoints owed by query audit chains {failed} could not be signed")
    return written + sum(item.outcome == "signed" for item in owed)


_scheduled_handler = scheduled_entry(lambda event, context: {"checkpoints_written": write_due_checkpoints()}, SERVICE)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway requests, or the EventBridge schedule that checkpoints grown IAM chains and owed query heads."""
    if event.get("source") == "aws.events":
        return _scheduled_handler(event, context)
    return _api_handler(event, context)
