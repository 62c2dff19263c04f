"""Ports: the interfaces hd_core needs from the outside world; adapters in `hd_core.adapters` implement them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Protocol

from hd_core.models import ApiKeyRecord, Organization, UsageDelta, User
from hd_core.policies import PolicyKind, PolicyObject, PolicySnapshot


class ControlStore(Protocol):
    """Durable control state: organisations, users, API keys and a few bootstrap settings.

    Implementations are safe to call from several threads at once. Getters return None for an
    absent entity; lists are ordered by creation time. Datetimes are timezone-aware UTC.
    """

    def put_org(self, org: Organization) -> None:
        """Create or replace an organisation."""
        ...

    def get_org(self, org_id: str) -> Organization | None:
        """The organisation with this id, or None."""
        ...

    def list_orgs(self) -> list[Organization]:
        """Every organisation."""
        ...

    def put_user(self, user: User) -> None:
        """Create or replace a user."""
        ...

    def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        ...

    def list_users(self, org_id: str) -> list[User]:
        """The users of one organisation, whatever their status."""
        ...

    def put_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new API key record; raises `Conflict` if its key id already exists (never overwrites)."""
        ...

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The API key record with this key id, or None."""
        ...

    def list_api_keys(self, org_id: str) -> list[ApiKeyRecord]:
        """The API key records of one organisation, revoked ones included."""
        ...

    def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord:
        """Mark a key revoked at `at` (an earlier revocation time is kept); raises `NotFound`; returns the record."""
        ...

    def get_setting(self, name: str) -> str | None:
        """A local bootstrap fact (for example the default org id), or None if never set."""
        ...

    def put_setting(self, name: str, value: str) -> None:
        """Set a bootstrap fact, replacing any previous value."""
        ...

    def put_setting_if_absent(self, name: str, value: str) -> str:
        """Set a bootstrap fact only if unset, atomically; returns the value now stored (first writer wins)."""
        ...

    # --- governance policies ------------------------------------------------------------------

    def put_policy(self, obj: PolicyObject) -> int:
        """Create or replace a policy object (same kind and id); returns the new store-wide policy version."""
        ...

    def delete_policy(self, kind: PolicyKind, object_id: str) -> int:
        """Delete a policy object; raises `NotFound`; returns the new store-wide policy version."""
        ...

    def get_policy(self, kind: PolicyKind, object_id: str) -> PolicyObject | None:
        """One policy object, or None."""
        ...

    def list_policies(self, org_id: str | None = None, kind: PolicyKind | None = None) -> list[PolicyObject]:
        """Policy objects, optionally of one organisation and/or kind, ordered by kind then id."""
        ...

    def policy_version(self) -> int:
        """The store-wide policy version: 0 before any change, +1 on every put or delete."""
        ...

    def policy_snapshot(self) -> PolicySnapshot:
        """Every policy object and the version they make up, read consistently."""
        ...

    # --- metering -------------------------------------------------------------------------------

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add metered consumption, summing into existing (org, day, user, agent) buckets, atomically."""
        ...

    def usage(self, org_id: str, start: date, end: date) -> list[UsageDelta]:
        """The usage buckets of one organisation for days in [start, end], ordered by day, user, agent."""
        ...


class AuditSink(Protocol):
    """Where query audit records go (a local folder or the Object Lock bucket), one JSONL line each.

    `write` returns only once the record is stored; it raises if it cannot store it, and the
    statement it describes then fails without returning rows (fail closed).
    """

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record; `record["ts"]` (ISO-8601 UTC) decides its `audit/queries/YYYY/MM/DD/` partition."""
        ...
