"""Users Lambda: organisations, environments, users (invite, list, suspend, remove) and role changes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from functions.shared.http import authorize, authorize_environment, build_app, documented
from functions.shared.idempotency import RETRY_HELP, idempotent_create
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import EmailAddress, ExternalId, PathId, PlainText
from functions.shared.wiring import services
from hd_core import directory, errors
from hd_core.client_values import EXTERNAL_ID_PATTERN
from hd_core.models import ApiScope, Environment, KeyEnv, Organization, OrgStatus, Role, User, UserStatus

SERVICE = "hd-users"

router = Router()
_MANAGE = ApiScope.USERS_MANAGE.value
_ORGS = ApiScope.ORGS_MANAGE.value


class OrganizationOut(BaseModel):
    org_id: str
    name: str
    status: OrgStatus
    mfa_required: bool
    created_at: datetime


class OrganizationPatch(BaseModel):
    """Fields to change; absent fields stay as they are.

    Suspending an organisation is not offered here: a suspended organisation's own members could
    never authenticate again to lift it, so it is a deployment operator's action.
    """

    mfa_required: bool | None = None


class EnvironmentIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$")
    key_env: KeyEnv = KeyEnv.LIVE


class EnvironmentOut(BaseModel):
    env_id: str
    org_id: str
    name: str
    key_env: KeyEnv
    created_at: datetime


class InviteIn(BaseModel):
    email: EmailAddress
    role: Role
    name: PlainText = Field(default="", max_length=128)
    department: PlainText | None = Field(default=None, max_length=128)
    region: PlainText | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, min_length=12, max_length=1024)


class UserOut(BaseModel):
    """A user as the API shows it: never a credential."""

    user_id: str
    org_id: str
    email: str
    name: str
    role: Role
    status: UserStatus
    department: str | None
    region: str | None
    mfa_enabled: bool
    external_ids: list[str]
    created_at: datetime


class RoleIn(BaseModel):
    role: Role


class IdentityIn(BaseModel):
    external_id: ExternalId = Field(description="`<issuer>#<subject>` of an OIDC identity")


def org_out(org: Organization) -> OrganizationOut:
    return OrganizationOut(
        org_id=org.org_id, name=org.name, status=org.status, mfa_required=org.mfa_required, created_at=org.created_at
    )


def env_out(env: Environment) -> EnvironmentOut:
    return EnvironmentOut(
        env_id=env.env_id, org_id=env.org_id, name=env.name, key_env=env.key_env, created_at=env.created_at
    )


def user_out(user: User) -> UserOut:
    return UserOut(
        user_id=user.user_id,
        org_id=user.org_id,
        email=user.email,
        name=user.name,
        role=user.role,
        status=user.status,
        department=user.department,
        region=user.region,
        mfa_enabled=user.mfa_enabled,
        external_ids=list(user.external_ids),
        created_at=user.created_at,
    )


@router.get("/v1/organizations/<org_id>", responses=documented(200, OrganizationOut, "The organisation"))
def get_organization(org_id: PathId) -> OrganizationOut:
    authorize(router, org_id=org_id)
    org = services().store.get_org(org_id)
    if org is None:
        raise errors.NotFound("organization not found")
    return org_out(org)


@router.patch("/v1/organizations/<org_id>", responses=documented(200, OrganizationOut, "The changed organisation"))
def patch_organization(org_id: PathId, body: OrganizationPatch) -> OrganizationOut:
    ctx = authorize(router, org_id=org_id, scope=_ORGS)
    svc = services()
    org = svc.store.get_org(org_id)
    if body.mfa_required is not None:
        org = directory.set_mfa_required(svc.store, svc.trail, ctx, org_id, body.mfa_required)
    if org is None:
        raise errors.NotFound("organization not found")
    return org_out(org)


@router.get(
    "/v1/organizations/<org_id>/environments", responses=documented(200, list[EnvironmentOut], "Environments")
)
def list_environments(org_id: PathId) -> list[EnvironmentOut]:
    ctx = authorize(router, org_id=org_id)
    return [env_out(env) for env in directory.list_environments(services().store, ctx, org_id)]


@router.post(
    "/v1/organizations/<org_id>/environments", responses=documented(201, EnvironmentOut, "The new environment"),
    description=RETRY_HELP,
)
@idempotent_create(router)
def create_environment(org_id: PathId, body: EnvironmentIn) -> tuple[EnvironmentOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_ORGS)
    svc = services()
    env = directory.create_environment(svc.store, svc.trail, ctx, org_id, body.name, body.key_env)
    return env_out(env), 201


@router.get("/v1/environments/<env_id>", responses=documented(200, EnvironmentOut, "The environment"))
def get_environment(env_id: PathId) -> EnvironmentOut:
    env, _ = authorize_environment(router, env_id)
    return env_out(env)


@router.post("/v1/organizations/<org_id>/users", responses=documented(201, UserOut, "The invited user"),
             description=RETRY_HELP)
@idempotent_create(router, secret_fields=frozenset({"password"}))
def invite_user(org_id: PathId, body: InviteIn) -> tuple[UserOut, int]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    user = directory.invite_user(
        svc.store,
        svc.trail,
        ctx,
        org_id=org_id,
        email=body.email,
        role=body.role,
        name=body.name,
        department=body.department,
        region=body.region,
        password=body.password,
        hasher=svc.hasher,
    )
    return user_out(user), 201


@router.get("/v1/organizations/<org_id>/users", responses=documented(200, list[UserOut], "Matching users"))
def list_users(
    org_id: PathId,
    role: Annotated[Role | None, Query()] = None,
    status: Annotated[UserStatus | None, Query()] = None,
    email_contains: Annotated[str | None, Query(max_length=254)] = None,
    department: Annotated[str | None, Query(max_length=128)] = None,
) -> list[UserOut]:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    users = directory.list_users(
        services().store, ctx, org_id, role=role, status=status, email_contains=email_contains, department=department
    )
    return [user_out(user) for user in users]


@router.get("/v1/organizations/<org_id>/users/<user_id>", responses=documented(200, UserOut, "The user"))
def get_user(org_id: PathId, user_id: PathId) -> UserOut:
    ctx = authorize(router, org_id=org_id)
    if ctx.actor.user_id != user_id and not ctx.actor.has_scope(_MANAGE):
        raise errors.Forbidden(f"reading another user needs the {_MANAGE} scope")
    return user_out(directory.get_user(services().store, ctx, org_id, user_id))


@router.post(
    "/v1/organizations/<org_id>/users/<user_id>/suspend", responses=documented(200, UserOut, "The suspended user")
)
def suspend_user(org_id: PathId, user_id: PathId) -> UserOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return user_out(directory.suspend_user(svc.store, svc.trail, ctx, org_id, user_id))


@router.post(
    "/v1/organizations/<org_id>/users/<user_id>/reactivate", responses=documented(200, UserOut, "The active user")
)
def reactivate_user(org_id: PathId, user_id: PathId) -> UserOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return user_out(directory.reactivate_user(svc.store, svc.trail, ctx, org_id, user_id))


@router.delete("/v1/organizations/<org_id>/users/<user_id>", responses=documented(200, UserOut, "The removed user"))
def remove_user(org_id: PathId, user_id: PathId) -> UserOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return user_out(directory.remove_user(svc.store, svc.trail, ctx, org_id, user_id))


@router.put("/v1/organizations/<org_id>/users/<user_id>/role", responses=documented(200, UserOut, "The user"))
def change_role(org_id: PathId, user_id: PathId, body: RoleIn) -> UserOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return user_out(directory.change_role(svc.store, svc.trail, ctx, org_id, user_id, body.role))


@router.post(
    "/v1/organizations/<org_id>/users/<user_id>/identities", responses=documented(200, UserOut, "The linked user")
)
def link_identity(org_id: PathId, user_id: PathId, body: IdentityIn) -> UserOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return user_out(directory.link_external_identity(svc.store, svc.trail, ctx, org_id, user_id, body.external_id))


@router.delete(
    "/v1/organizations/<org_id>/users/<user_id>/identities", responses=documented(200, UserOut, "The user")
)
def unlink_identity(
    org_id: PathId,
    user_id: PathId,
    external_id: Annotated[str, Query(min_length=3, max_length=512, pattern=EXTERNAL_ID_PATTERN)],
) -> UserOut:
    ctx = authorize(router, org_id=org_id, scope=_MANAGE)
    svc = services()
    return user_out(directory.unlink_external_identity(svc.store, svc.trail, ctx, org_id, user_id, external_id))


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
