"""API keys Lambda: create (plaintext shown once), list, get, rotate (72-hour grace) and revoke; rotation policies,
the lifecycle status and an admin's lifecycle run on demand (issue 19)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, ConfigDict, Field

from functions.shared.http import authorize, build_app, documented
from functions.shared.lambda_entry import lambda_entry, scheduled_entry
from functions.shared.request_fields import Cidr, PathId, PlainText, ScopeName
from functions.shared.wiring import services
from hd_core import key_admin, key_lifecycle
from hd_core.client_values import ID_PATTERN
from hd_core.models import ApiKeyRecord, KeyEnv, utc_now

# A Secrets Manager secret name or ARN; its organisation prefix (hd/keys/<org_id>/) is checked by key_admin.
SECRET_ID_PATTERN = r"^[A-Za-z0-9/_+=.@:-]{1,2048}$"  # noqa: S105 (a pattern of secret names)

SERVICE = "hd-api-keys"

router = Router()


class KeyIn(BaseModel):
    user_id: str | None = Field(default=None, pattern=ID_PATTERN, description="Whose key; default: the caller's own")
    env: KeyEnv = KeyEnv.LIVE
    scopes: list[ScopeName] = Field(default_factory=lambda: ["read_only"], min_length=1, max_length=40)
    name: PlainText = Field(default="", max_length=128)
    allowed_cidrs: list[Cidr] = Field(default_factory=list, max_length=50)
    expires_at: datetime | None = None
    rotate_every_days: int | None = Field(
        default=None, ge=1, le=key_admin.MAX_ROTATE_EVERY_DAYS,
        description="Rotate on this schedule (days after creation); absent: 90 for a ServiceAccount's key, else "
        "none; null: none",
    )
    delivery_secret: str | None = Field(
        default=None, pattern=SECRET_ID_PATTERN,
        description="Secrets Manager secret (name or ARN, named hd/keys/<org_id>/...) a scheduled successor's "
        "plaintext is written to; without one the owner is notified and rotates the key",
    )


class KeyLifecycleIn(BaseModel):
    """A key's rotation policy and delivery target; a field left out is left as it is, null clears it."""

    model_config = ConfigDict(extra="forbid")

    rotate_every_days: int | None = Field(default=None, ge=1, le=key_admin.MAX_ROTATE_EVERY_DAYS)
    delivery_secret: str | None = Field(default=None, pattern=SECRET_ID_PATTERN)


class KeyOut(BaseModel):
    """A key's public facts: never its hash or plaintext."""

    key_id: str
    org_id: str
    user_id: str
    env: KeyEnv
    name: str
    scopes: list[str]
    allowed_cidrs: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_to: str | None
    rotate_every_days: int | None = None
    delivery_secret: str | None = None
    rotation_due_at: datetime | None = None


class KeyStatusOut(BaseModel):
    """A key due for rotation, expiring within 7 days, or in its rotation grace, and when that happens."""

    state: str = Field(description="rotation_due, expiring or in_grace")
    at: datetime = Field(description="When it falls due, expires, or its grace ends")
    key: KeyOut


class LifecycleRunOut(BaseModel):
    """What an on-demand lifecycle run did, by key id."""

    expired: list[str]
    rotated: list[str]
    successors: list[str]
    rotation_due: list[str]
    rotation_failed: list[str]
    warnings: list[dict[str, Any]]


class NewKeyOut(BaseModel):
    """A new key: `api_key` is the only time the plaintext is ever shown."""

    api_key: str
    key: KeyOut


class RotatedKeyOut(BaseModel):
    """A rotation: the new key (plaintext shown once) and the old one, valid until its `expires_at`."""

    api_key: str
    key: KeyOut
    previous: KeyOut


def key_out(record: ApiKeyRecord) -> KeyOut:
    return KeyOut(
        key_id=record.key_id,
        org_id=record.org_id,
        user_id=record.user_id,
        env=record.env,
        name=record.name,
        scopes=list(record.scopes),
        allowed_cidrs=list(record.allowed_cidrs),
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        rotated_to=record.rotated_to,
        rotate_every_days=record.rotate_every_days,
        delivery_secret=record.delivery_secret,
        rotation_due_at=key_lifecycle.rotation_due_at(record),
    )


@router.post("/v1/organizations/<org_id>/api-keys", responses=documented(201, NewKeyOut, "The new key"))
def create_key(org_id: PathId, body: KeyIn) -> tuple[NewKeyOut, int]:
    ctx = authorize(router, org_id=org_id)
    svc = services()
    plaintext, record = key_admin.create_key(
        svc.store,
        svc.trail,
        ctx,
        svc.hasher,
        org_id=org_id,
        user_id=body.user_id or ctx.actor.user_id,
        env=body.env,
        scopes=body.scopes,
        name=body.name,
        allowed_cidrs=body.allowed_cidrs,
        expires_at=body.expires_at,
        rotate_every_days=(
            body.rotate_every_days if "rotate_every_days" in body.model_fields_set else key_admin.Unset.DEFAULT
        ),
        delivery_secret=body.delivery_secret,
    )
    return NewKeyOut(api_key=plaintext, key=key_out(record)), 201


@router.get("/v1/organizations/<org_id>/api-keys", responses=documented(200, list[KeyOut], "Keys"))
def list_keys(
    org_id: PathId,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    include_revoked: Annotated[bool, Query()] = True,
) -> list[KeyOut]:
    ctx = authorize(router, org_id=org_id)
    records = key_admin.list_keys(services().store, ctx, org_id, user_id=user_id, include_revoked=include_revoked)
    return [key_out(record) for record in records]


@router.get("/v1/organizations/<org_id>/api-keys/<key_id>", responses=documented(200, KeyOut, "The key"))
def get_key(org_id: PathId, key_id: PathId) -> KeyOut:
    ctx = authorize(router, org_id=org_id)
    return key_out(key_admin.get_key(services().store, ctx, org_id, key_id))


@router.post(
    "/v1/organizations/<org_id>/api-keys/<key_id>/rotate", responses=documented(201, RotatedKeyOut, "Rotated")
)
def rotate_key(org_id: PathId, key_id: PathId) -> tuple[RotatedKeyOut, int]:
    ctx = authorize(router, org_id=org_id)
    svc = services()
    plaintext, new = key_admin.rotate_key(svc.store, svc.trail, ctx, svc.hasher, org_id, key_id)
    previous = key_admin.get_key(svc.store, ctx, org_id, key_id)
    return RotatedKeyOut(api_key=plaintext, key=key_out(new), previous=key_out(previous)), 201


@router.patch("/v1/organizations/<org_id>/api-keys/<key_id>", responses=documented(200, KeyOut, "The key"))
def set_key_lifecycle(org_id: PathId, key_id: PathId, body: KeyLifecycleIn) -> KeyOut:
    ctx = authorize(router, org_id=org_id)
    svc = services()
    given = body.model_fields_set
    record = key_admin.set_key_lifecycle(
        svc.store, svc.trail, ctx, org_id, key_id,
        rotate_every_days=body.rotate_every_days if "rotate_every_days" in given else key_admin.Unset.DEFAULT,
        delivery_secret=body.delivery_secret if "delivery_secret" in given else key_admin.Unset.DEFAULT,
    )
    return key_out(record)


@router.get("/v1/organizations/<org_id>/keys/status", responses=documented(200, list[KeyStatusOut], "Key status"))
def key_status(org_id: PathId) -> list[KeyStatusOut]:
    ctx = authorize(router, org_id=org_id)
    entries = key_lifecycle.key_status(services(), ctx, org_id, utc_now())
    return [KeyStatusOut(state=entry.state, at=entry.at, key=key_out(entry.record)) for entry in entries]


@router.post(
    "/v1/organizations/<org_id>/keys/lifecycle-runs", responses=documented(201, LifecycleRunOut, "The run")
)
def run_key_lifecycle(org_id: PathId) -> tuple[LifecycleRunOut, int]:
    ctx = authorize(router, org_id=org_id, scope="keys:manage")
    key_lifecycle.require_lifecycle_admin(ctx, org_id)
    report = key_lifecycle.run_key_lifecycle(services(), utc_now(), org_ids=[org_id], request_id=ctx.request_id)
    return LifecycleRunOut(**report.as_dict()), 201


@router.delete("/v1/organizations/<org_id>/api-keys/<key_id>", responses=documented(200, KeyOut, "The revoked key"))
def revoke_key(org_id: PathId, key_id: PathId) -> KeyOut:
    ctx = authorize(router, org_id=org_id)
    svc = services()
    record = key_admin.revoke_key(svc.store, svc.trail, ctx, org_id=org_id, key_id=key_id, authenticator=svc.api_keys)
    return key_out(record)


app = build_app(router, service=SERVICE)
_api_handler = lambda_entry(app, SERVICE)


def sweep_expired_keys(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The EventBridge schedule: record keys that expired since the last sweep in the IAM trail."""
    svc = services()
    return {"expired_keys_recorded": len(key_admin.record_expired_keys(svc.store, svc.trail, now=utc_now()))}


_scheduled_handler = scheduled_entry(sweep_expired_keys, SERVICE)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway requests, or the EventBridge schedule that records expired keys in the IAM trail."""
    if event.get("source") == "aws.events":
        return _scheduled_handler(event, context)
    return _api_handler(event, context)
