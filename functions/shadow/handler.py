"""Shadow mode Lambda: upload a query set, start a replay, follow it, read its report.

A replay runs the customer's statements on their PostgreSQL and on the engine (as a ServiceAccount
key issued for the replay, so governance and audit apply) through the shadow state machine; see
`hd_core.shadow.replay`. The comparison DSN is stored as a secret before anything else sees it: the
record, the execution input and the report hold its reference only. Everything here takes the
`keys:manage` scope (a replay issues a ServiceAccount key), which only Owners and Admins hold.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from functions.shadow.wiring import shadow_services
from functions.shared.http import authorize_environment, build_app, documented
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import PathId
from functions.shared.wiring import services
from hd_core.models import ApiScope
from hd_core.shadow import replay
from hd_core.shadow.state_machine import MAX_CONCURRENCY

SERVICE = "hd-shadow"

router = Router()
_SCOPE = ApiScope.KEYS_MANAGE.value
_SEARCH_PATH_PATTERN = r"^[A-Za-z_][\w$]*(\s*,\s*[A-Za-z_][\w$]*)*$"
_SECRET_ARN_PATTERN = r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"  # noqa: S105 - a pattern of ARNs, no secret


class UploadIn(BaseModel):
    text: str = Field(min_length=1, max_length=1_000_000,
                      description="The SQL file (statements separated by `;`) or JSONL query history")
    format: Literal["sql", "jsonl"] | None = Field(default=None, description="Guessed from the text when omitted")


class RejectedLineOut(BaseModel):
    line: int
    reason: str


class UploadOut(BaseModel):
    query_set_id: str
    statement_count: int
    rejected: list[RejectedLineOut]


class _ReplayOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query_set_id: PathId
    sample_rate: float = Field(default=1.0, gt=0, le=1, description="The share of statements replayed")
    timeout_seconds: float = Field(default=60.0, gt=0, le=600, description="Per statement, on each side")
    concurrency: int = Field(default=4, ge=1, le=MAX_CONCURRENCY, description="Batches replayed at once")
    search_path: str | None = Field(default=None, max_length=512, pattern=_SEARCH_PATH_PATTERN,
                                    description="The engine session's search_path (the comparison's: its DSN's)")


class ReplayWithDsnIn(_ReplayOptionsIn):
    comparison_dsn: SecretStr = Field(min_length=1, max_length=4096, description=(
        "libpq connection string or URI of the comparison PostgreSQL; stored as a secret at once, and only "
        "the secret's reference goes on"))


class ReplayWithSecretIn(_ReplayOptionsIn):
    comparison_secret_arn: str = Field(pattern=_SECRET_ARN_PATTERN, max_length=2048, description=(
        "A Secrets Manager secret holding the DSN (or an RDS-style JSON secret) instead"))


ReplayIn = ReplayWithDsnIn | ReplayWithSecretIn
_REPORT_RESPONSES = documented(200, dict[str, Any], "The report (JSON, or Markdown with format=markdown)")
_REPORT_RESPONSES[200]["content"]["text/markdown"] = {"schema": {"type": "string"}}


class ReplayOut(BaseModel):
    replay_id: str
    status: str


class ReplayStatusOut(BaseModel):
    replay_id: str
    status: str = Field(description="RUNNING, SUCCEEDED or FAILED")
    batches_done: int
    batches_total: int | None
    statements_total: int | None


@router.post("/v1/environments/<env_id>/shadow-mode/upload",
             responses=documented(201, UploadOut, "The stored query set"))
def upload(env_id: PathId, body: UploadIn) -> tuple[UploadOut, int]:
    env, _ = authorize_environment(router, env_id, scope=_SCOPE)
    query_set = replay.upload_query_set(shadow_services(), env, body.text.encode("utf-8"), body.format)
    return UploadOut(query_set_id=query_set.id, statement_count=len(query_set.statements),
                     rejected=[RejectedLineOut(line=r.line, reason=r.reason) for r in query_set.rejected]), 201


@router.post("/v1/environments/<env_id>/shadow-mode/replay",
             responses=documented(202, ReplayOut, "The replay, started"))
def start_replay(env_id: PathId, body: Annotated[ReplayIn, Body()]) -> tuple[ReplayOut, int]:
    env, ctx = authorize_environment(router, env_id, scope=_SCOPE)
    svc = services()
    replay_id = replay.start_replay(
        shadow_services(), svc.store, svc.trail, svc.hasher, ctx, env, body.query_set_id,
        comparison_dsn=body.comparison_dsn.get_secret_value() if isinstance(body, ReplayWithDsnIn) else None,
        comparison_secret_arn=body.comparison_secret_arn if isinstance(body, ReplayWithSecretIn) else None,
        options=replay.ReplayOptions(sample_rate=body.sample_rate, timeout_seconds=body.timeout_seconds,
                                     concurrency=body.concurrency, search_path=body.search_path))
    return ReplayOut(replay_id=replay_id, status="RUNNING"), 202


@router.get("/v1/environments/<env_id>/shadow-mode/replays/<replay_id>",
            responses=documented(200, ReplayStatusOut, "The replay's status and progress"))
def replay_status(env_id: PathId, replay_id: PathId) -> ReplayStatusOut:
    env, _ = authorize_environment(router, env_id, scope=_SCOPE)
    progress = replay.replay_progress(shadow_services(), env, replay_id)
    return ReplayStatusOut(replay_id=progress.replay_id, status=progress.status, batches_done=progress.batches_done,
                           batches_total=progress.batches_total, statements_total=progress.statements_total)


@router.get("/v1/environments/<env_id>/shadow-mode/reports/<replay_id>",
            responses=_REPORT_RESPONSES)
def report(env_id: PathId, replay_id: PathId,
           format: Annotated[Literal["json", "markdown"], Query()] = "json") -> Response[str]:
    env, _ = authorize_environment(router, env_id, scope=_SCOPE)
    found = replay.read_report(shadow_services(), env, replay_id)
    if format == "markdown":
        return Response(200, "text/markdown; charset=utf-8", found.to_markdown())
    return Response(200, "application/json", found.to_json())


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
