"""Policies Lambda: CRUD for masking rules, row filters, ABAC policies, column tags, PHI grants and bindings.

Documents are the `hd_core.policy_codec` JSON form (the same as `hd local-policy add --json`) and pass the
validator the engine uses; every change bumps the policy version the engine hosts watch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from pydantic import BaseModel, ConfigDict, Field

from functions.policies.documents import PolicyDocument, as_document
from functions.shared.http import authorize, build_app, documented
from functions.shared.idempotency import RETRY_HELP, idempotent_create
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import PathId
from functions.shared.wiring import services
from hd_core import policy_admin, policy_preview
from hd_core.client_values import ID_PATTERN
from hd_core.models import ApiScope, ChangeContext, Role
from hd_core.policies import PolicyKind, PolicyObject
from hd_core.policy_codec import kind_of, object_id, to_document

SERVICE = "hd-policies"

router = Router()
_MANAGE = ApiScope.POLICIES_MANAGE.value
# The kinds these routes manage (`hd_core.policy_admin.MANAGED_KINDS`): JIT grants and quotas have routes of their own.
ManagedKind = Literal["mask", "row_filter", "abac", "column_tag", "phi_grant", "table_binding"]
_DOCUMENT_HELP = "A policy document: `kind` plus the fields of that kind (see README, Governance)"
_COUNTED_WHERE = ("Rows are counted by the engine beside the control API (hd dev) or, in AWS, by an engine host of "
                  "the fleet; 503 HD_ERR_PREVIEW_TIMEOUT when no host answers within 10 s (nothing stored). A "
                  "control API with neither answers row_counts \"unavailable\".")
_DRY_RUN_HELP = ("dry_run=true checks the policy as a create would and answers 200 with, per role, the rows "
                 f"visible and the columns masked before and after it, storing nothing. {_COUNTED_WHERE}")
_DRY_RUN_REPLACE_HELP = ("dry_run=true checks the new version as the replace would and answers, per role, the rows "
                         "visible and the columns masked with the stored version and with the new one, storing "
                         f"nothing. {_COUNTED_WHERE}")
MAX_EXPLAIN_SQL = 100_000


class ExemptionOut(BaseModel):
    """Who a mask or row filter leaves out; no role is exempt unless `exempt_roles` names it."""

    exempt_roles: list[Role]
    note: str
    warnings: list[str]


class RoleEffectOut(BaseModel):
    """One role's view of the policy's table before and after it (rows null: not counted, or refused)."""

    role: Role
    rows_before: int | None
    rows_after: int | None
    masked_before: list[str]
    masked_after: list[str]


class DryRunOut(BaseModel):
    """What storing the policy would change, per role. Rows are counted only where an engine runs beside the API."""

    table: str | None
    row_counts: Literal["counted", "unavailable", "not_applicable"]
    counted_as: str
    effects: list[RoleEffectOut]


class PolicyOut(BaseModel):
    kind: PolicyKind
    id: str
    document: dict[str, Any]
    policy_version: int
    stored: bool = True
    exemption: ExemptionOut | None = Field(default=None, description="Masks and row filters, on create and replace")
    dry_run: DryRunOut | None = None


class ExplainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=ID_PATTERN, description="The user whose session is explained")
    sql: str = Field(min_length=1, max_length=MAX_EXPLAIN_SQL, description="One statement, as the user would send it")


class TableGovernanceOut(BaseModel):
    table: str
    action: str
    row_filters: list[dict[str, str]]
    masks: list[dict[str, Any]]


class RefusalOut(BaseModel):
    stage: str
    sqlstate: str
    code: str
    message: str
    hint: str | None = None


class ExplanationOut(BaseModel):
    """The governed plan of one statement for one user: the filters and masks per table, or what refuses it."""

    user_id: str
    role: Role
    verdict: Literal["allowed", "refused"]
    statement_kind: str | None
    tables: list[TableGovernanceOut]
    masked_columns: list[str]
    governed_sql: str | None
    refusal: RefusalOut | None


class DeletedPolicyOut(BaseModel):
    kind: PolicyKind
    id: str
    policy_version: int


def policy_out(obj: PolicyObject, version: int | None = None, *, caller_role: Role | None = None) -> PolicyOut:
    """The response for `obj`; `version` None reads the current one (a single object's route).

    With `caller_role` (create and replace) it says who a mask or row filter exempts.
    """
    if version is None:
        version = services().store.policy_version()
    exempt = None if caller_role is None else policy_preview.exemption(obj, caller_role)
    return PolicyOut(kind=kind_of(obj), id=object_id(obj), document=to_document(obj), policy_version=version,
                     exemption=None if exempt is None else ExemptionOut.model_validate(policy_preview.as_json(exempt)))


@router.get("/v1/organizations/<org_id>/policies", responses=documented(200, list[PolicyOut], "Policies"))
def list_policies(org_id: PathId, kind: Annotated[PolicyKind | None, Query()] = None) -> list[PolicyOut]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    listing = policy_admin.policy_listing(services().store, ctx, org_id, kind=kind)
    return [policy_out(obj, listing.version) for obj in listing.objects]


@router.post("/v1/organizations/<org_id>/policies",
             responses={**documented(201, PolicyOut, "The new policy"),
                        200: {"description": "With dry_run=true: what the policy would change; nothing stored",
                              "content": {"application/json": {"model": PolicyOut}}}},
             description=f"{RETRY_HELP} {_DRY_RUN_HELP}")
@idempotent_create(router)
def create_policy(
    org_id: PathId, body: Annotated[PolicyDocument, Body(description=_DOCUMENT_HELP)],
    dry_run: Annotated[bool, Query(description=_DRY_RUN_HELP)] = False,
) -> tuple[PolicyOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    document = {**as_document(body), "org_id": org_id}
    if dry_run:
        return _previewed(policy_admin.checked_new_policy(svc.store, ctx, document), ctx), 200
    created = policy_admin.create_policy(svc.store, svc.trail, ctx, document)
    return policy_out(created, caller_role=ctx.actor.role), 201


@router.post("/v1/organizations/<org_id>/policies/explain",
             responses=documented(200, ExplanationOut, "The governed plan, or the refusal"),
             description="Planned by the engine beside the control API (hd dev) or, in AWS, by an engine host of "
                         "the fleet (503 HD_ERR_PREVIEW_TIMEOUT when none answers within 10 s); 409 "
                         "HD_ERR_ENGINE_REQUIRED where the control API has neither")
def explain_statement(org_id: PathId, body: ExplainIn) -> ExplanationOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    explanation = policy_preview.explain(services().store, ctx, org_id, body.user_id, body.sql)
    return ExplanationOut.model_validate(policy_preview.as_json(explanation))


@router.get("/v1/organizations/<org_id>/policies/<kind>/<object_id>", responses=documented(200, PolicyOut, "Policy"))
def get_policy(org_id: PathId, kind: ManagedKind, object_id: PathId) -> PolicyOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    return policy_out(policy_admin.get_policy(services().store, ctx, org_id, PolicyKind(kind), object_id))


@router.put("/v1/organizations/<org_id>/policies/<kind>/<object_id>",
            responses=documented(200, PolicyOut, "Policy; with dry_run=true, what the replace would change"),
            description=_DRY_RUN_REPLACE_HELP)
def replace_policy(
    org_id: PathId,
    kind: ManagedKind,
    object_id: PathId,
    body: Annotated[PolicyDocument, Body(description=_DOCUMENT_HELP)],
    dry_run: Annotated[bool, Query(description=_DRY_RUN_REPLACE_HELP)] = False,
) -> PolicyOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    document = as_document(body)
    policy_kind = PolicyKind(kind)
    # A table binding's org_id says who is to own the table (null: shared), so the path does not set it.
    pinned = {**document, "org_id": org_id}
    if policy_kind is PolicyKind.TABLE_BINDING:
        pinned = {"org_id": org_id, **document}
    if dry_run:
        obj = policy_admin.checked_replacement(svc.store, ctx, policy_kind, object_id, pinned)
        return _previewed(obj, ctx)
    replaced = policy_admin.replace_policy(svc.store, svc.trail, ctx, policy_kind, object_id, pinned)
    return policy_out(replaced, caller_role=ctx.actor.role)


def _previewed(obj: PolicyObject, ctx: ChangeContext) -> PolicyOut:
    """The dry run answer for `obj` (checked, not stored): per role, what storing it would change."""
    preview = policy_preview.as_json(policy_preview.dry_run(services().store, ctx, obj))
    out = policy_out(obj, caller_role=ctx.actor.role)
    return out.model_copy(update={"stored": False, "dry_run": DryRunOut.model_validate(preview)})


@router.delete(
    "/v1/organizations/<org_id>/policies/<kind>/<object_id>", responses=documented(200, DeletedPolicyOut, "Deleted")
)
def delete_policy(org_id: PathId, kind: ManagedKind, object_id: PathId) -> DeletedPolicyOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    policy_admin.delete_policy(svc.store, svc.trail, ctx, PolicyKind(kind), object_id)
    return DeletedPolicyOut(kind=PolicyKind(kind), id=object_id, policy_version=svc.store.policy_version())


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
