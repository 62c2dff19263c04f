"""Audit search over a big local day file holds a page, not the day: the archive streams lines, search keeps a heap."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.audit import audit_partition, format_audit_ts
from hd_core.audit_search import QueryAuditFilter, search_query_audit

DAY = datetime(2026, 3, 1, tzinfo=UTC)
RECORDS = 20_000  # about 24 MB of JSONL in one host's file


def test_a_search_of_a_large_local_day_file_peaks_far_below_its_size(tmp_path: Path) -> None:
    folder = tmp_path / audit_partition(DAY)
    folder.mkdir(parents=True)
    with (folder / "host-a.jsonl").open("w") as out:
        for n in range(RECORDS):
            at = DAY + timedelta(seconds=(n * 7919) % RECORDS)
            out.write(json.dumps({"ts": format_audit_ts(at), "query_id": f"q{n:05}", "org_id": "org_a",
                                  "user_id": "usr_1", "sql_redacted": "SELECT ? " + "x" * 1100}) + "\n")
        out.write('{"ts": "2026-03-01T00:00:00.000Z", "query_id": "torn"')  # still being appended
    size = (folder / "host-a.jsonl").stat().st_size
    query = QueryAuditFilter(org_id="org_a", start=DAY.date(), end=DAY.date())

    tracemalloc.start()
    try:
        page = search_query_audit(LocalFolderAuditArchive(tmp_path), query, limit=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    times = [str(record["ts"]) for record in page.records]
    assert page.records[0]["query_id"] == "q00000" and times == sorted(times) and len(set(times)) == 10
    assert len(page.records) == 10 and page.next_cursor is not None
    assert peak < size / 10, f"peak {peak} bytes for a {size}-byte day"
