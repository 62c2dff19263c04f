"""S3AuditSink on moto: group commit under concurrency, one object per day partition, fail closed, Object Lock."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.audit import QueryAuditRecord, format_audit_ts
from hd_core.errors import AuditWriteFailed, HdError
from hd_core.ports import AuditSink
from hd_core.query_audit_chain import CHAIN_FIELDS

BUCKET = "hd-audit-test"
T0 = datetime(2026, 3, 1, 23, 59, 59, 900000, tzinfo=UTC)
DAY = date(2026, 3, 1)
KEY_SHAPE = re.compile(r"audit/queries/2026/03/0[12]/host-a-\d{13}-[0-9A-Za-z]{10}\.jsonl")


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _record(n: int, at: datetime = T0) -> dict[str, object]:
    return {"ts": format_audit_ts(at), "query_id": f"q{n:04}", "org_id": "org_a", "sql_redacted": "SELECT ?"}


def _keys(s3: Any, bucket: str = BUCKET) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [entry["Key"] for page in pages for entry in page.get("Contents", [])]


def _run_threads(count: int, work: Any) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * count
    barrier = threading.Barrier(count)

    def run(t: int) -> None:
        barrier.wait()
        try:
            work(t)
        except BaseException as exc:
            outcomes[t] = exc

    threads = [threading.Thread(target=run, args=(t,)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a writer never returned"
    return outcomes


def test_concurrent_writes_are_group_committed_into_few_objects_and_read_back_exactly_once(s3: Any) -> None:
    threads, per_thread = 20, 25
    with S3AuditSink(s3, BUCKET, host_id="host-a", batch_window_seconds=0.05) as sink:

        def writer(t: int) -> None:
            for i in range(per_thread):
                sink.write(_record(t * per_thread + i, T0 - timedelta(hours=1)))

        assert _run_threads(threads, writer) == [None] * threads
    keys = _keys(s3)
    ids = sorted(str(r["query_id"]) for r in S3AuditArchive(s3, BUCKET).records(DAY))
    assert ids == [f"q{n:04}" for n in range(threads * per_thread)]
    # 500 PutObjects without group commit; each round of the 20 writers should share one object.
    assert len(keys) <= 100, len(keys)
    assert all(KEY_SHAPE.fullmatch(key) for key in keys), keys


def test_a_write_returns_only_once_its_record_is_in_the_bucket(s3: Any) -> None:
    with S3AuditSink(s3, BUCKET, host_id="host-a") as sink:
        port: AuditSink = sink
        port.write(_record(1))
        (key,) = _keys(s3)  # read before close: the write itself waited for the PutObject
        assert json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["query_id"] == "q0001"


def test_objects_are_compact_ndjson_lines(s3: Any) -> None:
    record = QueryAuditRecord.begin(sql="SELECT 'Zoë'", org_id="org_a", user_id="usr_1", key_id=None,
                                    role="Owner", source_ip=None, at=T0).to_dict()
    record["note"] = "Zoë"
    record["when"] = T0  # not JSON: stored through str()
    with S3AuditSink(s3, BUCKET, host_id="host-a") as sink:
        sink.write(record)
    (key,) = _keys(s3)
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    body = stored["Body"].read().decode()
    assert stored["ContentType"] == "application/x-ndjson"
    assert body.endswith("\n") and body.count("\n") == 1
    assert "Zoë" in body and ", " not in body and '": ' not in body
    stored_record = json.loads(body)
    assert {name: stored_record.pop(name) for name in CHAIN_FIELDS}["chain_seq"] == 1
    assert stored_record == {**record, "when": str(T0)}


def test_a_batch_spanning_midnight_writes_one_object_per_day_partition(s3: Any) -> None:
    # A long window cut short by the size limit: the six writes always form exactly one batch.
    with S3AuditSink(s3, BUCKET, host_id="host-a", batch_window_seconds=10.0, max_batch_records=6) as sink:
        outcomes = _run_threads(6, lambda t: sink.write(_record(t, T0 + timedelta(seconds=t % 2))))
    assert outcomes == [None] * 6
    keys = sorted(_keys(s3))
    assert [key.split("/")[2:5] for key in keys] == [["2026", "03", "01"], ["2026", "03", "02"]]
    assert all(KEY_SHAPE.fullmatch(key) for key in keys)
    archive = S3AuditArchive(s3, BUCKET)
    assert sorted(str(r["query_id"]) for r in archive.records(DAY)) == ["q0000", "q0002", "q0004"]
    assert sorted(str(r["query_id"]) for r in archive.records(date(2026, 3, 2))) == ["q0001", "q0003", "q0005"]


def test_a_batch_never_holds_more_than_max_batch_records(s3: Any) -> None:
    with S3AuditSink(s3, BUCKET, host_id="host-a", batch_window_seconds=5.0, max_batch_records=4) as sink:
        # A 5 s window would stall this test: only the size limit can make these writes return quickly.
        assert _run_threads(8, lambda t: sink.write(_record(t))) == [None] * 8
    bodies = [s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode() for key in _keys(s3)]
    assert sorted(body.count("\n") for body in bodies) == [4, 4]


def test_every_waiter_of_a_batch_to_a_missing_bucket_gets_audit_write_failed(s3: Any) -> None:
    with S3AuditSink(s3, "hd-audit-missing", host_id="host-a", batch_window_seconds=0.1) as sink:
        outcomes = _run_threads(10, lambda t: sink.write(_record(t)))
    assert all(isinstance(outcome, AuditWriteFailed) for outcome in outcomes), outcomes
    assert all(outcome.code == "HD_ERR_AUDIT_UNAVAILABLE" for outcome in outcomes if isinstance(outcome, HdError))
    assert "NoSuchBucket" in str(outcomes[0])


def test_a_failed_batch_does_not_poison_later_writes(s3: Any) -> None:
    with S3AuditSink(s3, "hd-audit-late", host_id="host-a") as sink:
        with pytest.raises(AuditWriteFailed):
            sink.write(_record(1))
        s3.create_bucket(Bucket="hd-audit-late")
        sink.write(_record(2))
    assert [r["query_id"] for r in S3AuditArchive(s3, "hd-audit-late").records(DAY)] == ["q0002"]


class _RefusesOneDay:
    """Wraps a real S3 client and refuses the puts of one day partition, as a throttled prefix would."""

    def __init__(self, client: Any, refused_partition: str) -> None:
        self._client = client
        self._refused = refused_partition

    def get_paginator(self, name: str) -> Any:
        return self._client.get_paginator(name)

    def put_object(self, **kwargs: Any) -> Any:
        if self._refused in kwargs["Key"]:
            raise ConnectionError("connection reset by peer")
        return self._client.put_object(**kwargs)


def test_only_callers_whose_object_failed_are_told_so(s3: Any) -> None:
    client = _RefusesOneDay(s3, "/2026/03/02/")
    with S3AuditSink(client, BUCKET, host_id="host-a", batch_window_seconds=10.0, max_batch_records=6) as sink:
        outcomes = _run_threads(6, lambda t: sink.write(_record(t, T0 + timedelta(seconds=t % 2))))
    assert [outcome is None for outcome in outcomes] == [True, False] * 3
    assert all(isinstance(outcome, AuditWriteFailed) for outcome in outcomes[1::2])
    assert "connection reset" in str(outcomes[1])
    assert [key.split("/")[4] for key in _keys(s3)] == ["01"]


class _StopsTheThread:
    """An S3 client whose calls end the calling thread, as interpreter shutdown would."""

    def get_paginator(self, name: str) -> Any:
        raise SystemExit

    def put_object(self, **kwargs: Any) -> Any:
        raise SystemExit


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_waiters_fail_rather_than_hang_if_the_flusher_dies(s3: Any) -> None:
    sink = S3AuditSink(_StopsTheThread(), BUCKET, host_id="host-a", batch_window_seconds=10.0, max_batch_records=3)
    outcomes = _run_threads(3, lambda t: sink.write(_record(t, T0 + timedelta(seconds=t % 2))))
    assert all(isinstance(outcome, AuditWriteFailed) for outcome in outcomes), outcomes
    with pytest.raises(AuditWriteFailed, match="closed"):
        sink.write(_record(9))
    sink.close()


def test_close_stores_what_is_queued_and_later_writes_fail_closed(s3: Any) -> None:
    sink = S3AuditSink(s3, BUCKET, host_id="host-a", batch_window_seconds=30.0)
    writer = threading.Thread(target=sink.write, args=(_record(1),))
    writer.start()
    while not _queued(sink):
        threading.Event().wait(0.001)
    sink.close()  # cuts the 30 s window short
    writer.join(timeout=5)
    assert not writer.is_alive()
    assert len(_keys(s3)) == 1
    with pytest.raises(AuditWriteFailed, match="closed"):
        sink.write(_record(2))
    sink.close()  # idempotent


def _queued(sink: S3AuditSink) -> bool:
    with sink._wakeup:
        return bool(sink._queue)


@pytest.mark.parametrize("host_id", ["", "host/a", "host a", "..", "hôst", "a\nb"])
def test_host_ids_that_are_not_plain_names_are_refused(s3: Any, host_id: str) -> None:
    with pytest.raises(ValueError, match="host_id"):
        S3AuditSink(s3, BUCKET, host_id=host_id)


def test_a_record_without_an_aware_ts_is_a_programming_error(s3: Any) -> None:
    with S3AuditSink(s3, BUCKET, host_id="host-a") as sink:
        with pytest.raises(ValueError):
            sink.write({"query_id": "q"})
        with pytest.raises(ValueError):
            sink.write({"ts": "2026-03-01T00:00:00", "query_id": "q"})
    assert _keys(s3) == []


# --- Object Lock -----------------------------------------------------------------------------------


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    name = "hd-audit-locked"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                 "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}},
    )
    return name


def test_an_object_lock_bucket_accepts_batches_and_keeps_them_locked(s3: Any, locked_bucket: str) -> None:
    with S3AuditSink(s3, locked_bucket, host_id="host-a") as sink:
        assert _run_threads(5, lambda t: sink.write(_record(t))) == [None] * 5
    (key,) = _keys(s3, locked_bucket)
    head = s3.head_object(Bucket=locked_bucket, Key=key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=locked_bucket, Key=key, VersionId=head["VersionId"])
    assert len(list(S3AuditArchive(s3, locked_bucket).records(DAY))) == 5


def test_object_lock_puts_carry_a_checksum_even_when_the_client_would_not_add_one(locked_bucket: str) -> None:
    lean = boto3.client("s3", region_name="us-east-1", config=Config(request_checksum_calculation="when_required"))
    with pytest.raises(ClientError, match="MissingUploadObjectWithObjectLockHeaders"):
        lean.put_object(Bucket=locked_bucket, Key="plain", Body=b"x")  # what a put without a checksum gets
    with S3AuditSink(lean, locked_bucket, host_id="host-a") as sink:
        sink.write(_record(1))
    assert len(_keys(lean, locked_bucket)) == 1
