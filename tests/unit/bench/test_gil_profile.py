"""bench.gil_profile: the GIL's share of wall time and the stages holding it, from py-spy's raw output."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bench import gil_profile
from bench.gil_profile import GilProfile, stage_of, summarize

AUDIT_INSIDE_EXECUTION = ("_worker (thread.py:81);PgConnection._send_rows (connection.py:594);"
                          "StatementPipeline.execute (pipeline.py:609);Governor.record (governor.py:700);"
                          "LocalFolderAuditSink.write (local_audit.py:145)")
PLAN = ("_worker (thread.py:81);PgConnection._parse (connection.py:300);Governor.plan (governor.py:334);"
        "Tokenizer.tokenize (tokens.py:613)")
DUCKDB_UNDER_ENCODING = ("PgConnection._send_rows (connection.py:594);GovernedRows._pull (pipeline.py:900);"
                         "ResultStream.next_batch (duckdb_engine.py:228)")


def test_a_stage_nested_in_another_is_counted_in_the_inner_one() -> None:
    assert stage_of(AUDIT_INSIDE_EXECUTION.split(";")) == "audit record"
    assert stage_of(DUCKDB_UNDER_ENCODING.split(";")) == "DuckDB calls"
    assert stage_of(PLAN.split(";")) == "plan: parse, policy, rewrite, transpile"
    assert stage_of(["BaseEventLoop._run_once (base_events.py:1)", "select (selectors.py:468)"]) == \
        "event loop and sockets"
    assert stage_of(["<module> (x.py:1)"]) == gil_profile.OTHER


def test_the_held_share_is_the_samples_kept_over_the_ticks_sampled() -> None:
    raw = f"{PLAN} 30\n{AUDIT_INSIDE_EXECUTION} 10\n\nnot a sample line\n"
    summary = summarize(raw, rate=100, seconds=2)
    assert summary.samples == 40
    assert summary.held_share == pytest.approx(0.2)
    assert summary.stage_shares() == [("plan: parse, policy, rewrite, transpile", 0.75), ("audit record", 0.25)]
    assert summarize("", rate=100, seconds=2).stage_shares() == []


def _child(body: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


@pytest.mark.skipif(gil_profile.py_spy() is None, reason="py-spy is not installed (.venv/bin/pip install py-spy)")
def test_a_process_spinning_in_python_holds_the_gil_and_one_sleeping_does_not() -> None:
    spinning = _child("""
        import time
        class Governor:
            def plan(self):
                end = time.monotonic() + 20
                while time.monotonic() < end:
                    sum(range(1000))
        print("ready", flush=True)
        Governor().plan()
    """)
    sleeping = _child("""
        import time
        print("ready", flush=True)
        time.sleep(20)
    """)
    try:
        executable = gil_profile.py_spy()
        assert executable is not None
        busy, idle = GilProfile(executable, spinning.pid, 1), GilProfile(executable, sleeping.pid, 1)
        busy_summary, idle_summary = busy.finish(), idle.finish()
    finally:
        for child in (spinning, sleeping):
            child.kill()
            child.wait()
    assert not isinstance(busy_summary, str) and not isinstance(idle_summary, str)
    assert busy_summary.held_share > 0.3  # ~1.0 alone; py-spy falls behind on a busy machine
    assert busy_summary.stage_shares()[0][0] == "plan: parse, policy, rewrite, transpile"
    assert idle_summary.held_share < 0.1
