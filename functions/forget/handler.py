"""Forget requests (GDPR right to erasure, issue 20): ask for a data subject's rows to be erased, and follow it.

Every route needs `forget:manage` (Owners and Admins). A new request answers 202: in AWS it is
pending until the worker function's next sweep (functions/forget/worker.py, every few minutes) runs
it, and `waiting_for_hosts` while the fleet hosts erase their writable tables (completed by a later
sweep once every fleet host has, or is gone); in `hd dev` it has already run. The subject id is never answered
back or stored in the clear: a request shows its HMAC.
A failed request keeps its sealed id; in AWS the worker runs it again an hour after each attempt, or at its next
sweep once `POST .../retry` has put it back to pending (in `hd dev` the retry runs it at once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, Field

from functions.forget.wiring import erasure
from functions.shared.http import authorize, build_app, documented
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import MultilineText, NonBlankText, PathId
from hd_core import erasure as erasure_domain
from hd_core.erasure_models import MAX_REASON_LENGTH, ForgetRequest, ForgetStatus
from hd_core.models import ApiScope

SERVICE = "hd-forget"

router = Router()
_MANAGE = ApiScope.FORGET_MANAGE.value


class ForgetIn(BaseModel):
    subject_id: NonBlankText = Field(min_length=1, max_length=erasure_domain.MAX_SUBJECT_LENGTH,
                                     description="The value of the subject column whose rows are erased, as text "
                                     "(never stored)")
    reason: MultilineText = Field(default="", max_length=MAX_REASON_LENGTH,
                                  description="Why; stored and audited in the clear, with the subject id replaced "
                                  "by [subject] wherever it appears")


class TableResultOut(BaseModel):
    storage: str = Field(description="parquet (objects rewritten), writable (rows deleted) or absent")
    rows_removed: int
    objects_rewritten: int
    hosts: dict[str, int] = Field(default_factory=dict, description="Rows each fleet host deleted from its own "
                                  "writable copy of the table (AWS), by instance id")


class ForgetRequestOut(BaseModel):
    request_id: str
    org_id: str
    subject_hmac: str = Field(description="HMAC-SHA256 of the subject id under the deployment's erasure key")
    reason: str
    requested_by: str
    status: ForgetStatus
    requested_at: datetime
    sla_deadline: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tables: list[str]
    host_tables: list[str] = Field(description="Writable tables each fleet host erases from its own "
                                   "engine.duckdb; the request is waiting_for_hosts until every registered host "
                                   "has, or its instance is gone (error names silent hosts it waits for)")
    table_results: dict[str, TableResultOut]
    rows_removed: int
    error: str
    old_versions_pending: int = Field(description="Replaced object versions still to delete")
    old_versions_purge_after: datetime | None


def request_out(request: ForgetRequest) -> ForgetRequestOut:
    results: dict[str, Any] = request.table_results
    return ForgetRequestOut(
        request_id=request.request_id, org_id=request.org_id, subject_hmac=request.subject_hmac,
        reason=request.reason, requested_by=request.requested_by, status=request.status,
        requested_at=request.requested_at, sla_deadline=request.sla_deadline, started_at=request.started_at,
        finished_at=request.finished_at, tables=list(request.tables), host_tables=sorted(request.host_tables),
        table_results={name: TableResultOut.model_validate(value) for name, value in results.items()},
        rows_removed=request.rows_removed, error=request.error, old_versions_pending=len(request.purge_versions),
        old_versions_purge_after=request.purge_after,
    )


def _settled(request_id: str) -> ForgetRequest:
    stored = erasure().services.store.get_forget_request(request_id)
    assert stored is not None
    return stored


@router.post("/v1/organizations/<org_id>/forget-requests",
             responses=documented(202, ForgetRequestOut, "The request (completed already in hd dev)"))
def create_forget_request(org_id: PathId, body: ForgetIn) -> tuple[ForgetRequestOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    wiring = erasure()
    request = erasure_domain.submit(wiring.services, ctx, org_id, body.subject_id, body.reason)
    wiring.dispatch(request.request_id)
    return request_out(_settled(request.request_id)), 202


@router.get("/v1/organizations/<org_id>/forget-requests",
            responses=documented(200, list[ForgetRequestOut], "Forget requests, oldest first"))
def list_forget_requests(org_id: PathId) -> list[ForgetRequestOut]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    return [request_out(item) for item in erasure_domain.list_requests(erasure().services.store, ctx, org_id)]


@router.get("/v1/organizations/<org_id>/forget-requests/<request_id>",
            responses=documented(200, ForgetRequestOut, "The request"))
def get_forget_request(org_id: PathId, request_id: PathId) -> ForgetRequestOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    return request_out(erasure_domain.get_request(erasure().services.store, ctx, org_id, request_id))


@router.post("/v1/organizations/<org_id>/forget-requests/<request_id>/retry",
             responses=documented(202, ForgetRequestOut, "The request, pending again (run already in hd dev)"))
def retry_forget_request(org_id: PathId, request_id: PathId) -> tuple[ForgetRequestOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    wiring = erasure()
    erasure_domain.retry(wiring.services, ctx, org_id, request_id)
    wiring.dispatch(request_id)
    return request_out(_settled(request_id)), 202


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
