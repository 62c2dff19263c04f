"""QueryAuditArchive contract, run against both archives (local folder, S3 on moto) fed by their own sinks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.audit import QueryAuditRecord, format_audit_ts
from hd_core.audit_search import QueryAuditFilter, search_query_audit
from hd_core.errors import HdError
from hd_core.ports import QueryAuditArchive
from hd_core.query_audit_chain import CHAIN_FIELDS

BUCKET = "hd-audit-contract"
T0 = datetime(2026, 3, 1, 23, 59, 59, 900000, tzinfo=UTC)
DAY1 = date(2026, 3, 1)
DAY2 = date(2026, 3, 2)


@dataclass
class ArchiveUnderTest:
    """An archive and a way to store records into it through the matching sink of one host."""

    archive: QueryAuditArchive
    store: Callable[[str, list[Mapping[str, object]]], None]  # (host_id, records)


@pytest.fixture(params=["local", "s3"])
def subject(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ArchiveUnderTest]:
    if request.param == "local":
        yield ArchiveUnderTest(LocalFolderAuditArchive(tmp_path), _local_store(tmp_path))
        return
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        # A page size of 2 makes the archive follow ListObjectsV2 continuation tokens in every test.
        yield ArchiveUnderTest(S3AuditArchive(s3, BUCKET, page_size=2), _s3_store(s3))


def _local_store(root: Path) -> Callable[[str, list[Mapping[str, object]]], None]:
    def store(host_id: str, records: list[Mapping[str, object]]) -> None:
        with LocalFolderAuditSink(root, host_id=host_id) as sink:
            for record in records:
                sink.write(record)

    return store


def _s3_store(s3: Any) -> Callable[[str, list[Mapping[str, object]]], None]:
    def store(host_id: str, records: list[Mapping[str, object]]) -> None:
        # No batching window: each record becomes its own object, so a day holds many objects to list.
        with S3AuditSink(s3, BUCKET, host_id=host_id, batch_window_seconds=0) as sink:
            for record in records:
                sink.write(record)

    return store


def _record(n: int, at: datetime = T0, org_id: str = "org_a") -> dict[str, object]:
    return {"ts": format_audit_ts(at), "query_id": f"q{n:03}", "org_id": org_id, "tables": ["main.patients"],
            "timings_ms": {"total": float(n)}}


def _ids(records: Iterator[dict[str, object]]) -> list[str]:
    return sorted(str(record["query_id"]) for record in records)


def test_a_day_returns_every_record_filed_under_it_and_no_other(subject: ArchiveUnderTest) -> None:
    subject.store("host-a", [_record(1), _record(2, T0 + timedelta(seconds=1)), _record(3, T0 - timedelta(hours=5))])
    assert _ids(subject.archive.records(DAY1)) == ["q001", "q003"]
    assert _ids(subject.archive.records(DAY2)) == ["q002"]


def test_a_day_with_nothing_stored_is_empty_not_an_error(subject: ArchiveUnderTest) -> None:
    assert list(subject.archive.records(DAY1)) == []
    subject.store("host-a", [_record(1)])
    assert list(subject.archive.records(date(2025, 3, 1))) == []


def test_records_of_every_host_are_read(subject: ArchiveUnderTest) -> None:
    subject.store("host-a", [_record(1), _record(2)])
    subject.store("host-b", [_record(3)])
    subject.store("host-c", [_record(4), _record(5)])
    assert _ids(subject.archive.records(DAY1)) == ["q001", "q002", "q003", "q004", "q005"]


def test_a_full_query_audit_record_reads_back_unchanged(subject: ArchiveUnderTest) -> None:
    record = QueryAuditRecord.begin(sql="SELECT * FROM main.patients WHERE name = 'Zoë'", org_id="org_a",
                                    user_id="usr_1", key_id="key_1", role="Analyst", source_ip="10.0.0.7",
                                    agent_id="agent_7", at=T0)
    record.tables = ["main.patients"]
    record.add_verdict("row_filter", "allow", "filtered by region")
    record.add_timing("total", 12.5)
    subject.store("host-a", [record.to_dict()])
    (stored,) = subject.archive.records(DAY1)
    assert {name: stored.pop(name) for name in CHAIN_FIELDS}["chain_seq"] == 1  # the day's first record
    assert stored == record.to_dict()


def test_records_a_day_holds_many_of_are_all_read(subject: ArchiveUnderTest) -> None:
    subject.store("host-a", [_record(n, T0 - timedelta(minutes=n)) for n in range(25)])
    assert _ids(subject.archive.records(DAY1)) == [f"q{n:03}" for n in range(25)]


def test_audit_search_pages_through_the_archive_for_one_organisation(subject: ArchiveUnderTest) -> None:
    subject.store("host-a", [_record(n, T0 - timedelta(minutes=n)) for n in range(0, 12, 2)])
    subject.store("host-b", [_record(n, T0 - timedelta(minutes=n)) for n in range(1, 12, 2)])
    subject.store("host-b", [_record(100 + n, T0 - timedelta(minutes=n), org_id="org_b") for n in range(5)])
    subject.store("host-a", [_record(50, T0 + timedelta(seconds=1))])  # the next day
    query = QueryAuditFilter(org_id="org_a", start=DAY1, end=DAY2, table="patients", min_duration_ms=2.0)
    seen: list[object] = []
    cursor: str | None = None
    while True:
        page = search_query_audit(subject.archive, query, limit=4, cursor=cursor)
        seen.extend(record["query_id"] for record in page.records)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"q{n:03}" for n in range(11, 1, -1)] + ["q050"]


# --- adapter-specific behaviour ----------------------------------------------------------------------


def test_local_archive_skips_a_line_still_being_appended(tmp_path: Path) -> None:
    _local_store(tmp_path)("host-a", [_record(1), _record(2)])
    day_file = tmp_path / "audit" / "queries" / "2026" / "03" / "01" / "host-a.jsonl"
    with day_file.open("a") as torn:
        torn.write('{"ts":"2026-03-01T23:59:59.950Z","query_id":"q0')
    assert _ids(LocalFolderAuditArchive(tmp_path).records(DAY1)) == ["q001", "q002"]


def test_local_archive_reads_only_jsonl_files(tmp_path: Path) -> None:
    _local_store(tmp_path)("host-a", [_record(1)])
    folder = tmp_path / "audit" / "queries" / "2026" / "03" / "01"
    (folder / "notes.txt").write_text('{"query_id":"stray"}\n')
    (folder / "subfolder.jsonl").mkdir()
    assert _ids(LocalFolderAuditArchive(tmp_path).records(DAY1)) == ["q001"]


def test_s3_archive_failures_are_domain_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        with pytest.raises(HdError, match="could not be listed"):
            list(S3AuditArchive(s3, "hd-audit-missing").records(DAY1))
