"""Ports: the interfaces hd_core needs from the outside world; adapters in `hd_core.adapters` implement them."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from hd_core.models import ApiKeyRecord, Organization, User


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
