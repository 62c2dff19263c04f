"""GDPR erasure of the fleet hosts' writable tables: every engine host deletes the subject's rows itself.

A writable table lives in each engine host's own `engine.duckdb`; the forget worker Lambda has no
engine, so it cannot reach any of them. The work is split:

1. The fleet function records every host whose heartbeat it accepts (`record_heartbeat`): a `FleetHost`
   with its organisation and `last_seen`. A host is *live* while its last accepted heartbeat is at most
   `HOST_LIVE_HEARTBEATS` heartbeat intervals old (the interval the control plane told it to use).
2. The worker, for a declared table with no Parquet objects, records it in the request's `host_tables`
   and leaves the request `waiting_for_hosts` with its subject still sealed. `publish_host_work` lists
   the waiting requests in the `HOST_WORK_SETTING` setting, which every host reads on each erasure-epoch
   tick (one strongly consistent read, like the epoch itself).
3. Each host (`HostErasures`, run by engine_host/runtime/erasure.py's `ErasureWatcher`, once at start
   before it serves and then on every tick) unseals the subject of each listed request of its own
   organisation, deletes the rows from its writable tables (one query audit record per table) and
   stores a `ForgetHostAck`: once per request and host (a conditional write; a failed ack may be replaced
   by a later attempt, a done one never).
4. The worker's sweep (`settle_waiting`) completes a waiting request once every registered host of its
   organisation has acked done (per-host rows in `table_results`) or is known to be gone, fails it when a
   host's ack of this attempt failed, and fails it past the SLA when a live host never acked.
   A host that stopped heartbeating may still hold the rows and come back (a network partition, a stopped
   instance), so it is waited for until it acks or EC2 says its instance is gone (`HostPresence`: asked only
   about such stale hosts; terminated, shutting down or unknown to EC2). A gone host's registry entry is
   deleted, so it is never asked about again; an EC2 that cannot be asked is not an answer (fail closed). A
   request held by a stale host stays `waiting_for_hosts` past the SLA (the SLA alarm counts it), its `error`
   naming the hosts; each applies the request on its erasure poll once it reaches the control store again.

The IAM trail and the query audit keep only the subject HMAC; the sealed id is dropped at completion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hd_core.erasure import (
    ErasureServices,
    ForgetRequestFailed,
    audit_view,
    safe_error,
    unseal_subject,
)
from hd_core.erasure_models import (
    AckStatus,
    FleetErasureStore,
    FleetHost,
    ForgetHostAck,
    ForgetRequest,
    ForgetStatus,
    WritableTables,
)
from hd_core.errors import HdError
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import utc_now
from hd_core.ports import KeyProvider, SettingsStore

if TYPE_CHECKING:  # hd_core.fleet imports this module (it records accepted heartbeats here)
    from hd_core.fleet import FleetMembership

log = logging.getLogger(__name__)

# The forget requests the fleet hosts still have work for: {"requests": [request ids]}, kept by the worker.
HOST_WORK_SETTING = "erasure.host_requests"


# --- the registry (fleet function) ---------------------------------------------------------------------


def record_heartbeat(store: FleetErasureStore, *, org_id: str, host_id: str, at: datetime,
                     heartbeat_seconds: int) -> FleetHost:
    """Note that the fleet accepted a heartbeat of `host_id` at `at`: the host is live from now on."""
    host = FleetHost(host_id=host_id, org_id=org_id, last_seen=at, heartbeat_seconds=heartbeat_seconds)
    store.record_fleet_host(host)
    return host


def live_hosts(store: FleetErasureStore, org_id: str, at: datetime) -> list[FleetHost]:
    """The organisation's hosts that are live at `at`."""
    return [host for host in store.list_fleet_hosts(org_id) if host.live(at)]


# --- the worker's side ---------------------------------------------------------------------------------


def publish_host_work(store: Any) -> list[str]:
    """List every request waiting for hosts in `HOST_WORK_SETTING`; returns the ids (oldest first)."""
    waiting = [request.request_id for request in store.list_unsettled_forget_requests()
               if request.status is ForgetStatus.WAITING_FOR_HOSTS]
    current = read_host_work(store)
    if current != waiting:
        store.put_setting(HOST_WORK_SETTING, json.dumps({"requests": waiting}))
    return waiting


def read_host_work(store: SettingsStore) -> list[str]:
    """The ids of the requests the fleet hosts have work for ([] before any)."""
    value = store.get_setting(HOST_WORK_SETTING)
    return [str(item) for item in json.loads(value)["requests"]] if value else []


# EC2 states of an instance that never serves again (its instance-store and root volumes go with it).
GONE_INSTANCE_STATES = frozenset({"shutting-down", "terminated"})


class HostPresence:
    """Whether registered hosts that stopped heartbeating are gone for good: EC2 asked at most once per host.

    One per sweep (a stale host is not asked again for each request waiting for it). `instances` None (no EC2
    to ask) knows no host gone.
    """

    def __init__(self, instances: FleetMembership | None) -> None:
        self._instances = instances
        self._answers: dict[str, str | None] = {}

    def waited_because(self, host_id: str) -> str | None:
        """Why the host may still serve again (its instance's state, or that EC2 could not say); None when gone."""
        if host_id not in self._answers:
            self._answers[host_id] = self._ask(host_id)
        return self._answers[host_id]

    def _ask(self, host_id: str) -> str | None:
        if self._instances is None:
            return "no EC2 to ask"
        try:
            instance = self._instances.describe_instance(host_id)
        except HdError as exc:  # FleetLookupUnavailable: fail closed, a host EC2 cannot tell about is still waited for
            log.warning("could not ask EC2 whether silent host %s is gone: %s", host_id, exc)
            return "EC2 could not be asked"
        if instance is None or instance.state in GONE_INSTANCE_STATES:
            return None
        return f"instance {instance.state}"


def settle_waiting(svc: ErasureServices, request: ForgetRequest, *, actor: str = SYSTEM_ACTOR,
                   presence: HostPresence | None = None) -> ForgetRequest:
    """Complete a waiting request every registered host not known gone has acked; fail it on a host's failure
    or past the SLA while a live host has not acked.

    A host whose heartbeats stopped is asked about (`presence`): a gone one is removed from the registry, any
    other is waited for, and named in the request's `error`. Anything else (a host still to ack) leaves the
    request waiting; returns it as stored now.
    """
    if request.status is not ForgetStatus.WAITING_FOR_HOSTS:
        return request
    now = svc.now()
    presence = presence or HostPresence(None)
    acks = {ack.host_id: ack for ack in svc.store.list_forget_host_acks(request.request_id)}
    waited, stale = _hosts_to_wait_for(svc.store, request.org_id, now, acks, presence)
    failures = [f"host {ack.host_id}: {ack.error}" for host in waited
                if (ack := acks.get(host.host_id)) is not None and ack.status is AckStatus.FAILED
                and ack.attempt_started_at == request.started_at]
    missing_live = [host.host_id for host in waited if host.host_id not in stale]
    if failures:
        return _fail(svc, request, "; ".join(failures), actor)
    if missing_live and now > request.sla_deadline:
        return _fail(svc, request, f"live engine host(s) {', '.join(missing_live)} did not delete the subject's rows "
                     "from their writable tables within the SLA; check their logs, then retry", actor)
    if waited:
        note = _stale_note(stale)
        if note == request.error:
            return request
        noted = replace(request, error=note)
        svc.store.update_forget_request(noted, from_status=ForgetStatus.WAITING_FOR_HOSTS)
        return noted
    done = _completed(request, [ack for ack in acks.values() if ack.status is AckStatus.DONE], now)
    svc.store.update_forget_request(done, from_status=ForgetStatus.WAITING_FOR_HOSTS)
    svc.trail.record(request.org_id, IamEventType.FORGET_COMPLETED, actor=actor,
                     target=f"forget_request/{request.request_id}", before=None, after=audit_view(done),
                     request_id=request.request_id)
    return done


def settle_all(svc: ErasureServices, instances: FleetMembership | None = None) -> list[ForgetRequest]:
    """Settle every waiting request, then publish the ones still waiting to the hosts; returns those settled.

    `instances` tells whether a host that stopped heartbeating is gone (EC2 in AWS); without it none is.
    """
    presence = HostPresence(instances)
    settled = []
    for request in svc.store.list_unsettled_forget_requests():
        if request.status is ForgetStatus.WAITING_FOR_HOSTS:
            after = settle_waiting(svc, request, presence=presence)
            if after.status is not ForgetStatus.WAITING_FOR_HOSTS:
                settled.append(after)
    publish_host_work(svc.store)
    return settled


def _hosts_to_wait_for(store: FleetErasureStore, org_id: str, now: datetime, acks: Mapping[str, ForgetHostAck],
                       presence: HostPresence) -> tuple[list[FleetHost], dict[str, str]]:
    """The registered hosts without a done ack that are live or not known gone, and why each stale one is waited
    for (`"<host>": "last heartbeat ..., instance stopped"`); a gone host's registry entry is deleted on the way."""
    waited: list[FleetHost] = []
    stale: dict[str, str] = {}
    for host in store.list_fleet_hosts(org_id):
        ack = acks.get(host.host_id)
        if ack is not None and ack.status is AckStatus.DONE:
            continue
        if host.live(now):
            waited.append(host)
            continue
        why = presence.waited_because(host.host_id)
        if why is None:
            log.info("engine host %s is gone (its instance is terminated or unknown): removed from the registry",
                     host.host_id)
            store.forget_fleet_host(host.host_id)
            continue
        waited.append(host)
        stale[host.host_id] = f"last heartbeat {host.last_seen.isoformat(timespec='seconds')}, {why}"
    return waited, stale


def _stale_note(stale: Mapping[str, str]) -> str:
    """What a request held by silent hosts says in its `error` (empty when none holds it)."""
    if not stale:
        return ""
    hosts = "; ".join(f"{host_id} ({why})" for host_id, why in sorted(stale.items()))
    return (f"waiting for engine host(s) that stopped heartbeating but are not known to be gone: {hosts}. Each "
            "deletes the rows when it reaches the control plane again; terminate an instance that will not come "
            "back and the next sweep stops waiting for it")[:500]


def _completed(request: ForgetRequest, acks: Sequence[ForgetHostAck], now: datetime) -> ForgetRequest:
    results: dict[str, object] = dict(request.table_results)
    removed_on_hosts = 0
    for table in request.host_tables:
        per_host: dict[str, int] = {}
        for ack in acks:
            outcome = ack.table_results.get(table)
            if isinstance(outcome, Mapping) and outcome.get("storage") == "writable":
                per_host[ack.host_id] = int(outcome.get("rows_removed", 0))
        rows = sum(per_host.values())
        removed_on_hosts += rows
        results[table] = {"storage": "writable" if per_host else "absent", "rows_removed": rows,
                          "objects_rewritten": 0, "hosts": dict(sorted(per_host.items()))}
    return replace(request, status=ForgetStatus.COMPLETED, finished_at=now, subject_sealed=None,
                   table_results=results, rows_removed=request.rows_removed + removed_on_hosts, error="")


def _fail(svc: ErasureServices, request: ForgetRequest, error: str, actor: str) -> ForgetRequest:
    failed = replace(request, status=ForgetStatus.FAILED, finished_at=svc.now(), error=error[:500])
    svc.store.update_forget_request(failed, from_status=ForgetStatus.WAITING_FOR_HOSTS)
    svc.trail.record(request.org_id, IamEventType.FORGET_FAILED, actor=actor,
                     target=f"forget_request/{request.request_id}", before=None, after=audit_view(failed),
                     request_id=request.request_id)
    return failed


# --- the host's side -----------------------------------------------------------------------------------


class HostErasures:
    """One fleet host's part of waiting forget requests: delete the subject's rows here, then ack once."""

    def __init__(self, store: Any, keys: KeyProvider, *, host_id: str, org_id: str, tables: WritableTables,
                 now: Callable[[], datetime] = utc_now) -> None:
        """`store` is the control store (forget requests, settings, `FleetErasureStore`); `keys` opens sealed ids."""
        self._store = store
        self._keys = keys
        self._host_id = host_id
        self._org_id = org_id
        self._tables = tables
        self._now = now
        self._handled: set[tuple[str, datetime | None]] = set()  # (request, attempt) this host has acked

    def apply_outstanding(self) -> list[ForgetHostAck]:
        """Do this host's part of every listed request of its organisation not yet acked; returns the new acks.

        A store that cannot be read raises (the caller retries on its next tick); a request this host
        cannot erase is acked as failed, which fails the request with the host's reason.
        """
        acks = []
        for request_id in read_host_work(self._store):
            request = self._store.get_forget_request(request_id)
            if request is None or request.org_id != self._org_id or request.status is not \
                    ForgetStatus.WAITING_FOR_HOSTS or request.subject_sealed is None:
                continue
            attempt = (request.request_id, request.started_at)
            if attempt in self._handled:
                continue
            ack = self._apply(request)
            if ack is not None:
                acks.append(ack)
            self._handled.add(attempt)
        return acks

    def _apply(self, request: ForgetRequest) -> ForgetHostAck | None:
        if self._acked_done(request.request_id):
            return None  # done before this process started (a restart): never twice
        results: dict[str, object] = {}
        subject: str | None = None
        try:
            subject = unseal_subject(self._keys, request)
            removed_total = 0
            for table, target in sorted(request.host_tables.items()):
                removed = self._delete(request, table, target, subject)
                results[table] = {"storage": "absent" if removed is None else "writable",
                                  "rows_removed": removed or 0}
                removed_total += removed or 0
            ack = ForgetHostAck(request_id=request.request_id, host_id=self._host_id, org_id=self._org_id,
                                status=AckStatus.DONE, acked_at=self._now(), attempt_started_at=request.started_at,
                                table_results=results, rows_removed=removed_total)
        except Exception as exc:  # acked as failed: the worker fails the request with this host's reason
            log.exception("this host could not erase the subject of forget request %s", request.request_id)
            ack = ForgetHostAck(request_id=request.request_id, host_id=self._host_id, org_id=self._org_id,
                                status=AckStatus.FAILED, acked_at=self._now(), attempt_started_at=request.started_at,
                                table_results=results, error=safe_error(exc, subject))
        if not self._store.put_forget_host_ack(ack):
            return None
        log.info("forget request %s: %s on this host (%d row(s) removed)", request.request_id, ack.status.value,
                 ack.rows_removed)
        return ack

    def _delete(self, request: ForgetRequest, table: str, target: object, subject: str) -> int | None:
        if not isinstance(target, Mapping) or not isinstance(target.get("column"), str):
            raise ForgetRequestFailed(f"the request names host table {table} without its subject column")
        tenant_column = target.get("tenant_column")
        tenant = (str(tenant_column), request.org_id) if tenant_column else None
        return self._tables.delete_subject_rows(
            table, str(target["column"]), subject, tenant=tenant,
            audit={"request_id": request.request_id, "user_id": request.requested_by, "org_id": request.org_id,
                   "subject_hmac": request.subject_hmac})

    def _acked_done(self, request_id: str) -> bool:
        return any(ack.host_id == self._host_id and ack.status is AckStatus.DONE
                   for ack in self._store.list_forget_host_acks(request_id))
