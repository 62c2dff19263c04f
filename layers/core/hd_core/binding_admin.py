"""Changing who owns a table: re-binding and sharing, for the owner only.

Bindings come into being with their tables (`hd_core.table_owners`), so none is created here: a
table that does not exist has nothing to bind, and a table that exists already has its owner.
What an owner may do with its binding:

- re-bind it to another organisation (an Owner or Admin of the organisation that owns the table);
- share it (`org_id` null, `tenant_column` set: every organisation reads only its own rows) or
  stop sharing it: the deployment's Owner only, because a shared table spans organisations.

Nobody removes a binding: DROP TABLE removes a table and its binding together. Another
organisation's binding answers exactly like a made-up id. Every change is recorded in the actor's
IAM chain, and in the receiving organisation's chain when a table changes hands; the write is
compare-and-set against the policy version it was decided on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from hd_core.bootstrap import DEFAULT_ORG_SETTING
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound, PolicyInvalid
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, OrgStatus, Role
from hd_core.policies import PolicyKind, PolicySnapshot, TableBinding
from hd_core.policy_codec import from_document, to_document
from hd_core.policy_eval import binding_for
from hd_core.policy_validation import validate_policy
from hd_core.ports import ControlStore

_KIND = PolicyKind.TABLE_BINDING
_NOT_FOUND = f"{_KIND.value} policy not found"


def is_deployment_owner(store: ControlStore, ctx: ChangeContext) -> bool:
    """Whether the actor is an Owner of the deployment's own organisation (the one that owns registered tables)."""
    return ctx.actor.role is Role.OWNER and ctx.actor.org_id == store.get_setting(DEFAULT_ORG_SETTING)


def visible(store: ControlStore, ctx: ChangeContext, binding: TableBinding) -> bool:
    """Whether the actor may see this binding: its organisation's, or a shared one for the deployment's Owner."""
    if shared(binding):
        return is_deployment_owner(store, ctx)
    return binding.org_id == ctx.actor.org_id


def shared(binding: TableBinding) -> bool:
    """Whether every organisation reads the table (its own rows, by `tenant_column`)."""
    return binding.tenant_column is not None


def shared_bindings(store: ControlStore, ctx: ChangeContext) -> list[TableBinding]:
    """The shared-table bindings, for the deployment's Owner (nobody else manages them)."""
    if not is_deployment_owner(store, ctx):
        return []
    return [b for b in store.policy_snapshot().table_bindings if shared(b)]


def refuse_new_binding(store: ControlStore, ctx: ChangeContext, document: Mapping[str, Any]) -> None:
    """Always raises: a binding is made when its table is, so creating one is never the way.

    Another organisation's table and a table that does not exist get the same 404; the actor's own
    table gets a 409 pointing at its binding.
    """
    obj = from_document(document)
    if not isinstance(obj, TableBinding):
        raise InvalidRequest("not a table_binding document")
    existing = binding_for(store.policy_snapshot(), obj.table)
    if existing is None or not visible(store, ctx, existing):
        raise NotFound(f"table {obj.table} not found")
    raise Conflict(f"table {obj.table} already has its binding {existing.binding_id} (a table is bound when it "
                   f"is created); re-bind or share it with PUT .../policies/table_binding/{existing.binding_id}")


def existing_binding(store: ControlStore, ctx: ChangeContext, binding_id: str) -> TableBinding:
    """A binding the actor may see; any other answers exactly like a made-up id."""
    obj = store.get_policy(_KIND, binding_id)
    if not isinstance(obj, TableBinding) or not visible(store, ctx, obj):
        raise NotFound(_NOT_FOUND)
    return obj


def rebind(
    store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, binding_id: str,
    document: Mapping[str, Any], *, now: datetime,
) -> tuple[TableBinding, TableBinding]:
    """Replace a binding the actor's organisation owns (or, shared, the deployment's Owner); returns (old, new)."""
    snapshot = store.policy_snapshot()
    old, new = checked_rebinding(store, ctx, binding_id, document, now=now, snapshot=snapshot)
    store.put_policy(new, if_version=snapshot.version)  # Conflict if the policies moved under the decision
    _record(trail, ctx, ctx.actor.org_id, old, new)
    if new.org_id is not None and new.org_id != ctx.actor.org_id:
        _record(trail, ctx, new.org_id, old, new)  # the receiving organisation learns it holds the table
    return old, new


def checked_rebinding(
    store: ControlStore, ctx: ChangeContext, binding_id: str, document: Mapping[str, Any], *, now: datetime,
    snapshot: PolicySnapshot | None = None,
) -> tuple[TableBinding, TableBinding]:
    """(old, new) of a rebinding that passed every check `rebind` makes; nothing stored (a dry run's too)."""
    snapshot = snapshot if snapshot is not None else store.policy_snapshot()
    old = existing_binding(store, ctx, binding_id)
    if ctx.actor.role not in (Role.OWNER, Role.ADMIN):
        raise Forbidden("only an Owner or Admin of the organisation that owns a table may change its binding")
    new = from_document({**document, "kind": _KIND.value, "binding_id": binding_id})
    assert isinstance(new, TableBinding)
    if shared(new):
        new = replace(new, org_id=None)  # a shared table is the deployment's, whoever's rows it holds
    if new.table != old.table:
        raise PolicyInvalid(f"a binding's table cannot change (this one binds {old.table})", field="table")
    validate_policy(new, snapshot, now=now)
    if (shared(old) or shared(new)) and old != new and not is_deployment_owner(store, ctx):
        raise Forbidden("sharing a table between organisations, or ending that, is for the deployment's Owner")
    if new.org_id is not None and new.org_id != old.org_id:
        target = store.get_org(new.org_id)
        if target is None or target.status is not OrgStatus.ACTIVE:
            raise PolicyInvalid(f"organisation {new.org_id} cannot receive a table (no active organisation "
                                "has that id)", field="org_id")
    return old, new


def refuse_unbinding(store: ControlStore, ctx: ChangeContext, binding_id: str) -> None:
    """Always raises: a table always has exactly one owner."""
    existing_binding(store, ctx, binding_id)
    raise Conflict("a table always has exactly one owner: DROP TABLE removes a table with its binding, "
                   "and PUT re-binds or shares it")


def _record(trail: IamAuditTrail, ctx: ChangeContext, chain_org: str, old: TableBinding, new: TableBinding) -> None:
    trail.record(chain_org, IamEventType.POLICY_UPDATED, actor=ctx.actor.user_id,
                 target=f"{_KIND.value}/{new.binding_id}", before=to_document(old), after=to_document(new),
                 request_id=ctx.request_id)
