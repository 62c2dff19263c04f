"""Governance policy administration: masks, row filters, ABAC rules, column tags, PHI grants, table bindings.

JIT grants and quotas are policy objects too, but they have their own services (`hd_core.jit`,
`hd_core.quotas`) with their own rules, so they are refused here. Table bindings record who owns
a table; they come into being with their tables and are changed only by their owner
(`hd_core.binding_admin`). Each change is validated against the current policy set, stored (bumping the policy
version the engine hosts watch) and then recorded in the organisation's IAM audit chain, with the
policy documents as before/after values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from hd_core import binding_admin, webhook_events
from hd_core.directory import require_own_org
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, utc_now
from hd_core.policies import PolicyKind, PolicyObject, TableBinding
from hd_core.policy_catalog import check_against_catalog
from hd_core.policy_codec import KIND_CLASSES, from_document, kind_of, to_document
from hd_core.policy_codec import object_id as id_of
from hd_core.policy_validation import validate_policy
from hd_core.ports import ControlStore

MANAGED_KINDS = frozenset(
    {
        PolicyKind.MASK,
        PolicyKind.ROW_FILTER,
        PolicyKind.ABAC,
        PolicyKind.COLUMN_TAG,
        PolicyKind.PHI_GRANT,
        PolicyKind.TABLE_BINDING,
    }
)
_OTHER_ROUTES = {
    PolicyKind.JIT_GRANT: "JIT grants are created by approving a JIT request; use the JIT routes",
    PolicyKind.QUOTA: "an organisation's quota is set through the quota routes",
}


def _kind(value: PolicyKind | str) -> PolicyKind:
    try:
        return PolicyKind(value)
    except ValueError:
        known = ", ".join(kind.value for kind in PolicyKind)
        raise InvalidRequest(f"unknown policy kind {value!r}; use one of {known}") from None


def _require_managed(kind: PolicyKind) -> None:
    if kind not in MANAGED_KINDS:
        raise InvalidRequest(_OTHER_ROUTES.get(kind, f"{kind.value} policies are not managed here"))


def _target(kind: PolicyKind, oid: str) -> str:
    return f"{kind.value}/{oid}"


def _decode(ctx: ChangeContext, document: Mapping[str, Any]) -> PolicyObject:
    """The policy object of an organisation document of a managed kind, in the actor's organisation."""
    if not isinstance(document, Mapping):
        raise InvalidRequest("a policy document must be a JSON object")
    raw_kind = document.get("kind")
    if isinstance(raw_kind, str) and raw_kind in {kind.value for kind in PolicyKind}:
        _require_managed(PolicyKind(raw_kind))  # before decoding: point at the right route, not at a field
    obj = from_document(document)
    _require_managed(kind_of(obj))
    _require_own_object(ctx, obj, written_by_actor=True)
    return obj


def _require_own_object(ctx: ChangeContext, obj: PolicyObject, *, written_by_actor: bool) -> None:
    """Raise unless `obj` belongs to the actor's organisation.

    A shared binding is deployment-level (`Forbidden`). A stored object of another organisation is
    `NotFound`; a document the actor wrote naming another organisation is `Forbidden`.
    """
    org_id = getattr(obj, "org_id", None)
    if org_id is None:
        raise Forbidden("shared-table bindings (no org_id) are deployment-level configuration, not managed here")
    if org_id != ctx.actor.org_id:
        if written_by_actor:
            raise Forbidden("a policy document must name your own organisation in org_id")
        raise NotFound(f"{kind_of(obj).value} policy not found")  # the words of a made-up id, no id echoed


def _existing(store: ControlStore, ctx: ChangeContext, kind: PolicyKind, oid: str) -> PolicyObject:
    obj = store.get_policy(kind, oid)
    if obj is None:
        raise NotFound(f"{kind.value} policy not found")
    _require_own_object(ctx, obj, written_by_actor=False)
    return obj


def _check_binding_unique(store: ControlStore, obj: PolicyObject) -> None:
    """A table has one binding: a second one would let an organisation claim a table another already owns."""
    if not isinstance(obj, TableBinding):
        return
    for other in store.list_policies(kind=PolicyKind.TABLE_BINDING):
        if isinstance(other, TableBinding) and other.table == obj.table and other.binding_id != obj.binding_id:
            raise Conflict(f"table {obj.table} already has a table binding")


def _validate(store: ControlStore, obj: PolicyObject, now: datetime) -> None:
    snapshot = store.policy_snapshot()
    validate_policy(obj, snapshot, now=now)
    check_against_catalog(store, snapshot, obj)
    _check_binding_unique(store, obj)


def _record(
    trail: IamAuditTrail, ctx: ChangeContext, event: IamEventType, kind: PolicyKind, oid: str,
    before: PolicyObject | None, after: PolicyObject | None,
) -> None:
    trail.record(
        ctx.actor.org_id,
        event,
        actor=ctx.actor.user_id,
        target=_target(kind, oid),
        before=None if before is None else to_document(before),
        after=None if after is None else to_document(after),
        request_id=ctx.request_id,
    )


def checked_new_policy(
    store: ControlStore, ctx: ChangeContext, document: Mapping[str, Any], *, now: Callable[[], datetime] = utc_now
) -> PolicyObject:
    """The policy object `document` describes, passed through every check `create_policy` makes; nothing stored.

    What a dry run previews (`hd_core.policy_preview.dry_run`): it is refused exactly as a create would be.
    """
    if isinstance(document, Mapping) and document.get("kind") == PolicyKind.TABLE_BINDING.value:
        binding_admin.refuse_new_binding(store, ctx, document)  # tables are bound when they are created
    obj = _decode(ctx, document)
    _validate(store, obj, now())
    return obj


def create_policy(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    document: Mapping[str, Any],
    *,
    now: Callable[[], datetime] = utc_now,
) -> PolicyObject:
    """Create a policy object from its document in the actor's organisation: POLICY_CREATED.

    Raises `PolicyInvalid` (with the field) for a bad or unsafe policy, `Forbidden` for a document
    naming another organisation or none, and `Conflict` if the kind and id already exist.
    """
    obj = checked_new_policy(store, ctx, document, now=now)
    kind, oid = kind_of(obj), id_of(obj)
    try:
        store.create_policy(obj)  # atomic: of two creators of one id, exactly one gets here
    except Conflict:
        # Ids are unique across the deployment (the store and the engines key policies by kind and id),
        # so the clash may be another tenant's: the answer reads the same whoever holds the id.
        raise Conflict(f"{_target(kind, oid)} is already taken (policy ids are unique across organisations); "
                       "choose another id, or replace the policy if it is yours") from None
    _record(trail, ctx, IamEventType.POLICY_CREATED, kind, oid, None, obj)
    webhook_events.policy_changed(store, ctx, "created", kind, oid)
    return obj


def replace_policy(
    store: ControlStore,
    trail: IamAuditTrail,
    ctx: ChangeContext,
    kind: PolicyKind | str,
    object_id: str,
    document: Mapping[str, Any],
    *,
    now: Callable[[], datetime] = utc_now,
) -> PolicyObject:
    """Replace an existing policy object with a new version of it: POLICY_UPDATED with before and after.

    The document's kind and id must be the ones addressed (an omitted id means the addressed one).
    """
    wanted = _kind(kind)
    _require_managed(wanted)
    if not isinstance(document, Mapping):
        raise InvalidRequest("a policy document must be a JSON object")
    if wanted is PolicyKind.TABLE_BINDING:
        return binding_admin.rebind(store, trail, ctx, object_id, document, now=now())[1]
    old, new = _checked_replacement(store, ctx, wanted, object_id, document, now())
    store.put_policy(new)
    _record(trail, ctx, IamEventType.POLICY_UPDATED, wanted, object_id, old, new)
    webhook_events.policy_changed(store, ctx, "updated", wanted, object_id)
    return new


def checked_replacement(
    store: ControlStore, ctx: ChangeContext, kind: PolicyKind | str, object_id: str, document: Mapping[str, Any],
    *, now: Callable[[], datetime] = utc_now,
) -> PolicyObject:
    """The new version `replace_policy` would store, passed through every check it makes; nothing stored.

    What a dry run of a replace previews: it is refused exactly as the replace would be.
    """
    wanted = _kind(kind)
    _require_managed(wanted)
    if not isinstance(document, Mapping):
        raise InvalidRequest("a policy document must be a JSON object")
    if wanted is PolicyKind.TABLE_BINDING:
        return binding_admin.checked_rebinding(store, ctx, object_id, document, now=now())[1]
    return _checked_replacement(store, ctx, wanted, object_id, document, now())[1]


def _checked_replacement(
    store: ControlStore, ctx: ChangeContext, wanted: PolicyKind, object_id: str, document: Mapping[str, Any],
    now: datetime,
) -> tuple[PolicyObject, PolicyObject]:
    old = _existing(store, ctx, wanted, object_id)
    id_field = dataclasses.fields(KIND_CLASSES[wanted])[0].name
    if document.get("kind") != wanted.value:
        raise InvalidRequest(f"the document's kind must be {wanted.value!r}, the kind being replaced")
    if document.get(id_field) not in (None, object_id):
        raise InvalidRequest(f"the document's {id_field} must be {object_id!r}, the id being replaced")
    new = _decode(ctx, {**document, id_field: object_id})
    _validate(store, new, now)
    return old, new


def delete_policy(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, kind: PolicyKind | str, object_id: str
) -> PolicyObject:
    """Delete a policy object of the actor's organisation: POLICY_DELETED; returns what was deleted."""
    wanted = _kind(kind)
    _require_managed(wanted)
    if wanted is PolicyKind.TABLE_BINDING:
        binding_admin.refuse_unbinding(store, ctx, object_id)
    old = _existing(store, ctx, wanted, object_id)
    store.delete_policy(wanted, object_id)
    _record(trail, ctx, IamEventType.POLICY_DELETED, wanted, object_id, old, None)
    webhook_events.policy_changed(store, ctx, "deleted", wanted, object_id)
    return old


@dataclasses.dataclass(frozen=True)
class PolicyListing:
    """The policy objects an organisation sees, and the store-wide policy version they were read at."""

    objects: list[PolicyObject]
    version: int


def policy_listing(
    store: ControlStore, ctx: ChangeContext, org_id: str, kind: PolicyKind | str | None = None
) -> PolicyListing:
    """The policy objects of the actor's organisation (every kind, read-only ones too), by kind then id.

    One consistent snapshot gives the objects and their version: never one store read per object.
    """
    require_own_org(ctx, org_id)
    wanted = None if kind is None else _kind(kind)
    snapshot = store.policy_snapshot()
    owner = wanted in (None, PolicyKind.TABLE_BINDING) and binding_admin.is_deployment_owner(store, ctx)
    found = [
        obj for obj in snapshot.objects()
        if (wanted is None or kind_of(obj) is wanted)
        and (getattr(obj, "org_id", None) == org_id
             or (owner and isinstance(obj, TableBinding) and binding_admin.shared(obj)))
    ]
    found.sort(key=lambda obj: (kind_of(obj).value, id_of(obj)))
    return PolicyListing(found, snapshot.version)


def list_policies(
    store: ControlStore, ctx: ChangeContext, org_id: str, kind: PolicyKind | str | None = None
) -> list[PolicyObject]:
    """The policy objects of the actor's organisation (every kind, read-only ones too), by kind then id."""
    return policy_listing(store, ctx, org_id, kind).objects


def get_policy(
    store: ControlStore, ctx: ChangeContext, org_id: str, kind: PolicyKind | str, object_id: str
) -> PolicyObject:
    """One policy object of the actor's organisation; raises `NotFound`."""
    require_own_org(ctx, org_id)
    if _kind(kind) is PolicyKind.TABLE_BINDING:
        return binding_admin.existing_binding(store, ctx, object_id)
    obj = store.get_policy(_kind(kind), object_id)
    if obj is None or getattr(obj, "org_id", None) != org_id:
        raise NotFound(f"{_kind(kind).value} policy not found")
    return obj
