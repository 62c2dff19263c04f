"""GDPR right to erasure: forget a data subject in every table of an organisation that declares a subject column.

A table declares its subject column on its binding (`TableBinding.subject_column`). A forget request
(`submit`) is stored pending, with the subject id sealed and only its HMAC in the clear; `run` then:

1. finds the organisation's declared tables: bound to it, or shared (then only its own rows, by the
   table's tenant column);
2. for a table made of Parquet objects (S3 or the local data folder, through `TableObjects`), reads
   and filters every object first, then puts a copy without the subject's rows in place of each that
   held some (same keys), all at once for readers: staged copies and one manifest first, so a reader
   sees the table all old or all new (hd_core/table_swaps.py);
3. for a writable table, has the engine host delete the rows (`WritableTables`), in one DuckDB
   transaction per table, with a query audit record; where no engine is at hand (the forget worker in
   AWS, `writable_on_hosts`), records the table in `host_tables` and leaves the request
   `waiting_for_hosts`: every live fleet host deletes the rows itself (hd_core/erasure_fleet.py);
4. tells the engine hosts to stop serving cached copies of the changed tables: directly in `hd dev`,
   and through the control store's erasure epoch (`INVALIDATION_SETTING`) that every host polls;
5. deletes the object versions that still hold the subject's rows, at once with the default
   retention of 0, else at `purge_after` (`purge_due_versions`, run by the scheduled job);
6. completes the request, dropping the sealed subject id (a waiting request keeps it until the hosts are done).

The IAM trail gets `forget.requested` and `forget.completed`/`forget.failed` events carrying the
subject HMAC, never the id. A failed request keeps its sealed id and can be run again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from hd_core import table_swaps
from hd_core.client_values import check_plain_text
from hd_core.directory import require_own_org
from hd_core.erasure_models import (
    FORGET_SLA,
    MAX_REASON_LENGTH,
    ForgetRequest,
    ForgetRequestStore,
    ForgetStatus,
    TableObjects,
    WritableTables,
)
from hd_core.errors import Conflict, HdError, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import ChangeContext, new_id, utc_now
from hd_core.policies import TableBinding
from hd_core.ports import ControlStore, KeyProvider, SettingsStore
from hd_core.sealed_secrets import SecretSealer

log = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 256
REDACTED_SUBJECT = "[subject]"  # what the stored reason says where the caller wrote the subject id
INVALIDATION_SETTING = "erasure.invalidation"
_KEY_SETTING = "erasure.subject_key_wrapped"
# One KMS encryption-context purpose for everything the erasure wraps (the HMAC key and each sealed id):
# the forget functions' KMS grant is conditioned on it (cdk/hd_cdk/control_api.py FUNCTION_ACCESS).
_SEAL_PURPOSE = "forget-subject"
_KEY_CONTEXT = {"purpose": _SEAL_PURPOSE, "owner": "erasure-hmac-key"}


class ForgetRequestFailed(HdError):
    """The erasure could not finish; the request is `failed` and keeps what it needs to run again."""

    code = "HD_ERR_FORGET_FAILED"


@dataclass(frozen=True)
class ErasureServices:
    """What a forget request's work needs, chosen where it runs: the forget Lambda in AWS, the control server in hd dev.

    `objects` None: no Parquet tables here; `engine` None: no writable tables reachable from here
    (a declared table found in neither fails the request, so nothing is silently left behind), unless
    `writable_on_hosts`: then each fleet host erases such a table from its own writable tables.
    """

    store: Any  # ControlStore + ForgetRequestStore; Any because Protocol intersections need a class
    trail: IamAuditTrail
    keys: KeyProvider
    objects: TableObjects | None = None
    engine: WritableTables | None = None
    version_retention: timedelta = timedelta(0)
    writable_on_hosts: bool = False
    now: Callable[[], datetime] = utc_now


# --- the subject's HMAC -----------------------------------------------------------------------------


def subject_key(store: SettingsStore, keys: KeyProvider) -> bytes:
    """The deployment's erasure HMAC key: made on first use by the key provider (KMS), stored only wrapped."""
    wrapped = store.get_setting(_KEY_SETTING)
    if wrapped is None:
        fresh = keys.generate_data_key(_KEY_CONTEXT)
        wrapped = store.put_setting_if_absent(_KEY_SETTING, base64.b64encode(fresh.ciphertext).decode("ascii"))
    return keys.decrypt_data_key(base64.b64decode(wrapped, validate=True), _KEY_CONTEXT)


def subject_hmac(key: bytes, org_id: str, subject_id: str) -> str:
    """HMAC-SHA256 of the subject id within one organisation: the only form of the id the trails keep."""
    return hmac.new(key, f"{org_id}\x00{subject_id}".encode(), hashlib.sha256).hexdigest()


def _check_subject(subject_id: str, reason: str) -> tuple[str, str]:
    """The subject id as given (exact text: it is compared with column values) and the reason to store.

    The reason is stored and audited in the clear, so any occurrence of the id in it is replaced.
    """
    if not subject_id.strip() or len(subject_id) > MAX_SUBJECT_LENGTH:
        raise InvalidRequest(f"subject_id must be 1 to {MAX_SUBJECT_LENGTH} characters, not all blank")
    check_plain_text(subject_id, "subject_id")
    check_plain_text(reason, "reason", multiline=True)
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason must be at most {MAX_REASON_LENGTH} characters")
    return subject_id, re.sub(re.escape(subject_id), REDACTED_SUBJECT, reason, flags=re.IGNORECASE)


# --- requests -----------------------------------------------------------------------------------------


def submit(svc: ErasureServices, ctx: ChangeContext, org_id: str, subject_id: str, reason: str) -> ForgetRequest:
    """Record a pending forget request for `subject_id` in the actor's organisation (scope checked by the route)."""
    require_own_org(ctx, org_id)
    subject, reason = _check_subject(subject_id, reason)
    now = svc.now()
    request_id = new_id("fgt")
    hashed = subject_hmac(subject_key(svc.store, svc.keys), org_id, subject)
    request = ForgetRequest(
        request_id=request_id, org_id=org_id, subject_hmac=hashed,
        reason=reason, requested_by=ctx.actor.user_id, status=ForgetStatus.PENDING, requested_at=now,
        sla_deadline=now + FORGET_SLA, subject_sealed=_sealer(svc).seal(_seal_owner(org_id, request_id), subject),
    )
    svc.store.put_forget_request(request)
    svc.trail.record(org_id, IamEventType.FORGET_REQUESTED, actor=ctx.actor.user_id,
                     target=f"forget_request/{request_id}", before=None, after=audit_view(request),
                     request_id=ctx.request_id)
    return request


def get_request(store: ForgetRequestStore, ctx: ChangeContext, org_id: str, request_id: str) -> ForgetRequest:
    """One forget request of the actor's organisation; another organisation's answers like a made-up id."""
    require_own_org(ctx, org_id)
    request = store.get_forget_request(request_id)
    if request is None or request.org_id != org_id:
        raise NotFound("forget request not found")
    return request


def list_requests(store: ForgetRequestStore, ctx: ChangeContext, org_id: str) -> list[ForgetRequest]:
    """The forget requests of the actor's organisation, oldest first."""
    require_own_org(ctx, org_id)
    return store.list_forget_requests(org_id)


def retry(svc: ErasureServices, ctx: ChangeContext, org_id: str, request_id: str) -> ForgetRequest:
    """Put a failed request of the actor's organisation back to pending, for the next run (`hd dev`: at once).

    Only a failed request keeps its sealed subject id, so only it can run again; any other is 409.
    """
    stored = get_request(svc.store, ctx, org_id, request_id)
    if stored.status is not ForgetStatus.FAILED or stored.subject_sealed is None:
        raise Conflict(f"only a failed forget request can be retried; this one is {stored.status.value}")
    pending = replace(stored, status=ForgetStatus.PENDING, error="")
    svc.store.update_forget_request(pending, from_status=ForgetStatus.FAILED)  # Conflict if a worker took it
    svc.trail.record(org_id, IamEventType.FORGET_RETRIED, actor=ctx.actor.user_id,
                     target=f"forget_request/{request_id}", before=audit_view(stored), after=audit_view(pending),
                     request_id=ctx.request_id)
    return pending


def declared_tables(store: ControlStore, org_id: str) -> list[TableBinding]:
    """The tables holding `org_id`'s rows that declare a subject column: its own, and shared ones."""
    bindings = store.policy_snapshot().table_bindings
    return sorted((b for b in bindings if b.subject_column and (b.org_id == org_id or (b.org_id is None
                   and b.tenant_column))), key=lambda b: b.table)


# --- the work -------------------------------------------------------------------------------------------


def run(svc: ErasureServices, request_id: str, *, actor: str = SYSTEM_ACTOR) -> ForgetRequest:
    """Carry out a pending (or failed) request; returns it completed, or failed with the error recorded.

    A request already completed or being run elsewhere is returned as it is.
    """
    stored = svc.store.get_forget_request(request_id)
    if stored is None:
        raise NotFound("forget request not found")
    if stored.status not in (ForgetStatus.PENDING, ForgetStatus.FAILED) or stored.subject_sealed is None:
        return stored
    running = replace(stored, status=ForgetStatus.RUNNING, started_at=svc.now(), error="")
    try:
        svc.store.update_forget_request(running, from_status=stored.status)
    except Conflict:
        return svc.store.get_forget_request(request_id) or stored  # another worker took it
    try:
        subject = unseal_subject(svc.keys, stored)
        done = _erase(svc, running, subject)
    except Exception as exc:  # recorded on the request and in the trail; the request can be run again
        log.exception("forget request %s failed", request_id)
        message = safe_error(exc, locals().get("subject"))
        failed = replace(running, status=ForgetStatus.FAILED, finished_at=svc.now(), error=message)
        svc.store.update_forget_request(failed, from_status=ForgetStatus.RUNNING)
        svc.trail.record(stored.org_id, IamEventType.FORGET_FAILED, actor=actor,
                         target=f"forget_request/{request_id}", before=None, after=audit_view(failed),
                         request_id=request_id)
        return failed
    svc.store.update_forget_request(done, from_status=ForgetStatus.RUNNING)
    if done.status is ForgetStatus.WAITING_FOR_HOSTS:  # the worker's sweep completes it (hd_core/erasure_fleet.py)
        return done
    svc.trail.record(stored.org_id, IamEventType.FORGET_COMPLETED, actor=actor, target=f"forget_request/{request_id}",
                     before=None, after=audit_view(done), request_id=request_id)
    return done


def _erase(svc: ErasureServices, request: ForgetRequest, subject: str) -> ForgetRequest:
    tables = declared_tables(svc.store, request.org_id)
    results: dict[str, object] = {}
    purge: list[str] = []
    changed: list[str] = []
    on_hosts: dict[str, object] = {}
    try:
        removed_total = _erase_tables(svc, request, subject, tables, results, purge, changed, on_hosts)
    finally:
        # Also when the request fails part-way: a table whose objects were already swapped must not keep being
        # served from a cached copy that still holds the subject (a retry would find nothing left to swap).
        if changed:
            _announce_invalidation(svc, changed)
    now = svc.now()
    done = replace(request, status=ForgetStatus.COMPLETED, finished_at=now, subject_sealed=None,
                   tables=tuple(b.table for b in tables), table_results=results,
                   rows_removed=removed_total,
                   purge_versions=tuple(purge), purge_after=now + svc.version_retention if purge else None)
    if on_hosts:  # the hosts still have to delete: the sealed id stays for them, the sweep completes the request
        done = replace(done, status=ForgetStatus.WAITING_FOR_HOSTS, finished_at=None,
                       subject_sealed=request.subject_sealed, host_tables=on_hosts)
    if purge and svc.version_retention <= timedelta(0):
        done = _purge(svc, done)
    return done


def _erase_tables(svc: ErasureServices, request: ForgetRequest, subject: str, tables: list[TableBinding],
                  results: dict[str, object], purge: list[str], changed: list[str],
                  on_hosts: dict[str, object]) -> int:
    """Erase the subject from each declared table; `changed` names every table a swap or delete has touched,
    `on_hosts` every table left to the fleet hosts' writable copies (`writable_on_hosts`)."""
    removed_total = 0
    for binding in tables:
        column = binding.subject_column
        assert column is not None
        tenant = (binding.tenant_column, request.org_id) if binding.org_id is None and binding.tenant_column else None
        outcome = _erase_parquet(svc.objects, binding.table, column, subject, tenant, purge, changed)
        if outcome is None and svc.engine is not None:
            removed = svc.engine.delete_subject_rows(
                binding.table, column, subject, tenant=tenant,
                audit={"request_id": request.request_id, "user_id": request.requested_by,
                       "org_id": request.org_id, "subject_hmac": request.subject_hmac})
            outcome = None if removed is None else {"storage": "writable", "rows_removed": removed,
                                                    "objects_rewritten": 0}
        if outcome is None:
            if svc.objects is None and svc.engine is None:
                raise ForgetRequestFailed(f"table {binding.table} cannot be reached: this deployment configures no "
                                          "table data location for erasures (HD_ERASURE_DATA_URL)")
            if svc.engine is None and svc.writable_on_hosts:
                on_hosts[binding.table] = {"column": column, "tenant_column": tenant[0] if tenant else None}
                continue
            if svc.engine is None:
                raise ForgetRequestFailed(f"table {binding.table} has no Parquet objects here and its writable "
                                          "copy is only reachable through an engine host")
            outcome = {"storage": "absent", "rows_removed": 0, "objects_rewritten": 0}
        results[binding.table] = outcome
        removed = int(outcome["rows_removed"])  # type: ignore[call-overload]
        removed_total += removed
        if removed and binding.table not in changed:
            changed.append(binding.table)
    return removed_total


def _erase_parquet(objects: TableObjects | None, table: str, column: str, subject: str,
                   tenant: tuple[str, str] | None, purge: list[str], changed: list[str]) -> dict[str, object] | None:
    """Rewrite the table's objects that hold the subject's rows; None when the table has no objects.

    A swap an earlier run left half done is finished first. Then every object is read and filtered (the
    new bytes of the ones that change are held in memory), so a file the erasure cannot filter (a missing
    column) fails the request before any object changed; only then are they swapped in, all at once for
    readers (`table_swaps.swap_objects`).
    """
    if objects is None:
        return None
    prefix = table_swaps.table_prefix(table)
    leftover = table_swaps.read_manifest_object(objects, prefix)
    if leftover is not None:
        log.warning("finishing the swap %s an earlier erasure left in %s", leftover.swap_id, table)
        if table not in changed:
            changed.append(table)  # readers were served its stand-ins: their copies must go once it is done
        table_swaps.finish_swap(objects, leftover, purge)
    keys = [info.key for info in objects.list(prefix) if table_swaps.is_table_file(info.key)]
    if not keys:
        return None
    staged: list[tuple[str, str, bytes]] = []
    removed = 0
    for key in keys:
        data, info = objects.read(key)
        kept, count = without_subject(data, column, subject, tenant)
        if count:
            staged.append((key, info.etag, kept))
            removed += count
    if staged:
        try:
            table_swaps.swap_objects(objects, prefix, staged, purge)
        finally:  # also when it raised: once its manifest is written, readers may be served the new objects
            if table not in changed:
                changed.append(table)
    return {"storage": "parquet", "rows_removed": removed, "objects_rewritten": len(staged)}


def without_subject(data: bytes, column: str, subject: str, tenant: tuple[str, str] | None) -> tuple[bytes, int]:
    """A Parquet file's bytes without the subject's rows, and how many rows went (0: `data` unchanged).

    Values compare as text (an integer customer id 42 matches "42"); NULLs never match. The schema,
    including its metadata, is kept.
    """
    # Imported here: only the forget worker rewrites Parquet (its layer carries pyarrow); the forget API function
    # records requests and must not need pyarrow and numpy (functions/forget/handler.py imports this module).
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    names = {name.lower(): name for name in table.column_names}
    if column not in names or (tenant is not None and tenant[0] not in names):
        missing = column if column not in names else tenant[0]  # type: ignore[index]
        raise ForgetRequestFailed(f"a file of the table has no column {missing!r}: fix the table's subject column")
    match: Any = pc.equal(pc.cast(table[names[column]], pa.string()), pa.scalar(subject))  # pyarrow-stubs lag
    if tenant is not None:
        match = pc.and_(match, pc.equal(pc.cast(table[names[tenant[0]]], pa.string()), pa.scalar(tenant[1])))
    match = pc.fill_null(match, False)
    count = pc.sum(match).as_py() or 0
    if count == 0:
        return data, 0
    sink = io.BytesIO()
    pq.write_table(table.filter(pc.invert(match)), sink)
    return sink.getvalue(), int(count)


def _announce_invalidation(svc: ErasureServices, tables: list[str]) -> None:
    """Tell every engine host to drop cached copies of `tables`: the epoch they poll, and this host at once."""
    current = svc.store.get_setting(INVALIDATION_SETTING)
    epoch = int(json.loads(current)["epoch"]) if current else 0
    svc.store.put_setting(INVALIDATION_SETTING, json.dumps({"epoch": epoch + 1, "tables": sorted(tables)}))
    if svc.engine is not None:
        svc.engine.invalidate(tables)


def read_invalidation(store: SettingsStore) -> tuple[int, list[str]]:
    """The current erasure epoch and the tables its last erasure changed (0, [] before any)."""
    current = store.get_setting(INVALIDATION_SETTING)
    if not current:
        return 0, []
    value = json.loads(current)
    return int(value["epoch"]), [str(name) for name in value["tables"]]


# --- old object versions and the SLA --------------------------------------------------------------------


def _purge(svc: ErasureServices, request: ForgetRequest) -> ForgetRequest:
    if svc.objects is None or not request.purge_versions:
        return request
    by_key: dict[str, list[str]] = {}
    for entry in request.purge_versions:
        key, _, version = entry.partition("\t")
        by_key.setdefault(key, []).append(version)
    for key, versions in by_key.items():
        svc.objects.delete_versions(key, versions)
    return replace(request, purge_versions=(), purge_after=None)


def purge_due_versions(svc: ErasureServices) -> int:
    """Delete the old object versions of completed requests whose retention has passed; returns how many requests."""
    now = svc.now()
    purged = 0
    for request in svc.store.list_unsettled_forget_requests():
        if request.status is ForgetStatus.COMPLETED and request.purge_versions and request.purge_after is not None \
                and request.purge_after <= now:
            svc.store.update_forget_request(_purge(svc, request), from_status=ForgetStatus.COMPLETED)
            purged += 1
    return purged


def requests_past_sla(store: ForgetRequestStore, at: datetime) -> list[ForgetRequest]:
    """Open requests past their 72 h deadline: the SLA metric the alarm watches counts these."""
    return [request for request in store.list_unsettled_forget_requests() if request.past_sla(at)]


# --- helpers ------------------------------------------------------------------------------------------


def _sealer(svc: ErasureServices) -> SecretSealer:
    return SecretSealer(svc.keys, purpose=_SEAL_PURPOSE)


def unseal_subject(keys: KeyProvider, request: ForgetRequest) -> str:
    """The subject id sealed on an open request (`KeyUnavailable` if it does not open; `ForgetRequestFailed` if gone).

    The forget worker opens it, and so does each fleet host for its writable tables (its KMS grant is
    conditioned on this purpose and its organisation's request owners, cdk/hd_cdk/engine_fleet.py).
    """
    if request.subject_sealed is None:
        raise ForgetRequestFailed(f"forget request {request.request_id} no longer holds its subject")
    return SecretSealer(keys, purpose=_SEAL_PURPOSE).unseal(_seal_owner(request.org_id, request.request_id),
                                                            request.subject_sealed)


def _seal_owner(org_id: str, request_id: str) -> str:
    return f"{org_id}/{request_id}"


def audit_view(request: ForgetRequest) -> Mapping[str, object]:
    """What the IAM trail records of a request: never the sealed id, only its HMAC."""
    return {"request_id": request.request_id, "subject_hmac": request.subject_hmac, "status": request.status.value,
            "reason": request.reason, "tables": list(request.tables), "rows_removed": request.rows_removed,
            "error": request.error}


def safe_error(exc: Exception, subject: str | None) -> str:
    """The error to store: the exception's words with the subject id cut out (a driver may quote values)."""
    text = str(exc) if isinstance(exc, HdError) else f"{type(exc).__name__}: {exc}"
    if subject:
        text = text.replace(subject, "<subject>")
    return text[:500]
