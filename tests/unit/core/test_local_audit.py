"""LocalFolderAuditSink: date-partitioned JSONL per host, whole lines under concurrency, fail closed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hd_core.adapters.local_audit import LocalFolderAuditSink
from hd_core.audit import QueryAuditRecord, format_audit_ts
from hd_core.errors import AuditWriteFailed, HdError
from hd_core.ports import AuditSink
from hd_core.query_audit_chain import chained_line

T0 = datetime(2026, 3, 1, 23, 59, 59, 900000, tzinfo=UTC)


def _record(at: datetime = T0, n: int = 0) -> dict[str, object]:
    return {"ts": format_audit_ts(at), "query_id": f"q{n}", "sql_redacted": "SELECT ?", "padding": "x" * 2000}


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _day_file(root: Path, day: str, host: str = "host-a") -> Path:
    return root / "audit" / "queries" / day / f"{host}.jsonl"


def test_records_go_to_the_partition_of_their_ts(tmp_path: Path) -> None:
    sink: AuditSink = LocalFolderAuditSink(tmp_path, host_id="host-a")
    sink.write(_record(T0, 1))
    sink.write(_record(T0 + timedelta(seconds=1), 2))  # after UTC midnight: the next day's file
    sink.write(_record(T0 - timedelta(hours=1), 3))  # a late writer from before midnight
    assert [r["query_id"] for r in _lines(_day_file(tmp_path, "2026/03/01"))] == ["q1", "q3"]
    assert [r["query_id"] for r in _lines(_day_file(tmp_path, "2026/03/02"))] == ["q2"]


def test_offset_timestamps_are_partitioned_by_utc_day(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as sink:
        sink.write({"ts": "2026-03-01T20:00:00.000-05:00", "query_id": "q"})
    assert _lines(_day_file(tmp_path, "2026/03/02"))[0]["query_id"] == "q"


def test_a_written_record_is_a_sorted_json_line_and_flushed(tmp_path: Path) -> None:
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a")
    record = QueryAuditRecord.begin(
        sql="SELECT 'x'", org_id="o", user_id="u", key_id="k", role="Owner", source_ip=None, at=T0
    )
    sink.write(record.to_dict())
    # Readable before close: every write is flushed to the file, chained as the day's first line.
    assert _day_file(tmp_path, "2026/03/01").read_text() == chained_line(record.to_dict(), None)[0] + "\n"
    sink.close()


def test_folders_are_0700_and_files_0600(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path / "state", host_id="host-a") as sink:
        sink.write(_record())
    path = _day_file(tmp_path / "state", "2026/03/01")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, path.parent.parent, tmp_path / "state" / "audit", tmp_path / "state"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_concurrent_writers_produce_whole_lines(tmp_path: Path) -> None:
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a", fsync=False)
    threads, per_thread = 16, 200
    barrier = threading.Barrier(threads)

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            sink.write(_record(T0, t * per_thread + i))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sink.close()
    ids = [str(r["query_id"]) for r in _lines(_day_file(tmp_path, "2026/03/01"))]
    assert sorted(ids) == sorted(f"q{n}" for n in range(threads * per_thread))


def test_reopening_appends(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="host-a", fsync=True) as sink:
        sink.write(_record(n=1))
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as sink:
        sink.write(_record(n=2))
    assert [r["query_id"] for r in _lines(_day_file(tmp_path, "2026/03/01"))] == ["q1", "q2"]


def test_hosts_write_separate_files(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as a, LocalFolderAuditSink(tmp_path, host_id="host-b") as b:
        a.write(_record(n=1))
        b.write(_record(n=2))
    assert _lines(_day_file(tmp_path, "2026/03/01", "host-b"))[0]["query_id"] == "q2"


def test_day_folder_replaced_by_a_file_fails_closed(tmp_path: Path) -> None:
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a")
    sink.write(_record(n=1))
    day_folder = _day_file(tmp_path, "2026/03/01").parent
    shutil.rmtree(day_folder)
    day_folder.write_text("not a folder")
    with pytest.raises(AuditWriteFailed) as caught:
        sink.write(_record(n=2))
    assert caught.value.code == "HD_ERR_AUDIT_UNAVAILABLE"
    assert isinstance(caught.value, HdError)
    assert isinstance(caught.value.__cause__, OSError)
    # Once the folder is back, writing resumes in a fresh file (the old inode was deleted).
    day_folder.unlink()
    sink.write(_record(n=3))
    sink.close()
    assert [r["query_id"] for r in _lines(_day_file(tmp_path, "2026/03/01"))] == ["q3"]


def test_file_deleted_under_an_open_handle_is_recreated_not_lost(tmp_path: Path) -> None:
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a")
    sink.write(_record(n=1))
    _day_file(tmp_path, "2026/03/01").unlink()
    sink.write(_record(n=2))
    sink.close()
    assert [r["query_id"] for r in _lines(_day_file(tmp_path, "2026/03/01"))] == ["q2"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_root_fails_closed(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(AuditWriteFailed):
            LocalFolderAuditSink(tmp_path / "state", host_id="host-a").write(_record())
    finally:
        tmp_path.chmod(0o700)


def test_a_partial_line_left_by_a_failed_write_is_dropped_on_reopen(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as sink:
        sink.write(_record(n=1))
    path = _day_file(tmp_path, "2026/03/01")
    with path.open("a") as torn:
        torn.write('{"query_id": "half a li')  # what a full disk or a crash mid-write leaves
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as sink:
        sink.write(_record(n=2))
    assert [r["query_id"] for r in _lines(path)] == ["q1", "q2"]


def test_disk_full_raises_and_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a")
    sink.write(_record(n=1))
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes) -> int:
        if len(data) > 100:
            return real_write(fd, bytes(data[:100]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(AuditWriteFailed, match="No space left"):
        sink.write(_record(n=2))
    monkeypatch.setattr(os, "write", real_write)
    sink.write(_record(n=3))
    sink.close()
    assert [r["query_id"] for r in _lines(_day_file(tmp_path, "2026/03/01"))] == ["q1", "q3"]


def test_write_after_close_fails_closed(tmp_path: Path) -> None:
    sink = LocalFolderAuditSink(tmp_path, host_id="host-a")
    sink.close()
    with pytest.raises(AuditWriteFailed):
        sink.write(_record())


def test_record_without_ts_is_a_programming_error(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="host-a") as sink, pytest.raises(ValueError):
        sink.write({"query_id": "q"})
