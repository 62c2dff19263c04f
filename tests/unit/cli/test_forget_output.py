"""`hd forget`'s readable output: a fleet request's status fits its column and each host's rows are shown."""

from __future__ import annotations

from engine_host.cli.forget import REQUEST_COLUMNS, _shown
from engine_host.cli.listing import render_listing

WAITING = {
    "request_id": "fgt_0123456789abcdefghij", "status": "waiting_for_hosts", "rows_removed": 3,
    "requested_at": "2026-12-08T01:00:00Z", "sla_deadline": "2026-12-11T01:00:00Z", "subject_hmac": "ab" * 32,
    "table_results": {"crm.notes": {"storage": "writable", "rows_removed": 3, "objects_rewritten": 0,
                                    "hosts": {"i-0aaa": 2, "i-0bbb": 1}}},
}


def test_the_list_shows_a_waiting_status_whole() -> None:
    listing = render_listing(REQUEST_COLUMNS, [WAITING], empty="none")
    assert "waiting_for_hosts" in listing.splitlines()[1]


def test_a_request_shows_the_rows_each_host_removed() -> None:
    text = _shown(WAITING).text
    assert "crm.notes: 3 row(s) removed (writable, 0 object(s) rewritten)" in text
    assert "    host i-0aaa: 2 row(s) removed" in text and "    host i-0bbb: 1 row(s) removed" in text
