"""The engine host's part of a GDPR forget request (hd_core/erasure.py).

- `HostWritableTables` deletes a subject's rows from this host's writable (DuckDB) tables, which only
  the process holding `engine.duckdb` can change, and tells the table source to stop serving copies
  of tables an erasure rewrote. `hd dev` hands it to the forget function (the control server runs
  in the same process).
- `ErasureWatcher` polls the control store's erasure epoch (`hd_core.erasure.INVALIDATION_SETTING`)
  every few seconds and invalidates the tables the last erasure changed: how every host of a fleet
  learns of an erasure the forget Lambda ran against S3, without waiting for the cache's 60 s bound.
  On a fleet host (`FleetErasureIdentity`) the same tick also does the host's part of forget requests
  waiting for the fleet's writable tables (`hd_core.erasure_fleet.HostErasures`), and `start` does it
  once before the host serves: the subject's rows leave this host's `engine.duckdb`, then it acks.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from engine_host.data.table_sources import TableSource
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from engine_host.engine.table_catalog import TableCatalog
from engine_host.engine.views import qualified, quote_identifier, rollback
from hd_core.audit import QueryAuditRecord
from hd_core.erasure import ErasureServices, ForgetRequestFailed, read_invalidation
from hd_core.erasure_fleet import HostErasures
from hd_core.erasure_models import TableObjects
from hd_core.ports import AuditSink, KeyProvider, SettingsStore
from hd_core.services import ControlServices

if TYPE_CHECKING:
    from engine_host.runtime.host import EngineHost

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 2.0


class HostWritableTables:
    """`WritableTables` (hd_core/erasure_models.py) on one running engine host."""

    def __init__(self, database: Database, catalog: TableCatalog, tables: TableSource, audit: AuditSink) -> None:
        self._database = database
        self._catalog = catalog
        self._tables = tables
        self._audit = audit

    def delete_subject_rows(
        self, table: str, column: str, subject: str, *, tenant: tuple[str, str] | None, audit: Mapping[str, str]
    ) -> int | None:
        info = self._catalog.get(table)
        if info is None or not info.writable:
            return None
        columns = {name for name, _ in info.columns}
        for needed in (column, *(tenant[:1] if tenant else ())):
            if needed not in columns:
                raise ForgetRequestFailed(f"table {table} has no column {needed!r}: fix the table's subject column")
        schema, name = table.split(".", 1)
        where = f"CAST({quote_identifier(column)} AS VARCHAR) = $1"
        values: list[object] = [subject]
        if tenant is not None:
            where += f" AND CAST({quote_identifier(tenant[0])} AS VARCHAR) = $2"
            values.append(tenant[1])
        statement = f"DELETE FROM {qualified(DATA_CATALOG, schema, name)} WHERE {where}"
        record = QueryAuditRecord.begin(
            sql=statement, org_id=audit["org_id"], user_id=audit["user_id"], key_id=None, role=None, source_ip=None,
            statement_kind="delete", request_id=audit["request_id"])
        cursor = self._database.connection.cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")
            try:
                removed = int(cursor.execute(statement, values).fetchone()[0])  # type: ignore[index]
                record.tables = [table]
                record.rows_written = removed
                # Fail closed: the delete commits only once its audit record is written.
                self._audit.write({**record.to_dict(), "forget_request_id": audit["request_id"],
                                   "subject_hmac": audit["subject_hmac"]})
                cursor.execute("COMMIT")
            except BaseException:
                rollback(cursor)
                raise
        except duckdb.Error as exc:
            raise ForgetRequestFailed(f"deleting from {table} failed ({type(exc).__name__}); run the request "
                                      "again") from None
        finally:
            cursor.close()
        log.info("erasure removed %d row(s) from writable table %s", removed, table)
        return removed

    def invalidate(self, tables: list[str]) -> None:
        self._tables.invalidate(tables)


@dataclass(frozen=True)
class FleetErasureIdentity:
    """Who this fleet host is to forget requests: its instance id and organisation, and the keys that open subjects."""

    host_id: str
    org_id: str
    keys: KeyProvider


def host_erasures(identity: FleetErasureIdentity, store: object, database: Database, catalog: TableCatalog,
                  tables: TableSource, audit: AuditSink) -> HostErasures:
    """This host's part of forget requests, deleting from its own writable tables with a query audit record each."""
    return HostErasures(store, identity.keys, host_id=identity.host_id, org_id=identity.org_id,
                        tables=HostWritableTables(database, catalog, tables, audit))


class ErasureWatcher:
    """Invalidates the tables of every erasure another process ran, as the control store's epoch announces it,
    and on a fleet host erases the subject of every forget request waiting for the hosts (`host_erasures`)."""

    def __init__(self, store: SettingsStore, invalidate: Callable[[list[str]], None],
                 interval_seconds: float = WATCH_INTERVAL_SECONDS, *,
                 host_erasures: HostErasures | None = None) -> None:
        self._store = store
        self._invalidate = invalidate
        self._interval = interval_seconds
        self._host_erasures = host_erasures
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = 0

    def start(self) -> None:
        """Remember the epoch as it is now (copies built after it are current) and watch from there.

        A store that cannot be read now never stops the host: the first check that can read it then
        invalidates the last erasure's tables once (a copy dropped needlessly is only rebuilt).
        A fleet host then does its part of every forget request waiting for the hosts, before it serves
        (a failure is logged and retried on every tick; the request's SLA alarm speaks if it persists)."""
        try:
            self._seen = read_invalidation(self._store)[0]
        except Exception:  # logged; the watch itself retries every interval
            log.exception("cannot read the erasure epoch at start; watching from epoch 0")
            self._seen = 0
        if self._host_erasures is not None:
            try:
                self._host_erasures.apply_outstanding()
            except Exception:  # logged; retried on every tick
                log.exception("cannot do this host's part of waiting forget requests at start")
        self._thread = threading.Thread(target=self._run, name="hd-erasure-watch", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Invalidate once if the epoch moved since the last look (returns whether it did), then do this fleet
        host's part of the forget requests waiting for the hosts."""
        moved = self._check_epoch()
        if self._host_erasures is not None:
            self._host_erasures.apply_outstanding()
        return moved

    def _check_epoch(self) -> bool:
        epoch, tables = read_invalidation(self._store)
        if epoch == self._seen:
            return False
        log.info("erasure epoch %d: dropping cached copies of %s", epoch, ", ".join(tables) or "no table")
        self._invalidate(tables)
        self._seen = epoch
        return True

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.check()
            except Exception:  # the next tick retries; the cache's own staleness bound still holds meanwhile
                log.exception("checking the erasure epoch failed")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def local_erasure_services(host: EngineHost, control: ControlServices, data_dir: Path,
                           data_source: str | None) -> ErasureServices:
    """`hd dev`'s erasure: its data folder (or S3 source), this host's writable tables and audit, at once."""
    from hd_core.adapters.erasure_objects import LocalFolderTableObjects, s3_table_objects_from_url

    assert host.database is not None and host.tables is not None
    objects: TableObjects = (LocalFolderTableObjects(data_dir) if data_source is None
                             else s3_table_objects_from_url(data_source))
    retention = timedelta(hours=float(os.environ.get("HD_ERASURE_VERSION_RETENTION_HOURS") or 0))
    return ErasureServices(store=control.store, trail=control.trail, keys=control.keys, objects=objects,
                           engine=HostWritableTables(host.database, host.tables, host.table_source, host.audit_sink),
                           version_retention=retention)
