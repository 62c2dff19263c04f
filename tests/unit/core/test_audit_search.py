"""Audit search: tenant isolation, each filter, (ts, query_id) order and cursors that return every record once."""

from __future__ import annotations

import base64
import json
import re
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from hd_core.audit import format_audit_ts
from hd_core.audit_search import (
    QueryAuditFilter,
    QueryAuditPage,
    find_query_records,
    outcome_of,
    records_from_jsonl,
    resolve_window,
    search_query_audit,
)
from hd_core.errors import InvalidRequest, NotFound

DAY1 = date(2026, 3, 1)
DAY2 = date(2026, 3, 2)
DAY3 = date(2026, 3, 3)


class InMemoryArchive:
    """Unit-test fake of `QueryAuditArchive`: records filed by their UTC ts day, each `records` call logged."""

    def __init__(self, records: list[dict[str, object]] | None = None) -> None:
        self.days: dict[date, list[dict[str, object]]] = {}
        self.reads: list[date] = []
        for record in records or []:
            self.add(record)

    def add(self, record: dict[str, object]) -> None:
        day = datetime.fromisoformat(str(record["ts"])).astimezone(UTC).date()
        self.days.setdefault(day, []).append(record)

    def records(self, day: date) -> Iterator[dict[str, object]]:
        self.reads.append(day)
        # Reversed: archives promise no order, so search must not lean on insertion order.
        yield from reversed(self.days.get(day, []))


def _record(
    query_id: str,
    at: datetime,
    *,
    org_id: str = "org_a",
    user_id: str = "usr_1",
    agent_id: str | None = None,
    tables: list[str] | None = None,
    total_ms: float | None = 5.0,
) -> dict[str, object]:
    timings = {} if total_ms is None else {"total": total_ms}
    return {"ts": format_audit_ts(at), "query_id": query_id, "org_id": org_id, "user_id": user_id,
            "agent_id": agent_id, "tables": tables or [], "timings_ms": timings}


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def _filter(**overrides: object) -> QueryAuditFilter:
    values: dict[str, object] = {"org_id": "org_a", "start": DAY1, "end": DAY3}
    values.update(overrides)
    return QueryAuditFilter(**values)  # type: ignore[arg-type]


def _ids(page: QueryAuditPage) -> list[str]:
    return [str(record["query_id"]) for record in page.records]


def _all_pages(archive: InMemoryArchive, query: QueryAuditFilter, limit: int) -> list[QueryAuditPage]:
    pages = [search_query_audit(archive, query, limit=limit)]
    while pages[-1].next_cursor is not None:
        pages.append(search_query_audit(archive, query, limit=limit, cursor=pages[-1].next_cursor))
        assert len(pages) < 100, "pagination does not terminate"
    return pages


# --- order and tenant isolation ----------------------------------------------------------------


def test_records_come_back_ordered_by_ts_then_query_id_across_days() -> None:
    archive = InMemoryArchive([
        _record("q3", _at(DAY2, 1)),
        _record("q1", _at(DAY1, 9)),
        _record("q2b", _at(DAY1, 10)),
        _record("q2a", _at(DAY1, 10)),
    ])
    page = search_query_audit(archive, _filter())
    assert _ids(page) == ["q1", "q2a", "q2b", "q3"]
    assert page.next_cursor is None


def test_offset_timestamps_are_ordered_by_their_utc_instant() -> None:
    archive = InMemoryArchive([
        {**_record("late", _at(DAY1, 12)), "ts": "2026-03-01T08:00:00.000-05:00"},  # 13:00 UTC
        _record("early", _at(DAY1, 12, 30)),
    ])
    assert _ids(search_query_audit(archive, _filter())) == ["early", "late"]


def test_only_records_of_the_filters_organisation_are_ever_returned() -> None:
    archive = InMemoryArchive([
        _record("mine", _at(DAY1, 9), tables=["main.patients"]),
        _record("theirs", _at(DAY1, 9), org_id="org_b", tables=["main.patients"]),
        _record("no-org", _at(DAY1, 9)) | {"org_id": None},
        _record("prefix", _at(DAY1, 9), org_id="org_a2"),
    ])
    assert _ids(search_query_audit(archive, _filter())) == ["mine"]
    assert _ids(search_query_audit(archive, _filter(table="patients"))) == ["mine"]
    assert _ids(search_query_audit(archive, _filter(org_id="org_b"))) == ["theirs"]


def test_pages_of_one_organisation_never_contain_another_even_when_interleaved() -> None:
    archive = InMemoryArchive()
    for n in range(30):
        archive.add(_record(f"a{n:02}", _at(DAY1, 0, n), org_id="org_a"))
        archive.add(_record(f"b{n:02}", _at(DAY1, 0, n), org_id="org_b"))
    seen = [rid for page in _all_pages(archive, _filter(), limit=7) for rid in _ids(page)]
    assert seen == [f"a{n:02}" for n in range(30)]


def test_only_days_in_the_range_are_read() -> None:
    archive = InMemoryArchive([_record("before", _at(DAY1, 9)), _record("in", _at(DAY2, 9)),
                               _record("after", _at(DAY3, 9))])
    assert _ids(search_query_audit(archive, _filter(start=DAY2, end=DAY2))) == ["in"]
    assert archive.reads == [DAY2]


# --- filters --------------------------------------------------------------------------------------


def test_user_filter_keeps_only_that_users_records() -> None:
    archive = InMemoryArchive([_record("u1", _at(DAY1, 9), user_id="usr_1"),
                               _record("u2", _at(DAY1, 9), user_id="usr_2")])
    assert _ids(search_query_audit(archive, _filter(user_id="usr_2"))) == ["u2"]


def test_agent_filter_keeps_only_that_agents_records() -> None:
    archive = InMemoryArchive([_record("human", _at(DAY1, 9)),
                               _record("bot", _at(DAY1, 9), agent_id="agent_7"),
                               _record("other-bot", _at(DAY1, 9), agent_id="agent_8")])
    assert _ids(search_query_audit(archive, _filter(agent_id="agent_7"))) == ["bot"]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("patients", ["plain", "qualified", "shouted"]),  # unqualified matches any schema
        ("PATIENTS", ["plain", "qualified", "shouted"]),  # case-insensitive
        ("main.patients", ["qualified", "shouted"]),  # qualified matches that schema only
        ("staging.patients", []),
        ("patient", []),  # a whole name, never a substring
    ],
)
def test_table_filter_matches_names_case_insensitively(wanted: str, expected: list[str]) -> None:
    archive = InMemoryArchive([
        _record("plain", _at(DAY1, 1), tables=["patients"]),
        _record("qualified", _at(DAY1, 2), tables=["main.orders", "main.patients"]),
        _record("shouted", _at(DAY1, 3), tables=["MAIN.Patients"]),
        _record("other", _at(DAY1, 4), tables=["main.patients_archive", "patientsx"]),
        _record("none", _at(DAY1, 5), tables=[]),
    ])
    assert _ids(search_query_audit(archive, _filter(table=wanted))) == expected


def test_min_duration_uses_the_total_timing_inclusively() -> None:
    archive = InMemoryArchive([
        _record("fast", _at(DAY1, 1), total_ms=99.9),
        _record("edge", _at(DAY1, 2), total_ms=100),
        _record("slow", _at(DAY1, 3), total_ms=2500.5),
        _record("untimed", _at(DAY1, 4), total_ms=None),
        _record("odd", _at(DAY1, 5)) | {"timings_ms": {"total": "9999"}},
    ])
    assert _ids(search_query_audit(archive, _filter(min_duration_ms=100.0))) == ["edge", "slow"]
    assert _ids(search_query_audit(archive, _filter(min_duration_ms=0.0))) == ["fast", "edge", "slow"]


def test_filters_combine() -> None:
    archive = InMemoryArchive([
        _record("hit", _at(DAY1, 1), user_id="usr_2", agent_id="agent_7", tables=["main.t"], total_ms=50),
        _record("wrong-user", _at(DAY1, 2), agent_id="agent_7", tables=["main.t"], total_ms=50),
        _record("too-fast", _at(DAY1, 3), user_id="usr_2", agent_id="agent_7", tables=["main.t"], total_ms=1),
    ])
    query = _filter(user_id="usr_2", agent_id="agent_7", table="t", min_duration_ms=10)
    assert _ids(search_query_audit(archive, query)) == ["hit"]


# --- pagination ----------------------------------------------------------------------------------


def test_paging_returns_every_matching_record_exactly_once_in_order() -> None:
    archive = InMemoryArchive()
    start = _at(DAY1, 22)
    for n in range(53):
        # Pairs share a ts, and the run crosses two midnights, so cursors must break ties and cross days.
        archive.add(_record(f"q{n:03}", start + timedelta(minutes=(n // 2) * 7)))
        archive.add(_record(f"x{n:03}", start + timedelta(minutes=n * 5), org_id="org_b"))
    for limit in (1, 2, 7, 53, 1000):
        pages = _all_pages(archive, _filter(), limit)
        seen = [rid for page in pages for rid in _ids(page)]
        assert seen == [f"q{n:03}" for n in range(53)], f"limit {limit}"
        assert all(len(page.records) <= limit for page in pages)
        assert pages[-1].next_cursor is None


def test_a_full_page_mid_day_has_a_cursor_and_the_last_page_has_none() -> None:
    archive = InMemoryArchive([_record(f"q{n}", _at(DAY1, n)) for n in range(5)])
    first = search_query_audit(archive, _filter(start=DAY1, end=DAY1), limit=3)
    assert _ids(first) == ["q0", "q1", "q2"] and first.next_cursor is not None
    second = search_query_audit(archive, _filter(start=DAY1, end=DAY1), limit=3, cursor=first.next_cursor)
    assert _ids(second) == ["q3", "q4"] and second.next_cursor is None


def test_a_cursor_resumes_at_its_own_day_without_rereading_earlier_days() -> None:
    archive = InMemoryArchive([_record("d1", _at(DAY1, 9)), _record("d2a", _at(DAY2, 9)),
                               _record("d2b", _at(DAY2, 10)), _record("d3", _at(DAY3, 9))])
    first = search_query_audit(archive, _filter(), limit=2)
    archive.reads.clear()
    second = search_query_audit(archive, _filter(), limit=2, cursor=first.next_cursor)
    assert _ids(second) == ["d2b", "d3"]
    assert archive.reads == [DAY2, DAY3]


def test_records_stored_after_the_cursor_position_show_up_on_later_pages() -> None:
    archive = InMemoryArchive([_record("q1", _at(DAY1, 1)), _record("q2", _at(DAY1, 2))])
    first = search_query_audit(archive, _filter(), limit=1)
    archive.add(_record("q3", _at(DAY2, 3)))
    rest = search_query_audit(archive, _filter(), limit=10, cursor=first.next_cursor)
    assert _ids(rest) == ["q2", "q3"]


def test_an_empty_range_is_an_empty_last_page() -> None:
    page = search_query_audit(InMemoryArchive(), _filter())
    assert page == QueryAuditPage(records=[], next_cursor=None)


def test_the_cursor_is_opaque_url_safe_base64_of_position_and_filter_hash() -> None:
    archive = InMemoryArchive([_record(f"q{n}", _at(DAY1, n)) for n in range(3)])
    cursor = search_query_audit(archive, _filter(), limit=2).next_cursor
    assert cursor is not None and re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert payload["ts"] == "2026-03-01T01:00:00.000Z" and payload["query_id"] == "q1"
    assert isinstance(payload["f"], str) and 8 <= len(payload["f"]) <= 32


# --- refused requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_limit_outside_1_to_1000_is_refused(limit: int) -> None:
    with pytest.raises(InvalidRequest, match="limit"):
        search_query_audit(InMemoryArchive(), _filter(), limit=limit)


@pytest.mark.parametrize("limit", [1, 1000])
def test_limit_bounds_are_accepted(limit: int) -> None:
    assert search_query_audit(InMemoryArchive(), _filter(), limit=limit).records == []


def test_end_before_start_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="before start"):
        search_query_audit(InMemoryArchive(), _filter(start=DAY2, end=DAY1))


def test_a_range_of_366_days_is_allowed_and_367_refused() -> None:
    start = date(2024, 1, 1)
    archive = InMemoryArchive()
    search_query_audit(archive, _filter(start=start, end=date(2024, 12, 31)))  # leap year: 366 days
    assert len(archive.reads) == 366
    with pytest.raises(InvalidRequest, match="366 days"):
        search_query_audit(archive, _filter(start=start, end=date(2025, 1, 1)))


@pytest.mark.parametrize("overrides", [{"org_id": ""}, {"table": " "}, {"min_duration_ms": -1.0},
                                       {"min_duration_ms": float("nan")}])
def test_meaningless_filters_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        search_query_audit(InMemoryArchive(), _filter(**overrides))


def test_a_cursor_used_with_a_different_filter_is_refused_with_a_restart_hint() -> None:
    archive = InMemoryArchive([_record(f"q{n}", _at(DAY1, n), user_id="usr_2") for n in range(3)])
    cursor = search_query_audit(archive, _filter(), limit=1).next_cursor
    for changed in (_filter(user_id="usr_2"), _filter(org_id="org_b"), _filter(end=DAY2), _filter(table="t"),
                    _filter(min_duration_ms=1.0)):
        with pytest.raises(InvalidRequest, match="without a cursor"):
            search_query_audit(archive, changed, limit=1, cursor=cursor)
    # The same filter with another page size is the same search.
    assert _ids(search_query_audit(archive, _filter(), limit=5, cursor=cursor)) == ["q1", "q2"]


def _forged(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not-base64!!",
        "e30",  # {}
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _forged(["ts", "q"]),
        _forged({"ts": "yesterday", "query_id": "q", "f": "x"}),
        _forged({"ts": "2026-03-01T00:00:00", "query_id": "q", "f": "x"}),  # naive ts
        _forged({"ts": "2026-03-01T00:00:00Z", "query_id": 7, "f": "x"}),
        _forged({"ts": "2026-03-01T00:00:00Z", "query_id": "q"}),
        "A" * 5000,
    ],
)
def test_a_garbled_cursor_is_refused_with_a_restart_hint(cursor: str) -> None:
    with pytest.raises(InvalidRequest, match="without a cursor") as caught:
        search_query_audit(InMemoryArchive(), _filter(), cursor=cursor)
    assert caught.value.code == "HD_ERR_INVALID_REQUEST"


# --- reading JSONL ----------------------------------------------------------------------------------


def test_jsonl_reading_skips_a_torn_last_line_and_damaged_lines() -> None:
    data = b'{"query_id":"q1"}\n\nnot json\n[1,2]\n{"query_id":"q\xc3\xa9"}\n{"query_id":"half'
    assert [r["query_id"] for r in records_from_jsonl(data, source="test")] == ["q1", "qé"]


# --- windows, outcomes, lookup by reference, bounded memory (issue 22) ---------------------------------


def test_a_time_window_is_half_open_and_a_date_end_takes_the_whole_day() -> None:
    archive = InMemoryArchive([_record("at-start", _at(DAY1, 10)), _record("inside", _at(DAY1, 11)),
                               _record("at-end", _at(DAY1, 12)), _record("late", _at(DAY1, 23, 59))])
    timed = _filter(start=_at(DAY1, 10), end=_at(DAY1, 12))
    assert _ids(search_query_audit(archive, timed)) == ["at-start", "inside"]
    assert _ids(search_query_audit(archive, _filter(start=DAY1, end=DAY1))) == ["at-start", "inside", "at-end", "late"]
    # A window ending at midnight reads nothing of the day it ends on.
    archive.reads.clear()
    search_query_audit(archive, _filter(start=_at(DAY1, 0), end=_at(DAY2, 0)))
    assert archive.reads == [DAY1]


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="UTC offset"):
        search_query_audit(InMemoryArchive(), _filter(start=datetime(2026, 3, 1, 12)))


def test_the_default_window_is_the_last_24_hours_and_a_cursor_keeps_its_window() -> None:
    now = _at(DAY2, 9)
    assert resolve_window(None, None, cursor=None, now=now) == (now - timedelta(hours=24), now)
    assert resolve_window(None, DAY1, cursor=None, now=now) == (_at(DAY1, 0), DAY1)
    archive = InMemoryArchive([_record(f"q{n}", _at(DAY2, 1 + n)) for n in range(3)])
    start, end = resolve_window(None, None, cursor=None, now=now)
    cursor = search_query_audit(archive, _filter(start=start, end=end), limit=1).next_cursor
    later = now + timedelta(hours=5)  # the next page is asked for later: its window must not move
    assert resolve_window(None, None, cursor=cursor, now=later) == (start, end)
    rest = search_query_audit(archive, _filter(start=start, end=end), limit=5, cursor=cursor)
    assert _ids(rest) == ["q1", "q2"]


def test_outcome_separates_successes_refusals_and_failures() -> None:
    deny = [{"stage": "authorize", "decision": "deny", "reason": "HD_ERR_PERMISSION_DENIED: no"}]
    archive = InMemoryArchive([
        _record("ok", _at(DAY1, 1)),
        _record("denied", _at(DAY1, 2)) | {"error": {"sqlstate": "42501", "code": "HD_ERR_PERMISSION_DENIED",
                                                     "message": "m"}, "verdicts": deny},
        _record("failed", _at(DAY1, 3)) | {"error": {"sqlstate": "57014", "code": "HD_ERR_STATEMENT_TIMEOUT",
                                                     "message": "m"}},
    ])
    assert _ids(search_query_audit(archive, _filter(outcome="ok"))) == ["ok"]
    assert _ids(search_query_audit(archive, _filter(outcome="denied"))) == ["denied"]
    assert _ids(search_query_audit(archive, _filter(outcome="error"))) == ["failed"]
    assert _ids(search_query_audit(archive, _filter(sqlstate="57014"))) == ["failed"]
    assert _ids(search_query_audit(archive, _filter(error_code="hd_err_permission_denied"))) == ["denied"]
    assert outcome_of({"error": None}) == "ok"


def test_the_environment_filter_is_exact_and_records_without_one_are_in_none() -> None:
    archive = InMemoryArchive([_record("live", _at(DAY1, 1)) | {"key_env": "live"},
                               _record("test", _at(DAY1, 2)) | {"key_env": "test"},
                               _record("unknown", _at(DAY1, 3))])
    assert _ids(search_query_audit(archive, _filter(key_env="live"))) == ["live"]
    assert _ids(search_query_audit(archive, _filter(key_env="test"))) == ["test"]


def test_a_reference_is_found_newest_day_first_with_the_day_before_it() -> None:
    archive = InMemoryArchive([_record("q_x", _at(DAY2, 0, 1)), _record("q_x", _at(DAY1, 23, 59)),
                               _record("q_y", _at(DAY3, 5)), _record("q_x", _at(DAY1, 1), org_id="org_b")])
    found = find_query_records(archive, _filter(start=date(2026, 2, 1), end=DAY3), "q_x")
    assert [record["ts"] for record in found] == [format_audit_ts(_at(DAY1, 23, 59)), format_audit_ts(_at(DAY2, 0, 1))]
    assert archive.reads == [DAY3, DAY2, DAY1]  # stops a day after the newest day holding it
    with pytest.raises(NotFound, match="q_nope"):
        find_query_records(archive, _filter(), "q_nope")


def test_a_search_holds_a_page_of_a_day_not_the_whole_day() -> None:
    class LargeDay:
        def records(self, day: date) -> Iterator[dict[str, object]]:
            for n in range(20_000):  # about 20 MB of records if a search kept them all
                at = _at(DAY1, 0) + timedelta(seconds=(n * 7919) % 20_000)
                yield _record(f"q{n:05}", at) | {"sql_redacted": "SELECT ? " + "x" * 1000}

    tracemalloc.start()
    try:
        page = search_query_audit(LargeDay(), _filter(start=DAY1, end=DAY1), limit=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(page.records) == 10 and page.next_cursor is not None
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
