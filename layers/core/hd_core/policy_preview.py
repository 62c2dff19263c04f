"""Policies seen before they bite: a dry run, who a policy exempts, and how a user's statement is governed.

Masks are decided by the policy set alone, so the control plane computes them per role wherever
it runs. Rows are counted and statements explained by an engine (`PolicyEngine`): the control
plane never opens the data. `hd dev` runs its control API beside its engine host and installs one
(engine_host/pipeline/policy_preview.py). A control-plane Lambda in AWS has none: with
`HD_POLICY_PREVIEWS=fleet` it asks an engine host of the fleet through the control store
(hd_core/policy_previews.py); without it a dry run answers masks with `row_counts: "unavailable"`
and explain answers 409 `HD_ERR_ENGINE_REQUIRED`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hd_core import policy_previews
from hd_core.directory import require_own_org
from hd_core.errors import EngineRequired, NotFound
from hd_core.models import ChangeContext, Role
from hd_core.permissions import ROLE_SCOPES
from hd_core.policies import ColumnTag, MaskRule, PolicyObject, PolicySnapshot, RowFilter
from hd_core.policy_codec import kind_of, object_id, to_document
from hd_core.policy_eval import Subject, masks_for
from hd_core.ports import ControlStore

# Every role, most privileged first: a dry run shows each.
ROLES: tuple[Role, ...] = tuple(Role)


@dataclass(frozen=True)
class Exemption:
    """Who a mask or row filter leaves out, said plainly, and a warning when it reaches the caller's own role."""

    exempt_roles: tuple[Role, ...]
    note: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoleEffect:
    """One role's view of the policy's table before and after the policy (None: not counted, or refused)."""

    role: Role
    rows_before: int | None
    rows_after: int | None
    masked_before: tuple[str, ...]
    masked_after: tuple[str, ...]


@dataclass(frozen=True)
class DryRun:
    """What storing a policy would change, per role, without storing it."""

    kind: str
    id: str
    document: dict[str, Any]
    table: str | None
    row_counts: str  # "counted", "unavailable" (no engine here) or "not_applicable" (the kind touches no table)
    counted_as: str  # whose attributes the row filters were resolved with
    effects: tuple[RoleEffect, ...]
    exemption: Exemption | None


@dataclass(frozen=True)
class TableGovernance:
    """How one table of a statement is governed for the user."""

    table: str
    action: str
    row_filters: tuple[dict[str, str], ...] = ()  # {"rule_id", "condition"}, the tenant filter as rule "tenant"
    masks: tuple[dict[str, Any], ...] = ()  # {"column", "function", "rule_id"}


@dataclass(frozen=True)
class Explanation:
    """The governed plan of one statement for one user: what applies, and what refuses it."""

    user_id: str
    role: Role
    verdict: str  # "allowed" or "refused"
    statement_kind: str | None = None
    tables: tuple[TableGovernance, ...] = ()
    masked_columns: tuple[str, ...] = ()
    governed_sql: str | None = None
    refusal: dict[str, str] | None = None  # {"stage", "sqlstate", "code", "message"}
    notes: tuple[str, ...] = field(default_factory=tuple)


class PolicyEngine(Protocol):
    """An engine's view of the policies: rows a role sees under a snapshot, and a statement's governed plan."""

    def visible_rows(self, snapshot: PolicySnapshot, subject: Subject, table: str) -> int | None:
        """Rows of `table` `subject` (with its role) would see under `snapshot`; None when refused or unknown."""
        ...

    def explain(self, snapshot: PolicySnapshot, subject: Subject, sql: str) -> Explanation:
        """The governed plan of `sql` for `subject` under `snapshot`; a refusal is an explanation too."""
        ...


_engine: PolicyEngine | None = None


def install_policy_engine(engine: PolicyEngine | None) -> None:
    """Let this process's control plane count rows and explain statements (`hd dev`); None removes it."""
    global _engine
    _engine = engine


def policy_engine() -> PolicyEngine | None:
    """The engine installed in this process, if any."""
    return _engine


def exemption(obj: PolicyObject, caller_role: Role) -> Exemption | None:
    """Who a mask or row filter exempts, for the create and replace responses (None for other kinds)."""
    if not isinstance(obj, MaskRule | RowFilter):
        return None
    what = f"{obj.table}.{obj.column} is masked" if isinstance(obj, MaskRule) else f"rows of {obj.table} are filtered"
    exempt = tuple(Role(role) for role in obj.exempt_roles)
    if not exempt:
        note = (f"no role is exempt: {what} for every role, {Role.OWNER.value} included "
                "(set exempt_roles to exempt some)")
    else:
        affected = [role.value for role in ROLES if role not in exempt]
        note = (f"exempt: {', '.join(role.value for role in exempt)}; {what} for "
                f"{', '.join(affected) if affected else 'no role'}")
    if isinstance(obj, MaskRule) and obj.agent_specific:
        note += " (in sessions of the agents it names only)"
    warnings: tuple[str, ...] = ()
    if caller_role not in exempt:
        warnings = (f"your own role ({caller_role.value}) is not exempt: {what} for you too",)
    return Exemption(exempt, note, warnings)


def dry_run(store: ControlStore, ctx: ChangeContext, obj: PolicyObject) -> DryRun:
    """Per role, what `obj` (already validated, not stored) changes: rows visible and columns masked."""
    snapshot = store.policy_snapshot()
    after = with_object(snapshot, obj)
    table = obj.table if isinstance(obj, MaskRule | RowFilter | ColumnTag) else None
    engine = policy_engine()
    actor = store.get_user(ctx.actor.user_id)
    department, region = (actor.department, actor.region) if actor else (None, None)
    counted_as = f"{ctx.actor.user_id} (your own department, region and id, with each role in turn)"
    effects = []
    counted = engine is not None
    if table is not None:
        rows: dict[Role, tuple[int | None, int | None]] = {}
        if engine is not None:
            for role in ROLES:
                subject = role_subject(ctx, role, department, region)
                rows[role] = (engine.visible_rows(snapshot, subject, table), engine.visible_rows(after, subject, table))
        elif policy_previews.fleet_enabled():
            rows = _fleet_row_counts(store, ctx, obj, table, department, region)
            counted = True
        for role in ROLES:
            subject = role_subject(ctx, role, department, region)
            before, after_rows = rows.get(role, (None, None))
            effects.append(RoleEffect(
                role=role, rows_before=before, rows_after=after_rows,
                masked_before=tuple(sorted(masks_for(snapshot, subject, role, table))),
                masked_after=tuple(sorted(masks_for(after, subject, role, table))),
            ))
    row_counts = "not_applicable" if table is None else "counted" if counted else "unavailable"
    return DryRun(kind=kind_of(obj).value, id=object_id(obj), document=to_document(obj), table=table,
                  row_counts=row_counts, counted_as=counted_as, effects=tuple(effects),
                  exemption=exemption(obj, ctx.actor.role))


def role_subject(ctx: ChangeContext, role: Role, department: str | None, region: str | None) -> Subject:
    """The caller's own session attributes with `role` and that role's scopes: how a dry run counts."""
    return session_subject(ctx.actor.user_id, ctx.actor.org_id, role, department, region, ctx.source_ip)


def session_subject(user_id: str, org_id: str, role: Role, department: str | None, region: str | None,
                    source_ip: str | None = None) -> Subject:
    """A preview's session: `user_id` of `org_id` with `role` and that role's scopes, in the live environment."""
    return Subject(user_id=user_id, org_id=org_id, role=role, scopes=tuple(sorted(ROLE_SCOPES[role])), key_id="",
                   env="live", department=department, region=region, source_ip=source_ip)


def _fleet_row_counts(store: ControlStore, ctx: ChangeContext, obj: PolicyObject, table: str,
                      department: str | None, region: str | None) -> dict[Role, tuple[int | None, int | None]]:
    """Rows per role before and after `obj`, counted by an engine host of the fleet (hd_core/policy_previews.py)."""
    question: dict[str, object] = {"document": to_document(obj), "table": table, "user_id": ctx.actor.user_id,
                                   "department": department, "region": region, "source_ip": ctx.source_ip}
    answer = policy_previews.ask_fleet(_preview_store(store), org_id=ctx.actor.org_id,
                                       requested_by=ctx.actor.user_id, kind=policy_previews.DRY_RUN,
                                       question=question)
    counts = answer.get("rows")
    if not isinstance(counts, Mapping):
        raise policy_previews.PreviewFailed("the engine host's dry run answer holds no row counts")
    rows: dict[Role, tuple[int | None, int | None]] = {}
    for role in ROLES:
        pair = counts.get(role.value)
        if isinstance(pair, list) and len(pair) == 2:
            rows[role] = (_count(pair[0]), _count(pair[1]))
    return rows


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _preview_store(store: ControlStore) -> policy_previews.PreviewRequestStore:
    # Both control stores keep preview requests; a store without them cannot reach the fleet.
    if not hasattr(store, "put_preview_request"):
        raise EngineRequired("this control store keeps no preview requests, so no engine host can answer here")
    return store  # type: ignore[return-value]


def with_object(snapshot: PolicySnapshot, obj: PolicyObject) -> PolicySnapshot:
    """`snapshot` with `obj` added, or replacing the object of the same kind and id."""
    kind, oid = kind_of(obj), object_id(obj)
    others: Iterable[PolicyObject] = (o for o in snapshot.objects() if (kind_of(o), object_id(o)) != (kind, oid))
    return PolicySnapshot.of(snapshot.version + 1, [*others, obj])


def explain(store: ControlStore, ctx: ChangeContext, org_id: str, user_id: str, sql: str) -> Explanation:
    """How `sql` is governed for the organisation's user `user_id` under the current policies."""
    require_own_org(ctx, org_id)
    user = store.get_user(user_id)
    if user is None or user.org_id != org_id:
        raise NotFound("user not found")
    engine = policy_engine()
    if engine is None and policy_previews.fleet_enabled():
        question: dict[str, object] = {"user_id": user.user_id, "role": user.role.value,
                                       "department": user.department, "region": user.region, "sql": sql}
        answer = policy_previews.ask_fleet(_preview_store(store), org_id=org_id, requested_by=ctx.actor.user_id,
                                           kind=policy_previews.EXPLAIN, question=question)
        return explanation_of(answer)
    if engine is None:
        raise EngineRequired("explaining a statement needs an engine host beside the control plane; run "
                             "`hd policies explain` against `hd dev` (see README, Governance)")
    subject = Subject(user_id=user.user_id, org_id=org_id, role=user.role,
                      scopes=tuple(sorted(ROLE_SCOPES[user.role])), key_id="", env="live",
                      department=user.department, region=user.region)
    return engine.explain(store.policy_snapshot(), subject, sql)


def explanation_of(answer: Mapping[str, Any]) -> Explanation:
    """The `Explanation` an engine host sent back as JSON (`as_json` of one)."""
    try:
        tables = tuple(TableGovernance(table=t["table"], action=t["action"], row_filters=tuple(t["row_filters"]),
                                       masks=tuple(t["masks"])) for t in answer["tables"])
        return Explanation(user_id=answer["user_id"], role=Role(answer["role"]), verdict=answer["verdict"],
                           statement_kind=answer.get("statement_kind"), tables=tables,
                           masked_columns=tuple(answer.get("masked_columns", ())),
                           governed_sql=answer.get("governed_sql"), refusal=answer.get("refusal"),
                           notes=tuple(answer.get("notes", ())))
    except (KeyError, TypeError, ValueError):
        raise policy_previews.PreviewFailed("the engine host's explanation is malformed") from None


def as_json(value: Any) -> Any:
    """A preview dataclass as JSON-ready values (enums as their values)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [as_json(v) for v in value]
    if isinstance(value, Role):
        return value.value
    return value
