"""OpenTelemetry on the engine host: with HD_OTEL_ENDPOINT set, a span per statement and a child per pipeline stage
reach a real OTLP/HTTP receiver on loopback, carrying no SQL text, literal, key or row value; unset, nothing is
built and nothing is sent.

The host runs in this process (tests/harness.py) and is driven by psycopg over real sockets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from engine_host.ops.tracing import STATEMENT_SPAN, statement_tracer_from_environment
from engine_host.runtime.local import LocalEngineHost
from hd_core.telemetry import ALLOWED_ATTRIBUTES, TelemetryMisconfigured
from tests.harness import SwitchableAuditSink, in_process_host
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver

# Values that must never leave in a span: a literal, a row value, parts of the SQL text.
LITERAL = "zebra-literal-7731"
ROW_VALUE = "row-value-secret-9182"
TABLE = "traced_people"


@dataclass
class TracedHost:
    receiver: OtlpReceiver
    sink: SwitchableAuditSink
    dsn: str
    key: str


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedHost]:
    with otlp_receiver() as receiver, pytest.MonkeyPatch.context() as env:
        env.setenv("HD_OTEL_ENDPOINT", receiver.url)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within a test's patience, not the default 5 s
        with in_process_host(tmp_path_factory.mktemp("hd-traces")) as (engine, sink, key):
            yield TracedHost(receiver, sink, _dsn(engine, key), key)


def _dsn(engine: LocalEngineHost, key: str) -> str:
    assert engine.server is not None and engine.banner is not None
    return (f"host=127.0.0.1 port={engine.server.port} dbname=hd user={engine.banner.user} password={key} "
            "sslmode=disable connect_timeout=10")


def _trace_of(spans: list[ReceivedSpan], query_id: str) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    (root,) = [s for s in spans if s.name == STATEMENT_SPAN and s.attributes.get("hd.query_id") == query_id]
    return root, [s for s in spans if s.parent_span_id == root.span_id]


def _record(sink: SwitchableAuditSink, fragment: str) -> dict[str, object]:
    return dict(next(r for r in reversed(sink.records) if fragment in str(r.get("sql_redacted", ""))))


def _run(traced: TracedHost, *statements: str) -> None:
    with psycopg.connect(traced.dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def test_a_select_is_one_statement_span_with_a_child_per_stage(traced: TracedHost) -> None:
    _run(traced, f"CREATE TABLE {TABLE} (id INTEGER, name VARCHAR)",
         f"INSERT INTO {TABLE} VALUES (1, '{ROW_VALUE}')")
    with psycopg.connect(traced.dsn, autocommit=True) as conn:
        rows = conn.execute(f"SELECT id, name FROM {TABLE} WHERE name <> '{LITERAL}'").fetchall()
    assert rows == [(1, ROW_VALUE)]
    query_id = str(_record(traced.sink, f"FROM {TABLE} WHERE")["query_id"])

    spans = traced.receiver.wait_for(lambda got: any(s.attributes.get("hd.query_id") == query_id for s in got))
    root, children = _trace_of(spans, query_id)
    assert root.parent_span_id == "" and root.kind == 2  # SERVER, a trace of its own
    assert root.attributes == {"hd.query_id": query_id, "hd.statement.kind": "select", "hd.tables.count": 1,
                               "hd.rows": 1, "hd.outcome": "ok"}
    stages = [s.name for s in sorted(children, key=lambda s: s.start_ns)]
    assert stages[:4] == ["hd.stage.guard", "hd.stage.guard", "hd.stage.tables", "hd.stage.policy"]
    # (A simple query's concurrency slot is taken on the event loop before the statement's audit exists.)
    assert {"hd.stage.plan_check", "hd.stage.rate_limit", "hd.stage.abac", "hd.stage.quota"} <= set(stages)
    assert stages[-2:] == ["hd.stage.execute", "hd.stage.audit"]
    for child in children:
        assert child.trace_id == root.trace_id
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns
        assert child.attributes == {"hd.stage": child.name.removeprefix("hd.stage."), "hd.decision": "allow"}
    assert root.resource["service.name"] == "hardened-duck-engine"


def test_a_refused_statement_says_denied_with_its_sqlstate_on_the_stage_that_refused(traced: TracedHost) -> None:
    with psycopg.connect(traced.dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute(f"SELECT * FROM no_such_table WHERE secret = '{LITERAL}'")
    query_id = str(_record(traced.sink, "no_such_table")["query_id"])
    spans = traced.receiver.wait_for(lambda got: any(s.attributes.get("hd.query_id") == query_id for s in got))
    root, children = _trace_of(spans, query_id)
    assert (root.attributes["hd.outcome"], root.attributes["db.response.status_code"]) == ("denied", "42P01")
    assert str(root.attributes["hd.error.code"]).startswith("HD_ERR_") and root.status_code == 2
    (refusing,) = [c for c in children if c.attributes["hd.decision"] == "deny"]
    assert refusing.name == "hd.stage.tables" and refusing.attributes["db.response.status_code"] == "42P01"
    assert "hd.stage.execute" not in {c.name for c in children}


def test_no_span_carries_sql_text_literals_keys_or_row_values(traced: TracedHost) -> None:
    _run(traced, "SELECT 1", f"SET application_name = '{LITERAL}'")
    with psycopg.connect(traced.dsn, autocommit=True) as conn:
        conn.execute(f"SELECT name FROM {TABLE} WHERE name = %s", (ROW_VALUE,)).fetchall()  # a bound parameter
    last = str(traced.sink.records[-1]["query_id"])
    spans = traced.receiver.wait_for(lambda got: any(s.attributes.get("hd.query_id") == last for s in got))
    assert sum(s.name == STATEMENT_SPAN for s in spans) >= 6
    forbidden = [LITERAL, ROW_VALUE, traced.key, TABLE, "application_name", "no_such_table"]
    sql_words = ["SELECT ", "FROM ", "WHERE ", "SET ", "INSERT "]  # the statement kind "select" is allowed
    for span in spans:
        assert set(span.attributes) <= set(ALLOWED_ATTRIBUTES), span
        for text in span.texts():
            assert not any(bad.lower() in text.lower() for bad in forbidden), (span.name, text)
            assert not any(word in text.upper() for word in sql_words), (span.name, text)
    assert {path for path, _ in traced.receiver.requests} == {"/v1/traces"}
    assert {kind for _, kind in traced.receiver.requests} == {"application/x-protobuf"}


def test_every_audited_statement_has_exactly_one_trace(traced: TracedHost) -> None:
    _run(traced, "BEGIN", "SELECT 2", "COMMIT")
    ids = [str(r["query_id"]) for r in traced.sink.records[-3:]]
    spans = traced.receiver.wait_for(lambda got: {s.attributes.get("hd.query_id") for s in got} >= set(ids))
    for query_id in ids:
        assert sum(s.name == STATEMENT_SPAN and s.attributes.get("hd.query_id") == query_id for s in spans) == 1


# --- off by default -------------------------------------------------------------------------------------

_UNSET_PROBE = textwrap.dedent("""
    import json, socket, sys
    from pathlib import Path
    opened = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    def connect(self, address):
        opened.append(repr(address))
        return real_connect(self, address)
    def connect_ex(self, address):
        opened.append(repr(address))
        return real_connect_ex(self, address)
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    import psycopg
    from tests.harness import in_process_host
    with in_process_host(Path(sys.argv[1])) as (engine, sink, key):
        dsn = (f"host=127.0.0.1 port={engine.server.port} dbname=hd user={engine.banner.user} "
               f"password={key} sslmode=disable")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for sql in ("CREATE TABLE t (a INTEGER)", "INSERT INTO t VALUES (1)", "SELECT * FROM t",
                        "SELECT * FROM missing"):
                try:
                    conn.execute(sql).fetchall() if sql.startswith("SELECT") else conn.execute(sql)
                except psycopg.Error:
                    pass
        statements = len(sink.records)
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    print(json.dumps({"opened": opened, "otel_modules": loaded, "statements": statements}))
""")


def test_unset_nothing_is_imported_built_or_sent(tmp_path: Path) -> None:
    """OpenTelemetry's own endpoint variable points at a live receiver: without HD_OTEL_ENDPOINT it gets nothing."""
    with otlp_receiver() as receiver:
        env = {name: value for name, value in __import__("os").environ.items() if name != "HD_OTEL_ENDPOINT"}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.url,
                   OTEL_BSP_SCHEDULE_DELAY="50")
        out = subprocess.run([sys.executable, "-c", _UNSET_PROBE, str(tmp_path)], capture_output=True, text=True,
                             env=env, cwd=Path(__file__).parents[2], timeout=120)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["statements"] >= 4
    assert report["opened"] == []  # not one outbound connection from the host's Python code
    assert report["otel_modules"] == []
    assert receiver.requests == []


@pytest.mark.parametrize("endpoint", ["ftp://collector:4318", "collector:4318", "http://user:pw@collector:4318",
                                      "http://collector:4318/?token=x"])
def test_an_unusable_endpoint_stops_the_start_with_a_clear_error(endpoint: str) -> None:
    with pytest.raises(TelemetryMisconfigured, match="HD_OTEL_ENDPOINT must be an OTLP/HTTP collector URL"):
        statement_tracer_from_environment({"HD_OTEL_ENDPOINT": endpoint})
