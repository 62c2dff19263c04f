"""API keys Lambda: create (plaintext shown once), list, get, rotate (72-hour grace) and revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from functions.shared.http import authorize, build_app, documented
from functions.shared.lambda_entry import lambda_entry, scheduled_entry
from functions.shared.request_fields import Cidr, PathId, PlainText, ScopeName
from functions.shared.wiring import services
from hd_core import key_admin
from hd_core.client_values import ID_PATTERN
from hd_core.models import ApiKeyRecord, KeyEnv, utc_now

SERVICE = "hd-api-keys"

router = Router()


class KeyIn(BaseModel):
    user_id: str | None = Field(default=None, pattern=ID_PATTERN, description="Whose key; default: the caller's own")
    env: KeyEnv = KeyEnv.LIVE
    scopes: list[ScopeName] = Field(default_factory=lambda: ["read_only"], min_length=1, max_length=40)
    name: PlainText = Field(default="", max_length=128)
    allowed_cidrs: list[Cidr] = Field(default_factory=list, max_length=50)
    expires_at: datetime | None = None


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
