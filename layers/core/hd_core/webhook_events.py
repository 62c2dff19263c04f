"""The webhook events administrative changes announce: one call each at the place the change happens.

The data are ids and names only, never secrets or policy bodies (a receiver that needs more reads
the API with its own credential). Emitting follows the IAM event of the change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from hd_core.iam_audit import ChainVerification
from hd_core.iam_events import IamEventType
from hd_core.models import ApiKeyRecord, ChangeContext, IamEvent, JitRequest, User
from hd_core.policies import PolicyKind
from hd_core.ports import ControlStore
from hd_core.query_audit_chain import QueryChainReport
from hd_core.records import encode_time
from hd_core.webhooks import WebhookEventType, emit


def policy_changed(store: ControlStore, ctx: ChangeContext, change: str, kind: PolicyKind, object_id: str) -> str:
    """`policy.changed`: a policy object was `created`, `updated` or `deleted`."""
    data = {"change": change, "kind": PolicyKind(kind).value, "id": object_id, "actor": ctx.actor.user_id,
            "request_id": ctx.request_id}
    return emit(store, ctx.actor.org_id, WebhookEventType.POLICY_CHANGED, data)


def user_role_changed(store: ControlStore, ctx: ChangeContext, before: User, after: User) -> str:
    """`user.role_changed`: who, from which role to which, by whom."""
    data = {"user_id": after.user_id, "from_role": before.role.value, "to_role": after.role.value,
            "actor": ctx.actor.user_id, "request_id": ctx.request_id}
    return emit(store, after.org_id, WebhookEventType.USER_ROLE_CHANGED, data)


def jit_event(store: ControlStore, ctx: ChangeContext, event_type: WebhookEventType, request: JitRequest) -> str:
    """`jit.requested` or `jit.approved` of one request."""
    data: dict[str, object] = {
        "request_id": request.request_id, "user_id": request.user_id, "role": request.role.value,
        "duration_seconds": request.duration_seconds, "reason": request.reason, "status": request.status.value,
        "actor": ctx.actor.user_id,
    }
    if request.decided_at is not None:
        data |= {"decided_by": request.decided_by, "decided_at": encode_time(request.decided_at),
                 "grant_id": request.grant_id}
    return emit(store, request.org_id, event_type, data)


def key_revoked(store: ControlStore, ctx: ChangeContext, key: ApiKeyRecord) -> str:
    """`key.revoked`: a key revoked through the API (its owner's removal included)."""
    data = {"key_id": key.key_id, "user_id": key.user_id, "name": key.name, "actor": ctx.actor.user_id,
            "revoked_at": None if key.revoked_at is None else encode_time(key.revoked_at)}
    return emit(store, key.org_id, WebhookEventType.KEY_REVOKED, data)


def chain_broken_event_id(chain_id: str, position: int) -> str:
    """The event id of a break at `position` of `chain_id`: the same break found again is the same event."""
    return "evt_" + hashlib.sha256(f"audit.chain_broken\n{chain_id}\n{position}".encode()).hexdigest()[:32]


def chain_broken(store: ControlStore, verification: ChainVerification) -> str | None:
    """`audit.chain_broken` for the break a verification found (None, nothing sent, for a valid chain).

    Once per break: the event id is derived from the chain and the break's position, so verifying
    the same broken chain again records nothing new for an endpoint that already has the event.
    """
    found = verification.first_break
    if found is None:
        return None
    data = {"chain_id": verification.chain_id, "position": found.position, "kind": found.kind,
            "entry_count": verification.entry_count, "verified_at": encode_time(verification.verified_at)}
    return emit(store, verification.chain_id, WebhookEventType.AUDIT_CHAIN_BROKEN, data,
                event_id=chain_broken_event_id(verification.chain_id, found.position))


def query_chain_broken(store: ControlStore, org_id: str, report: QueryChainReport) -> str | None:
    """`audit.chain_broken` to `org_id` for the break found in one host's query chain of one day (None if valid).

    Once per break, like the IAM chain's: the id comes from the query chain's id (`q_<day>_<host>`, never an
    organisation's) and the break's position, so verifying the same range again sends nothing twice.
    """
    verification = report.verification
    found = verification.first_break
    if found is None:
        return None
    data = {"trail": "queries", "chain_id": verification.chain_id, "host_id": report.host_id,
            "day": report.day.isoformat(), "position": found.position, "kind": found.kind,
            "entry_count": verification.entry_count, "verified_at": encode_time(verification.verified_at)}
    return emit(store, org_id, WebhookEventType.AUDIT_CHAIN_BROKEN, data,
                event_id=chain_broken_event_id(verification.chain_id, found.position))


_WIPE_EVENTS = {
    IamEventType.INSTANCE_WIPED.value: WebhookEventType.INSTANCE_WIPED,
    IamEventType.INSTANCE_WIPE_FAILED.value: WebhookEventType.INSTANCE_WIPE_FAILED,
}


def instance_wipe(store: ControlStore, org_ids: Iterable[str], event: IamEvent) -> list[str]:
    """`instance.wiped` / `instance.wipe_failed` to each organisation the instance served, from the IAM event the
    wipe hook recorded (never the command's output); returns the event ids.

    The id is derived from the IAM event's chain and position (and the organisation), so announcing the same
    recorded wipe again records nothing twice. ValueError for an IAM event that is not a wipe's.
    """
    kind = _WIPE_EVENTS.get(event.event_type)
    if kind is None:
        raise ValueError(f"not a wipe's IAM event: {event.event_type!r}")
    after = event.after or {}
    data: dict[str, object] = {"instance_id": event.target, "command_id": after.get("command_id"),
                               "device": after.get("device"), "request_id": event.request_id}
    if kind is WebhookEventType.INSTANCE_WIPE_FAILED:
        data["state"] = after.get("state")
    ids = []
    for org_id in dict.fromkeys(org_ids):
        digest = hashlib.sha256(f"{kind.value}\n{event.chain_id}\n{event.seq}\n{org_id}".encode()).hexdigest()
        ids.append(emit(store, org_id, kind, data, event_id="evt_" + digest[:32]))
    return ids
