"""Checks a policy object must pass before it is stored: each refusal says what to change.

`validate_policy` checks one object against the rest of the policy set (a hash mask on a column
tagged as an SSN is refused whichever of the two is written second); `validate_snapshot` lists every
problem of a whole set, as loaded from a policy file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import Enum
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hd_core.client_values import ID_PATTERN, is_client_id
from hd_core.errors import PolicyInvalid, RowFilterInvalid
from hd_core.models import Role, utc_now
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    Action,
    ColumnTag,
    JitGrant,
    MaskFunction,
    MaskRule,
    PhiGrant,
    PiiType,
    PolicyObject,
    PolicySnapshot,
    QuotaLimit,
    RowFilter,
    TableBinding,
    TimeWindow,
)
from hd_core.policy_codec import kind_of, object_id
from hd_core.policy_eval import WEEKDAYS, parse_hhmm

_E = TypeVar("_E", bound=Enum)

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
MAX_JIT_DURATION = timedelta(days=7)
MAX_VISIBLE_CHARS = 64
# Seed 004: a hash alone does not protect these (a 9-digit SSN or a phone number is brute-forced).
HASH_UNSAFE_PII = frozenset({PiiType.SSN, PiiType.PHONE, PiiType.EMAIL, PiiType.MRN})


def validate_policy(obj: PolicyObject, snapshot: PolicySnapshot, *, now: datetime | None = None) -> None:
    """Raise `PolicyInvalid` if `obj` is malformed or conflicts with `snapshot`; `now` defaults to the clock."""
    if not object_id(obj):
        raise PolicyInvalid(f"a {kind_of(obj).value} needs an id")
    if not is_client_id(object_id(obj)):
        id_field = dataclasses.fields(obj)[0].name
        raise PolicyInvalid(
            f"{kind_of(obj).value}.{id_field} must match {ID_PATTERN} (an id is addressed in URL paths)", field=id_field
        )
    if isinstance(obj, MaskRule):
        _validate_mask(obj, snapshot)
    elif isinstance(obj, RowFilter):
        _validate_row_filter(obj)
    elif isinstance(obj, AbacPolicy):
        _validate_abac(obj)
    elif isinstance(obj, JitGrant):
        _validate_jit(obj)
    elif isinstance(obj, ColumnTag):
        _validate_column_tag(obj, snapshot)
    elif isinstance(obj, PhiGrant):
        _validate_phi_grant(obj, utc_now() if now is None else now)
    elif isinstance(obj, TableBinding):
        _validate_table_binding(obj)
    elif isinstance(obj, QuotaLimit):
        _validate_quota(obj)
    else:
        raise PolicyInvalid(f"{type(obj).__name__} is not a policy object")


def validate_snapshot(snapshot: PolicySnapshot, *, now: datetime | None = None) -> list[str]:
    """Every problem of a whole policy set, one message each (empty when the set is valid)."""
    objects: list[PolicyObject] = [
        *snapshot.masks,
        *snapshot.row_filters,
        *snapshot.abac,
        *snapshot.jit_grants,
        *snapshot.column_tags,
        *snapshot.phi_grants,
        *snapshot.table_bindings,
        *snapshot.quotas,
    ]
    problems: list[str] = []
    for obj in objects:
        try:
            validate_policy(obj, snapshot, now=now)
        except PolicyInvalid as error:
            problems.append(f"{kind_of(obj).value} {object_id(obj)}: {error}")
    ids = Counter((kind_of(obj), object_id(obj)) for obj in objects)
    problems += [f"{kind.value} id {oid} is used {count} times" for (kind, oid), count in ids.items() if count > 1]
    tables = Counter(binding.table for binding in snapshot.table_bindings)
    problems += [f"table {table} has {count} table bindings; keep one" for table, count in tables.items() if count > 1]
    orgs = Counter(quota.org_id for quota in snapshot.quotas)
    problems += [f"organisation {org} has {count} quotas; keep one" for org, count in orgs.items() if count > 1]
    return problems


# --- per kind ---------------------------------------------------------------------------------


def _validate_mask(rule: MaskRule, snapshot: PolicySnapshot) -> None:
    _require_org(rule.org_id)
    _check_table(rule.table)
    _check_column(rule.column)
    function = _enum(MaskFunction, rule.function, "function")
    _check_roles(rule.exempt_roles, "exempt_roles")
    if isinstance(rule.visible_chars, bool) or not isinstance(rule.visible_chars, int):
        raise PolicyInvalid("visible_chars must be a whole number", field="visible_chars")
    if not 0 <= rule.visible_chars <= MAX_VISIBLE_CHARS:
        raise PolicyInvalid(
            f"visible_chars is {rule.visible_chars}; use 0 to {MAX_VISIBLE_CHARS}", field="visible_chars"
        )
    _check_names(rule.agent_ids, "agent_ids")
    _check_names(rule.agent_frameworks, "agent_frameworks")
    if function is MaskFunction.HASH:
        tag = _hash_unsafe_tag(snapshot, rule.org_id, rule.table, rule.column)
        if tag is not None:
            raise PolicyInvalid(
                f"{rule.table}.{rule.column} is tagged {tag.value}: a hash alone does not protect it (the "
                "values are few enough to brute-force); use a partial, full or null mask",
                field="function",
            )


def _validate_row_filter(rule: RowFilter) -> None:
    _require_org(rule.org_id)
    _check_table(rule.table)
    _check_roles(rule.exempt_roles, "exempt_roles")
    # Imported on first use: parsing needs sqlglot (~100 ms to import), which the JIT and quota
    # Lambdas, validating only their own kinds, would otherwise pay at every cold start.
    from hd_core.row_filters import parse_row_filter

    try:
        parse_row_filter(rule.filter)
    except RowFilterInvalid as error:
        raise PolicyInvalid(f"row filter on {rule.table}: {error}", field="filter") from None


def _validate_abac(policy: AbacPolicy) -> None:
    _require_org(policy.org_id)
    if not policy.name.strip():
        raise PolicyInvalid("an ABAC policy needs a name", field="name")
    if policy.effect != "deny":
        raise PolicyInvalid(
            f'effect is {policy.effect!r}; ABAC policies can only deny (roles and scopes grant), use "deny"',
            field="effect",
        )
    if not policy.actions:
        raise PolicyInvalid('actions is empty; list actions such as "select", or "*" for all', field="actions")
    known_actions = {action.value for action in Action}
    for action in policy.actions:
        if action != "*" and action not in known_actions:
            raise PolicyInvalid(
                f"unknown action {action!r}; use {', '.join(sorted(known_actions))} or *", field="actions"
            )
    if not policy.resources:
        raise PolicyInvalid('resources is empty; use "schema.table", "schema.*" or "*"', field="resources")
    for resource in policy.resources:
        _check_resource(resource)
    _check_conditions(policy.conditions)


def _validate_jit(grant: JitGrant) -> None:
    _require_org(grant.org_id)
    _require(grant.user_id, "user_id")
    role = _enum(Role, grant.role, "role")
    if role is Role.OWNER:
        raise PolicyInvalid("a JIT grant cannot elevate to Owner; grant Admin at most", field="role")
    for name, value in (("starts_at", grant.starts_at), ("expires_at", grant.expires_at)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise PolicyInvalid(f"{name} must be a timezone-aware timestamp", field=name)
    if grant.expires_at <= grant.starts_at:
        raise PolicyInvalid("expires_at must be after starts_at", field="expires_at")
    if grant.expires_at - grant.starts_at > MAX_JIT_DURATION:
        raise PolicyInvalid("a JIT grant lasts at most 7 days; issue a new one when it ends", field="expires_at")


def _validate_column_tag(tag: ColumnTag, snapshot: PolicySnapshot) -> None:
    _require_org(tag.org_id)
    _check_table(tag.table)
    _check_column(tag.column)
    pii_type = _enum(PiiType, tag.pii_type, "pii_type")
    if not isinstance(tag.patient_key, bool):
        raise PolicyInvalid("patient_key must be true or false", field="patient_key")
    if tag.patient_key:
        for other in snapshot.column_tags:
            same_table = (other.org_id, other.table) == (tag.org_id, tag.table)
            if other.patient_key and other.tag_id != tag.tag_id and same_table and other.column != tag.column:
                raise PolicyInvalid(
                    f"{tag.table} already declares {other.column} as its patient key ({other.tag_id}); a table has "
                    "one patient-key column", field="patient_key")
    if pii_type not in HASH_UNSAFE_PII:
        return
    for rule in snapshot.masks:
        if (rule.org_id, rule.table, rule.column) == (tag.org_id, tag.table, tag.column) and (
            rule.function == MaskFunction.HASH
        ):
            raise PolicyInvalid(
                f"{tag.table}.{tag.column} has a hash mask ({rule.rule_id}), which does not protect {pii_type.value} "
                "values; change that mask to partial, full or null before tagging the column",
                field="pii_type",
            )


def _validate_phi_grant(grant: PhiGrant, now: datetime) -> None:
    _require_org(grant.org_id)
    _require(grant.user_id, "user_id")
    if grant.agent_id is not None:
        _require(grant.agent_id, "agent_id")
    if grant.expires_at is not None:
        if not isinstance(grant.expires_at, datetime) or grant.expires_at.tzinfo is None:
            raise PolicyInvalid("expires_at must be a timezone-aware timestamp", field="expires_at")
        if grant.expires_at <= now:
            raise PolicyInvalid("expires_at is in the past; a PHI grant must end in the future", field="expires_at")


def _validate_table_binding(binding: TableBinding) -> None:
    _check_table(binding.table)
    if binding.org_id is None and binding.tenant_column is None:
        raise PolicyInvalid(
            "a table binding needs an org_id (the table is one organisation's) or a tenant_column "
            "(a shared table whose rows name their organisation)",
            field="org_id",
        )
    if binding.org_id is not None:
        _require_org(binding.org_id)
    if binding.tenant_column is not None and not IDENTIFIER.fullmatch(binding.tenant_column):
        raise PolicyInvalid(
            f"tenant_column {binding.tenant_column!r} is not a column name (lower case letters, digits, _)",
            field="tenant_column",
        )
    if binding.subject_column is not None and not IDENTIFIER.fullmatch(binding.subject_column):
        raise PolicyInvalid(
            f"subject_column {binding.subject_column!r} is not a column name (lower case letters, digits, _)",
            field="subject_column",
        )


def _validate_quota(quota: QuotaLimit) -> None:
    _require_org(quota.org_id)
    for name in ("monthly_credits", "max_rows_per_query", "statements_per_second"):
        value = getattr(quota, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PolicyInvalid(f"{name} must be a number, or null for unlimited", field=name)
        if value < 0:
            raise PolicyInvalid(f"{name} is {value}; limits cannot be negative (null means unlimited)", field=name)


# --- shared checks ----------------------------------------------------------------------------


def _require(value: object, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise PolicyInvalid(f"{field} must be a non-empty string", field=field)


def _require_org(org_id: object) -> None:
    _require(org_id, "org_id")


def _check_table(table: object, field: str = "table") -> None:
    if not isinstance(table, str):
        raise PolicyInvalid(f"{field} must be a string", field=field)
    schema, dot, name = table.partition(".")
    if not dot or not IDENTIFIER.fullmatch(schema) or not IDENTIFIER.fullmatch(name):
        hint = " (write it in lower case)" if table != table.lower() else ""
        raise PolicyInvalid(
            f"table {table!r} is not schema.table{hint}: two names of lower case letters, digits and _, "
            "e.g. main.orders",
            field=field,
        )


def _check_column(column: object) -> None:
    if not isinstance(column, str) or not IDENTIFIER.fullmatch(column):
        raise PolicyInvalid(
            f"column {column!r} is not a column name: lower case letters, digits and _, not starting with a digit",
            field="column",
        )


def _check_roles(roles: Iterable[object], field: str) -> None:
    for role in roles:
        _enum(Role, role, field)


def _check_names(values: Iterable[object], field: str) -> None:
    for value in values:
        _require(value, field)


def _enum(enum: type[_E], value: object, field: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(str(member.value) for member in enum)
        raise PolicyInvalid(f"{field}: unknown value {value!r}; use one of {known}", field=field) from None


def _check_resource(resource: str) -> None:
    if resource == "*":
        return
    schema, dot, name = resource.partition(".")
    if dot and name == "*" and IDENTIFIER.fullmatch(schema):
        return
    try:
        _check_table(resource, "resources")
    except PolicyInvalid:
        raise PolicyInvalid(
            f'resource {resource!r} is not "schema.table", "schema.*" or "*" (lower case)', field="resources"
        ) from None


def _check_conditions(conditions: AbacConditions) -> None:
    if conditions.time_window is not None:
        _check_time_window(conditions.time_window)
    for table in conditions.tables:
        _check_table(table, "conditions.tables")
    _check_roles(conditions.roles, "conditions.roles")
    _check_names(conditions.agent_ids, "conditions.agent_ids")
    _check_names(conditions.agent_frameworks, "conditions.agent_frameworks")
    for field, cidrs in (
        ("conditions.source_cidrs", conditions.source_cidrs),
        ("conditions.not_source_cidrs", conditions.not_source_cidrs),
    ):
        for cidr in cidrs:
            _check_cidr(cidr, field)


def _check_time_window(window: TimeWindow) -> None:
    field = "conditions.time_window"
    try:
        ZoneInfo(window.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyInvalid(
            f"unknown timezone {window.timezone!r}; use an IANA name such as UTC or Europe/Berlin",
            field=f"{field}.timezone",
        ) from None
    minutes = {}
    for name in ("start", "end"):
        try:
            minutes[name] = parse_hhmm(getattr(window, name))
        except (ValueError, AttributeError, TypeError):
            raise PolicyInvalid(
                f"{name} {getattr(window, name)!r} is not an HH:MM time between 00:00 and 24:00",
                field=f"{field}.{name}",
            ) from None
    if minutes["start"] == 24 * 60:
        raise PolicyInvalid("start 24:00 is the end of the day; use 00:00", field=f"{field}.start")
    if minutes["start"] == minutes["end"]:
        raise PolicyInvalid(
            "start equals end, an empty window; use 00:00 to 24:00 for the whole day", field=f"{field}.end"
        )
    for day in window.weekdays:
        if day not in WEEKDAYS:
            raise PolicyInvalid(f"unknown weekday {day!r}; use {', '.join(WEEKDAYS)}", field=f"{field}.weekdays")


def _check_cidr(cidr: object, field: str) -> None:
    if not isinstance(cidr, str):
        raise PolicyInvalid(f"{field} must list CIDR strings such as 10.0.0.0/8", field=field)
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise PolicyInvalid(f"{cidr!r} is not an IPv4 or IPv6 network such as 10.0.0.0/8", field=field) from None
    try:
        ipaddress.ip_network(cidr)
    except ValueError:
        # Most likely a typo for the network: refuse rather than silently widen or narrow it.
        raise PolicyInvalid(f"{cidr!r} has host bits set; did you mean {network}?", field=field) from None


def _hash_unsafe_tag(snapshot: PolicySnapshot, org_id: str, table: str, column: str) -> PiiType | None:
    for tag in snapshot.column_tags:
        if (tag.org_id, tag.table, tag.column) == (org_id, table, column) and tag.pii_type in HASH_UNSAFE_PII:
            return PiiType(tag.pii_type)
    return None
