"""Powertools idempotency records in SQLite: what `hd dev` keeps of retried creates, next to its control store.

The same rules as Powertools' DynamoDB layer, in one conditional statement: a record is written
when its key is new, when it has expired, or when it is still in progress past its in-progress
expiry (the invocation that wrote it died); otherwise the existing record is reported, so a retry
gets the stored response. The records live in a file of their own, never in the control store's
schema, which `hd dev` checks before it starts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_records (
    idempotency_key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    expiry_timestamp INTEGER NOT NULL,
    in_progress_expiry_timestamp INTEGER,
    response_data TEXT,
    payload_hash TEXT
)
"""
_COLUMNS = "idempotency_key, status, expiry_timestamp, in_progress_expiry_timestamp, response_data, payload_hash"


def idempotency_path_for(control_store_path: str) -> str:
    """The records' file for a control store file: a sibling of it (`:memory:` stays in memory)."""
    if control_store_path == ":memory:":
        return ":memory:"
    store = Path(control_store_path)
    return str(store.with_name(f"{store.stem}.idempotency{store.suffix or '.sqlite3'}"))


class SqliteIdempotencyStore(BasePersistenceLayer):
    """Powertools' `BasePersistenceLayer` over one SQLite table."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM idempotency_records WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        if row is None:
            raise IdempotencyItemNotFoundError
        return _record(row)

    def _put_record(self, data_record: DataRecord) -> None:
        now = time.time()
        with self._lock:
            # One statement: of two requests racing with one key, exactly one inserts or takes over the row.
            written = self._db.execute(
                f"""INSERT INTO idempotency_records ({_COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?)
                    ON CONFLICT (idempotency_key) DO UPDATE SET
                        status = excluded.status, expiry_timestamp = excluded.expiry_timestamp,
                        in_progress_expiry_timestamp = excluded.in_progress_expiry_timestamp,
                        response_data = NULL, payload_hash = excluded.payload_hash
                    WHERE idempotency_records.expiry_timestamp < ?
                       OR (idempotency_records.status = 'INPROGRESS'
                           AND idempotency_records.in_progress_expiry_timestamp IS NOT NULL
                           AND idempotency_records.in_progress_expiry_timestamp < ?)""",
                (data_record.idempotency_key, data_record.status, data_record.expiry_timestamp,
                 data_record.in_progress_expiry_timestamp,
                 data_record.payload_hash if self.payload_validation_enabled else None,
                 int(now), int(now * 1000)),
            ).rowcount
            existing = None if written else self._db.execute(
                f"SELECT {_COLUMNS} FROM idempotency_records WHERE idempotency_key = ?",
                (data_record.idempotency_key,),
            ).fetchone()
        if existing is None:
            return
        old = _record(existing)
        # As the DynamoDB layer does: a different payload under the key is refused, not replayed.
        self._validate_payload(data_payload=data_record, stored_data_record=old)
        raise IdempotencyItemAlreadyExistsError(old_data_record=old)

    def _update_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE idempotency_records SET response_data = ?, expiry_timestamp = ?, status = ? "
                "WHERE idempotency_key = ?",
                (data_record.response_data, data_record.expiry_timestamp, data_record.status,
                 data_record.idempotency_key),
            )

    def _delete_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._db.execute("DELETE FROM idempotency_records WHERE idempotency_key = ?",
                             (data_record.idempotency_key,))

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()


def _record(row: tuple[str, str, int, int | None, str | None, str | None]) -> DataRecord:
    key, status, expiry, in_progress_expiry, response_data, payload_hash = row
    return DataRecord(idempotency_key=key, status=status, expiry_timestamp=expiry,
                      in_progress_expiry_timestamp=in_progress_expiry, response_data=response_data or "",
                      payload_hash=payload_hash or "")
