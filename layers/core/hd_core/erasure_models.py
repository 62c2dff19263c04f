"""GDPR right to erasure: a forget request, how it is stored, and the ports its work runs through.

A forget request names a data subject; the subject's id itself is never stored in the clear. The
request keeps `subject_hmac` (HMAC-SHA256 under the deployment's erasure key, see
`hd_core.erasure.subject_hmac`) for the audit trails, and `subject_sealed` (the id sealed with a
KeyProvider data key) only while the work is still to do: a completed request drops it, so after
completion no stored artefact can give the id back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from hd_core.object_source import ObjectInfo
from hd_core.records import RecordCodec

# Article 12(3) GDPR asks for "without undue delay"; the product promises 72 hours, and an alarm
# fires for any request still open after it.
FORGET_SLA = timedelta(hours=72)
MAX_REASON_LENGTH = 1000


class ForgetStatus(StrEnum):
    """Where a forget request is: waiting, being worked, done, or stopped by an error (retryable).

    `waiting_for_hosts`: the worker did its part (Parquet objects) and each registered fleet host that is not
    known to be gone still has to delete the subject's rows from its own writable tables (hd_core/erasure_fleet.py).
    """

    PENDING = "pending"
    RUNNING = "running"
    WAITING_FOR_HOSTS = "waiting_for_hosts"
    COMPLETED = "completed"
    FAILED = "failed"


OPEN_STATUSES = frozenset({ForgetStatus.PENDING, ForgetStatus.RUNNING, ForgetStatus.WAITING_FOR_HOSTS,
                           ForgetStatus.FAILED})


@dataclass(frozen=True)
class ForgetRequest:
    """One erasure of one subject's rows from every table of an organisation that declares a subject column.

    `table_results` maps each declared table to `{"rows_removed": n, "objects_rewritten": m,
    "storage": "parquet"|"writable"|"absent"}` (a table the fleet hosts erased also has `"hosts": {host id:
    rows removed}`). `host_tables` maps each table whose writable copies live on the fleet hosts to
    `{"column": subject column, "tenant_column": column or None}`: what every registered host that is not
    known to be gone deletes from its own `engine.duckdb` before the request completes. `purge_versions`
    lists `key\\tversion_id` of object versions that still hold the subject's rows and are deleted at
    `purge_after` (the retention the deployment sets; 0 purges them as soon as the new objects are in place).
    """

    request_id: str
    org_id: str
    subject_hmac: str
    reason: str
    requested_by: str
    status: ForgetStatus
    requested_at: datetime
    sla_deadline: datetime
    subject_sealed: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tables: tuple[str, ...] = ()
    table_results: dict[str, object] = field(default_factory=dict)
    rows_removed: int = 0
    error: str = ""
    purge_after: datetime | None = None
    purge_versions: tuple[str, ...] = ()
    host_tables: dict[str, object] = field(default_factory=dict)

    def past_sla(self, at: datetime) -> bool:
        """Whether the request is still open past its deadline (what the SLA alarm counts)."""
        return self.status in OPEN_STATUSES and at > self.sla_deadline


FORGET_REQUESTS = RecordCodec(ForgetRequest)


class ForgetRequestStore(Protocol):
    """Where forget requests are kept (the control store: SQLite locally, DynamoDB in AWS)."""

    def put_forget_request(self, request: ForgetRequest) -> None:
        """Store a new request; raises `Conflict` if its id exists."""
        ...

    def get_forget_request(self, request_id: str) -> ForgetRequest | None:
        """The request with this id, or None."""
        ...

    def list_forget_requests(self, org_id: str) -> list[ForgetRequest]:
        """The requests of one organisation, oldest first."""
        ...

    def list_unsettled_forget_requests(self) -> list[ForgetRequest]:
        """Every request not completed, or completed with object versions still to purge, of every organisation.

        What the scheduled job reads: the SLA check and the version purge.
        """
        ...

    def update_forget_request(self, request: ForgetRequest, *, from_status: ForgetStatus) -> None:
        """Replace a request whose stored status is `from_status`; `Conflict` if it moved on, `NotFound` if absent."""
        ...


# --- the fleet hosts' part (hd_core/erasure_fleet.py) ----------------------------------------------------

# A host is live while its last accepted heartbeat is at most this many heartbeat intervals old: one
# missed heartbeat (a slow network, a control-plane deploy) does not drop it, two do.
HOST_LIVE_HEARTBEATS = 2


@dataclass(frozen=True)
class FleetHost:
    """One engine host as its last accepted heartbeat left it in the registry.

    The entry stays until the forget worker finds the host's instance gone (hd_core/erasure_fleet.py): a host
    that stopped heartbeating may come back with its `engine.duckdb`, so it never expires on its own.
    """

    host_id: str
    org_id: str
    last_seen: datetime
    heartbeat_seconds: int  # the interval the control plane gave the host with that heartbeat's verdict

    def live(self, at: datetime) -> bool:
        """Whether the host has heartbeated within `HOST_LIVE_HEARTBEATS` of its intervals before `at`."""
        return at - self.last_seen <= timedelta(seconds=HOST_LIVE_HEARTBEATS * self.heartbeat_seconds)


class AckStatus(StrEnum):
    """How a host's part of a forget request ended: rows deleted (or none held), or an error to report."""

    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ForgetHostAck:
    """One host's answer to one forget request: what it deleted from each host table, or why it could not.

    `attempt_started_at` is the request's `started_at` when the host worked on it, so a failure of an
    earlier attempt does not fail a retried request. `table_results` maps each host table to
    `{"storage": "writable"|"absent", "rows_removed": n}`.
    """

    request_id: str
    host_id: str
    org_id: str
    status: AckStatus
    acked_at: datetime
    attempt_started_at: datetime | None = None
    table_results: dict[str, object] = field(default_factory=dict)
    rows_removed: int = 0
    error: str = ""


FLEET_HOSTS = RecordCodec(FleetHost)
FORGET_HOST_ACKS = RecordCodec(ForgetHostAck)


class FleetErasureStore(Protocol):
    """The registry of fleet hosts and their forget acks (the control store: SQLite locally, DynamoDB in AWS)."""

    def record_fleet_host(self, host: FleetHost) -> None:
        """Create or replace the host's registry entry."""
        ...

    def list_fleet_hosts(self, org_id: str) -> list[FleetHost]:
        """Every registered host of the organisation, live or not, by host id."""
        ...

    def forget_fleet_host(self, host_id: str) -> None:
        """Remove the host's registry entry (its instance is gone for good); nothing happens when there is none."""
        ...

    def put_forget_host_ack(self, ack: ForgetHostAck) -> bool:
        """Store the ack unless a done ack of this request and host exists (then False, nothing written)."""
        ...

    def list_forget_host_acks(self, request_id: str) -> list[ForgetHostAck]:
        """Every host's ack of the request, by host id."""
        ...


class TableObjects(Protocol):
    """Read-write access to table data objects (Parquet) for the erasure: S3 or a local folder."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""
        ...

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The object's bytes and what they are (ETag); raises `ObjectMissing`."""
        ...

    def replace(self, key: str, data: bytes, *, if_match: str) -> ObjectInfo:
        """Put `data` in place of the object in one atomic step (readers get the old or the new object).

        Raises `ObjectChanged` if the object is no longer at ETag `if_match` (someone else wrote it).
        """
        ...

    def put_new(self, key: str, data: bytes) -> ObjectInfo:
        """Create the object in one atomic step; `ObjectChanged` if one is already there (never overwritten)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object and any version of it; nothing happens when there is none."""
        ...

    def replacing(self, prefix: str) -> AbstractContextManager[object]:
        """Hold while the objects under `prefix` (one table) are replaced: keeps out readers that cannot
        If-Match (a local folder's engine reads the files in place); raises `TableBusy` past its deadline."""
        ...

    def versions(self, key: str) -> tuple[str, ...]:
        """The ids of every version of the object other than the current one (none where there are no versions)."""
        ...

    def delete_versions(self, key: str, version_ids: Sequence[str]) -> int:
        """Delete these versions of the object for good; returns how many went."""
        ...


class WritableTables(Protocol):
    """The engine host's writable (DuckDB) tables: only the host that holds `engine.duckdb` may change them."""

    def delete_subject_rows(
        self, table: str, column: str, subject: str, *, tenant: tuple[str, str] | None, audit: Mapping[str, str]
    ) -> int | None:
        """Delete the rows whose `column` equals `subject` (and `tenant[0]` equals `tenant[1]` for a shared table).

        Returns the rows removed, or None when the host has no writable table of that name. `audit`
        holds the request id, requester and subject HMAC for the query audit record of the delete.
        """
        ...

    def invalidate(self, tables: list[str]) -> None:
        """Stop serving cached copies of these tables: the next statement reads their files as they are now."""
        ...
