"""Policies Lambda: CRUD for masking rules, row filters, ABAC policies, column tags, PHI grants and bindings.

Documents are the `hd_core.policy_codec` JSON form (the same as `hd local-policy add --json`) and pass the
validator the engine uses; every change bumps the policy version the engine hosts watch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from pydantic import BaseModel

from functions.policies.documents import PolicyDocument, as_document
from functions.shared.http import authorize, build_app, documented
from functions.shared.idempotency import RETRY_HELP, idempotent_create
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import PathId
from functions.shared.wiring import services
from hd_core import policy_admin
from hd_core.models import ApiScope
from hd_core.policies import PolicyKind, PolicyObject
from hd_core.policy_codec import kind_of, object_id, to_document

SERVICE = "hd-policies"

router = Router()
_MANAGE = ApiScope.POLICIES_MANAGE.value
# The kinds these routes manage (`hd_core.policy_admin.MANAGED_KINDS`): JIT grants and quotas have routes of their own.
ManagedKind = Literal["mask", "row_filter", "abac", "column_tag", "phi_grant", "table_binding"]
_DOCUMENT_HELP = "A policy document: `kind` plus the fields of that kind (see README, Governance)"


class PolicyOut(BaseModel):
    kind: PolicyKind
    id: str
    document: dict[str, Any]
    policy_version: int


class DeletedPolicyOut(BaseModel):
    kind: PolicyKind
    id: str
    policy_version: int


def policy_out(obj: PolicyObject, version: int | None = None) -> PolicyOut:
    """The response for `obj`; `version` None reads the current one (a single object's route)."""
    if version is None:
        version = services().store.policy_version()
    return PolicyOut(kind=kind_of(obj), id=object_id(obj), document=to_document(obj), policy_version=version)


@router.get("/v1/organizations/<org_id>/policies", responses=documented(200, list[PolicyOut], "Policies"))
def list_policies(org_id: PathId, kind: Annotated[PolicyKind | None, Query()] = None) -> list[PolicyOut]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    listing = policy_admin.policy_listing(services().store, ctx, org_id, kind=kind)
    return [policy_out(obj, listing.version) for obj in listing.objects]


@router.post("/v1/organizations/<org_id>/policies", responses=documented(201, PolicyOut, "The new policy"),
             description=RETRY_HELP)
@idempotent_create(router)
def create_policy(
    org_id: PathId, body: Annotated[PolicyDocument, Body(description=_DOCUMENT_HELP)]
) -> tuple[PolicyOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    document = as_document(body)
    return policy_out(policy_admin.create_policy(svc.store, svc.trail, ctx, {**document, "org_id": org_id})), 201


@router.get("/v1/organizations/<org_id>/policies/<kind>/<object_id>", responses=documented(200, PolicyOut, "Policy"))
def get_policy(org_id: PathId, kind: ManagedKind, object_id: PathId) -> PolicyOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    return policy_out(policy_admin.get_policy(services().store, ctx, org_id, PolicyKind(kind), object_id))


@router.put("/v1/organizations/<org_id>/policies/<kind>/<object_id>", responses=documented(200, PolicyOut, "Policy"))
def replace_policy(
    org_id: PathId,
    kind: ManagedKind,
    object_id: PathId,
    body: Annotated[PolicyDocument, Body(description=_DOCUMENT_HELP)],
) -> PolicyOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    document = as_document(body)
    policy_kind = PolicyKind(kind)
    # A table binding's org_id says who is to own the table (null: shared), so the path does not set it.
    pinned = {**document, "org_id": org_id}
    if policy_kind is PolicyKind.TABLE_BINDING:
        pinned = {"org_id": org_id, **document}
    replaced = policy_admin.replace_policy(svc.store, svc.trail, ctx, policy_kind, object_id, pinned)
    return policy_out(replaced)


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
