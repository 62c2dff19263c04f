"""Governance policy objects and the versioned snapshot the engine host enforces.

Every object belongs to one organisation. Table names are always normalised `schema.table`
(lower case, as DuckDB resolves identifiers case-insensitively even when quoted); column names are
lower case too. Objects are frozen values: a change is a new version written through the
`ControlStore`, which bumps the store-wide policy version the engine hosts watch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from hd_core.models import Role


class MaskFunction(StrEnum):
    """How a masked column reads: `***`, `***` + last N characters, keyed HMAC-SHA256 hex, or NULL."""

    FULL = "full"
    PARTIAL = "partial"
    HASH = "hash"
    NULL = "null"


class PiiType(StrEnum):
    """What kind of personal data a column holds (seed 004's `pii_type`)."""

    EMAIL = "email"
    SSN = "ssn"
    PHONE = "phone"
    CARD = "card"
    MRN = "mrn"
    PHI = "phi"


class PolicyKind(StrEnum):
    """The kinds of policy object the store keeps, one namespace of ids each."""

    MASK = "mask"
    ROW_FILTER = "row_filter"
    ABAC = "abac"
    JIT_GRANT = "jit_grant"
    COLUMN_TAG = "column_tag"
    PHI_GRANT = "phi_grant"
    TABLE_BINDING = "table_binding"
    QUOTA = "quota"


class Action(StrEnum):
    """What a statement does to a table, as ABAC policies and scopes see it."""

    SELECT = "select"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    CREATE = "create"
    ALTER = "alter"
    DROP = "drop"


# Placeholders a row filter may use, resolved from the session and inlined as escaped literals.
ROW_FILTER_PLACEHOLDERS = ("user_id", "org_id", "agent_id", "agent_framework", "department", "region")


@dataclass(frozen=True)
class MaskRule:
    """Mask one column. With `agent_ids`/`agent_frameworks` it applies only to matching agent sessions."""

    rule_id: str
    org_id: str
    table: str
    column: str
    function: MaskFunction
    visible_chars: int = 4
    exempt_roles: tuple[Role, ...] = ()
    agent_ids: tuple[str, ...] = ()
    agent_frameworks: tuple[str, ...] = ()
    # Written before its table exists (the control API refuses a name the catalog lacks otherwise).
    pending: bool = False

    @property
    def agent_specific(self) -> bool:
        return bool(self.agent_ids or self.agent_frameworks)


@dataclass(frozen=True)
class RowFilter:
    """Rows of `table` a session may see and write: SQL over the table's columns with `{placeholders}`."""

    rule_id: str
    org_id: str
    table: str
    filter: str
    exempt_roles: tuple[Role, ...] = ()
    # Written before its table exists (the control API refuses a name the catalog lacks otherwise).
    pending: bool = False


@dataclass(frozen=True)
class TimeWindow:
    """A daily window in a timezone, optionally limited to weekdays (`mon`..`sun`).

    `start` > `end` wraps midnight (22:00-06:00). `outside=True` matches when the time is *not* in
    the window, which is how "deny outside business hours" is written.
    """

    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"
    weekdays: tuple[str, ...] = ()
    outside: bool = False


@dataclass(frozen=True)
class AbacConditions:
    """All given conditions must hold for a policy to match; an empty tuple means "any"."""

    time_window: TimeWindow | None = None
    tables: tuple[str, ...] = ()
    agent_frameworks: tuple[str, ...] = ()
    agent_ids: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ()
    source_cidrs: tuple[str, ...] = ()
    not_source_cidrs: tuple[str, ...] = ()
    agents_only: bool = False


@dataclass(frozen=True)
class AbacPolicy:
    """An attribute-based rule; only `deny` exists (roles and scopes grant), and a deny always wins.

    `actions` are `Action` values or `*`; `resources` are `schema.table`, `schema.*` or `*`.
    """

    policy_id: str
    org_id: str
    name: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: AbacConditions = field(default_factory=AbacConditions)
    reason: str = ""
    # Names tables that do not exist yet (the control API refuses a name the catalog lacks otherwise).
    pending: bool = False


@dataclass(frozen=True)
class JitGrant:
    """Time-bounded role elevation for one user; it stops applying at `expires_at` by itself."""

    grant_id: str
    org_id: str
    user_id: str
    role: Role
    reason: str
    starts_at: datetime
    expires_at: datetime
    approved_by: str | None = None
    revoked_at: datetime | None = None

    def active(self, at: datetime) -> bool:
        return self.revoked_at is None and self.starts_at <= at < self.expires_at


@dataclass(frozen=True)
class ColumnTag:
    """Declares the kind of personal data a column holds."""

    tag_id: str
    org_id: str
    table: str
    column: str
    pii_type: PiiType
    # Written before its table exists (the control API refuses a name the catalog lacks otherwise).
    pending: bool = False
    # The column identifies the patient a row is about (at most one per table): PHI disclosures record its
    # values, as keyed HMACs, so `audit/phi-disclosures` can answer for one patient.
    patient_key: bool = False


@dataclass(frozen=True)
class PhiGrant:
    """Explicit permission for one user (optionally only as one agent) to read unmasked PHI columns."""

    grant_id: str
    org_id: str
    user_id: str
    agent_id: str | None = None
    expires_at: datetime | None = None
    reason: str = ""

    def active(self, at: datetime) -> bool:
        return self.expires_at is None or at < self.expires_at


@dataclass(frozen=True)
class TableBinding:
    """Which organisation's data a table holds.

    A table bound to one org (`tenant_column` None) is invisible and unreadable to every other org.
    A shared table (`org_id` None) holds several orgs' rows told apart by `tenant_column`; every
    session sees only rows whose `tenant_column` equals its own org id, with no role exempt.
    `subject_column` names the column that identifies a data subject (GDPR erasure, hd_core/erasure.py).
    """

    binding_id: str
    table: str
    org_id: str | None = None
    tenant_column: str | None = None
    subject_column: str | None = None


@dataclass(frozen=True)
class QuotaLimit:
    """An organisation's limits; None means unlimited."""

    quota_id: str
    org_id: str
    monthly_credits: float | None = None
    max_rows_per_query: int | None = None
    statements_per_second: float | None = None


PolicyObject = MaskRule | RowFilter | AbacPolicy | JitGrant | ColumnTag | PhiGrant | TableBinding | QuotaLimit


@dataclass(frozen=True)
class PolicySnapshot:
    """Every policy object at one store-wide version: what an engine host enforces until the next one."""

    version: int
    masks: tuple[MaskRule, ...] = ()
    row_filters: tuple[RowFilter, ...] = ()
    abac: tuple[AbacPolicy, ...] = ()
    jit_grants: tuple[JitGrant, ...] = ()
    column_tags: tuple[ColumnTag, ...] = ()
    phi_grants: tuple[PhiGrant, ...] = ()
    table_bindings: tuple[TableBinding, ...] = ()
    quotas: tuple[QuotaLimit, ...] = ()

    def objects(self) -> Iterator[PolicyObject]:
        """Every policy object of the snapshot, kind by kind."""
        yield from self.masks
        yield from self.row_filters
        yield from self.abac
        yield from self.jit_grants
        yield from self.column_tags
        yield from self.phi_grants
        yield from self.table_bindings
        yield from self.quotas

    @classmethod
    def of(cls, version: int, objects: Iterable[PolicyObject]) -> PolicySnapshot:
        """Sort a flat list of policy objects into a snapshot."""
        buckets: dict[type, list[PolicyObject]] = {}
        for obj in objects:
            buckets.setdefault(type(obj), []).append(obj)

        def of_type(kind: type) -> tuple:
            return tuple(buckets.get(kind, ()))

        return cls(
            version=version,
            masks=of_type(MaskRule),
            row_filters=of_type(RowFilter),
            abac=of_type(AbacPolicy),
            jit_grants=of_type(JitGrant),
            column_tags=of_type(ColumnTag),
            phi_grants=of_type(PhiGrant),
            table_bindings=of_type(TableBinding),
            quotas=of_type(QuotaLimit),
        )
