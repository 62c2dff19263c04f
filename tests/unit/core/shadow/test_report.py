"""A replay's report: counts, latencies, speedup and details, with no raw value a customer could leak by sharing it."""

from __future__ import annotations

import json

import pytest

from hd_core.shadow.compare import ResultColumns, SideError, SideResult, compare_results
from hd_core.shadow.report import LatencySummary, StatementResult, build_report, percentile

PII = "alice@example.com"


def _side(rows, oids=(23, 25)):
    return SideResult(ResultColumns(("id", "email"), tuple(oids)), [rows])


def _replay() -> list[StatementResult]:
    rows = [(1, PII), (2, "bob@example.com")]
    sql_exact = f"SELECT id, email FROM customers WHERE email <> '{PII}'"
    cases = [
        (sql_exact, _side(rows), _side(rows[::-1]), 40.0, 4.0),
        ("SELECT id, email FROM customers", _side(rows), _side(rows, oids=(20, 1043)), 30.0, 2.0),
        ("SELECT id, email FROM customers ORDER BY id", _side(rows), _side([(1, "mallory@example.com"), rows[1]]),
         50.0, 5.0),
        ("SELECT email::int FROM customers", _side(rows),
         SideError("22P02", f'invalid input syntax for type integer: "{PII}"'), 20.0, 1.0),
    ]
    return [StatementResult(index, index * 2, sql, compare_results(sql, reference, engine), ref_ms, eng_ms)
            for index, (sql, reference, engine, ref_ms, eng_ms) in enumerate(cases, start=1)]


def test_the_report_counts_each_verdict_and_summarises_each_sides_latency():
    report = build_report("qs_1", list(reversed(_replay())))
    document = json.loads(report.to_json())
    assert {key: document[key] for key in ("query_count", "exact", "semantic", "mismatch", "error")} == {
        "query_count": 4, "exact": 1, "semantic": 1, "mismatch": 1, "error": 1}
    assert [s["index"] for s in document["statements"]] == [1, 2, 3, 4]
    assert document["reference"] == {"count": 4, "p50_ms": 35.0, "p95_ms": 48.5, "p99_ms": 49.7, "total_ms": 140.0}
    assert document["engine"]["p50_ms"] == 3.0 and document["engine"]["total_ms"] == 12.0
    assert document["speedup_p50"] == pytest.approx(35.0 / 3.0, abs=0.01)
    mismatch = document["statements"][2]
    assert mismatch["verdict"] == "mismatch" and mismatch["reference_rows"] == 2
    assert document["statements"][3]["errors"] == [
        {"side": "engine", "sqlstate": "22P02", "message": "invalid input syntax for type integer: ?"}]


def test_neither_export_holds_a_redacted_value_a_literal_or_a_quoted_error_value():
    report = build_report("qs_1", _replay())
    for text in (report.to_json(), report.to_markdown()):
        assert PII not in text and "mallory" not in text and "bob@" not in text


def test_the_markdown_export_holds_the_counts_latencies_and_the_differences():
    markdown = build_report("qs_1", _replay()).to_markdown()
    for line in ("| exact | 1 |", "| semantic | 1 |", "| mismatch | 1 |", "| error | 1 |",
                 "| reference PostgreSQL | 4 | 35.0 | 48.5 | 49.7 | 140.0 |", "Speedup at p50: 11.67x",
                 "### Statement 3 (line 6): mismatch", "### Statement 4 (line 8): error",
                 "| engine | 22P02 | invalid input syntax for type integer: ? |",
                 "| id | email |", "| <int> | <str> |"):
        assert line in markdown, line
    assert "Statement 1 (line 2)" not in markdown  # matches have no details section


def test_percentiles_interpolate_between_closest_ranks():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.5, 95.05, 99.01)
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None
    empty = LatencySummary.of([])
    assert (empty.count, empty.p50, empty.total) == (0, None, 0.0)


def test_a_replay_without_engine_times_has_no_speedup():
    comparison = compare_results("SELECT 1", _side([(1, "x")]), SideError("08006", "connection lost"))
    report = build_report("qs_2", [StatementResult(1, 1, "SELECT 1", comparison, 3.5, None)])
    assert report.speedup_p50 is None and json.loads(report.to_json())["speedup_p50"] is None
    assert "Speedup at p50: n/a" in report.to_markdown()


def test_a_report_of_a_replay_that_did_not_finish_says_why_in_every_form() -> None:
    from engine_host.cli.shadow import render_report
    from hd_core.shadow.compare import Comparison
    from hd_core.shadow.replay import report_from_dict
    from hd_core.shadow.report import ReplayEnding, StatementResult, build_report

    unreplayed = Comparison("error", False, None, None, notes=("not replayed",))
    report = build_report("qs_1", [StatementResult(0, 1, "select 1", unreplayed, None, None)],
                          ReplayEnding("TIMED_OUT", "States.Timeout"))
    document = report.to_dict()
    reason = "the replay ended TIMED_OUT (States.Timeout) before its report was written"
    assert document["ended"] == {"status": "TIMED_OUT", "error": "States.Timeout", "reason": reason}
    assert report_from_dict(document).to_dict() == document  # read back from storage unchanged
    assert f"**Incomplete:** {reason}." in report.to_markdown()
    assert reason in render_report(document)
    finished = build_report("qs_1", []).to_dict()
    assert finished["ended"] is None and "Incomplete" not in build_report("qs_1", []).to_markdown()
    assert "incomplete" in render_report(finished) and reason not in render_report(finished)
