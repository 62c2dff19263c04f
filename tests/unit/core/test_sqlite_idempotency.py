"""The SQLite idempotency records follow Powertools' DynamoDB rules: one writer per key, expiries free it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from hd_core.adapters.sqlite_idempotency import SqliteIdempotencyStore, idempotency_path_for


@pytest.fixture
def records(tmp_path: Path) -> SqliteIdempotencyStore:
    store = SqliteIdempotencyStore(idempotency_path_for(str(tmp_path / "control.sqlite3")))
    store.configure(IdempotencyConfig(event_key_jmespath="key", payload_validation_jmespath="body"), key_prefix="t")
    return store


def _in_progress(key: str, *, in_progress_until_ms: int, expiry: int | None = None) -> DataRecord:
    return DataRecord(idempotency_key=key, status="INPROGRESS", expiry_timestamp=expiry or int(time.time()) + 3600,
                      in_progress_expiry_timestamp=in_progress_until_ms, payload_hash="h")


def test_the_records_live_beside_the_control_store_not_in_it(tmp_path: Path) -> None:
    assert idempotency_path_for(str(tmp_path / "control.sqlite3")) == str(tmp_path / "control.idempotency.sqlite3")
    assert idempotency_path_for(":memory:") == ":memory:"


def test_a_second_writer_of_a_live_key_sees_the_first_record(records: SqliteIdempotencyStore) -> None:
    later_ms = int(time.time() * 1000) + 60_000
    records._put_record(_in_progress("k", in_progress_until_ms=later_ms))
    with pytest.raises(IdempotencyItemAlreadyExistsError) as caught:
        records._put_record(_in_progress("k", in_progress_until_ms=later_ms))
    assert caught.value.old_data_record is not None and caught.value.old_data_record.status == "INPROGRESS"


def test_another_request_under_a_live_key_is_a_validation_error(records: SqliteIdempotencyStore) -> None:
    later_ms = int(time.time() * 1000) + 60_000
    records._put_record(_in_progress("k", in_progress_until_ms=later_ms))
    other = _in_progress("k", in_progress_until_ms=later_ms)
    other.payload_hash = "another"
    with pytest.raises(IdempotencyValidationError):
        records._put_record(other)


def test_an_in_progress_record_past_its_invocations_time_or_an_expired_one_is_taken_over(
    records: SqliteIdempotencyStore,
) -> None:
    records._put_record(_in_progress("dead", in_progress_until_ms=int(time.time() * 1000) - 1))
    records._put_record(_in_progress("dead", in_progress_until_ms=int(time.time() * 1000) + 60_000))
    records._put_record(_in_progress("old", in_progress_until_ms=0, expiry=int(time.time()) - 1))
    records._put_record(_in_progress("old", in_progress_until_ms=int(time.time() * 1000) + 60_000))


def test_a_completed_record_keeps_its_answer_and_a_deleted_one_is_gone(records: SqliteIdempotencyStore) -> None:
    record = _in_progress("k", in_progress_until_ms=int(time.time() * 1000) + 60_000)
    records._put_record(record)
    done = DataRecord(idempotency_key="k", status="COMPLETED", expiry_timestamp=record.expiry_timestamp,
                      response_data='{"status": 201}', payload_hash="h")
    records._update_record(done)
    stored = records._get_record("k")
    assert (stored.status, stored.response_data) == ("COMPLETED", '{"status": 201}')
    records._delete_record(done)
    with pytest.raises(IdempotencyItemNotFoundError):
        records._get_record("k")
