"""Which policies apply to one session: pure functions over a `PolicySnapshot`.

The engine host calls these per statement and caches the plan per policy version, so they favour
plain scans over cleverness. Every function is fail-closed where the snapshot is ambiguous or an
attribute is unknown: a deny policy whose condition cannot be evaluated denies, a placeholder-less
session sees no filtered rows, and of several masks the strictest wins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hd_core.models import Role
from hd_core.permissions import higher_role
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    Action,
    MaskFunction,
    MaskRule,
    PiiType,
    PolicySnapshot,
    QuotaLimit,
    RowFilter,
    TableBinding,
    TimeWindow,
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Higher is stricter: NULL and `***` reveal nothing, a keyed hash reveals equality, partial reveals a tail.
_STRICTNESS = {MaskFunction.NULL: 3, MaskFunction.FULL: 3, MaskFunction.HASH: 2, MaskFunction.PARTIAL: 1}


@dataclass(frozen=True)
class Subject:
    """Who is running a statement: the authenticated principal plus the session's agent and network attributes."""

    user_id: str
    org_id: str
    role: Role
    scopes: tuple[str, ...]
    key_id: str
    env: str
    department: str | None = None
    region: str | None = None
    agent_id: str | None = None
    agent_framework: str | None = None
    source_ip: str | None = None

    @property
    def is_agent(self) -> bool:
        return bool(self.agent_id or self.agent_framework)


def effective_role(snapshot: PolicySnapshot, subject: Subject, now: datetime) -> Role:
    """The subject's base role, raised by any JIT grant active for that user in that organisation at `now`."""
    role = Role(subject.role)
    for grant in snapshot.jit_grants:
        # No JIT to Owner: validation refuses it, and a stored one is ignored rather than honoured.
        if grant.role == Role.OWNER:
            continue
        if grant.user_id == subject.user_id and grant.org_id == subject.org_id and grant.active(now):
            role = higher_role(role, grant.role)
    return role


def masks_for(snapshot: PolicySnapshot, subject: Subject, role: Role, table: str) -> dict[str, MaskRule]:
    """The mask that applies to each masked column of `table` for this subject acting as `role`.

    A rule applies when it is the subject's organisation's, does not exempt `role`, and (if it names
    agents) the session is one of them. Of several, the most specific wins (matching agent id, then
    matching framework, then general); ties go to the strictest function.
    """
    table = table.lower()
    candidates: dict[str, list[tuple[int, MaskRule]]] = {}
    for rule in snapshot.masks:
        if rule.org_id != subject.org_id or rule.table != table or role in rule.exempt_roles:
            continue
        specificity = _mask_specificity(rule, subject)
        if specificity is not None:
            candidates.setdefault(rule.column, []).append((specificity, rule))
    return {column: min(rules, key=_mask_preference)[1] for column, rules in candidates.items()}


def row_filters_for(snapshot: PolicySnapshot, subject: Subject, role: Role, table: str) -> list[RowFilter]:
    """The row filters of the subject's organisation on `table` that do not exempt `role` (all must hold)."""
    table = table.lower()
    return [
        rule
        for rule in snapshot.row_filters
        if rule.org_id == subject.org_id and rule.table == table and role not in rule.exempt_roles
    ]


def binding_for(snapshot: PolicySnapshot, table: str) -> TableBinding | None:
    """Which organisation(s) `table` belongs to, or None if it was never bound."""
    table = table.lower()
    return next((binding for binding in snapshot.table_bindings if binding.table == table), None)


def abac_denial(
    snapshot: PolicySnapshot,
    subject: Subject,
    role: Role,
    action: Action,
    table: str | None,
    now: datetime,
) -> AbacPolicy | None:
    """The first deny policy of the subject's organisation that matches this action, or None.

    `table` is `schema.table`, or None for a statement that touches no table (only a `*` resource
    matches it). `role` is the effective role; `now` is compared in each policy's own timezone.
    """
    table = table.lower() if table is not None else None
    for policy in snapshot.abac:
        if policy.org_id != subject.org_id or policy.effect.lower() != "deny":
            continue  # roles and scopes grant; an ABAC policy can only take away
        if not _action_matches(policy.actions, Action(action)):
            continue
        if not any(_resource_matches(pattern, table) for pattern in policy.resources):
            continue
        if _conditions_hold(policy.conditions, subject, role, table, now):
            return policy
    return None


def phi_access(snapshot: PolicySnapshot, subject: Subject, now: datetime) -> bool:
    """Whether the subject holds an active PHI grant (one limited to an agent counts only as that agent)."""
    return any(
        grant.org_id == subject.org_id
        and grant.user_id == subject.user_id
        and grant.active(now)
        and (grant.agent_id is None or grant.agent_id == subject.agent_id)
        for grant in snapshot.phi_grants
    )


def column_tags_for(snapshot: PolicySnapshot, org_id: str, table: str) -> dict[str, PiiType]:
    """The declared kind of personal data of each tagged column of `table` in one organisation.

    A column tagged twice reads as PHI if either tag says so (PHI carries the extra access rule).
    """
    table = table.lower()
    tags: dict[str, PiiType] = {}
    for tag in snapshot.column_tags:
        if tag.org_id == org_id and tag.table == table and tags.get(tag.column) != PiiType.PHI:
            tags[tag.column] = tag.pii_type
    return tags


def patient_key_column(snapshot: PolicySnapshot, org_id: str, table: str) -> str | None:
    """The column `table` declares as its patient key in one organisation (a tag with `patient_key`), if any."""
    table = table.lower()
    return next((tag.column for tag in snapshot.column_tags
                 if tag.patient_key and tag.org_id == org_id and tag.table == table), None)


def active_grant_ids(snapshot: PolicySnapshot, subject: Subject,
                     now: datetime) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(PHI grant ids, JIT grant ids) active for the subject at `now`: what an unmasked PHI read happened under."""
    phi = tuple(sorted(grant.grant_id for grant in snapshot.phi_grants
                       if grant.org_id == subject.org_id and grant.user_id == subject.user_id and grant.active(now)
                       and (grant.agent_id is None or grant.agent_id == subject.agent_id)))
    jit = tuple(sorted(grant.grant_id for grant in snapshot.jit_grants
                       if grant.org_id == subject.org_id and grant.user_id == subject.user_id and grant.active(now)
                       and grant.role != Role.OWNER))
    return phi, jit


def quota_for(snapshot: PolicySnapshot, org_id: str) -> QuotaLimit | None:
    """The organisation's limits; if several were stored, the strictest value of each."""
    quotas = [quota for quota in snapshot.quotas if quota.org_id == org_id]
    if len(quotas) <= 1:
        return quotas[0] if quotas else None
    return QuotaLimit(
        quota_id=quotas[0].quota_id,
        org_id=org_id,
        monthly_credits=_strictest(q.monthly_credits for q in quotas),
        max_rows_per_query=_strictest_int(q.max_rows_per_query for q in quotas),
        statements_per_second=_strictest(q.statements_per_second for q in quotas),
    )


# --- masks ------------------------------------------------------------------------------------


def _mask_specificity(rule: MaskRule, subject: Subject) -> int | None:
    """2 for a matching agent id, 1 for a matching framework, 0 for a general rule, None if it does not apply."""
    if not rule.agent_specific:
        return 0
    if subject.agent_id is not None and subject.agent_id in rule.agent_ids:
        return 2
    if subject.agent_framework is not None and _folded(subject.agent_framework) in _fold_all(rule.agent_frameworks):
        return 1
    return None


def _mask_preference(candidate: tuple[int, MaskRule]) -> tuple[int, int, int, str]:
    specificity, rule = candidate
    # Fewer visible characters is stricter among partial masks; the rule id makes the choice stable.
    return (-specificity, -_STRICTNESS[MaskFunction(rule.function)], rule.visible_chars, rule.rule_id)


# --- ABAC -------------------------------------------------------------------------------------


def _action_matches(actions: tuple[str, ...], action: Action) -> bool:
    return any(candidate == "*" or candidate.lower() == action.value for candidate in actions)


def _resource_matches(pattern: str, table: str | None) -> bool:
    pattern = pattern.lower()
    if pattern == "*":
        return True
    if table is None:
        return False
    if pattern.endswith(".*"):
        return table.split(".", 1)[0] == pattern[:-2]
    return table == pattern


def _conditions_hold(
    conditions: AbacConditions, subject: Subject, role: Role, table: str | None, now: datetime
) -> bool:
    if conditions.time_window is not None and not _in_time_window(conditions.time_window, now):
        return False
    if conditions.tables and (table is None or table not in {t.lower() for t in conditions.tables}):
        return False
    if conditions.agent_frameworks and (subject.agent_framework is None or _folded(subject.agent_framework)
                                        not in _fold_all(conditions.agent_frameworks)):
        return False
    if conditions.agent_ids and subject.agent_id not in conditions.agent_ids:
        return False
    if conditions.roles and role not in conditions.roles:
        return False
    address = _parse_ip(subject.source_ip)
    if conditions.source_cidrs and (
        address is None or not _in_any(address, conditions.source_cidrs, if_unreadable=True)
    ):
        return False
    # An unknown address counts as outside every listed network: "deny unless from the office" denies it.
    if (
        conditions.not_source_cidrs
        and address is not None
        and _in_any(address, conditions.not_source_cidrs, if_unreadable=False)
    ):
        return False
    return not (conditions.agents_only and not subject.is_agent)


def _in_time_window(window: TimeWindow, now: datetime) -> bool:
    """Whether `now` falls in the window (or outside it, for `outside=True`), in the window's timezone."""
    try:
        local = now.astimezone(ZoneInfo(window.timezone))
        start, end = parse_hhmm(window.start), parse_hhmm(window.end)
    except (ZoneInfoNotFoundError, ValueError):
        return True  # a deny condition that cannot be evaluated holds (fail closed)
    minute = local.hour * 60 + local.minute
    in_hours = start <= minute < end if start <= end else (minute >= start or minute < end)
    weekdays = {day.lower() for day in window.weekdays}
    in_days = not weekdays or WEEKDAYS[local.weekday()] in weekdays
    inside = in_hours and in_days
    return not inside if window.outside else inside


def parse_hhmm(value: str) -> int:
    """Minutes since midnight of an `HH:MM` time (`24:00` allowed as an end); raises ValueError."""
    hours, sep, minutes = value.partition(":")
    if not sep or len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
        raise ValueError(f"{value!r} is not an HH:MM time")
    total = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or total > 24 * 60:
        raise ValueError(f"{value!r} is not a time of day between 00:00 and 24:00")
    return total


def _in_any(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, cidrs: tuple[str, ...], *, if_unreadable: bool
) -> bool:
    """Whether the address lies in any of the networks; a network that does not parse answers `if_unreadable`.

    Callers pick `if_unreadable` so that a broken condition makes its deny policy match (fail closed).
    """
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            if if_unreadable:
                return True
            continue
        if address.version == network.version and address in network:
            return True
    return False


def _parse_ip(source_ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not source_ip:
        return None
    try:
        address = ipaddress.ip_address(source_ip.split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; policies name them as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _strictest(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


def _strictest_int(values: Iterable[int | None]) -> int | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


def _folded(name: str) -> str:
    """Framework names are matched case-insensitively: `UNTRUSTED` must not slip past `untrusted`."""
    return name.strip().casefold()


def _fold_all(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_folded(n) for n in names)
