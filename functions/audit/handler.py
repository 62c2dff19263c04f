"""Audit Lambda: query audit search, the IAM audit trail, and verification of its hash chain."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from functions.shared.http import authorize_environment, build_app, documented
from functions.shared.lambda_entry import lambda_entry, scheduled_entry
from functions.shared.request_fields import PathId
from functions.shared.wiring import services
from hd_core import webhook_events
from hd_core.audit_search import QueryAuditFilter, search_query_audit
from hd_core.client_values import ID_PATTERN, NON_BLANK_PATTERN
from hd_core.models import ApiScope, ChangeContext, IamEvent
from hd_core.services import write_due_checkpoints as checkpoint_grown_chains

SERVICE = "hd-audit"

router = Router()
_AUDIT = ApiScope.AUDIT_READ.value
# The largest event number any store holds (DynamoDB keys carry 12 digits; SQLite's INTEGER more).
MAX_SEQ = 10**12 - 1
# A week, in milliseconds: no statement runs longer (and 1e400 would read as infinity).
MAX_DURATION_MS = 7 * 24 * 3600 * 1000


class QueryAuditPageOut(BaseModel):
    records: list[dict[str, Any]]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


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


@router.get("/v1/environments/<env_id>/audit/queries", responses=documented(200, QueryAuditPageOut, "A page"))
def search_queries(
    env_id: PathId,
    start: Annotated[date, Query()],
    end: Annotated[date, Query()],
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    agent_id: Annotated[str | None, Query(max_length=128)] = None,
    table: Annotated[str | None, Query(max_length=256, pattern=NON_BLANK_PATTERN)] = None,
    min_duration_ms: Annotated[float | None, Query(ge=0, le=MAX_DURATION_MS)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> QueryAuditPageOut:
    ctx = _auditor_of(env_id)
    query = QueryAuditFilter(
        org_id=ctx.actor.org_id,
        start=start,
        end=end,
        user_id=user_id,
        agent_id=agent_id,
        table=table,
        min_duration_ms=min_duration_ms,
    )
    page = search_query_audit(services().query_audit, query, limit=limit, cursor=cursor)
    return QueryAuditPageOut(records=page.records, next_cursor=page.next_cursor)


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
    responses=documented(200, ChainVerificationOut, "The verification report"),
)
def verify_chain(env_id: PathId) -> ChainVerificationOut:
    ctx = _auditor_of(env_id)
    verification = services().trail.verify_chain(ctx.actor.org_id)
    webhook_events.chain_broken(services().store, verification)
    return ChainVerificationOut.model_validate(verification.to_dict())


app = build_app(router, service=SERVICE)
_api_handler = lambda_entry(app, SERVICE)


def write_due_checkpoints() -> int:
    """Checkpoint every organisation's chain that grew since its last checkpoint; returns how many."""
    return checkpoint_grown_chains(services())


_scheduled_handler = scheduled_entry(lambda event, context: {"checkpoints_written": write_due_checkpoints()}, SERVICE)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway requests, or the EventBridge schedule that checkpoints grown IAM chains."""
    if event.get("source") == "aws.events":
        return _scheduled_handler(event, context)
    return _api_handler(event, context)
