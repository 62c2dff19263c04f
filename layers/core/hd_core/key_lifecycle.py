"""The daily API key lifecycle job (issue 19): scheduled rotation, expiry, and warnings before either ends a key.

`run_key_lifecycle(services, now)` walks every key of every organisation (or of one, when an admin
asks for a run) in three passes; a scheduled run (every organisation) first rotates the deployment's JWT
signing keys (hd_core.signing_keys):

1. Expiry: a key past its `expires_at` (its own expiry, or the end of its rotation grace) that is
   not yet revoked is revoked; API_KEY_EXPIRED and `key.expired`.
2. Rotation: a key whose policy (`rotate_every_days` after its creation) is due gets a successor
   through the ordinary rotation path (the old key keeps its 72-hour grace). With a delivery target
   the successor's plaintext is written to that Secrets Manager secret *before* the successor is
   stored (a failed write changes nothing, and the next run tries again); API_KEY_ROTATED and
   `key.rotated`. Without one, nothing is issued (a plaintext no one receives would only end the
   old key after its grace): the owner is told once, API_KEY_ROTATION_DUE and `key.rotated` with
   `"rotated": false`, and rotates it themself.
3. Warnings: 7, 3 and 1 days before a key's `expires_at` (`reason` `expiry`, or `grace_end` for a
   rotated key), once each; when a run first finds several thresholds passed, only the nearest is
   sent. API_KEY_EXPIRING and `key.expiring`.

Idempotent: every notice is remembered on the key (`lifecycle_notices`) before its IAM event and its
webhook are written, and each webhook's event id is derived from the key and the notice, so a second
run in a day (or a rerun after a crash) announces nothing twice. A plaintext never reaches a log
line, an IAM event or a webhook: it exists only in the Secrets Manager write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from hd_core import webhooks
from hd_core.api_keys import DEFAULT_ROTATION_GRACE, rotate_api_key
from hd_core.directory import require_own_org
from hd_core.errors import Forbidden, HdError, InvalidRequest
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.key_admin import list_keys
from hd_core.models import ApiKeyRecord, ChangeContext, Role
from hd_core.records import encode_time
from hd_core.services import ControlServices
from hd_core.signing_keys import SigningKeyReport, rotate_checkpoint_key, rotate_jwt_signing_keys
from hd_core.webhooks import WebhookEventType

_log = logging.getLogger(__name__)

WARNING_DAYS = (7, 3, 1)
STATUS_HORIZON = timedelta(days=7)  # `hd keys status`: what falls due or expires within this


class SecretDelivery(Protocol):
    """Where a scheduled successor's plaintext goes: a Secrets Manager secret the customer named."""

    def put(self, secret_id: str, secret_string: str) -> None:
        """Store `secret_string` as the secret's new current value; raises on any failure."""


# The AWS SDK logs every request's parameters at DEBUG (botocore.endpoint: "Making request ... with params"):
# while a successor is being written, nothing the SDK's loggers say about it reaches any handler.
_SDK_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "moto")
_quiet = threading.local()


class _NotWhileDelivering(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


_SDK_FILTER = _NotWhileDelivering()


def _silence_sdk_loggers() -> None:
    """Put the filter on every SDK logger that exists (a filter is consulted only by its own logger)."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.split(".", 1)[0] in _SDK_LOGGERS:
            logger = logging.getLogger(name)
            if _SDK_FILTER not in logger.filters:
                logger.addFilter(_SDK_FILTER)


class SecretsManagerDelivery:
    """`SecretDelivery` through Secrets Manager's PutSecretValue (the secret must exist; its KMS key is its own).

    The SDK's own log lines are dropped during the call: at DEBUG they would quote the secret string.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def put(self, secret_id: str, secret_string: str) -> None:
        _silence_sdk_loggers()
        _quiet.on = True
        try:
            self._client.put_secret_value(SecretId=secret_id, SecretString=secret_string)
        finally:
            _quiet.on = False


def secrets_manager_delivery() -> SecretsManagerDelivery:
    """The default delivery: a boto3 Secrets Manager client of the process's region and credentials."""
    import boto3  # imported on first delivery only, like the rest of the AWS wiring

    return SecretsManagerDelivery(boto3.client("secretsmanager"))


@dataclass
class LifecycleReport:
    """What one run did, by key id (never a plaintext)."""

    expired: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)  # old key ids that got a delivered successor
    successors: list[str] = field(default_factory=list)
    rotation_due: list[str] = field(default_factory=list)  # owners told to rotate (no delivery target)
    rotation_failed: list[str] = field(default_factory=list)  # still due; the next run tries again
    warnings: list[tuple[str, str, int]] = field(default_factory=list)  # (key id, reason, days before)
    signing_keys: SigningKeyReport | None = None  # the JWT signing keys' pass (scheduled runs only)

    def as_dict(self) -> dict[str, Any]:
        return {
            "signing_keys": None if self.signing_keys is None else self.signing_keys.as_dict(),
            "expired": list(self.expired),
            "rotated": list(self.rotated),
            "successors": list(self.successors),
            "rotation_due": list(self.rotation_due),
            "rotation_failed": list(self.rotation_failed),
            "warnings": [{"key_id": k, "reason": r, "days_before": d} for k, r, d in self.warnings],
        }


def rotation_due_at(record: ApiKeyRecord) -> datetime | None:
    """When the key's rotation policy makes it due (creation + `rotate_every_days`), or None without a policy."""
    if record.rotate_every_days is None:
        return None
    return record.created_at + timedelta(days=record.rotate_every_days)


def _in_use(record: ApiKeyRecord, at: datetime) -> bool:
    return record.revoked_at is None and (record.expires_at is None or record.expires_at > at)


def run_key_lifecycle(
    services: ControlServices,
    now: datetime,
    *,
    delivery: SecretDelivery | None = None,
    org_ids: Iterable[str] | None = None,
    request_id: str | None = None,
    grace: timedelta = DEFAULT_ROTATION_GRACE,
) -> LifecycleReport:
    """Run the lifecycle once at `now` over `org_ids` (default: every organisation); see the module text.

    `delivery` writes successors to their secrets (default: Secrets Manager, built on first need).
    """
    if now.tzinfo is None:
        raise InvalidRequest("now must be timezone-aware")
    at = now.astimezone(UTC)
    run_id = request_id or f"lifecycle-{at:%Y%m%dT%H%M%SZ}"
    report = LifecycleReport()
    orgs = list(org_ids) if org_ids is not None else [org.org_id for org in services.store.list_orgs()]
    if org_ids is None:
        # The deployment's JWT signing keys rotate with the scheduled run, never with one organisation's.
        report.signing_keys = rotate_jwt_signing_keys(
            services.store, services.trail, services.keys, at, policy=services.signing_key_policy, request_id=run_id,
        )
        services.jwt_keys.invalidate()
        _rotate_checkpoint_key(services, at, run_id, report.signing_keys)
    for org_id in orgs:
        for record in services.store.list_api_keys(org_id):
            _expire(services, record, at, run_id, report)
        for record in services.store.list_api_keys(org_id):
            delivery = _rotate_if_due(services, record, at, run_id, report, delivery, grace)
        for record in services.store.list_api_keys(org_id):
            _warn(services, record, at, run_id, report)
    if report.expired or report.rotated or report.rotation_due or report.warnings or report.rotation_failed:
        _log.info(
            "key lifecycle run %s: %d expired, %d rotated, %d due for their owners, %d warnings, %d deliveries failed",
            run_id, len(report.expired), len(report.rotated), len(report.rotation_due), len(report.warnings),
            len(report.rotation_failed),
        )
    return report


def _rotate_checkpoint_key(services: ControlServices, at: datetime, run_id: str, report: SigningKeyReport) -> None:
    try:
        kid = rotate_checkpoint_key(services.store, services.trail, services.checkpoints, services.keys, at,
                                    rotate_every=services.signing_key_policy.rotate_every, request_id=run_id)
    except HdError as error:
        _log.warning("a new IAM checkpoint key could not be made: %s (%s); the next run tries again", error,
                     error.code)
        report.failed.append(services.checkpoint_keys.checkpoint_key_id())
        return
    services.checkpoint_keys.invalidate()
    if kid is not None:
        report.checkpoint_created.append(kid)


def _event_id(key_id: str, notice: str) -> str:
    """The webhook event id of one notice about one key: the same on every run, so a rerun adds no delivery."""
    return "evt_" + hashlib.sha256(f"{key_id}\n{notice}".encode()).hexdigest()[:32]


def _key_facts(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "user_id": record.user_id,
        "name": record.name,
        "expires_at": encode_time(record.expires_at) if record.expires_at else None,
    }


def _mark(services: ControlServices, record: ApiKeyRecord, notice: str, **changes: Any) -> ApiKeyRecord:
    marked = replace(record, lifecycle_notices=(*record.lifecycle_notices, notice), **changes)
    services.store.update_api_key(marked)
    return marked


def _announce(
    services: ControlServices, record: ApiKeyRecord, notice: str, iam_event: IamEventType,
    webhook_event: WebhookEventType, before: object, after: object, data: dict[str, Any], at: datetime, run_id: str,
) -> None:
    services.trail.record(
        record.org_id, iam_event, actor=SYSTEM_ACTOR, target=record.key_id, before=before, after=after,
        request_id=run_id,
    )
    webhooks.emit(services, record.org_id, webhook_event, data, event_id=_event_id(record.key_id, notice), now=at)


def _expire(
    services: ControlServices, record: ApiKeyRecord, at: datetime, run_id: str, report: LifecycleReport
) -> None:
    if record.revoked_at is not None or record.expires_at is None or record.expires_at > at:
        return
    notice = f"expired:{encode_time(record.expires_at)}"
    revoked = services.store.revoke_api_key(record.key_id, at)
    services.api_keys.forget(record.key_id)
    if notice in revoked.lifecycle_notices:
        return
    first_record = revoked.expiry_recorded_at is None  # the older sweep may have recorded this expiry already
    marked = _mark(services, revoked, notice, expiry_recorded_at=revoked.expiry_recorded_at or at)
    data = {**_key_facts(marked), "reason": "grace_end" if marked.rotated_to else "expiry",
            "successor_key_id": marked.rotated_to}
    if first_record:
        services.trail.record(
            marked.org_id, IamEventType.API_KEY_EXPIRED, actor=SYSTEM_ACTOR, target=marked.key_id, before=record,
            after=marked, request_id=run_id,
        )
    webhooks.emit(services, marked.org_id, WebhookEventType.KEY_EXPIRED, data,
                  event_id=_event_id(marked.key_id, notice), now=at)
    report.expired.append(marked.key_id)


def _rotate_if_due(
    services: ControlServices, record: ApiKeyRecord, at: datetime, run_id: str, report: LifecycleReport,
    delivery: SecretDelivery | None, grace: timedelta,
) -> SecretDelivery | None:
    due_at = rotation_due_at(record)
    if due_at is None or due_at > at or record.rotated_to is not None or not _in_use(record, at):
        return delivery
    if record.delivery_secret is None:
        notice = f"rotation_due:{encode_time(due_at)}"
        if notice in record.lifecycle_notices:
            return delivery
        marked = _mark(services, record, notice)
        data = {**_key_facts(marked), "rotated": False, "successor_key_id": None, "due_at": encode_time(due_at),
                "action": "rotate this key: POST /v1/organizations/{org_id}/api-keys/{key_id}/rotate"}
        _announce(services, marked, notice, IamEventType.API_KEY_ROTATION_DUE, WebhookEventType.KEY_ROTATED,
                  record, marked, data, at, run_id)
        report.rotation_due.append(record.key_id)
        return delivery
    if delivery is None:
        delivery = secrets_manager_delivery()
    target = record.delivery_secret
    sink = delivery

    def deliver(plaintext: str, successor: ApiKeyRecord) -> None:
        value = {"api_key": plaintext, "key_id": successor.key_id, "previous_key_id": record.key_id,
                 "expires_at": encode_time(successor.expires_at) if successor.expires_at else None}
        sink.put(target, json.dumps(value, sort_keys=True))

    try:
        _, successor, retired = rotate_api_key(
            services.store, services.hasher, record.key_id, grace=grace, now=lambda: at, before_store=deliver,
        )
    except HdError as error:
        _log.warning("key %s: scheduled rotation failed (%s); it stays due", record.key_id, error.code)
        report.rotation_failed.append(record.key_id)
        return delivery
    except Exception as error:  # noqa: BLE001 - a Secrets Manager or network failure: nothing was stored
        # The exception's type only: its text could quote the request, and the request held the plaintext.
        _log.warning("key %s: delivering its successor failed (%s); it stays due", record.key_id,
                     type(error).__name__)
        report.rotation_failed.append(record.key_id)
        return delivery
    notice = f"rotated:{successor.key_id}"
    retired = _mark(services, retired, notice)
    data = {**_key_facts(retired), "rotated": True, "successor_key_id": successor.key_id,
            "grace_ends_at": encode_time(retired.expires_at) if retired.expires_at else None,
            "delivered_to": target}
    _announce(services, retired, notice, IamEventType.API_KEY_ROTATED, WebhookEventType.KEY_ROTATED, record,
              {"old": retired, "new": successor}, data, at, run_id)
    report.rotated.append(record.key_id)
    report.successors.append(successor.key_id)
    return delivery


def _warn(services: ControlServices, record: ApiKeyRecord, at: datetime, run_id: str, report: LifecycleReport) -> None:
    if not _in_use(record, at) or record.expires_at is None:
        return
    remaining = record.expires_at - at
    crossed = [days for days in WARNING_DAYS if remaining <= timedelta(days=days)]
    if not crossed:
        return
    reason = "grace_end" if record.rotated_to else "expiry"
    stamp = encode_time(record.expires_at)
    notices = [f"{reason}:{days}d:{stamp}" for days in crossed]
    unsent = [notice for notice in notices if notice not in record.lifecycle_notices]
    if not unsent:
        return
    nearest = min(crossed)
    notice = f"{reason}:{nearest}d:{stamp}"
    marked = replace(record, lifecycle_notices=(*record.lifecycle_notices, *unsent))
    services.store.update_api_key(marked)
    if notice not in unsent:
        return  # the nearest was sent before: the farther ones only catch up as sent
    data = {**_key_facts(marked), "reason": reason, "days_before": nearest,
            "successor_key_id": marked.rotated_to}
    _announce(services, marked, notice, IamEventType.API_KEY_EXPIRING, WebhookEventType.KEY_EXPIRING,
              record, marked, data, at, run_id)
    report.warnings.append((record.key_id, reason, nearest))


# --- `hd keys status` and the on-demand run ------------------------------------------------------


@dataclass(frozen=True)
class KeyStatusEntry:
    """One key in the status report and why it is there."""

    record: ApiKeyRecord
    state: str  # rotation_due | expiring | in_grace
    at: datetime  # when it falls due, expires, or its grace ends


def key_status(services: ControlServices, ctx: ChangeContext, org_id: str, now: datetime) -> list[KeyStatusEntry]:
    """Keys the actor may see that are due for rotation (now or within 7 days), expiring within 7 days, or in grace.

    Ordered by the time that matters, soonest first. A key may appear twice (due and expiring).
    """
    at = now.astimezone(UTC)
    entries: list[KeyStatusEntry] = []
    for record in list_keys(services.store, ctx, org_id, include_revoked=False):
        if not _in_use(record, at):
            continue
        if record.rotated_to is not None:
            assert record.expires_at is not None  # rotation always sets the end of the grace
            entries.append(KeyStatusEntry(record, "in_grace", record.expires_at))
            continue
        due_at = rotation_due_at(record)
        if due_at is not None and due_at <= at + STATUS_HORIZON:
            entries.append(KeyStatusEntry(record, "rotation_due", due_at))
        if record.expires_at is not None and record.expires_at <= at + STATUS_HORIZON:
            entries.append(KeyStatusEntry(record, "expiring", record.expires_at))
    return sorted(entries, key=lambda entry: (entry.at, entry.record.key_id, entry.state))


def require_lifecycle_admin(ctx: ChangeContext, org_id: str) -> None:
    """An on-demand run is for an organisation's Owners and Admins, with keys:manage; else `Forbidden`."""
    require_own_org(ctx, org_id)
    if ctx.actor.role not in (Role.OWNER, Role.ADMIN) or not ctx.actor.has_scope("keys:manage"):
        raise Forbidden("running the key lifecycle needs an Owner or Admin credential with the keys:manage scope")
